"""The Feast feature store for real: definitions, point-in-time retrieval, online store, push, TTL."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines import feature_store as fs
from pipelines.config import Settings, Workdir
from pipelines.ingest import ingest_sources
from pipelines.realtime import push_events
from tests.conftest import TEST_KEY, require_or_skip


def _workdir(
    root: Path, synthetic: Path, profile: str = "local", project: str = "xinterest"
) -> tuple[Settings, Workdir]:
    settings = Settings(
        workdir=root, pseudonym_key=TEST_KEY, profile=profile, feast_project=project, sequence_length=20
    )
    workdir = Workdir.at(root)
    ingest_sources([("synthetic", synthetic)], workdir, settings)
    return settings, workdir


@pytest.fixture(scope="module")
def local_store(tmp_path_factory: pytest.TempPathFactory, synthetic_small: Path) -> tuple[Settings, Workdir, Any]:
    settings, workdir = _workdir(tmp_path_factory.mktemp("feast"), synthetic_small)
    fs.refresh(workdir, settings)
    return settings, workdir, fs.open_store(workdir, settings)


def test_definitions_apply_and_list(local_store: tuple[Settings, Workdir, Any]) -> None:
    _, workdir, store = local_store
    views = {v.name for v in store.list_feature_views()}
    assert {"person_activity", "person_profile", "person_sequence", "item_stats", "person_embedding"} <= views
    assert {s.name for s in store.list_feature_services()} == {"vae_v1", "ranker_v1"}
    assert [o.name for o in store.list_on_demand_feature_views()] == ["person_recency"]
    fs.apply(store)  # applying again changes nothing and does not fail
    assert (workdir.feature_repo / "feature_store.yaml").exists() and (workdir.feature_repo / "definitions.py").exists()


def test_online_values_equal_the_latest_offline_values(local_store: tuple[Settings, Workdir, Any]) -> None:
    _, workdir, store = local_store
    reader = fs.OnlineReader(store, ["person_profile", "person_sequence", "item_stats"])
    for view, key in (("person_profile", "person_id"), ("person_sequence", "person_id"), ("item_stats", "item_id")):
        offline = pq.read_table(workdir.feature_data / f"{view}.parquet").to_pandas()
        latest = offline.sort_values("event_timestamp").groupby(key).tail(1).sample(25, random_state=0)
        online = reader.read(view, [{key: k} for k in latest[key]])
        for (_, expected), got in zip(latest.iterrows(), online, strict=True):
            assert got is not None
            stamp = pd.Timestamp(expected["event_timestamp"])
            stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
            assert got["_event_ts"] == stamp.floor("s").to_pydatetime()  # Feast keeps whole seconds
            for column in expected.index.drop([key, "event_timestamp"]):
                value = expected[column]
                if hasattr(value, "tolist"):
                    assert (
                        list(got[column]) == pytest.approx(value.tolist())
                        if value.dtype.kind == "f"
                        else list(got[column]) == value.tolist()
                    )
                elif isinstance(value, float):
                    assert got[column] == pytest.approx(value, rel=1e-6)
                else:
                    assert got[column] == value, (view, column)


def test_point_in_time_retrieval_does_not_leak(tmp_path: Path) -> None:
    """A purchase on day 5 must not appear in features for a label on day 3, and must for day 6."""
    settings = Settings(workdir=tmp_path / "w", pseudonym_key=TEST_KEY)
    workdir = Workdir.at(settings.workdir)
    day = pd.Timestamp("2024-03-01T10:00:00Z")
    events = pd.DataFrame(
        {
            "platform": ["web"] * 4,
            "user_id": ["alice"] * 4,
            "item_id": ["i1", "i2", "i9", "i9"],
            "action": ["view", "view", "purchase", "view"],
            "ts": [day, day + timedelta(days=1), day + timedelta(days=4), day + timedelta(days=4, hours=1)],
        }
    )
    items = pd.DataFrame({"item_id": ["i1", "i2", "i9"], "platform": "web", "category": ["books", "books", "tools"]})
    (tmp_path / "in").mkdir()
    events.assign(ts=events["ts"].astype(str)).to_csv(tmp_path / "in" / "events.csv", index=False)
    items.to_csv(tmp_path / "in" / "items.csv", index=False)
    ingest_sources([("canonical", tmp_path / "in")], workdir, settings)
    fs.refresh(workdir, settings)
    store = fs.open_store(workdir, settings)
    person = pd.read_parquet(workdir.feature_data / "person_profile.parquet")["person_id"].iloc[0]
    labels = pd.DataFrame(
        {
            "person_id": person,
            "platform": "web",
            "item_id": "i9",
            "event_timestamp": [day + timedelta(days=2), day + timedelta(days=5)],
            "request_ts": [int((day + timedelta(days=d)).timestamp()) for d in (2, 5)],
        }
    )
    frame = fs.historical_features(store, labels, "ranker_v1").sort_values("event_timestamp").reset_index(drop=True)
    before, after = frame.iloc[0], frame.iloc[1]
    assert before["purchase_30d"] == 0 and list(before["top_categories"]) == ["books"]
    assert pd.isna(before["purchases_30d"])  # the item has no stats before its first event: null, not a lost row
    assert after["purchase_30d"] == 1 and "tools" in list(after["top_categories"])
    assert after["purchases_30d"] == 1
    assert before["seconds_since_last_event"] == pytest.approx(86_400.0)  # from the day-2 snapshot
    # two candidates for the same person at the same time stay two rows (feast-dev/feast#6787)
    pair = labels.iloc[[1, 1]].assign(item_id=["i1", "i9"])
    both = fs.historical_features(store, pair, "ranker_v1")
    assert both["item_id"].tolist() == ["i1", "i9"] and both["purchase_30d"].tolist() == [1, 1]
    sequence = fs.historical_features(store, labels[["person_id", "event_timestamp"]], "vae_v1").sort_values(
        "event_timestamp"
    )
    assert list(sequence.iloc[0]["seq_items"]) == ["i1", "i2"]
    assert list(sequence.iloc[1]["seq_items"]) == ["i1", "i2", "i9", "i9"]


def test_ttl_expiry_offline_and_online(local_store: tuple[Settings, Workdir, Any]) -> None:
    """person_activity has a 30-day TTL: a snapshot serves labels up to 30 days after it, not later."""
    _, workdir, store = local_store
    activity = pd.read_parquet(workdir.feature_data / "person_activity.parquet")
    row = activity.sort_values("event_timestamp").groupby(["person_id", "platform"]).tail(1).iloc[0]
    stamp = row["event_timestamp"]
    labels = pd.DataFrame(
        {
            "person_id": row["person_id"],
            "platform": row["platform"],
            "item_id": "none",
            "event_timestamp": [stamp + timedelta(days=29), stamp + timedelta(days=31)],
            "request_ts": 0,
        }
    )
    frame = fs.historical_features(store, labels, "ranker_v1").sort_values("event_timestamp")
    assert frame.iloc[0]["events_30d"] == row["events_30d"]
    assert pd.isna(frame.iloc[1]["events_30d"])
    reader = fs.OnlineReader(store, ["person_activity"])
    key = {"person_id": row["person_id"], "platform": row["platform"]}
    assert reader.read_one("person_activity", key, now=stamp.to_pydatetime() + timedelta(days=29)) is not None
    assert reader.read_one("person_activity", key, now=stamp.to_pydatetime() + timedelta(days=31)) is None


def _push_roundtrip(settings: Settings, store: Any) -> None:
    reader = fs.OnlineReader(store, ["person_sequence", "person_activity"])
    person = "p-pushed-" + uuid.uuid4().hex[:8]
    now = pd.Timestamp(datetime.now(UTC)).floor("s")
    first = pd.DataFrame(
        {
            "person_id": person,
            "platform": "web",
            "item_id": ["x1", "x2"],
            "action": ["view", "click"],
            "ts": [now - timedelta(seconds=30), now - timedelta(seconds=10)],
        }
    )
    push_events(store, reader, first, settings.sequence_length)
    row = reader.read_one("person_sequence", {"person_id": person})
    assert row is not None and row["seq_items"] == ["x1", "x2"] and row["seq_gaps"] == [20.0, 0.0]
    second = pd.DataFrame(
        {"person_id": person, "platform": "web", "item_id": ["x3"], "action": ["purchase"], "ts": [now]}
    )
    push_events(store, reader, second, settings.sequence_length)
    row = reader.read_one("person_sequence", {"person_id": person})
    assert row["seq_items"] == ["x1", "x2", "x3"] and row["seq_gaps"] == [30.0, 10.0, 0.0]
    activity = reader.read_one("person_activity", {"person_id": person, "platform": "web"})
    assert activity["purchase_1d"] == 1 and activity["events_30d"] == 3


def test_push_changes_online_sequence_immediately(local_store: tuple[Settings, Workdir, Any]) -> None:
    settings, _, store = local_store
    _push_roundtrip(settings, store)


def test_feast_cli_works_in_the_workdir_repo(local_store: tuple[Settings, Workdir, Any]) -> None:
    import subprocess
    import sys

    _, workdir, _ = local_store
    feast = Path(sys.executable).parent / "feast"
    result = subprocess.run(
        [str(feast), "feature-views", "list"], cwd=workdir.feature_repo, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "person_sequence" in result.stdout and "item_stats" in result.stdout
    result = subprocess.run(
        [str(feast), "apply"], cwd=workdir.feature_repo, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.prod
def test_prod_profile_roundtrip(tmp_path: Path, synthetic_small: Path) -> None:
    """Redis online store + SQL registry on PostgreSQL, for real."""
    settings0 = Settings()
    try:
        import redis
        import sqlalchemy

        redis.Redis.from_url(f"redis://{settings0.redis_url.split(',')[0]}").ping()
        sqlalchemy.create_engine(settings0.postgres_url).connect().close()
    except Exception as e:
        require_or_skip("XINTEREST_REQUIRE_PROD", f"prod stores not reachable ({type(e).__name__}: {e})")
    project = "xt_" + uuid.uuid4().hex[:10]
    settings, workdir = _workdir(tmp_path / "prod", synthetic_small, profile="prod", project=project)
    result = fs.refresh(workdir, settings)
    store = fs.open_store(workdir, settings)
    try:
        assert store.config.online_store.type == "redis"
        assert "postgresql" in str(store.config.registry.path)
        assert {v.name for v in store.list_feature_views()} >= {"person_sequence", "person_activity"}
        assert result["rows"]["person_sequence"] > 0
        offline = pd.read_parquet(workdir.feature_data / "person_sequence.parquet")
        latest = offline.sort_values("event_timestamp").groupby("person_id").tail(1).iloc[0]
        got = fs.OnlineReader(store, ["person_sequence"]).read_one(
            "person_sequence", {"person_id": latest["person_id"]}
        )
        assert got["seq_items"] == list(latest["seq_items"])
        _push_roundtrip(settings, store)
    finally:
        store.teardown()
        os.environ.pop("FEAST_PROJECT", None)
