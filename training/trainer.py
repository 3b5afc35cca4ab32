"""Training loop of the attention-VAE: beta annealing, early stopping on validation NDCG@20."""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from training.metrics import ndcg_at_k, top_k
from training.vae import PAD, AttentionVAE, VAEConfig, vae_loss

log = logging.getLogger(__name__)
INPUTS = ("items", "actions", "platforms", "gaps", "bag")  # "bag" is optional


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 30
    batch_size: int | None = None  # default: 256, smaller for small data (at least ~20 steps per epoch)
    lr: float = 3e-3
    weight_decay: float = 0.0
    beta_max: float = 1.0
    # Epochs for beta to grow linearly (per step) from 0 to beta_max. Counted in epochs, not
    # steps, so that the KL term weighs the same on 2,000 persons as on 200,000: a fixed step
    # count left beta near 0 on small data, where the model then overfits within 2 epochs.
    anneal_epochs: float = 10.0
    patience: int = 8  # epochs without a better validation NDCG@20 before stopping
    seed: int = 0
    threads: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class History:
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best_ndcg20: float = float("-inf")
    seconds: float = 0.0

    @property
    def seconds_per_epoch(self) -> float:
        return self.seconds / max(1, len(self.epochs))


@dataclass(frozen=True)
class PlatformDropout:
    """While training, hide every event and bag item of the platforms other than ``platform``
    (its encoder index) from a ``share`` of the persons in each batch: the encoder learns to
    read the target platform's own events instead of leaning on the others, which can
    outnumber them (a person with 3 books and 200 records)."""

    platform: int
    on_platform: np.ndarray  # (n_items + 2,) bool per encoder index (pad and unknown: True)
    share: float = 0.5

    def apply(self, batch: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """``batch`` with the drawn persons' other-platform entries set to PAD (a copy)."""
        rows = rng.random(len(batch["items"])) < self.share
        out = dict(batch)
        off = rows[:, None] & (batch["platforms"] != self.platform) & (batch["items"] != PAD)
        out["items"] = np.where(off, PAD, batch["items"])
        if "bag" in batch:
            out["bag"] = np.where(rows[:, None] & ~self.on_platform[batch["bag"]], PAD, batch["bag"])
        return out


def _tensors(inputs: dict[str, np.ndarray], rows: np.ndarray | None = None) -> list[torch.Tensor]:
    return [torch.from_numpy(inputs[k] if rows is None else inputs[k][rows]) for k in INPUTS if k in inputs]


@torch.inference_mode()
def infer(
    model: AttentionVAE, inputs: dict[str, np.ndarray], batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits (B, n_items), latent means (B, L) and attention weights (B, T), in eval mode."""
    if model.training:
        model.eval()
    n = len(inputs["items"])
    if 0 < n <= batch_size:  # one batch (the service: one person): no slicing, no concatenation
        mu, _, w = model.encode(*_tensors(inputs))
        return model.decode(mu).numpy(), mu.numpy(), w.numpy()
    if n == 0:
        d = model.config
        return np.zeros((0, d.n_items), np.float32), np.zeros((0, d.d_latent), np.float32), np.zeros((0, 0), np.float32)
    # Persons in order of sequence length, each batch cut to its longest sequence: padding is
    # masked out of attention and pooling (a padded slot's weight is exactly 0), and attention's
    # cost grows with the square of the length. On the default synthetic data (sequences 42%
    # filled on average) validation took about a third less time.
    lengths = (inputs["items"] != PAD).sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    t = inputs["items"].shape[1]
    logits = np.empty((n, model.config.n_items), np.float32)
    mus = np.empty((n, model.config.d_latent), np.float32)
    weights = np.zeros((n, t), np.float32)
    for lo in range(0, n, batch_size):
        rows = order[lo : lo + batch_size]
        cut = max(1, int(lengths[rows].max()))
        batch = [x[:, :cut] if name != "bag" else x for name, x in zip(INPUTS, _tensors(inputs, rows), strict=False)]
        mu, _, w = model.encode(*batch)
        logits[rows] = model.decode(mu).numpy()
        mus[rows] = mu.numpy()
        weights[rows, :cut] = w.numpy()
    return logits, mus, weights


def validation_ndcg(
    model: AttentionVAE, inputs: dict[str, np.ndarray], seen: np.ndarray, targets: list[set[int]]
) -> float:
    logits, _, _ = infer(model, inputs)
    logits[seen > 0] = -np.inf
    ranked = top_k(logits, 20)
    has = np.array([bool(t) for t in targets])
    return float(ndcg_at_k(ranked, targets, 20)[has].mean()) if has.any() else 0.0


def fit(
    vae_config: VAEConfig,
    inputs: dict[str, np.ndarray],
    bags: np.ndarray,
    valid_rows: np.ndarray,
    valid_targets: list[set[int]],
    config: TrainConfig | None = None,
    progress: bool = False,
    on_epoch: Any = None,
    target_weights: np.ndarray | None = None,
    platform_dropout: PlatformDropout | None = None,
) -> tuple[AttentionVAE, History]:
    """Train on every person's bag; validate on ``valid_rows`` (their held-out items) for early
    stopping. Without validation rows, train for ``config.epochs`` and keep the last state.

    ``target_weights`` (n_items,), when given, scales each item's count in the reconstruction
    term (the encoder still sees every item): with a target platform, the other platforms'
    items can inform the latent without competing with the target's items for it;
    ``platform_dropout`` hides them from some persons' input (:class:`PlatformDropout`)."""
    config = config or TrainConfig()
    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    rng = np.random.default_rng(config.seed)
    hide = np.random.default_rng([config.seed, 1])  # platform dropout's own draws
    model = AttentionVAE(vae_config)
    optimiser = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    valid_inputs = {k: v[valid_rows] for k, v in inputs.items()}
    valid_seen = bags[valid_rows]
    history = History()
    best_state: dict[str, Any] | None = copy.deepcopy(model.state_dict())
    step, stale = 0, 0
    started = time.perf_counter()
    n = len(bags)
    batch_size = config.batch_size or int(min(256, max(32, n // 20)))
    anneal_steps = max(1.0, config.anneal_epochs * math.ceil(n / batch_size))
    columns = [
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} epochs"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, disable=not progress, transient=True) as bar:
        task = bar.add_task("training the attention-VAE", total=config.epochs)
        for epoch in range(config.epochs):
            model.train()
            order = rng.permutation(n)
            totals = np.zeros(3)
            for lo in range(0, n, batch_size):
                rows = order[lo : lo + batch_size]
                beta = min(config.beta_max, config.beta_max * step / anneal_steps)
                batch = {k: v[rows] for k, v in inputs.items()}
                if platform_dropout is not None:
                    batch = platform_dropout.apply(batch, hide)
                logits, mu, logvar = model(*_tensors(batch))
                x = bags[rows] if target_weights is None else bags[rows] * target_weights
                loss, nll, kl = vae_loss(logits, torch.from_numpy(x), mu, logvar, beta)
                optimiser.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimiser.step()
                totals += np.array([loss.item(), nll.item(), kl.item()]) * len(rows)
                step += 1
            ndcg = validation_ndcg(model, valid_inputs, valid_seen, valid_targets) if len(valid_rows) else float("nan")
            record = {
                "epoch": epoch,
                "loss": totals[0] / n,
                "nll": totals[1] / n,
                "kl": totals[2] / n,
                "beta": beta,
                "valid_ndcg20": ndcg,
                "seconds": time.perf_counter() - started,
            }
            history.epochs.append(record)
            if on_epoch is not None:
                on_epoch(record)
            if not len(valid_rows):
                history.best_epoch, best_state = epoch, None
            elif ndcg > history.best_ndcg20 + 1e-6:
                history.best_ndcg20, history.best_epoch, stale = ndcg, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
            bar.update(task, advance=1, description=f"training the attention-VAE (valid NDCG@20 {ndcg:.4f})")
            if stale >= config.patience:
                break
    history.seconds = time.perf_counter() - started
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    log.info(
        "VAE: best valid NDCG@20 %.4f at epoch %d (%.1fs)", history.best_ndcg20, history.best_epoch, history.seconds
    )
    return model, history
