"""MovieLens latest-small: ratings (``rate`` with the rating as value) and tags (``comment`` with
the tag as text) as two behaviours; titles and genres as item text (first genre = category)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from pipelines.adapters.base import (
    EventBatch,
    SourceData,
    epoch_to_utc,
    numeric_value,
    read_delimited,
    require,
    with_malformed,
)

PLATFORM = "movielens"


def read(path: Path) -> SourceData:
    root = require(path, "MovieLens folder")
    movies, _ = read_delimited(require(root / "movies.csv", "movies.csv"))
    items = pd.DataFrame(
        {
            "item_id": movies["movieId"],
            "platform": PLATFORM,
            "category": movies["genres"].str.split("|").str[0],
            "title": movies["title"],
            "tags": movies["genres"],
        }
    )
    return SourceData(name="movielens", batches=_batches(root), items=items)


def _batches(root: Path) -> Iterator[EventBatch]:
    ratings_path = require(root / "ratings.csv", "ratings.csv")
    ratings, bad = read_delimited(ratings_path)
    value, invalid = numeric_value(ratings["rating"])
    ts, _ = epoch_to_utc(ratings["timestamp"], "s")
    events = pd.DataFrame(
        {
            "platform": PLATFORM,
            "user_id": ratings["userId"],
            "item_id": ratings["movieId"],
            "action": "rate",
            "value": value,
            "ts": ts,
            "_value_invalid": invalid,
        }
    )
    yield EventBatch("movielens/ratings", ratings_path, with_malformed(events, bad))
    tags_path = root / "tags.csv"
    if tags_path.exists():
        tags, bad = read_delimited(tags_path)
        ts, _ = epoch_to_utc(tags["timestamp"], "s")
        events = pd.DataFrame(
            {
                "platform": PLATFORM,
                "user_id": tags["userId"],
                "item_id": tags["movieId"],
                "action": "comment",
                "text": tags["tag"],
                "ts": ts,
            }
        )
        yield EventBatch("movielens/tags", tags_path, with_malformed(events, bad))
