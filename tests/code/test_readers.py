from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipelines.adapters.base import local_to_utc, read_delimited, read_jsonl


def test_jsonl_reader_keeps_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1, "b": " x "}\n{"a": 2\n\n{"a": "oops"}\n{"a": 3, "b": ""}\nnot json\n')
    frame, bad = read_jsonl(path, pa.schema([("a", pa.int64()), ("b", pa.string())]))
    assert frame["a"].tolist() == [1, 3]
    assert frame["b"].tolist() == ["x", None]  # trimmed, empty is missing
    assert sorted(bad) == sorted(['{"a": 2', '{"a": "oops"}', "not json"])


def test_delimited_reader_keeps_short_rows(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b,c\n1,2,3\n4,5\n6,n/a,NA\n")
    frame, bad = read_delimited(path)
    assert frame["a"].tolist() == ["1", "6"]
    assert frame["b"].tolist() == ["2", "n/a"]  # only empty strings are missing values
    assert bad == ["4,5"]


def test_local_times_normalise_to_utc_with_named_zones_and_offsets() -> None:
    local = pd.Series(
        [
            "2024-01-15T08:00:00",
            "2024-07-15T08:00:00",
            "2024-01-15T08:00:00",
            "2024-11-03T01:30:00",
            "2024-01-15T08:00:00",
            "garbage",
        ]
    )
    tz = pd.Series(["Asia/Shanghai", "Europe/Berlin", "+05:30", "America/New_York", "Mars/Olympus", "UTC"])
    utc = local_to_utc(local, tz, fmt="%Y-%m-%dT%H:%M:%S")
    assert utc.iloc[0] == pd.Timestamp("2024-01-15T00:00:00Z")
    assert utc.iloc[1] == pd.Timestamp("2024-07-15T06:00:00Z")  # summer time, UTC+2
    assert utc.iloc[2] == pd.Timestamp("2024-01-15T02:30:00Z")
    # 01:30 happens twice on 3 Nov in New York; the documented choice is standard time (UTC-5)
    assert utc.iloc[3] == pd.Timestamp("2024-11-03T06:30:00Z")
    assert pd.isna(utc.iloc[4]) and pd.isna(utc.iloc[5])
