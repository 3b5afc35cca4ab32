"""Adapter for files already in the canonical contract (CSV or parquet, by extension).

``PATH`` is an events file, or a folder holding ``events.{csv,parquet}`` and optionally
``items.*`` and ``links.*``. CSV times are ISO 8601; a time without an offset is taken as UTC.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from pipelines.adapters.base import (
    AdapterError,
    EventBatch,
    SourceData,
    numeric_value,
    read_delimited,
    require,
    with_malformed,
)
from pipelines.contract import EVENT_COLUMNS, ITEM_COLUMNS, LINK_COLUMNS, clean_strings

SUFFIXES = (".parquet", ".csv")


def read(path: Path, items: Path | None = None, links: Path | None = None) -> SourceData:
    path = require(path, "canonical events")
    if path.is_dir():
        events_path = _find(path, "events")
        if events_path is None:
            raise AdapterError(f"no events.csv or events.parquet in {path}")
        items = items or _find(path, "items")
        links = links or _find(path, "links")
    else:
        events_path = path
    data = SourceData(name="canonical", batches=_batches(events_path))
    if items is not None:
        data.items = _table(require(items, "items file"), ITEM_COLUMNS)
    if links is not None:
        data.links = _table(require(links, "links file"), LINK_COLUMNS)
    return data


def _find(folder: Path, stem: str) -> Path | None:
    for suffix in SUFFIXES:
        if (folder / f"{stem}{suffix}").exists():
            return folder / f"{stem}{suffix}"
    return None


def _table(path: Path, columns: list[str]) -> pd.DataFrame:
    frame = clean_strings(pq.read_table(path)).to_pandas() if path.suffix == ".parquet" else read_delimited(path)[0]
    missing = [c for c in columns if c not in frame and c in ("item_id", "platform", "platform_a", "user_id_a")]
    if missing:
        raise AdapterError(f"{path} lacks required columns {missing}; expected {columns}")
    return frame.reindex(columns=columns)


def _batches(path: Path) -> Iterator[EventBatch]:
    if path.suffix not in SUFFIXES:
        raise AdapterError(f"{path}: canonical events must be .csv or .parquet")
    if path.suffix == ".parquet":
        frame, bad = clean_strings(pq.read_table(path)).to_pandas(), []
    else:
        frame, bad = read_delimited(path)
    required = {"platform", "user_id", "action", "ts"}
    if not required <= set(frame.columns):
        raise AdapterError(f"{path} lacks required columns {sorted(required - set(frame.columns))}")
    events = frame.reindex(columns=EVENT_COLUMNS).copy()
    if "value" in frame:
        events["value"], events["_value_invalid"] = numeric_value(frame["value"])
    if not isinstance(events["ts"].dtype, pd.DatetimeTZDtype):
        events["ts"] = _parse_ts(frame["ts"])
    yield EventBatch("canonical", path, with_malformed(events, bad))


def _parse_ts(values: pd.Series) -> pd.Series:
    """ISO 8601 strings to UTC; a time without an offset is UTC (stated explicitly, because
    pandas would otherwise carry a neighbouring row's offset over to it)."""
    if pd.api.types.is_datetime64_any_dtype(values):
        return pd.to_datetime(values, utc=True)
    text = values.astype("string")
    naive = ~text.str.contains(r"(?:Z|[+-]\d{2}:?\d{2})$", regex=True, na=True)
    has_time = text.str.contains("T| ", regex=True, na=False)
    text = text.mask(naive & has_time, text + "+00:00").mask(naive & ~has_time, text + "T00:00:00+00:00")
    return pd.to_datetime(text, utc=True, errors="coerce", format="ISO8601")
