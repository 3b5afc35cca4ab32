"""The deployable recommender: attention-VAE candidates, re-ranked by the XGBoost ensemble.

One object serves offline evaluation and the online service (same code, same features):
:meth:`Recommender.candidates` encodes sequences and proposes the VAE's top-N unseen items
(of a target platform when asked), :meth:`Recommender.rank` re-ranks them with the booster
from named feature columns. :meth:`save`/:meth:`load` keep it in one folder (the MLflow
model's artifacts).
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from numpy.typing import NDArray

from pipelines import native
from training import ranker
from training.data import Vocab
from training.metrics import top_k
from training.trainer import infer
from training.vae import PAD, UNKNOWN, AttentionVAE, VAEConfig
from training.vae_numpy import NumpyVAE

FIRST_ITEM = UNKNOWN + 1  # encoder index of decoder item 0

_FEW = 8  # up to this many persons at once, candidates come from per-row shortcuts
RECENT = 10  # the last events whose items the recency-weighted item-item score sums
RECENT_DECAY = 0.7  # weight of an event relative to the next one (the most recent weighs 1)


@dataclass
class Candidates:
    items: NDArray[np.int64]  # (B, N) decoder indices, VAE order
    vae_score: NDArray[np.float32]  # (B, N)
    item_item: NDArray[np.float32]  # (B, N)
    vae_rank: NDArray[np.int64]  # (B, N) rank among all allowed items (1 = best)
    item_item_rank: NDArray[np.int64]  # (B, N)
    mu: NDArray[np.float32]  # (B, L) interest embeddings
    attention: NDArray[np.float32]  # (B, T) pooling weights over the encoded events
    encoded_items: NDArray[np.int64]  # (B, T) encoder item indices (0 = pad)
    recent: NDArray[np.float32] | None = None  # (B, N) latest events' item-item scores; None: time unknown


def _ranks(scores: NDArray[np.float32]) -> NDArray[np.int64]:
    """Rank of every item in its row (1 = highest score; ties by index)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, scores.shape[1] + 1)[None, :].repeat(len(scores), 0), axis=1)
    return ranks


def _ranks_at(row: NDArray[Any], at: NDArray[np.int64], ordered: NDArray[Any] | None = None) -> NDArray[np.int64]:
    """``_ranks`` of one row, at the positions ``at`` only: 1 + the items with a higher score +
    the items with an equal score and a lower index (a sort and a binary search, no argsort).
    ``ordered``: the row sorted, when already at hand. A float32 row without NaN goes to the C
    kernel (:mod:`pipelines.native`) where it is built: the same ranks without numpy's per-call
    costs, which over a few hundred positions are most of the time."""
    ordered = np.sort(row) if ordered is None else ordered
    c = native.kernels()
    if (
        c is not None
        and row.dtype == np.float32
        and ordered.dtype == np.float32
        and len(row)
        and not np.isnan(ordered[-1])  # NaN sorts last
    ):
        ranks = c.ranks_at(np.ascontiguousarray(row), np.ascontiguousarray(ordered), np.ascontiguousarray(at, np.int64))
        return np.frombuffer(ranks, np.int64)
    values = row[at]
    above = np.searchsorted(ordered, values, side="right")
    ranks = (len(row) - above + 1).astype(np.int64)
    tied = above - np.searchsorted(ordered, values, side="left") > 1
    if tied.any():
        for value in np.unique(values[tied]):
            before = np.cumsum(row == value)
            pick = tied & (values == value)
            ranks[pick] += before[at[pick]] - 1
    return ranks


def _best(row: NDArray[Any], k: int, ordered: NDArray[Any]) -> NDArray[np.int64]:
    """The positions whose ``_ranks`` in the row are at most ``k`` (unordered); ``ordered``:
    the row sorted."""
    if k >= len(row):
        return np.arange(len(row))
    threshold = ordered[len(row) - k]  # the k-th highest score
    above = np.flatnonzero(row > threshold)
    return np.concatenate([above, np.flatnonzero(row == threshold)[: k - len(above)]])


