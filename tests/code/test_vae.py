"""The attention-VAE against reference implementations, and its structural properties."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch.distributions import Multinomial, Normal
from torch.distributions import kl_divergence as torch_kl

from training.trainer import PlatformDropout, TrainConfig, fit, infer
from training.vae import (
    PAD,
    AttentionVAE,
    Dropout,
    EncoderLayer,
    VAEConfig,
    dropout,
    gap_bucket,
    kl_divergence,
    vae_loss,
)

CONFIG = VAEConfig(
    n_items=30,
    n_actions=10,
    n_platforms=3,
    d_model=16,
    n_heads=2,
    d_latent=8,
    d_hidden=32,
    dropout=0.0,
    input_dropout=0.0,
)


def _batch(b: int = 4, t: int = 6, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    items = torch.randint(2, CONFIG.n_items + 2, (b, t), generator=g)
    items[0, 3:] = PAD  # a short sequence
    actions = torch.randint(1, 11, (b, t), generator=g)
    platforms = torch.randint(2, 5, (b, t), generator=g)
    gaps = torch.rand(b, t, generator=g) * 1e5
    return [items, actions, platforms, gaps]


def test_shapes() -> None:
    torch.manual_seed(0)
    model = AttentionVAE(CONFIG).eval()
    logits, mu, logvar = model(*_batch())
    assert logits.shape == (4, CONFIG.n_items)
    assert mu.shape == logvar.shape == (4, CONFIG.d_latent)
    _, _, weights = model.encode(*_batch())
    assert weights.shape == (4, 6)
    assert torch.allclose(weights.sum(dim=1), torch.ones(4), atol=1e-5)
    assert (weights[0, 3:] == 0).all()  # padding gets no attention


def test_kl_matches_torch_distributions_and_is_non_negative() -> None:
    g = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(64, 8, generator=g) * 2, torch.randn(64, 8, generator=g)
    ours = kl_divergence(mu, logvar)
    reference = torch_kl(Normal(mu, torch.exp(0.5 * logvar)), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(-1)
    assert torch.allclose(ours, reference, atol=1e-4)
    assert (ours >= 0).all()
    assert torch.allclose(kl_divergence(torch.zeros(3, 8), torch.zeros(3, 8)), torch.zeros(3))


def test_reconstruction_term_is_the_multinomial_log_likelihood() -> None:
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(5, 30, generator=g)
    x = (torch.rand(5, 30, generator=g) < 0.2).float()
    x[:, 0] = 1.0
    _, nll, _ = vae_loss(logits, x, torch.zeros(5, 8), torch.zeros(5, 8), beta=0.0)
    # torch's multinomial log-probability includes log(n! / prod x_i!), constant in the model
    log_coefficient = torch.lgamma(x.sum(1) + 1) - torch.lgamma(x + 1).sum(1)
    reference = -torch.stack(
        [Multinomial(int(row.sum()), logits=lg).log_prob(row) for lg, row in zip(logits, x, strict=True)]
    )
    assert torch.allclose(nll, (reference + log_coefficient).mean(), atol=1e-4)


def test_loss_is_finite_and_beta_weights_the_kl() -> None:
    torch.manual_seed(0)
    model = AttentionVAE(CONFIG).train()
    logits, mu, logvar = model(*_batch())
    x = torch.zeros(4, CONFIG.n_items)
    x[:, :3] = 1
    loss0, nll, kl = vae_loss(logits, x, mu, logvar, beta=0.0)
    loss1, _, _ = vae_loss(logits, x, mu, logvar, beta=1.0)
    assert torch.isfinite(loss1) and kl >= 0
    assert math.isclose(float((loss1 - loss0).detach()), float(kl.detach()), rel_tol=1e-5)


def test_permutation_invariant_when_time_is_unknown() -> None:
    torch.manual_seed(0)
    model = AttentionVAE(CONFIG).eval()
    items, actions, platforms, gaps = _batch(b=2, t=8)
    gaps = torch.zeros_like(gaps)  # time unknown
    perm = torch.randperm(8)
    mu1, _, _ = model.encode(items, actions, platforms, gaps)
    mu2, _, _ = model.encode(items[:, perm], actions[:, perm], platforms[:, perm], gaps[:, perm])
    assert torch.allclose(mu1, mu2, atol=1e-5)
    # with time known, the same events at different gaps are a different input
    mu3, _, _ = model.encode(items, actions, platforms, torch.arange(8.0).repeat(2, 1) * 3600)
    assert not torch.allclose(mu1, mu3, atol=1e-3)


def test_gap_buckets_are_monotone() -> None:
    b = gap_bucket(torch.tensor([0.0, 30.0, 60.0, 3600.0, 86400.0, 1e9]))
    assert b.tolist() == sorted(b.tolist()) and b[0] == 0 and b[-1] <= 23


def test_a_tiny_batch_is_overfit() -> None:
    """Eight persons, each with its own three items: after training, each person's top-3 are its items."""
    n = 8
    items = np.zeros((n, 4), dtype=np.int64)
    bags = np.zeros((n, CONFIG.n_items), dtype=np.float32)
    for p in range(n):
        own = [3 * p % CONFIG.n_items, (3 * p + 1) % CONFIG.n_items, (3 * p + 2) % CONFIG.n_items]
        items[p, :3] = [i + 2 for i in own]
        bags[p, own] = 1
    inputs = {
        "items": items,
        "actions": np.where(items > 0, 1, 0),
        "platforms": np.where(items > 0, 2, 0),
        "gaps": np.zeros((n, 4), dtype=np.float32),
    }
    targets = [set(np.flatnonzero(b)) for b in bags]
    model, history = fit(
        CONFIG,
        inputs,
        bags,
        np.array([], dtype=np.int64),
        [],
        TrainConfig(epochs=300, batch_size=8, lr=1e-2, beta_max=0.0, patience=300),
    )
    logits, _, _ = infer(model, inputs)
    top3 = np.argsort(-logits, axis=1)[:, :3]
    assert all(set(row) == t for row, t in zip(top3, targets, strict=True))
    # the best a multinomial can do on a bag of 3 items is 1/3 each: -log p(x|z) = 3 ln 3
    assert history.epochs[-1]["nll"] == pytest.approx(3 * math.log(3), abs=0.05)


