from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.adapters import AdapterError, parse_source
from pipelines.config import Settings, Workdir
from pipelines.ingest import ingest_sources
from pipelines.lake import Lake


def _canonical(tmp_path: Path) -> Path:
    frame = pd.DataFrame(
        {
            "platform": ["web", "web", "app", "app", "app", "web"],
            "user_id": ["alice", "alice", "a-1", "a-1", None, "bob"],
            "person_id": ["P1", "P1", "P1", None, None, None],
            "item_id": ["i1", "i2", "x1", "x1", "x2", "i1"],
            "action": ["view", "click", "purchase", "purchase", "view", "like"],
            "value": ["", "", "2", "2", "", "oops"],
            "ts": [
                "2024-01-01T10:00:00Z",
                "2024-01-01T10:01:00+02:00",
                "2024-01-02T00:00:00",
                "2024-01-02T00:00:00",
                "2024-01-02T00:00:00",
                "2024-01-03T00:00:00Z",
            ],
        }
    )
    path = tmp_path / "events.csv"
    frame.to_csv(path, index=False)
    return path


def test_canonical_csv_ingest(tmp_path: Path, settings: Settings, workdir: Workdir) -> None:
    report = ingest_sources([("canonical", _canonical(tmp_path))], workdir, settings)
    assert (report.read, report.accepted, report.duplicates) == (6, 3, 1)
    assert report.quarantined == {"invalid_value": 1, "missing_user_id": 1}
    events = Lake(workdir.lake).events().sort_values("ts")
    # a given person id links the web and app accounts
    assert events["person_id"].nunique() == 1
    assert events["ts"].iloc[0] == pd.Timestamp("2024-01-01T08:01:00Z")  # the offset is applied
    assert events["ts"].iloc[2] == pd.Timestamp("2024-01-02T00:00:00Z")  # no offset means UTC


def test_event_files_keep_time_ranges_but_no_string_ranges(
    tmp_path: Path, settings: Settings, workdir: Workdir
) -> None:
    ingest_sources([("canonical", _canonical(tmp_path))], workdir, settings)
    lake = Lake(workdir.lake)
    for relative in lake.manifest().partitions.values():
        row_group = pq.ParquetFile(lake.root / relative).metadata.row_group(0)
        stats = {
            row_group.column(i).path_in_schema: row_group.column(i).statistics for i in range(row_group.num_columns)
        }
        # readers can skip a file by its time range; string ranges prune nothing and cost time
        assert stats["ts"] is not None and stats["ts"].has_min_max
        assert stats["event_id"] is None or not stats["event_id"].has_min_max
        assert stats["person_id"] is None or not stats["person_id"].has_min_max


def test_unknown_adapter_and_missing_path_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(AdapterError, match="unknown source 'nope'"):
        parse_source("nope:/x")
    from pipelines.adapters import read_source

    with pytest.raises(AdapterError, match="not found"):
        read_source("movielens", tmp_path / "absent", tmp_path)


def test_a_crash_before_the_manifest_leaves_the_lake_as_it_was(
    tmp_path: Path, settings: Settings, workdir: Workdir, monkeypatch: pytest.MonkeyPatch
) -> None:
    ingest_sources([("canonical", _canonical(tmp_path))], workdir, settings)
    lake = Lake(workdir.lake)
    before = lake.events()
    extra = tmp_path / "more.csv"
    pd.DataFrame(
        {
            "platform": ["web"],
            "user_id": ["carol"],
            "item_id": ["i9"],
            "action": ["view"],
            "ts": ["2024-01-05T00:00:00Z"],
        }
    ).to_csv(extra, index=False)

    def crash(*args: object) -> None:
        raise RuntimeError("power cut")

    monkeypatch.setattr("pipelines.lake.os.replace", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        ingest_sources([("canonical", extra)], workdir, settings)
    monkeypatch.undo()
    pd.testing.assert_frame_equal(Lake(workdir.lake).events(), before)
    report = ingest_sources([("canonical", extra)], workdir, settings)
    assert report.accepted == 1 and Lake(workdir.lake).n_events() == len(before) + 1
    # the crash's orphan files were collected
    named = Lake(workdir.lake).manifest().files()
    on_disk = {p.relative_to(workdir.lake).as_posix() for p in workdir.lake.rglob("*.parquet")}
    assert on_disk == named


def test_the_manifest_counts_each_dates_events(tmp_path: Path, settings: Settings, workdir: Workdir) -> None:
    ingest_sources([("canonical", _canonical(tmp_path))], workdir, settings)
    lake = Lake(workdir.lake)
    manifest = lake.manifest()
    footers = {date: pq.ParquetFile(lake.root / f).metadata.num_rows for date, f in manifest.partitions.items()}
    assert manifest.rows == footers and sum(footers.values()) == 3
    assert lake.n_events() == 3
    # a lake committed before the counts were kept: its files' footers are read instead
    raw = json.loads(lake.manifest_path.read_text())
    del raw["rows"]
    lake.manifest_path.write_text(json.dumps(raw))
    assert lake.manifest().rows == {} and lake.n_events() == 3
    # a later commit counts what it writes, and the dates it does not touch keep their footers
    first = min(manifest.partitions)
    table = lake.events_table(dates=[first])
    assert lake.commit({"2024-02-01": table})
    assert lake.manifest().rows == {"2024-02-01": table.num_rows} and lake.n_events() == 3 + table.num_rows
    assert lake.commit({"2024-02-01": table.slice(0, 0)})  # an empty partition is removed, count and all
    assert "2024-02-01" not in lake.manifest().rows and lake.n_events() == 3


def test_garbage_collection_keeps_named_files_and_removes_the_rest(
    tmp_path: Path, settings: Settings, workdir: Workdir
) -> None:
    ingest_sources([("canonical", _canonical(tmp_path))], workdir, settings)
    lake = Lake(workdir.lake)
    named = lake.manifest().files()
    date_folder = (lake.root / next(iter(lake.manifest().partitions.values()))).parent
    orphans = [date_folder / "part-orphan.parquet", lake.root / "events" / "date=2030-01-01" / "part-x.parquet"]
    for path in orphans:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left by a crash")
    (lake.root / "events" / "date=2030-01-02" / "deeper").mkdir(parents=True)  # empty folders
    (lake.root / "tables" / "half-written.tmp").write_bytes(b"")
    (lake.root / "notes.txt").write_text("not the lake's: kept")
    lake.collect_garbage()
    on_disk = {p.relative_to(lake.root).as_posix() for p in lake.root.rglob("*") if p.is_file()}
    assert on_disk == named | {"_manifest.json", "notes.txt"}
    assert not (lake.root / "events" / "date=2030-01-01").exists()
    assert not (lake.root / "events" / "date=2030-01-02").exists()
    assert date_folder.exists() and lake.root.exists()
