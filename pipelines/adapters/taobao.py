"""Taobao UserBehavior (Tianchi 649): ``user,item,category,behavior,timestamp`` without a header.

Behaviours ``pv/cart/fav/buy`` map to ``view/cart/favorite/purchase``; the category column
becomes the items table.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from pipelines.adapters.base import (
    AdapterError,
    EventBatch,
    SourceData,
    epoch_to_utc,
    mapped,
    read_delimited,
    require,
    with_malformed,
)

BEHAVIOURS = {"pv": "view", "cart": "cart", "fav": "favorite", "buy": "purchase"}
COLUMNS = ["user", "item", "category", "behavior", "timestamp"]


def read(path: Path) -> SourceData:
    root = require(path, "Taobao folder")
    files = sorted(root.glob("*.csv")) if root.is_dir() else [root]
    if not files:
        raise AdapterError(f"no UserBehavior CSV in {root}")
    frames = [(f, *read_delimited(f, ",", COLUMNS)) for f in files]
    items = (
        pd.concat(
            [
                pd.DataFrame({"item_id": fr["item"], "platform": "taobao", "category": fr["category"]})
                for _, fr, _ in frames
            ]
        )
        .dropna(subset=["item_id"])
        .drop_duplicates("item_id", keep="last")
    )
    return SourceData(name="taobao", batches=_batches(frames), items=items)


def _batches(frames: list[tuple[Path, pd.DataFrame, list[str]]]) -> Iterator[EventBatch]:
    for path, frame, bad in frames:
        ts, _ = epoch_to_utc(frame["timestamp"], "s")
        events = pd.DataFrame(
            {
                "platform": "taobao",
                "user_id": frame["user"],
                "item_id": frame["item"],
                "action": mapped(frame["behavior"], BEHAVIOURS),
                "ts": ts,
            }
        )
        yield EventBatch("taobao", path, with_malformed(events, bad))