def test_target_weights_keep_other_items_in_the_input_and_out_of_the_reconstruction() -> None:
    """Items 0-14 on the target platform, 15-29 on another; each person has three of each. With
    the other platform's weight at 0, the model learns each person's three target items (its
    top-3, nll 3 ln 3) and ranks every other-platform item below them, though it sees them."""
    n = 5
    items = np.zeros((n, 6), dtype=np.int64)
    bags = np.zeros((n, CONFIG.n_items), dtype=np.float32)
    for p in range(n):
        own = [3 * p, 3 * p + 1, 3 * p + 2, 15 + 3 * p, 16 + 3 * p, 17 + 3 * p]
        items[p] = [i + 2 for i in own]
        bags[p, own] = 1
    inputs = {
        "items": items,
        "actions": np.ones_like(items),
        "platforms": np.where(items < 17, 2, 3),
        "gaps": np.zeros((n, 6), dtype=np.float32),
    }
    weights = np.r_[np.ones(15), np.zeros(15)].astype(np.float32)
    config = TrainConfig(epochs=300, batch_size=5, lr=1e-2, beta_max=0.0, patience=300)
    model, history = fit(CONFIG, inputs, bags, np.array([], dtype=np.int64), [], config, target_weights=weights)
    logits, _, _ = infer(model, inputs)
    for p in range(n):
        target = logits[p, 3 * p : 3 * p + 3]
        assert set(np.argsort(-logits[p])[:3]) == {3 * p, 3 * p + 1, 3 * p + 2}
        assert target.min() > logits[p, 15:].max()
    assert history.epochs[-1]["nll"] == pytest.approx(3 * math.log(3), abs=0.05)
    # unweighted, the same data is a bag of six items per person
    _, unweighted = fit(CONFIG, inputs, bags, np.array([], dtype=np.int64), [], config)
    assert unweighted.epochs[-1]["nll"] == pytest.approx(6 * math.log(6), abs=0.05)


