"""The numpy forward pass for a few persons (training/vae_numpy.py) against the torch module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import native_or_skip
from training import vae_numpy
from training.trainer import infer
from training.vae import GAP_BUCKETS, PAD, UNKNOWN, AttentionVAE, VAEConfig, gap_bucket
from training.vae_numpy import NumpyVAE, gap_buckets


def _model(seed: int, d_bag: int, n_layers: int) -> AttentionVAE:
    torch.manual_seed(seed)
    config = VAEConfig(
        n_items=40, n_actions=5, n_platforms=3, d_model=16, n_heads=4, n_layers=n_layers, d_latent=8, d_bag=d_bag
    )
    model = AttentionVAE(config)
    with torch.no_grad():  # trained weights are not near their initial values: move every one
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model.eval()


def _inputs(seed: int, b: int = 6, t: int = 9) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    items = rng.integers(UNKNOWN, 42, (b, t))  # unknown items among them
    lengths = rng.integers(1, t + 1, b)
    lengths[1], lengths[2] = 0, t  # a person with no event; one with a full sequence
    for r, n in enumerate(lengths):
        items[r, n:] = PAD
    actions = np.where(items != PAD, rng.integers(1, 6, (b, t)), PAD)
    platforms = np.where(items != PAD, rng.integers(1, 5, (b, t)), PAD)
    # Gaps across the buckets, a bucket's edges (60 s: one minute) and a clock that ran backwards.
    gaps = rng.choice([0.0, 59.0, 60.0, 61.0, 3600.0, 86400.0 * 40, -5.0, 1e9], (b, t)).astype(np.float32)
    bag = rng.integers(PAD, 42, (b, 12))  # pads, unknown items and repeats
    return {"items": items, "actions": actions, "platforms": platforms, "gaps": gaps, "bag": bag}


@pytest.fixture(params=["native", "numpy"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Each test runs on both paths: the C kernel (``vae_person``) and numpy."""
    if request.param == "native":
        native_or_skip()
    monkeypatch.setenv("XINTEREST_NATIVE", "1" if request.param == "native" else "0")
    return str(request.param)


@pytest.mark.parametrize(("d_bag", "n_layers"), [(12, 1), (0, 2)])
def test_the_numpy_pass_gives_the_torch_modules_outputs(path: str, d_bag: int, n_layers: int) -> None:
    for seed in range(3):
        model, inputs = _model(seed, d_bag, n_layers), _inputs(seed)
        if not d_bag:
            del inputs["bag"]
        expected = infer(model, inputs)
        for got, want in zip(NumpyVAE(model)(inputs), expected, strict=True):
            assert got.shape == want.shape and got.dtype == np.float32
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)


def test_a_person_gets_the_same_bits_in_any_batch(path: str) -> None:
    model, inputs = _model(0, 12, 1), _inputs(1)
    fast = NumpyVAE(model)
    together = fast(inputs)
    for r in range(len(inputs["items"])):
        alone = fast({k: v[r : r + 1] for k, v in inputs.items()})
        for part, whole in zip(alone, together, strict=True):
            np.testing.assert_array_equal(part[0], whole[r])


def test_gap_buckets_are_the_modules_at_every_edge() -> None:
    # Every bucket's lower edge (1 + minutes = 2**k) and the float32 values just around it,
    # integer seconds over a year, random gaps, and negative ones (a clock that ran backwards).
    edges = np.float32(60.0) * (np.float32(2.0) ** np.arange(GAP_BUCKETS + 2, dtype=np.float32) - 1)
    near = [np.nextafter(edges, np.float32(np.inf)), np.nextafter(edges, np.float32(-np.inf))]
    rng = np.random.default_rng(0)
    gaps = np.concatenate(
        [edges, *near, np.arange(0, 366 * 86400, 7, dtype=np.float32), rng.random(10**5).astype(np.float32) * 1e9]
    )
    gaps = np.concatenate([gaps, -gaps[:100]]).astype(np.float32)
    np.testing.assert_array_equal(gap_buckets(gaps), gap_bucket(torch.from_numpy(gaps)).numpy())


def test_the_kernel_and_numpy_agree_and_the_kernel_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    native = native_or_skip()
    model, inputs = _model(4, 12, 2), _inputs(4, b=9, t=30)
    fast = NumpyVAE(model)
    monkeypatch.setattr(vae_numpy, "kernels", lambda: None)
    by_numpy = fast(inputs)
    calls = []

    class Counting:  # the extension, counting the persons its kernel answers
        def vae_person(self, *args: object) -> None:
            calls.append(1)
            native.vae_person(*args)

    monkeypatch.setattr(vae_numpy, "kernels", Counting)
    by_kernel = fast(inputs)
    assert len(calls) == 9
    for got, want in zip(by_kernel, by_numpy, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5)  # float32 rounding, as against torch


def test_the_weights_are_held_once() -> None:
    """The numpy pass's arrays are views of the kernel's packed weights, with the module's values."""
    model = _model(2, 12, 2)
    fast = NumpyVAE(model)
    params = fast._packed[0]
    state = model.state_dict()
    for array, expected in [
        (fast.item, state["embed.item.weight"]),
        (fast.bag, state["bag.weight"]),
        (fast.logits, state["decoder.3.weight"].T),
        (fast.embed_norm[1], state["embed.norm.bias"]),
        (fast.layers[1].qkv, state["encoder.layers.1.self_attn.in_proj_weight"].T),
        (fast.layers[1].norm2[0], state["encoder.layers.1.norm2.weight"]),
    ]:
        assert array.base is params
        np.testing.assert_array_equal(array, expected.numpy())


def test_the_kernel_refuses_indices_outside_its_tables() -> None:
    from pipelines.native import kernels

    native_or_skip()
    fast = NumpyVAE(_model(0, 12, 1))
    params, layout, dims = fast._packed
    one = np.array([len(fast.item)], np.int64)  # one past the item table
    ok = np.array([2], np.int64)
    out = np.empty(fast.n_items, np.float32), np.empty(len(fast.mu_bias), np.float32), np.empty(1, np.float32)
    native = kernels()
    assert native is not None
    with pytest.raises(ValueError, match="do not fit"):
        native.vae_person(params, layout, dims, one, ok, ok, ok, ok, *out)
    with pytest.raises(ValueError, match="do not fit"):
        native.vae_person(params, layout, dims, ok, ok, ok, ok, one, *out)
    with pytest.raises(ValueError, match="do not fit"):  # an output of the wrong size
        native.vae_person(params, layout, dims, ok, ok, ok, ok, ok, out[0][:-1], out[1], out[2])