def _sum_rows(
    m: sp.csr_matrix, rows: NDArray[np.intp], weights: NDArray[np.float32] | None, out: NDArray[Any]
) -> NDArray[Any]:
    """``out`` set to the sum of ``m``'s ``rows`` (each times its weight, when given), added
    row after row in each row's stored order (``np.add.at`` adds in turn): what a sparse
    product with one row of weights computes, without building one. A float32 matrix with
    int32 indices goes to the C kernel (:mod:`pipelines.native`) where it is built: the same
    additions in the same order."""
    c = native.kernels()
    if (
        c is not None
        and m.dtype == np.float32
        and out.dtype == np.float32
        and out.flags.c_contiguous
        and m.indptr.dtype == np.int32
        and m.indices.dtype == np.int32
        and (weights is None or weights.dtype == np.float32)
    ):
        c.sum_rows(
            m.indptr,
            m.indices,
            m.data,
            np.ascontiguousarray(rows, dtype=np.int64),
            None if weights is None else np.ascontiguousarray(weights),
            out,
        )
        return out
    out[:] = 0
    if len(rows):
        starts, lengths = m.indptr[rows], m.indptr[rows + 1] - m.indptr[rows]
        # every stored position of those rows, row after row
        where = np.arange(lengths.sum()) + np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
        values = m.data[where] if weights is None else m.data[where] * np.repeat(weights, lengths)
        np.add.at(out, m.indices[where], values)
    return out


def _along(values: NDArray[Any], at: NDArray[np.int64]) -> NDArray[Any]:
    """``np.take_along_axis(values, at, axis=1)`` for 2-D arrays, without its per-call setup."""
    return values[np.arange(len(at))[:, None], at]  # type: ignore[no-any-return]


@functools.cache
def _recent_weights() -> NDArray[np.float32]:
    """The weight of the i-th newest event in :meth:`Recommender.recent_scores` (shared: read-only)."""
    weights = (RECENT_DECAY ** np.arange(RECENT)).astype(np.float32)
    weights.flags.writeable = False
    return weights