def _two_platforms(n: int = 12) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Persons with events on platform 2 (items 0-14) and 3 (items 15-29); the encoder-index
    mask of platform 2's items."""
    rng = np.random.default_rng(0)
    items = rng.integers(2, CONFIG.n_items + 2, (n, 6))
    items[0, 4:] = PAD
    platforms = np.where(items == PAD, PAD, np.where(items < 17, 2, 3))
    bags = np.zeros((n, CONFIG.n_items), np.float32)
    for r, row in enumerate(items):
        bags[r, row[row != PAD] - 2] = 1
    bag = np.where(items == PAD, PAD, items)
    inputs = {
        "items": items,
        "actions": np.where(items == PAD, PAD, 1),
        "platforms": platforms,
        "gaps": np.zeros((n, 6), np.float32),
        "bag": bag,
    }
    on_platform = np.r_[[True, True], np.arange(CONFIG.n_items) < 15]
    return inputs, bags, on_platform


def test_platform_dropout_hides_the_other_platforms_from_the_drawn_persons() -> None:
    inputs, _, on_platform = _two_platforms()
    before = {k: v.copy() for k, v in inputs.items()}
    rng = np.random.default_rng(0)
    every = PlatformDropout(2, on_platform, share=1.0).apply(inputs, rng)
    kept = inputs["platforms"] == 2
    assert np.array_equal(every["items"], np.where(kept, inputs["items"], PAD))
    assert np.array_equal(every["bag"], np.where(on_platform[inputs["bag"]], inputs["bag"], PAD))
    assert all(np.array_equal(before[k], inputs[k]) for k in inputs)  # a copy, the input untouched
    none = PlatformDropout(2, on_platform, share=0.0).apply(inputs, rng)
    assert all(np.array_equal(none[k], inputs[k]) for k in inputs)
    half = PlatformDropout(2, on_platform, share=0.5).apply(inputs, rng)
    hidden = (half["items"] != inputs["items"]).any(axis=1)
    assert 0 < hidden.sum() < len(hidden)


def test_training_with_every_person_hidden_is_training_on_the_target_platform_alone() -> None:
    """Platform dropout of share 1 trains exactly the model that the inputs without the other
    platform train (the same random draws otherwise): fit applies it to every batch."""
    inputs, bags, on_platform = _two_platforms()
    config = TrainConfig(epochs=3, batch_size=4)
    none = np.array([], dtype=np.int64)  # no validation: each keeps its last state
    dropped = fit(CONFIG, inputs, bags, none, [], config, platform_dropout=PlatformDropout(2, on_platform, 1.0))[0]
    alone = PlatformDropout(2, on_platform, 1.0).apply(inputs, np.random.default_rng(0))
    reference = fit(CONFIG, alone, bags, none, [], config)[0]
    plain = fit(CONFIG, inputs, bags, none, [], config)[0]
    pairs = list(
        zip(dropped.state_dict().values(), reference.state_dict().values(), plain.state_dict().values(), strict=True)
    )
    assert all(torch.equal(a, b) for a, b, _ in pairs)
    assert not all(torch.equal(a, c) for a, _, c in pairs)


@pytest.mark.parametrize("seed", [0, 1])
def test_training_is_deterministic(seed: int) -> None:
    inputs = {
        "items": np.array([[2, 3, 0], [4, 5, 6]]),
        "actions": np.array([[1, 1, 0], [1, 2, 1]]),
        "platforms": np.array([[2, 2, 0], [2, 3, 3]]),
        "gaps": np.zeros((2, 3), np.float32),
    }
    bags = np.zeros((2, CONFIG.n_items), np.float32)
    bags[0, [0, 1]] = bags[1, [2, 3, 4]] = 1
    runs = [fit(CONFIG, inputs, bags, np.arange(2), [{0}, {2}], TrainConfig(epochs=3, seed=seed))[0] for _ in range(2)]
    assert all(
        torch.equal(a, b) for a, b in zip(runs[0].state_dict().values(), runs[1].state_dict().values(), strict=True)
    )


