"""Each public dataset adapter against the contract, with the report invariant."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import Settings, Workdir
from pipelines.contract import ACTIONS, CONSTANT_TS, EVENT_COLUMNS
from pipelines.ingest import ingest_sources
from pipelines.lake import Lake


@pytest.mark.data
@pytest.mark.parametrize(
    ("adapter", "platforms", "actions"),
    [
        ("douban", {"douban_book", "douban_music"}, {"rate"}),
        ("taobao", {"taobao"}, {"view", "cart", "favorite", "purchase"}),
        ("movielens", {"movielens"}, {"rate", "comment"}),
    ],
)
def test_public_adapter_honours_the_contract(
    adapter: str, platforms: set[str], actions: set[str], data_dir: Path, settings: Settings, workdir: Workdir
) -> None:
    settings = settings.model_copy(update={"data_dir": data_dir})
    report = ingest_sources([(adapter, None)], workdir, settings)
    assert report.read > 10_000
    assert report.read == report.accepted + report.quarantined_total + report.duplicates
    events = Lake(workdir.lake).events()
    assert list(events.columns) == EVENT_COLUMNS
    assert set(events["platform"]) == platforms
    assert set(events["action"]) <= set(ACTIONS) and set(events["action"]) == actions
    assert events[["event_id", "user_id", "person_id", "item_id", "ts"]].notna().all().all()
    assert events["event_id"].is_unique
    if adapter == "douban":
        assert (events["ts"] == CONSTANT_TS).all()  # the source has no time
        assert events["item_id"].str[0].isin(["b", "m"]).all()
        persons = Lake(workdir.lake).table("persons")
        both = persons.groupby("person_id")["platform"].nunique()
        assert (both == 2).sum() > 1000  # the same people on both platforms are one person
    if adapter == "movielens":
        items = Lake(workdir.lake).table("items")
        assert items["title"].notna().all() and len(items) > 9000
        assert events.loc[events["action"] == "comment", "text"].notna().all()
        assert events.loc[events["action"] == "rate", "value"].between(0.5, 5).all()
    if adapter == "taobao":
        assert events["ts"].min() >= pd.Timestamp("2017-01-01", tz="UTC")
