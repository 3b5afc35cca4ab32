"""Douban book + music ratings (GA-DTCDR release): two platforms whose user ids are the same people.

Files are tab-separated ``user  item  rating`` without times: every event gets the contract's
constant timestamp. Book and music item ids overlap numerically, so items are prefixed
``b``/``m``; every user present on both platforms gets an identity link.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from pipelines.adapters.base import EventBatch, SourceData, numeric_value, read_delimited, require, with_malformed
from pipelines.contract import CONSTANT_TS

COLUMNS = ["user", "item", "rating"]
FILES = {"douban_book": ("douban_book_ratings.dat", "b"), "douban_music": ("douban_music_ratings.dat", "m")}


def read(path: Path, book_file: str = "douban_book_ratings.dat") -> SourceData:
    root = require(path, "Douban folder")
    files = {"douban_book": (book_file, "b"), "douban_music": FILES["douban_music"]}
    frames = {
        platform: (prefix, root / name, *read_delimited(require(root / name, "Douban ratings file"), "\t", COLUMNS))
        for platform, (name, prefix) in files.items()
    }
    users = [set(frame["user"].dropna()) for _, _, frame, _ in frames.values()]
    shared = sorted(users[0] & users[1])
    links = pd.DataFrame(
        {"platform_a": "douban_book", "user_id_a": shared, "platform_b": "douban_music", "user_id_b": shared}
    )
    return SourceData(name="douban", batches=_batches(frames), links=links)


def _batches(frames: dict[str, tuple[str, Path, pd.DataFrame, list[str]]]) -> Iterator[EventBatch]:
    for platform, (prefix, path, frame, bad) in frames.items():
        value, invalid = numeric_value(frame["rating"])
        events = pd.DataFrame(
            {
                "platform": platform,
                "user_id": frame["user"],
                "item_id": prefix + frame["item"],
                "action": "rate",
                "value": value,
                "ts": CONSTANT_TS,
                "_value_invalid": invalid,
            }
        )
        yield EventBatch(f"douban/{platform}", path, with_malformed(events, bad))
