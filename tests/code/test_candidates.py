"""The service's per-person candidate path (a sort and binary searches) must choose exactly what
the batch path (ranking every item of every row) chooses, ties and blocked items included."""

from __future__ import annotations

from typing import Any

import numpy as np

from training.recommender import _FEW, Recommender

B, N_ITEMS = _FEW + 4, 400


def _recommender(seed: int) -> Recommender:
    rng = np.random.default_rng(seed)
    logits = rng.integers(0, 50, (B, N_ITEMS)).astype(np.float32)  # few distinct values: many ties
    item_item = rng.integers(0, 30, (B, N_ITEMS)).astype(np.float32)
    blocked = rng.random((B, N_ITEMS)) < 0.2

    def scores(rows: list[int], *_: Any) -> tuple[np.ndarray, ...]:
        r = np.asarray(rows)
        empty = np.zeros((len(r), 3), np.float32)
        return logits[r], item_item[r], blocked[r], empty, empty, empty.astype(np.int64)

    rec = object.__new__(Recommender)  # only the candidate logic is under test
    rec.meta = {"n_candidates": 40}
    rec._scores = scores  # type: ignore[method-assign]
    return rec


def test_per_person_candidates_match_the_batch_path() -> None:
    for seed in range(3):
        rec = _recommender(seed)
        rows, seen = list(range(B)), [set() for _ in range(B)]
        batch = rec.candidates(rows, seen)  # more than _FEW persons: the batch path
        given = rec.candidates(rows, seen, items=batch.items[:, ::-1].copy())
        for b in range(B):
            one = rec.candidates([b], [set()])
            np.testing.assert_array_equal(one.items[0], batch.items[b])
            np.testing.assert_array_equal(one.vae_rank[0], batch.vae_rank[b])
            np.testing.assert_array_equal(one.item_item_rank[0], batch.item_item_rank[b])
            scored = rec.candidates([b], [set()], items=given.items[b : b + 1])
            np.testing.assert_array_equal(scored.vae_rank[0], given.vae_rank[b])
            np.testing.assert_array_equal(scored.item_item_rank[0], given.item_item_rank[b])


def test_item_item_scores_of_a_few_persons_are_the_sparse_products_bit_for_bit() -> None:
    import scipy.sparse as sp

    rng = np.random.default_rng(0)
    n = 300
    rec = object.__new__(Recommender)
    rec.item_item = sp.random(n, n, density=0.1, format="csr", dtype=np.float32, random_state=1)
    rec.vocab = type("Vocab", (), {"item_index": {f"i{j}": j for j in range(n)}, "n_items": n})()
    seen = [{f"i{j}" for j in rng.choice(n, size, replace=False)} | {"unknown"} for size in (0, 1, 7, 60, 299)]
    seen += [set(s) for s in seen] * 2  # more than _FEW persons: the sparse product
    assert len(seen) > _FEW
    logits = np.zeros((len(seen), n), np.float32)
    encoded = (logits, logits[:, :3], logits[:, :3], np.zeros((len(seen), 3), np.int64))
    _, product, blocked_all, *_ = rec._scores([None] * len(seen), seen, None, True, encoded)
    for r in range(5):
        one = tuple(part[r : r + 1] for part in encoded)
        _, direct, blocked, *_ = rec._scores([None], [seen[r]], None, True, one)
        np.testing.assert_array_equal(direct[0], product[r])
        np.testing.assert_array_equal(blocked[0], blocked_all[r])