def test_bag_branch_sees_every_seen_item_as_a_set() -> None:
    """The bag branch: its input order does not matter, padding and unknown items add nothing,
    and an item beyond the sequence changes the posterior (the sequence alone cannot see it)."""
    torch.manual_seed(0)
    model = AttentionVAE(replace(CONFIG, d_bag=16, bag_dropout=0.0)).eval()
    items, actions, platforms, gaps = _batch(b=2, t=6)
    bag = torch.tensor([[5, 9, 12, 0, 0], [7, 3, 20, 21, 0]])
    mu, _, _ = model.encode(items, actions, platforms, gaps, bag)
    shuffled = torch.tensor([[12, 5, 9, 0, 0], [21, 20, 7, 3, 0]])
    assert torch.allclose(mu, model.encode(items, actions, platforms, gaps, shuffled)[0], atol=1e-5)
    padded = torch.tensor([[5, 9, 12, 0, 1, 0, 0], [7, 3, 20, 21, 1, 0, 0]])  # 1 = unknown item
    assert torch.allclose(mu, model.encode(items, actions, platforms, gaps, padded)[0], atol=1e-5)
    more = torch.tensor([[5, 9, 12, 30, 0], [7, 3, 20, 21, 0]])
    changed = model.encode(items, actions, platforms, gaps, more)[0]
    assert not torch.allclose(mu[0], changed[0], atol=1e-4) and torch.allclose(mu[1], changed[1], atol=1e-6)


@pytest.mark.parametrize("n", [40, 400])
def test_beta_reaches_its_maximum_after_the_anneal_epochs_whatever_the_data_size(n: int) -> None:
    """beta grows per step over ``anneal_epochs`` epochs and reaches ``beta_max`` in the third
    epoch, on 40 persons (4 steps per epoch) as on 400 (40 steps): a fixed step count could not
    do both."""
    rng = np.random.default_rng(0)
    items = rng.integers(2, CONFIG.n_items + 2, (n, 4))
    inputs = {
        "items": items,
        "actions": np.ones_like(items),
        "platforms": np.full_like(items, 2),
        "gaps": np.zeros((n, 4), np.float32),
    }
    bags = np.zeros((n, CONFIG.n_items), np.float32)
    np.put_along_axis(bags, items - 2, 1.0, axis=1)
    config = TrainConfig(epochs=3, batch_size=10, beta_max=0.8, anneal_epochs=2.0)
    _, history = fit(CONFIG, inputs, bags, np.array([], dtype=np.int64), [], config)
    betas = [e["beta"] for e in history.epochs]  # the weight of each epoch's last step
    steps = n // 10  # per epoch; the anneal takes 2 * steps, the last step of epoch e is (e + 1) * steps - 1
    assert betas[0] == pytest.approx(0.8 * (steps - 1) / (2 * steps))
    assert betas[1] == pytest.approx(0.8 * (2 * steps - 1) / (2 * steps))
    assert betas[2] == pytest.approx(0.8)


def _stock_and_ours(p: float) -> tuple[torch.nn.TransformerEncoderLayer, EncoderLayer]:
    torch.manual_seed(3)
    stock = torch.nn.TransformerEncoderLayer(16, 2, 32, p, batch_first=True, norm_first=True)
    ours = EncoderLayer(16, 2, 32, p)
    ours.load_state_dict(stock.state_dict())  # the same parameters under the same names
    return stock, ours