@dataclass
class Recommender:
    vae: AttentionVAE
    vocab: Vocab
    item_item: sp.csc_matrix
    popularity: NDArray[np.float64]
    item_latent: NDArray[np.float32]
    booster: Any | None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._numpy_vae = NumpyVAE(self.vae)  # the VAE's pass for a few persons (see encode)
        # Persons' bags (sparse rows) multiply it from the left: keep it row-major once.
        self.item_item = sp.csr_matrix(self.item_item)
        self.item_platform = np.asarray(self.vocab.item_platform, dtype=object)
        self.item_category = np.asarray(self.vocab.item_category, dtype=object)
        self.platform_masks = {p: self.item_platform == p for p in self.vocab.platforms}
        # Popularity rank of each item within its platform (1 = most popular).
        self.pop_rank = np.zeros(self.vocab.n_items, dtype=np.float32)
        for mask in self.platform_masks.values():
            idx = np.flatnonzero(mask)
            order = idx[np.argsort(-self.popularity[idx], kind="stable")]
            self.pop_rank[order] = np.arange(1, len(order) + 1)

    @property
    def sequence_length(self) -> int:
        return int(self.meta.get("sequence_length", 50))

    @property
    def n_candidates(self) -> int:
        return int(self.meta.get("n_candidates", 100))

    # -- candidates ------------------------------------------------------------------------
    def seen_matrix(self, seen: list[set[str]]) -> sp.csr_matrix:
        rows, cols = [], []
        for r, items in enumerate(seen):
            for item in items:
                j = self.vocab.item_index.get(item)
                if j is not None:
                    rows.append(r)
                    cols.append(j)
        data = np.ones(len(rows), dtype=np.float32)
        return sp.csr_matrix((data, (rows, cols)), shape=(len(seen), self.vocab.n_items))

    def encode(
        self, sequences: list[dict[str, Any] | None]
    ) -> tuple[NDArray[np.float32], NDArray[np.float32], NDArray[np.float32], NDArray[np.int64]]:
        """The VAE's logits (B, n_items), interest embeddings, attention weights and encoder
        item indices of ``sequences``. Up to ``_FEW`` persons at once (a request, or the
        service's requests in flight), a person at a time in numpy (:mod:`training.vae_numpy`):
        each row is bitwise what encoding that person alone gives, in a fraction of the time the
        torch module takes for so few; more persons go through the torch module in batches."""
        inputs = self.vocab.encode_sequences(sequences, self.sequence_length)
        if not 0 < len(sequences) <= _FEW:
            logits, mu, attention = infer(self.vae, inputs)
            return logits, mu, attention, inputs["items"]
        logits, mu, attention = self._numpy_vae(inputs)
        return logits, mu, attention, inputs["items"]

    def _scores(
        self,
        sequences: list[dict[str, Any] | None],
        seen: list[set[str]],
        platform: str | None,
        exclude_seen: bool,
        encoded: tuple[NDArray[Any], ...] | None = None,
    ) -> tuple[
        NDArray[np.float32],
        NDArray[np.float32],
        NDArray[np.bool_],
        NDArray[np.float32],
        NDArray[np.float32],
        NDArray[np.int64],
    ]:
        logits, mu, attention, encoded_items = encoded if encoded is not None else self.encode(sequences)
        blocked = np.zeros(logits.shape, dtype=bool)
        if len(seen) <= _FEW:
            # A few persons (the service): sum the item-item rows of their seen items directly,
            # in the order (ascending item, then the row's own order: np.add.at adds in turn)
            # and precision the sparse product would use.
            item_item = np.zeros(logits.shape, dtype=np.float32)
            m, index = self.item_item, self.vocab.item_index
            acc = self._accumulator()
            for r, items in enumerate(seen):
                rows = sorted({j for j in (index.get(i) for i in items) if j is not None})
                item_item[r] = _sum_rows(m, np.asarray(rows, dtype=np.intp), None, acc)
                if exclude_seen:
                    blocked[r, rows] = True
        else:
            x = self.seen_matrix(seen)
            item_item = np.asarray((x @ self.item_item).toarray(), dtype=np.float32)
            if exclude_seen:
                blocked |= x.toarray() > 0
        if platform is not None:
            mask = self.platform_masks.get(platform)
            blocked[:, ~(mask if mask is not None else self.vocab.platform_mask(platform))] = True
        return logits, item_item, blocked, mu, attention, encoded_items

    def candidates(
        self,
        sequences: list[dict[str, Any] | None],
        seen: list[set[str]],
        platform: str | None = None,
        n: int | None = None,
        exclude_seen: bool = True,
        items: NDArray[np.int64] | None = None,
        encoded: tuple[NDArray[Any], ...] | None = None,
    ) -> Candidates:
        """``n`` candidates per person: the union of the best unseen items (of the target
        ``platform``) by the VAE and by the item-item model, half from each where they differ;
        when time is known, also by the latest events' item-item scores (:meth:`recent_scores`),
        a third from each. Ordered by that merged priority (then VAE score). With ``items``
        (B, M), those items are the candidates instead (for scoring given items). ``encoded``:
        what :meth:`encode` gives for ``sequences``, when already at hand."""
        n = n or self.n_candidates
        logits, item_item, blocked, mu, attention, encoded = self._scores(
            sequences, seen, platform, exclude_seen, encoded
        )
        vae_masked = np.where(blocked, -np.inf, logits)
        ii_masked = np.where(blocked, -np.inf, item_item)
        recent = self.recent_scores(encoded)
        # The latest events' item-item scores are a third source of candidates (time known).
        recent_masked = None if recent is None or items is not None else np.where(blocked, -np.inf, recent)
        sources = 2 if recent_masked is None else 3
        share = max(1, n // sources)
        ratio = share / max(1, (n - share) / (sources - 1))
        if len(logits) > _FEW:  # batches (offline evaluation): every rank of every row at once
            vae_all, ii_all = _ranks(vae_masked), _ranks(ii_masked)
            if items is not None:
                cands = items
            else:
                priority = np.minimum(vae_all, ii_all * ratio).astype(np.float64)
                if recent_masked is not None:
                    priority = np.minimum(priority, _ranks(recent_masked) * ratio)
                priority += vae_all * 1e-6  # ties: the VAE decides
                priority[blocked] = np.inf
                allowed = int((~blocked).sum(axis=1).min()) if len(blocked) else 0
                cands = top_k(-priority, max(1, min(n, allowed))) if allowed else np.zeros((len(logits), 0), np.int64)
            vae_rank = np.take_along_axis(vae_all, cands, axis=1)
            ii_rank = np.take_along_axis(ii_all, cands, axis=1)
        elif items is not None:
            cands = items
            vae_rank = np.array([_ranks_at(v, c) for v, c in zip(vae_masked, cands, strict=True)], np.int64)
            ii_rank = np.array([_ranks_at(v, c) for v, c in zip(ii_masked, cands, strict=True)], np.int64)
        else:
            # The same choice as ranking every item, from the only items that can make it: an
            # item among the best k by priority is among the best k (+1) of the VAE or among
            # the best (k + 1) / ratio (+1) of the item-item model.
            allowed = int((~blocked).sum(axis=1).min()) if len(blocked) else 0
            k = max(1, min(n, allowed)) if allowed else 0
            rows_c, rows_v, rows_i = [], [], []
            for r in range(len(logits) if k else 0):
                vae_row, ii_row = vae_masked[r], ii_masked[r]
                vae_sorted, ii_sorted = np.sort(vae_row), np.sort(ii_row)
                reach = int(np.ceil((k + 1) / ratio)) + 1
                pool = np.union1d(_best(vae_row, k + 1, vae_sorted), _best(ii_row, reach, ii_sorted))
                if recent_masked is not None:
                    recent_row = recent_masked[r]
                    recent_sorted = np.sort(recent_row)
                    pool = np.union1d(pool, _best(recent_row, reach, recent_sorted))
                v, i = _ranks_at(vae_row, pool, vae_sorted), _ranks_at(ii_row, pool, ii_sorted)
                priority = np.minimum(v, i * ratio).astype(np.float64)
                if recent_masked is not None:
                    priority = np.minimum(priority, _ranks_at(recent_row, pool, recent_sorted) * ratio)
                priority += v * 1e-6  # ties: the VAE decides
                priority[blocked[r, pool]] = np.inf
                pick = np.lexsort((pool, priority))[:k]
                rows_c.append(pool[pick]), rows_v.append(v[pick]), rows_i.append(i[pick])
            shape = (len(logits), k)
            cands = np.array(rows_c, np.int64).reshape(shape)
            vae_rank = np.array(rows_v, np.int64).reshape(shape)
            ii_rank = np.array(rows_i, np.int64).reshape(shape)
        return Candidates(
            items=cands,
            vae_score=_along(logits, cands),
            item_item=_along(item_item, cands),
            vae_rank=vae_rank,
            item_item_rank=ii_rank,
            mu=mu,
            attention=attention,
            encoded_items=encoded,
            recent=None if recent is None else _along(recent, cands),
        )

    def candidates_each(
        self,
        sequences: list[dict[str, Any] | None],
        seen: list[set[str]],
        platforms: list[str | None],
        exclude_seen: list[bool],
    ) -> list[Candidates]:
        """:meth:`candidates` of each person alone (its own target platform, its own number of
        allowed items), from one VAE pass over all of them: the same as one call per person."""
        out: list[Candidates] = []
        for lo in range(0, len(sequences), _FEW):
            encoded = self.encode(sequences[lo : lo + _FEW])
            for r in range(len(encoded[0])):
                one = tuple(part[r : r + 1] for part in encoded)
                b = lo + r
                out.append(
                    self.candidates([sequences[b]], [seen[b]], platforms[b], exclude_seen=exclude_seen[b], encoded=one)
                )
        return out

    def _accumulator(self) -> NDArray[Any]:
        """A row of item-item sums (:func:`_sum_rows`), in the precision a sparse product uses."""
        return np.zeros(self.item_item.shape[1], dtype=np.result_type(np.float32, self.item_item.dtype))

    def recent_scores(self, encoded: NDArray[np.int64]) -> NDArray[np.float32] | None:
        """Every item's recency-weighted item-item score (B, n_items) from each person's last
        :data:`RECENT` events (encoder indices, oldest first), or None when time is unknown.
        Each person's row comes from its own events alone (see :meth:`recent_item_item`)."""
        if not self.meta.get("time_known", True):
            return None
        lengths = (encoded != PAD).sum(axis=1)
        out = np.zeros((len(encoded), self.vocab.n_items), np.float32)
        acc = self._accumulator()
        decay = _recent_weights()
        for r in range(len(encoded)):
            latest = encoded[r, max(0, lengths[r] - RECENT) : lengths[r]][::-1]  # newest first
            known = np.flatnonzero(latest >= FIRST_ITEM)
            out[r] = _sum_rows(self.item_item, (latest[known] - FIRST_ITEM).astype(np.intp), decay[known], acc)
        return out

    # -- ranking ---------------------------------------------------------------------------
    def recent_item_item(self, cands: Candidates) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """Item-item scores (B, N) of the candidates from the person's latest events only: the
        recency-weighted sum of :meth:`recent_scores` (as :meth:`candidates` keeps it), and
        from the last event's item alone. The bag's item-item score weighs a person's whole
        history alike; what they did last says most about what they do next when time is known
        (a session's items are neighbours); without time (one timestamp for every event) both
        are missing. Each person's scores come from its own events alone, so a person gets the
        same scores in any batch."""
        b, n = cands.items.shape
        if cands.recent is None:  # time unknown (see recent_scores): the order means nothing
            return np.full((b, n), np.nan, np.float32), np.full((b, n), np.nan, np.float32)
        encoded = cands.encoded_items  # (B, T) encoder indices, oldest first, padding after
        last = encoded[np.arange(b), np.maximum((encoded != PAD).sum(axis=1) - 1, 0)]
        from_last = np.zeros((b, n), np.float32)
        acc = self._accumulator()
        for r in np.flatnonzero(last >= FIRST_ITEM):  # the last event's item is known to the model
            from_last[r] = _sum_rows(self.item_item, last[r : r + 1] - FIRST_ITEM, None, acc)[cands.items[r]]
        return cands.recent, from_last

    def signal_columns(self, cands: Candidates, last_platform: list[str | None]) -> dict[str, NDArray[Any]]:
        """The base recommenders' signals per (person, candidate) pair, flattened row-major."""
        b, n = cands.items.shape
        recent, from_last = self.recent_item_item(cands)
        flat = cands.items.ravel()
        mu = cands.mu / np.maximum(np.linalg.norm(cands.mu, axis=1, keepdims=True), 1e-9)
        sim = np.einsum("bl,bnl->bn", mu, self.item_latent[cands.items]) if n else np.zeros((b, 0))
        platforms = self.item_platform[flat] if n else np.array([], dtype=object)
        return {
            "vae_score": cands.vae_score.ravel(),
            "vae_rank": cands.vae_rank.ravel(),
            "vae_sim": sim.ravel(),
            "item_item_score": cands.item_item.ravel(),
            "item_item_rank": cands.item_item_rank.ravel(),
            "recent_item_item": recent.ravel(),
            "last_item_item": from_last.ravel(),
            "pop_train": self.popularity[flat],
            "pop_rank_platform": self.pop_rank[flat],
            "same_platform_as_last": (platforms == np.repeat(np.asarray(last_platform, dtype=object), n)).astype(
                np.float32
            ),
            "_platform": platforms,
            "_category": self.item_category[flat] if n else np.array([], dtype=object),
        }

    def feature_matrix(self, signals: dict[str, NDArray[Any]], feast: dict[str, Any]) -> NDArray[np.float32]:
        """Signals plus the ``ranker_v1`` features of each pair (a frame or dict of columns)."""
        columns: dict[str, Any] = dict(signals)
        for name in ranker.FEAST_PERSON + ranker.FEAST_ACTIVITY + ranker.FEAST_ITEM:
            if name in feast:
                columns[name] = feast[name]
        columns["cat_affinity"] = ranker.lookup_share(
            feast["top_categories"], feast["category_affinity"], signals["_category"]
        )
        columns["platform_share"] = ranker.lookup_share(
            feast["platform_names"], feast["platform_shares"], signals["_platform"]
        )
        return ranker.assemble(columns)

    def rank(
        self, cands: Candidates, x: NDArray[np.float32], booster: Any | None = None, meta: dict[str, Any] | None = None
    ) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        """Re-ranked candidate order per person and the calibrated probabilities (B, N), by
        this model's booster or by another ``booster`` with its ``meta`` (e.g. another seed's)."""
        b, n = cands.items.shape
        booster, meta = (self.booster, self.meta) if booster is None else (booster, meta or {})
        if booster is None or n == 0:
            return np.tile(np.arange(n), (b, 1)), np.zeros((b, n), np.float32)
        return self._order(ranker.probability(booster, x, meta), b, n)

    @staticmethod
    def _order(p: NDArray[np.float32], b: int, n: int) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
        p = p.reshape(b, n)
        # Ties (equal probabilities) keep the VAE's order.
        order = np.lexsort((np.tile(np.arange(n), (b, 1)), -p), axis=1)
        return order, p

    def rank_each(
        self, cands: list[Candidates], xs: list[NDArray[np.float32]]
    ) -> list[tuple[NDArray[np.int64], NDArray[np.float32]]]:
        """:meth:`rank` of each person's candidates alone, from one booster call for all of
        them (the trees score each row on its own; the prior's blend, a matrix product whose
        rounding depends on the rows around, is computed per person as alone)."""
        if self.booster is None or len(cands) < 2:
            return [self.rank(c, x) for c, x in zip(cands, xs, strict=True)]
        prior = self.meta.get("prior")
        margins = [ranker.prior_margin(x, prior) for x in xs]
        margin = None if margins[0] is None else np.concatenate(margins)  # type: ignore[arg-type]
        p = ranker.probability(self.booster, np.concatenate(xs), self.meta, margin)
        out, lo = [], 0
        for x in xs:
            out.append(self._order(p[lo : lo + len(x)], 1, len(x)))
            lo += len(x)
        return out

    def popular(self, platform: str | None, k: int, exclude: set[str] | None = None) -> list[tuple[str, float]]:
        """Most popular items (of a platform), for cold starts."""
        mask = self.vocab.platform_mask(platform)
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(-self.popularity[idx], kind="stable")]
        total = max(1.0, float(self.popularity[idx].sum()))
        out = []
        for j in idx:
            item = self.vocab.items[j]
            if exclude and item in exclude:
                continue
            out.append((item, float(self.popularity[j] / total)))
            if len(out) == k:
                break
        return out

    # -- persistence ----------------------------------------------------------------------
    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"config": self.vae.config.to_dict(), "state": self.vae.state_dict()}, folder / "vae.pt")
        (folder / "vocab.json").write_text(json.dumps(self.vocab.to_dict()))
        sp.save_npz(folder / "item_item.npz", self.item_item.tocsc())
        np.savez(folder / "arrays.npz", popularity=self.popularity, item_latent=self.item_latent)
        if self.booster is not None:
            self.booster.save_model(str(folder / "ranker.ubj"))
        (folder / "meta.json").write_text(json.dumps(self.meta, indent=2, default=str))
        return folder

    @classmethod
    def load(cls, folder: Path) -> Recommender:
        checkpoint = torch.load(folder / "vae.pt", map_location="cpu", weights_only=True)
        vae = AttentionVAE(VAEConfig(**checkpoint["config"]))
        vae.load_state_dict(checkpoint["state"])
        vae.eval()
        arrays = np.load(folder / "arrays.npz")
        booster = None
        if (folder / "ranker.ubj").exists():
            import xgboost as xgb

            booster = xgb.Booster()
            booster.load_model(str(folder / "ranker.ubj"))
            meta = json.loads((folder / "meta.json").read_text())
            if meta.get("best_iteration") is not None:
                booster.best_iteration = int(meta["best_iteration"])
        return cls(
            vae=vae,
            vocab=Vocab(**json.loads((folder / "vocab.json").read_text())),
            item_item=sp.load_npz(folder / "item_item.npz").tocsc(),
            popularity=arrays["popularity"],
            item_latent=arrays["item_latent"],
            booster=booster,
            meta=json.loads((folder / "meta.json").read_text()),
        )
