"""The evaluation split: no held-out interaction leaks into what models may see."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.data import interactions, split


def _events(time_known: bool, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = 3000
    base = pd.Timestamp("2024-01-01", tz="UTC")
    ts = base + pd.to_timedelta(rng.integers(0, 30 * 86400, n), unit="s") if time_known else [base] * n
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "platform": rng.choice(["web", "app"], n),
            "user_id": "u",
            "person_id": [f"p{i}" for i in rng.integers(0, 60, n)],
            "item_id": [f"i{i}" for i in rng.integers(0, 200, n)],
            "action": rng.choice(["view", "click", "purchase"], n),
            "value": np.nan,
            "text": None,
            "ts": ts,
        }
    )


@pytest.mark.parametrize("time_known", [True, False])
def test_no_test_item_is_in_the_training_view(time_known: bool) -> None:
    events = _events(time_known)
    s = split(events, seed=3)
    assert s.time_known is time_known
    assert s.info["protocol"] == ("leave-last-out" if time_known else "random-80/20")
    train_pairs = set(zip(*interactions(s.train_events)[["person_id", "item_id"]].to_numpy().T, strict=True))
    test_view_pairs = set(zip(*interactions(s.test_events)[["person_id", "item_id"]].to_numpy().T, strict=True))
    test = set(zip(s.test["person_id"], s.test["item_id"], strict=True))
    valid = set(zip(s.valid["person_id"], s.valid["item_id"], strict=True))
    assert test and valid
    assert not test & train_pairs and not test & test_view_pairs
    assert not valid & train_pairs  # validation is carved from training, not seen by it
    assert len(s.test_events) > len(s.train_events)
    if time_known:  # leave-last-out: the test item is each person's latest new item
        first = interactions(events).groupby("person_id")["ts"].max()
        assert (s.test.set_index("person_id")["ts"] == first.reindex(s.test["person_id"]).to_numpy()).all()


def test_split_is_seeded() -> None:
    events = _events(False)
    a, b, c = split(events, seed=1), split(events, seed=1), split(events, seed=2)
    pd.testing.assert_frame_equal(a.test, b.test)
    assert not a.test.equals(c.test)


def test_target_platform_holds_out_only_that_platform() -> None:
    s = split(_events(False), seed=0, target_platform="web")
    assert set(s.test["platform"]) == {"web"}
    assert (s.train_events["platform"] == "app").any()


def test_leave_last_out_holds_up_to_three_validation_items_before_the_test_item() -> None:
    s = split(_events(True), seed=0)
    events = _events(True)
    pairs = interactions(events).groupby("person_id").size()
    expected = (pairs[pairs >= 3] - 2).clip(1, 3)  # eligible persons: at least three pairs
    per_person = s.valid.groupby("person_id").size()
    pd.testing.assert_series_equal(per_person.sort_index(), expected.sort_index(), check_names=False)
    assert per_person.max() == 3
    test_ts = s.test.set_index("person_id")["ts"]
    assert (s.valid["ts"].to_numpy() <= test_ts.reindex(s.valid["person_id"]).to_numpy()).all()
    # every person keeps at least one pair to learn from
    train_persons = set(interactions(s.train_events)["person_id"])
    assert set(s.valid["person_id"]) <= train_persons
