"""The service's per-person candidate path (a sort and binary searches) must choose exactly what
the batch path (ranking every item of every row) chooses, ties and blocked items included."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from training.recommender import _FEW, Candidates, Recommender

B, N_ITEMS = _FEW + 4, 400


def _recommender(seed: int, time_known: bool) -> Recommender:
    """Candidates of persons 0..B-1 from random scores (with time: a third source, the latest
    events' item-item scores)."""
    rng = np.random.default_rng(seed)
    logits = rng.integers(0, 50, (B, N_ITEMS)).astype(np.float32)  # few distinct values: many ties
    item_item = rng.integers(0, 30, (B, N_ITEMS)).astype(np.float32)
    recent = rng.integers(0, 10, (B, N_ITEMS)).astype(np.float32)
    blocked = rng.random((B, N_ITEMS)) < 0.2

    def scores(rows: list[int], *_: Any) -> tuple[np.ndarray, ...]:
        r = np.asarray(rows)
        empty = np.zeros((len(r), 3), np.float32)
        return logits[r], item_item[r], blocked[r], empty, empty, np.repeat(r[:, None], 3, axis=1)  # "encoded": the row

    rec = object.__new__(Recommender)  # only the candidate logic is under test
    rec.meta = {"n_candidates": 40, "time_known": time_known}
    rec._scores = scores  # type: ignore[method-assign]
    rec.recent_scores = lambda encoded: recent[encoded[:, 0]] if time_known else None  # type: ignore[method-assign]
    return rec


def test_per_person_candidates_match_the_batch_path() -> None:
    for seed, time_known in ((0, False), (1, False), (2, True), (3, True), (4, True)):
        rec = _recommender(seed, time_known)
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


def _recent_case(time_known: bool = True) -> tuple[Recommender, Candidates, np.ndarray]:
    import scipy.sparse as sp

    from training.recommender import FIRST_ITEM, RECENT

    rng = np.random.default_rng(3)
    n, t = 60, RECENT + 5
    dense = rng.random((n, n)).astype(np.float32) * (rng.random((n, n)) < 0.3)
    rec = object.__new__(Recommender)
    rec.item_item = sp.csr_matrix(dense)
    rec.vocab = type("Vocab", (), {"n_items": n})()
    rec.meta = {"time_known": time_known}
    lengths = [0, 1, 3, RECENT, t]
    encoded = np.zeros((len(lengths), t), np.int64)  # oldest first, padding (0) after
    for r, length in enumerate(lengths):
        encoded[r, :length] = rng.integers(0, n, length) + FIRST_ITEM
    encoded[2, 1] = 1  # an item unknown to the model, second to last: skipped, still an event back
    encoded[3, RECENT - 1] = 1  # the last event's item is unknown: no last-item score
    items = np.stack([rng.choice(n, 7, replace=False) for _ in lengths])
    empty = np.zeros((len(lengths), 7), np.float32)
    scores = rec.recent_scores(encoded)  # as Recommender.candidates keeps them
    recent = None if scores is None else np.take_along_axis(scores, items, axis=1)
    ints = empty.astype(np.int64)
    return rec, Candidates(items, empty, empty, ints, ints, empty, empty, encoded, recent), dense


def test_recent_item_item_scores_weigh_the_latest_events() -> None:
    from training.recommender import FIRST_ITEM, RECENT, RECENT_DECAY

    rec, cands, dense = _recent_case()
    recent, from_last = rec.recent_item_item(cands)
    for r, row in enumerate(cands.encoded_items):
        events = [int(e) for e in row if e != 0][-RECENT:][::-1]  # newest first
        want = np.zeros(dense.shape[1])
        for age, e in enumerate(events):
            if e >= FIRST_ITEM:
                want += RECENT_DECAY**age * dense[e - FIRST_ITEM]
        np.testing.assert_allclose(recent[r], want[cands.items[r]], rtol=1e-5)
        last = dense[events[0] - FIRST_ITEM] if events and events[0] >= FIRST_ITEM else np.zeros(dense.shape[1])
        np.testing.assert_allclose(from_last[r], last[cands.items[r]], rtol=1e-6)
    assert not recent[0].any() and not from_last[3].any() and recent[3].any()
    # each person's scores are what it gets alone
    every = rec.recent_scores(cands.encoded_items)
    for r in range(len(cands.items)):
        np.testing.assert_array_equal(rec.recent_scores(cands.encoded_items[r : r + 1])[0], every[r])
        one = Candidates(*(getattr(cands, f)[r : r + 1] for f in Candidates.__dataclass_fields__))
        np.testing.assert_array_equal(rec.recent_item_item(one)[1][0], from_last[r])


def test_recent_item_item_scores_are_missing_without_time() -> None:
    rec, cands, _ = _recent_case(time_known=False)
    recent, from_last = rec.recent_item_item(cands)
    assert np.isnan(recent).all() and np.isnan(from_last).all()


def test_native_item_item_sums_and_ranks_are_the_numpy_definitions_bit_for_bit(monkeypatch: Any) -> None:
    """The C kernels of the per-person path (pipelines/_native.c: ``sum_rows``, ``ranks_at``)
    give the numpy definitions' exact bits: sums of sparse rows with and without weights
    (repeated rows, empty rows, no rows), and ranks with many ties, blocked (-inf) items and
    repeated positions, which equal the full ranking's."""
    import scipy.sparse as sp

    from pipelines.native import kernels
    from tests.conftest import native_or_skip
    from training.recommender import _ranks, _ranks_at, _sum_rows

    kernel = native_or_skip()
    rng = np.random.default_rng(11)
    for trial in range(400):
        n = int(rng.integers(1, 200))
        m = sp.random(n, n, density=float(rng.uniform(0, 0.3)), random_state=trial, dtype=np.float32).tocsr()
        rows = rng.integers(0, n, int(rng.integers(0, 30))).astype(np.intp)
        weights = None if trial % 2 else rng.random(len(rows)).astype(np.float32)
        if trial % 3 == 0:
            row = rng.choice(np.array([0, 0, 1.5, -np.inf, 2.25, 3], np.float32), n)  # ties
        else:
            row = rng.standard_normal(n).astype(np.float32)
        at = np.unique(rng.integers(0, n, int(rng.integers(0, n + 1)))) if trial % 4 else rng.integers(0, n, 30)
        got = {}
        for native in ("1", "0"):
            monkeypatch.setenv("XINTEREST_NATIVE", native)
            sums = _sum_rows(m, rows, weights, np.full(n, 7, np.float32)).copy()  # out is overwritten
            got[native] = (sums, _ranks_at(row, at))
        assert kernels() is None  # "0": the numpy definitions above
        np.testing.assert_array_equal(got["1"][0].view(np.int32), got["0"][0].view(np.int32))
        np.testing.assert_array_equal(got["1"][1], got["0"][1])
        assert got["1"][1].flags.writeable  # as numpy's ranks are
        np.testing.assert_array_equal(got["1"][1], _ranks(row[None])[0][at])
    m = sp.identity(3, dtype=np.float32, format="csr")
    with pytest.raises(ValueError, match="not a row"):
        kernel.sum_rows(m.indptr, m.indices, m.data, np.array([3]), None, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="outside out"):
        kernel.sum_rows(m.indptr, m.indices, m.data, np.array([2]), None, np.zeros(2, np.float32))
    with pytest.raises(ValueError, match="outside the row"):
        kernel.ranks_at(np.zeros(3, np.float32), np.zeros(3, np.float32), np.array([3]))
