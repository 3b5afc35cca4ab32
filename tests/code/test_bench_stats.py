"""The quality benchmark's pooled cross-platform lift: its ratio and its person-clustered interval."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from bench.quality import clustered_lift


def test_the_lift_is_the_ratio_of_pooled_sums() -> None:
    codes = np.array([0, 0, 1, 2])
    both = np.array([0.3, 0.0, 0.2, 0.1])
    alone = np.array([0.1, 0.1, 0.1, 0.1])
    lift, (lo, hi) = clustered_lift(codes, both, alone, draws=500)
    assert lift == pytest.approx(0.6 / 0.4 - 1)
    assert lo <= lift <= hi


def test_the_interval_resamples_persons_with_all_their_tests() -> None:
    """Each person tested three times with the same figures holds no more information than one
    test each: the interval must be the one-test interval, not a narrower one."""
    rng = np.random.default_rng(0)
    both, alone = rng.random(60), rng.random(60)
    once = clustered_lift(np.arange(60), both, alone)
    thrice = clustered_lift(np.repeat(np.arange(60), 3), np.repeat(both, 3), np.repeat(alone, 3))
    assert thrice == once
    independent = clustered_lift(np.arange(180), np.repeat(both, 3), np.repeat(alone, 3))
    assert independent[1][1] - independent[1][0] < once[1][1] - once[1][0]


def _split() -> tuple[Any, Any]:
    import pandas as pd

    from training.data import Split

    test_events = pd.DataFrame(
        {
            "person_id": ["a"] * 15 + ["b"] * 4 + ["c"] * 3,
            "platform": ["book"] * 3 + ["music"] * 12 + ["book"] * 4 + ["music"] * 3,
        }
    )
    test = pd.DataFrame({"person_id": ["a", "b", "c"], "platform": ["book", "book", "music"], "item_id": ["x"] * 3})
    return Split(test_events, test_events, test.iloc[:0], test, False, None, {}), pd.Index(["c", "a", "b"])


def test_events_elsewhere_counts_the_other_platforms_of_the_held_out_items_platform() -> None:
    from bench.quality import events_elsewhere

    split, persons = _split()
    got = events_elsewhere(split, persons)
    assert got.tolist() == [0, 12, 0]  # c's held-out item is music and c has no book events


def test_the_lift_groups_split_the_sparse_persons_by_their_events_elsewhere() -> None:
    from bench.quality import GROUPS, SPARSE, SPARSE_ELSEWHERE, SPARSE_NOTHING_ELSEWHERE, in_group

    split, persons = _split()  # c: 3 music, none elsewhere; a: 3 books, 12 music; b: 4 books only
    got = {group: in_group(group, split, persons).tolist() for group in GROUPS}
    assert got == {
        "all": [True, True, True],
        SPARSE: [True, True, True],
        SPARSE_ELSEWHERE: [False, True, False],
        SPARSE_NOTHING_ELSEWHERE: [True, False, True],
    }
    with pytest.raises(ValueError, match="unknown group"):
        in_group("dense", split, persons)
