"""Adapter for the synthetic raw logs written by :func:`pipelines.synthetic.generate`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa

from pipelines.adapters.base import (
    ISO_SECONDS,
    EventBatch,
    SourceData,
    epoch_ints_to_utc,
    epoch_to_utc_array,
    local_to_utc_array,
    mapped_array,
    numeric_value_array,
    per_value,
    prefetched,
    read_delimited_table,
    read_jsonl_table,
    require,
    with_malformed_table,
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
    jobs = [("synthetic/web", shard, web_events) for shard in sorted((root / "web").glob("*.jsonl"))]
    if (root / "app" / "events.csv").exists():
        jobs.append(("synthetic/app", root / "app" / "events.csv", app_events))
    if (root / "miniapp" / "events.tsv").exists():
        jobs.append(("synthetic/miniapp", root / "miniapp" / "events.tsv", miniapp_events))
    return prefetched(jobs)


def web_events(path: Path) -> pa.Table:
    """Clickstream JSON lines: millisecond epochs, cookie ids, short action codes."""
    frame, bad = read_jsonl_table(path, WEB_SCHEMA)
    events = pa.table(
        {
            "event_id": frame["eid"],
            "platform": pa.repeat(pa.scalar("web", pa.string()), frame.num_rows),
            "user_id": frame["cookie"],
            "item_id": frame["sku"],
            "action": mapped_array(frame["act"], WEB_ACTIONS),
            "value": frame["dwell"],
            "text": frame["q"],
            "ts": epoch_ints_to_utc(frame["ts_ms"], "ms"),
        }
    )
    return with_malformed_table(events, bad)


def app_events(path: Path) -> pa.Table:
    """App CSV: local wall-clock time plus an IANA timezone column, account ids, long names."""
    frame, bad = read_delimited_table(path, use_threads=False)
    value, invalid = numeric_value_array(frame["qty"])
    events = pa.table(
        {
            "platform": per_value(frame["os"], str.lower),
            "user_id": frame["account_id"],
            "item_id": frame["product_id"],
            "action": mapped_array(frame["event"], APP_ACTIONS),
            "value": value,
            "text": frame["query"],
            "ts": local_to_utc_array(frame["event_time"], frame["tz"], fmt=ISO_SECONDS),
            "_value_invalid": invalid,
        }
    )
    return with_malformed_table(events, bad)


def miniapp_events(path: Path) -> pa.Table:
    """Mini-program TSV: second epochs, open ids, numeric action types."""
    frame, bad = read_delimited_table(path, delimiter="\t", use_threads=False)
    value, invalid = numeric_value_array(frame["amount"])
    events = pa.table(
        {
            "platform": pa.repeat(pa.scalar("miniapp", pa.string()), frame.num_rows),
            "user_id": frame["openid"],
            "item_id": frame["goods_id"],
            "action": mapped_array(frame["type"], {str(k): v for k, v in MINIAPP_ACTIONS.items()}),
            "value": value,
            "text": frame["keyword"],
            "ts": epoch_to_utc_array(frame["t"], "s"),
            "_value_invalid": invalid,
        }
    )
    return with_malformed_table(events, bad)
