from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.contract import REASONS, bot_mask, conform_events, content_event_ids, validate_events

NOW = pd.Timestamp("2024-06-01T00:00:00Z")


def _row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "event_id": None,
        "platform": "web",
        "user_id": "u1",
        "person_id": None,
        "item_id": "i1",
        "action": "view",
        "value": 1.0,
        "text": None,
        "ts": pd.Timestamp("2024-05-01T12:00:00Z"),
    }
    row.update(overrides)
    return row


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({}, None),
        ({"platform": None}, "missing_platform"),
        ({"platform": "Web Site"}, "invalid_platform"),
        ({"user_id": None}, "missing_user_id"),
        ({"action": "teleport"}, "unknown_action"),
        ({"item_id": None}, "missing_item_id"),
        ({"action": "search", "item_id": None, "text": None}, "missing_search_text"),
        ({"action": "search", "item_id": None, "text": "shoes"}, None),
        ({"ts": pd.NaT}, "invalid_ts"),
        ({"ts": pd.Timestamp("1970-01-01T00:00:00Z")}, "ts_out_of_range"),
        ({"ts": pd.Timestamp("2030-01-01T00:00:00Z")}, "ts_in_future"),
        ({"value": float("inf")}, "invalid_value"),
        # the first broken rule wins
        ({"user_id": None, "action": "teleport"}, "missing_user_id"),
    ],
)
def test_each_rule_names_its_reason(overrides: dict[str, object], reason: str | None) -> None:
    events = conform_events(pd.DataFrame([_row(**overrides)]))
    _, reasons = validate_events(events, NOW)
    assert reasons.iloc[0] == reason
    assert reason is None or reason in REASONS


def test_content_ids_are_deterministic_and_sensitive_to_every_field() -> None:
    base = conform_events(pd.DataFrame([_row()]))
    first = content_event_ids(base).iloc[0]
    assert first == content_event_ids(base.copy()).iloc[0]
    for field, other in [
        ("platform", "ios"),
        ("user_id", "u2"),
        ("item_id", "i2"),
        ("action", "click"),
        ("value", 2.0),
        ("text", "x"),
        ("ts", pd.Timestamp("2024-05-01T12:00:01Z")),
    ]:
        changed = conform_events(pd.DataFrame([_row(**{field: other})]))
        assert content_event_ids(changed).iloc[0] != first, field
    # a missing field is not the same content as the text "None"
    assert content_event_ids(conform_events(pd.DataFrame([_row(text="None")]))).iloc[0] != first


def test_bots_are_flagged_by_browsing_rate_but_raters_are_not() -> None:
    start = pd.Timestamp("2024-05-01T12:00:00Z")
    bot = [_row(user_id="bot", ts=start + pd.Timedelta(seconds=0.5 * i)) for i in range(200)]
    rater = [_row(user_id="rater", action="rate", ts=start + pd.Timedelta(seconds=0.5 * i)) for i in range(200)]
    human = [_row(user_id="human", ts=start + pd.Timedelta(minutes=i)) for i in range(50)]
    events = conform_events(pd.DataFrame(bot + rater + human))
    flagged = bot_mask(events)
    assert flagged[events["user_id"] == "bot"].all()
    assert not flagged[events["user_id"] != "bot"].any()


def test_conform_keeps_every_row_and_column() -> None:
    frame = pd.DataFrame({"platform": ["web", None], "user_id": ["a", "b"], "ts": ["2024-01-01", "garbage"]})
    events = conform_events(frame)
    assert len(events) == 2
    assert events["ts"].isna().tolist() == [False, True]
    assert np.isnan(events["value"]).all()