@pytest.mark.parametrize("training", [True, False])
def test_encoder_layer_computes_torchs_layer(training: bool) -> None:
    """Without dropout, the layer's written-out training path is torch's layer (outputs and
    gradients, padding masked); out of training it is torch's layer itself, bit for bit."""
    stock, ours = _stock_and_ours(0.0)
    x = torch.randn(5, 7, 16, generator=torch.Generator().manual_seed(1))
    padding = torch.zeros(5, 7, dtype=torch.bool)
    padding[0, 2:] = True
    padding[3, 5:] = True
    outputs, grads = [], []
    for layer in (stock, ours):
        layer.train(training)
        with torch.set_grad_enabled(training):
            x_in = x.clone().requires_grad_(training)
            out = layer(x_in, src_key_padding_mask=padding)
            outputs.append(out.detach())
            if training:
                (out * torch.arange(out.numel()).view_as(out).sin()).sum().backward()
                grads.append([x_in.grad] + [p.grad for p in layer.parameters()])
    if training:
        torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-6)
        for ours_grad, stock_grad in zip(grads[1], grads[0], strict=True):
            torch.testing.assert_close(ours_grad, stock_grad, rtol=1e-4, atol=1e-6)
    else:
        assert torch.equal(outputs[1], outputs[0])


def test_dropout_keeps_one_minus_p_scaled_and_follows_torchs_seed() -> None:
    x = torch.ones(1000, 1000, requires_grad=True)
    torch.manual_seed(0)
    y = dropout(x, 0.3)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.002  # 1M draws: the standard error is 0.00046
    assert torch.equal(y[kept], torch.full((int(kept.sum()),), np.float32(1 / 0.7)))
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # the gradient is the mask
    torch.manual_seed(0)
    assert torch.equal(dropout(x, 0.3), y)  # torch's seed decides the mask
    assert not torch.equal(dropout(x, 0.3), y)
    assert torch.equal(dropout(x, 0.0), x) and torch.equal(dropout(x, 1.0), torch.zeros_like(x))


def test_the_model_uses_the_fast_dropouts_and_keeps_torchs_state_dict_names() -> None:
    model = AttentionVAE(replace(CONFIG, dropout=0.2))
    stock = torch.nn.TransformerEncoderLayer(16, 2, 32, 0.2, batch_first=True, norm_first=True)
    layer = model.encoder.layers[0]
    assert isinstance(layer, EncoderLayer)
    assert {n for n, _ in layer.named_parameters()} == {n for n, _ in stock.named_parameters()}
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(isinstance(m, Dropout) for m in dropouts)
    assert layer.self_attn.dropout == 0.2  # the attention weights' dropout, applied by EncoderLayer


def test_encoder_layer_drops_attention_weights_while_training() -> None:
    _, ours = _stock_and_ours(0.5)
    for module in (ours.dropout, ours.dropout1, ours.dropout2):
        module.p = 0.0  # only the attention weights' dropout is left
    x = torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(2))
    ours.train()
    dropped = ours(x)
    ours.self_attn.dropout = 0.0
    assert not torch.allclose(ours(x), dropped)


def test_infer_in_length_order_gives_each_persons_own_outputs() -> None:
    """Batches of persons sorted by length and cut to their longest sequence give every person
    (in the input order) what the module gives that person alone."""
    torch.manual_seed(0)
    model = AttentionVAE(replace(CONFIG, d_bag=8)).eval()
    g = torch.Generator().manual_seed(5)
    b, t = 23, 9
    lengths = torch.randint(0, t + 1, (b,), generator=g)
    items = torch.randint(2, CONFIG.n_items + 2, (b, t), generator=g)
    items[torch.arange(t)[None, :] >= lengths[:, None]] = PAD
    inputs = {
        "items": items.numpy(),
        "actions": torch.randint(1, 11, (b, t), generator=g).numpy(),
        "platforms": torch.randint(2, 5, (b, t), generator=g).numpy(),
        "gaps": (torch.rand(b, t, generator=g) * 1e5).numpy(),
        "bag": items.numpy(),
    }
    logits, mu, weights = infer(model, inputs, batch_size=4)
    assert (weights[inputs["items"] == PAD] == 0).all()
    for r in range(b):
        alone = infer(model, {k: v[r : r + 1] for k, v in inputs.items()})
        np.testing.assert_allclose(logits[r], alone[0][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(mu[r], alone[1][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(weights[r], alone[2][0], rtol=1e-5, atol=1e-6)
