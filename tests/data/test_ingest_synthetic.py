"""Ingest of the synthetic logs: exact accounting, privacy, idempotency, nothing lost."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pytest

from pipelines.adapters.base import read_delimited
from pipelines.config import Settings, Workdir
from pipelines.ingest import IngestReport, ingest_sources
from pipelines.lake import Lake


@pytest.fixture
def ingested(synthetic_small: Path, settings: Settings, workdir: Workdir) -> IngestReport:
    return ingest_sources([("synthetic", synthetic_small)], workdir, settings)


def test_counts_match_the_injected_faults_exactly(ingested: IngestReport, synthetic_small: Path) -> None:
    expected = json.loads((synthetic_small / "truth" / "expected_report.json").read_text())
    assert ingested.read == expected["read"]
    assert ingested.duplicates == expected["duplicates"]
    assert ingested.quarantined == expected["quarantined"]
    assert ingested.accepted == expected["accepted"]
    assert ingested.read == ingested.accepted + ingested.quarantined_total + ingested.duplicates
    for source in ingested.sources:
        assert source["read"] == source["accepted"] + source["quarantined_total"] + source["duplicates"]


def test_no_raw_user_id_reaches_the_lake(ingested: IngestReport, synthetic_small: Path, workdir: Workdir) -> None:
    truth = pd.read_parquet(synthetic_small / "truth" / "persons.parquet")
    raw_ids = set(truth["cookie"]) | set(truth["account"]) | set(truth["openid"])
    blob = b"".join(p.read_bytes() for p in workdir.lake.rglob("*") if p.is_file())
    # parquet pages are compressed, so also look at the decoded values
    lake = Lake(workdir.lake)
    values = set(lake.events(columns=["user_id", "person_id"]).stack()) | set(lake.table("persons").stack())
    values |= set(lake.table("links").stack())
    assert not raw_ids & values
    assert not any(raw.encode() in blob for raw in list(raw_ids)[:200])


def test_reingest_leaves_the_lake_unchanged(
    ingested: IngestReport, synthetic_small: Path, settings: Settings, workdir: Workdir
) -> None:
    def snapshot() -> dict[str, bytes]:
        return {str(p.relative_to(workdir.lake)): p.read_bytes() for p in workdir.lake.rglob("*") if p.is_file()}

    before = snapshot()
    again = ingest_sources([("synthetic", synthetic_small)], workdir, settings)
    assert snapshot() == before
    assert again.accepted == 0 and not again.lake_changed
    assert again.duplicates == ingested.accepted + ingested.duplicates
    assert again.read == again.accepted + again.quarantined_total + again.duplicates


def test_every_accepted_row_is_in_the_lake(ingested: IngestReport, synthetic_small: Path, workdir: Workdir) -> None:
    lake = Lake(workdir.lake).events()
    assert len(lake) == ingested.accepted
    assert lake["event_id"].is_unique
    # every well-formed, clean web event id from the raw file is in the lake
    raw = pd.concat(pd.read_json(p, lines=True, dtype=False) for p in _good_jsonl(synthetic_small))
    clean = raw[raw["cookie"].notna() & (raw["act"] != "zz")]
    clean = clean[~clean["cookie"].str.startswith("ckbot")]
    assert set(clean["eid"]) <= set(lake["event_id"])
    assert lake["person_id"].notna().all()


def _good_jsonl(root: Path) -> list[Path]:
    out = []
    for path in sorted((root / "web").glob("*.jsonl")):
        lines = [line for line in path.read_text().splitlines() if line.endswith("}")]
        good = path.with_suffix(".good.json")
        good.write_text("\n".join(lines))
        out.append(good)
    return out


def test_app_local_times_are_normalised_to_utc(ingested: IngestReport, synthetic_small: Path, workdir: Workdir) -> None:
    raw, _ = read_delimited(synthetic_small / "app" / "events.csv")
    row = raw[
        (raw["tz"] == "America/New_York") & raw["product_id"].notna() & raw["event_time"].str.startswith("2024")
    ].iloc[0]
    local = pd.Timestamp(row["event_time"])  # New York is UTC-5 in January-February, no DST before 10 March
    expected = (local + pd.Timedelta(hours=5 if local.month < 3 else 4)).tz_localize("UTC")
    lake = Lake(workdir.lake).events()
    hits = lake[(lake["item_id"] == row["product_id"]) & (lake["ts"] == expected)]
    assert len(hits) >= 1


def test_identity_links_join_platforms(ingested: IngestReport, synthetic_small: Path, workdir: Workdir) -> None:
    persons = Lake(workdir.lake).table("persons")
    per_person = persons.groupby("person_id")["platform"].nunique()
    assert (per_person >= 2).sum() > 0.2 * len(per_person)  # logins joined many persons
    assert (per_person == 1).sum() > 0  # and identities stay partial, as in real logs


def test_lake_schema_is_the_contract(ingested: IngestReport, workdir: Workdir) -> None:
    from pipelines.contract import EVENTS_SCHEMA

    table = Lake(workdir.lake).events_table()
    assert table.schema.equals(EVENTS_SCHEMA, check_metadata=False)
    assert table.column("ts").type == pa.timestamp("us", tz="UTC")


def test_quarantine_keeps_no_raw_user_id(tmp_path: Path, settings: Settings, workdir: Workdir) -> None:
    """Even a row that fails before it has a platform is pseudonymised in the quarantine."""
    frame = pd.DataFrame(
        {
            "platform": [None, "web"],
            "user_id": ["secret-raw-id", "bob"],
            "item_id": ["i1", "i2"],
            "action": ["view", "view"],
            "ts": ["2024-01-01T00:00:00Z"] * 2,
        }
    )
    frame.to_csv(tmp_path / "events.csv", index=False)
    report = ingest_sources([("canonical", tmp_path / "events.csv")], workdir, settings)
    assert report.quarantined == {"missing_platform": 1}
    quarantine = pd.read_parquet(report.quarantine_file)
    assert "secret-raw-id" not in set(quarantine["user_id"]) and quarantine["user_id"].notna().all()
