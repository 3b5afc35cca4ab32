"""The quality benchmark's pooled cross-platform lift: its ratio and its person-clustered interval."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench.quality import clustered_lift
from training.data import Split


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


def _split() -> tuple[Split, pd.Index]:
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


def test_simulated_sparse_persons_keep_a_few_items_of_the_platform_and_nothing_else_changes() -> None:
    from bench.quality import events_on_platform, simulate_sparse

    rows = []
    for p in range(6):  # persons 0-3: 8 books and 4 music each; 4 and 5: 3 books
        n_books = 8 if p < 4 else 3
        rows += [(f"p{p}", f"b{p}-{i}", "book") for i in range(n_books)]
        rows += [(f"p{p}", f"m{p}-{i}", "music") for i in range(4 if p < 4 else 0)]
    events = pd.DataFrame(rows, columns=["person_id", "item_id", "platform"])
    test = pd.DataFrame(
        {"person_id": [f"p{p}" for p in range(6)], "item_id": [f"t{p}" for p in range(6)], "platform": "book"}
    )
    valid = pd.DataFrame({"person_id": ["p0", "p1", "p2", "p3"], "item_id": ["v0", "v1", "v2", "v3"]})
    valid["platform"] = "book"
    with_valid = pd.concat([events, valid], ignore_index=True)
    split = Split(events, with_valid, valid, test, False, "book", {})

    simulated, chosen = simulate_sparse(split, "book", keep=3, share=0.5, seed=1)
    assert len(chosen) == 2 and set(chosen) <= {"p0", "p1", "p2", "p3"}  # half of the dense persons
    persons = pd.Index(sorted(test["person_id"]))
    books = dict(zip(persons, events_on_platform(simulated, persons), strict=True))
    for p in persons:
        before = split.test_events[split.test_events["person_id"] == p]
        after = simulated.test_events[simulated.test_events["person_id"] == p]
        music = before[before["platform"] == "music"]
        assert after[after["platform"] == "music"].equals(music)  # other platforms untouched
        if p in chosen:
            assert books[p] == 3
            kept = set(after.loc[after["platform"] == "book", "item_id"])
            assert kept <= set(split.train_events["item_id"])  # training items, not validation ones
            assert set(simulated.train_events.loc[simulated.train_events["person_id"] == p, "item_id"]) == kept | set(
                music["item_id"]
            )
        else:
            assert after.equals(before)
    assert set(simulated.valid["person_id"]) == {"p0", "p1", "p2", "p3"} - set(chosen)
    assert simulated.test.equals(split.test)
    again, chosen_again = simulate_sparse(split, "book", keep=3, share=0.5, seed=1)
    assert chosen_again.equals(chosen) and again.test_events.equals(simulated.test_events)  # seeded
