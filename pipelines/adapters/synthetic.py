"""Adapter for the synthetic raw logs written by :func:`pipelines.synthetic.generate`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipelines.adapters.base import (
    EventBatch,
    SourceData,
    epoch_to_utc,
    local_to_utc,
    mapped,
    numeric_value,
    read_delimited,
    read_jsonl,
    require,
    with_malformed,
)
from pipelines.synthetic import APP_ACTIONS, MINIAPP_ACTIONS, WEB_ACTIONS

WEB_SCHEMA = pa.schema(
    [
        ("eid", pa.string()),
        ("ts_ms", pa.int64()),
        ("cookie", pa.string()),
        ("act", pa.string()),
        ("sku", pa.string()),
        ("q", pa.string()),
        ("dwell", pa.float64()),
    ]
)


def read(path: Path) -> SourceData:
    """Read a generated folder: web JSON lines, app CSV, mini-program TSV, catalog, logins."""
    root = require(path, "synthetic raw-log folder")
    require(root / "catalog.csv", "synthetic catalog (is this a folder from `xinterest generate`?)")
    items = pd.read_csv(root / "catalog.csv", dtype=str, keep_default_na=False, na_values=[""])
    links = pd.read_csv(root / "links" / "logins.csv", dtype=str) if (root / "links" / "logins.csv").exists() else None
    data = SourceData(name="synthetic", batches=_batches(root), items=items)
    if links is not None:
        data.links = links
    return data


def _batches(root: Path) -> Iterator[EventBatch]:
    for shard in sorted((root / "web").glob("*.jsonl")):
        yield EventBatch("synthetic/web", shard, web_events(shard))
    if (root / "app" / "events.csv").exists():
        yield EventBatch("synthetic/app", root / "app" / "events.csv", app_events(root / "app" / "events.csv"))
    if (root / "miniapp" / "events.tsv").exists():
        path = root / "miniapp" / "events.tsv"
        yield EventBatch("synthetic/miniapp", path, miniapp_events(path))


def web_events(path: Path) -> pd.DataFrame:
    """Clickstream JSON lines: millisecond epochs, cookie ids, short action codes."""
    frame, bad = read_jsonl(path, WEB_SCHEMA)
    events = pd.DataFrame(
        {
            "event_id": frame["eid"],
            "platform": "web",
            "user_id": frame["cookie"],
            "item_id": frame["sku"],
            "action": mapped(frame["act"], WEB_ACTIONS),
            "value": frame["dwell"],
            "text": frame["q"],
            "ts": pd.to_datetime(frame["ts_ms"], unit="ms", utc=True, errors="coerce"),
        }
    )
    return with_malformed(events, bad)


def app_events(path: Path) -> pd.DataFrame:
    """App CSV: local wall-clock time plus an IANA timezone column, account ids, long names."""
    frame, bad = read_delimited(path)
    value, invalid = numeric_value(frame["qty"])
    events = pd.DataFrame(
        {
            "platform": frame["os"].str.lower(),
            "user_id": frame["account_id"],
            "item_id": frame["product_id"],
            "action": mapped(frame["event"], APP_ACTIONS),
            "value": value,
            "text": frame["query"],
            "ts": local_to_utc(frame["event_time"], frame["tz"], fmt="%Y-%m-%dT%H:%M:%S"),
            "_value_invalid": invalid,
        }
    )
    return with_malformed(events, bad)


def miniapp_events(path: Path) -> pd.DataFrame:
    """Mini-program TSV: second epochs, open ids, numeric action types."""
    frame, bad = read_delimited(path, delimiter="\t")
    value, invalid = numeric_value(frame["amount"])
    ts, _ = epoch_to_utc(frame["t"], "s")
    events = pd.DataFrame(
        {
            "platform": "miniapp",
            "user_id": frame["openid"],
            "item_id": frame["goods_id"],
            "action": mapped(frame["type"], {str(k): v for k, v in MINIAPP_ACTIONS.items()}),
            "value": value,
            "text": frame["keyword"],
            "ts": ts,
            "_value_invalid": invalid,
        }
    )
    return with_malformed(events, bad)
