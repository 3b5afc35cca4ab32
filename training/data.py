"""Interactions, the evaluation split, vocabularies and model inputs.

Protocol (README "Evaluation"): an interaction is a (person, item) pair, first seen at its
first positive event (ratings count when >= 3.5). When time is known, each person's last new
item is the test item and up to three before it the validation items (leave-last-out, at least
one pair left to train on); the training view holds the person's events before the first
validation item, the test view the events before the test item. When time is unknown (one
constant timestamp), a seeded random 20% of each person's pairs is the test set and 10% of the
rest the validation set. With a target
platform, only that platform's pairs are held out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipelines.contract import ACTIONS
from pipelines.features import positive_mask
from training.vae import PAD, UNKNOWN

VALID_ITEMS = 3  # validation items per person when time is known


def interactions(events: pd.DataFrame) -> pd.DataFrame:
    """(person, item) pairs of positive item events: first time, platform, number of events."""
    ev = events[events["item_id"].notna()]
    ev = ev[positive_mask(ev) | ev["action"].isin(["view", "click"]).to_numpy()]
    ev = ev.sort_values(["ts", "event_id"], kind="stable")
    pairs = ev.groupby(["person_id", "item_id"], sort=False).agg(
        ts=("ts", "first"), platform=("platform", "first"), event_id=("event_id", "first"), n=("ts", "size")
    )
    return pairs.reset_index()


@dataclass
class Split:
    """Held-out pairs and the event views models may see."""

    train_events: pd.DataFrame  # what training (and validation features) may use
    test_events: pd.DataFrame  # what test-time features may use (train + validation period)
    valid: pd.DataFrame  # held-out pairs: person_id, item_id, platform, ts
    test: pd.DataFrame
    time_known: bool
    target_platform: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


def split(events: pd.DataFrame, seed: int = 0, target_platform: str | None = None, min_pairs: int = 3) -> Split:
    """Split ``events`` per the protocol above (deterministic for a seed)."""
    pairs = interactions(events)
    time_known = events["ts"].nunique() > 1
    eligible = pairs if target_platform is None else pairs[pairs["platform"] == target_platform]
    counts = eligible.groupby("person_id")["item_id"].transform("size")
    eligible = eligible[counts >= min_pairs]
    if time_known:
        valid, test, train_events, test_events = _temporal(events, eligible)
    else:
        valid, test, train_events, test_events = _random(events, eligible, seed)
    info = {
        "protocol": "leave-last-out" if time_known else "random-80/20",
        "persons": int(events["person_id"].nunique()),
        "test_persons": int(test["person_id"].nunique()),
        "valid_persons": int(valid["person_id"].nunique()),
        "test_pairs": len(test),
        "train_events": len(train_events),
    }
    return Split(train_events, test_events, valid, test, time_known, target_platform, info)


def _temporal(
    events: pd.DataFrame, eligible: pd.DataFrame
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    ranked = eligible.sort_values(["person_id", "ts", "event_id"], ascending=[True, False, False], kind="stable")
    rank = ranked.groupby("person_id").cumcount()
    # Up to VALID_ITEMS validation items per person, keeping at least one pair to train on:
    # the re-ranker learns from them, and one item per person is too few positives.
    n_valid = (ranked.groupby("person_id")["item_id"].transform("size") - 2).clip(1, VALID_ITEMS)
    test = ranked[rank == 0][["person_id", "item_id", "platform", "ts"]]
    valid = ranked[(rank >= 1) & (rank <= n_valid)][["person_id", "item_id", "platform", "ts"]]
    cut_test = test.set_index("person_id")["ts"]
    cut_valid = valid.groupby("person_id")["ts"].min()
    far = pd.Timestamp.max.tz_localize("UTC")
    person = events["person_id"]
    test_events = events[events["ts"] < person.map(cut_test).fillna(far)]
    train_events = events[events["ts"] < person.map(cut_valid).fillna(far)]
    return valid.reset_index(drop=True), test.reset_index(drop=True), train_events, test_events


def _random(
    events: pd.DataFrame, eligible: pd.DataFrame, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    shuffled = eligible.iloc[rng.permutation(len(eligible))].sort_values("person_id", kind="stable")
    rank = shuffled.groupby("person_id").cumcount().to_numpy()
    size = shuffled.groupby("person_id")["item_id"].transform("size").to_numpy()
    n_test = np.maximum(1, np.round(0.2 * size)).astype(int)
    n_valid = np.maximum(1, np.round(0.1 * (size - n_test))).astype(int)
    is_test = rank < n_test
    is_valid = ~is_test & (rank < n_test + n_valid)
    cols = ["person_id", "item_id", "platform", "ts"]
    test, valid = shuffled[is_test][cols], shuffled[is_valid][cols]
    key = pd.MultiIndex.from_frame(events[["person_id", "item_id"]].fillna(""))
    held_test = key.isin(pd.MultiIndex.from_frame(test[["person_id", "item_id"]]))
    held_valid = key.isin(pd.MultiIndex.from_frame(valid[["person_id", "item_id"]]))
    return (
        valid.reset_index(drop=True),
        test.reset_index(drop=True),
        events[~held_test & ~held_valid],
        events[~held_test],
    )


SEQUENCE_COLUMNS = ("seq_items", "seq_actions", "seq_platforms", "seq_gaps", "seen_items")


def sequence_rows(frame: pd.DataFrame) -> list[dict[str, Any] | None]:
    """``person_sequence`` rows (the VAE's inputs) from a frame of its columns, as lists; None
    for a person without a sequence (retrieval found no row)."""
    rows: list[dict[str, Any] | None] = []
    for values in zip(*(frame[c] for c in SEQUENCE_COLUMNS), strict=True):
        if not isinstance(values[0], list | np.ndarray):
            rows.append(None)
            continue
        rows.append(
            {
                c: list(v) if isinstance(v, list | np.ndarray) else []
                for c, v in zip(SEQUENCE_COLUMNS, values, strict=True)
            }
        )
    return rows


def without_platforms(events: pd.DataFrame, keep: str) -> pd.DataFrame:
    """Only one platform's events (the single-platform arm of the cross-platform experiment)."""
    return events[events["platform"] == keep]


@dataclass
class Vocab:
    """Items (decoder outputs, in order), platforms; encoder indices add the pad/unknown slots."""

    items: list[str]
    platforms: list[str]
    item_platform: list[str]  # home platform of each item
    item_category: list[str | None]

    def __post_init__(self) -> None:
        self.item_index = {item: i for i, item in enumerate(self.items)}
        self.platform_index = {p: i for i, p in enumerate(self.platforms)}
        self.action_index = {a: i for i, a in enumerate(ACTIONS)}

    @classmethod
    def build(cls, train_pairs: pd.DataFrame, items: pd.DataFrame | None, min_count: int = 1) -> Vocab:
        counts = train_pairs.groupby("item_id").size()
        kept = counts[counts >= min_count].index
        frame = train_pairs[train_pairs["item_id"].isin(kept)].drop_duplicates("item_id").sort_values("item_id")
        category: dict[str, str] = {}
        if items is not None and len(items):
            known = items.dropna(subset=["category"]).drop_duplicates("item_id")
            category = dict(zip(known["item_id"], known["category"], strict=True))
        return cls(
            items=frame["item_id"].tolist(),
            platforms=sorted(train_pairs["platform"].unique()),
            item_platform=frame["platform"].tolist(),
            item_category=[category.get(i) for i in frame["item_id"]],
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "platforms": self.platforms,
            "item_platform": self.item_platform,
            "item_category": self.item_category,
        }

    @property
    def n_items(self) -> int:
        return len(self.items)

    def platform_mask(self, platform: str | None) -> np.ndarray:
        """True for the items of ``platform`` (all items when None)."""
        if platform is None:
            return np.ones(self.n_items, dtype=bool)
        return np.asarray(self.item_platform) == platform

    def bag(self, item_lists: list[list[str]]) -> np.ndarray:
        """Multi-hot rows over decoder items (unknown items are skipped)."""
        out = np.zeros((len(item_lists), self.n_items), dtype=np.float32)
        for r, items in enumerate(item_lists):
            idx = [self.item_index[i] for i in items if i in self.item_index]
            out[r, idx] = 1.0
        return out

    def encode_sequences(self, rows: list[dict[str, Any] | None], length: int) -> dict[str, np.ndarray]:
        """Encoder inputs (B, T) from ``person_sequence`` rows (oldest first; kept: the last T)."""
        b = len(rows)
        items = np.full((b, length), PAD, dtype=np.int64)
        actions = np.full((b, length), PAD, dtype=np.int64)
        platforms = np.full((b, length), PAD, dtype=np.int64)
        gaps = np.zeros((b, length), dtype=np.float32)
        for r, row in enumerate(rows):
            if row is None or row.get("seq_items") is None or len(row["seq_items"]) == 0:
                continue
            seq = list(row["seq_items"])[-length:]
            n = len(seq)
            items[r, :n] = [self.item_index[i] + 2 if i in self.item_index else UNKNOWN for i in seq]
            actions[r, :n] = [self.action_index.get(a, -1) + 1 for a in list(row["seq_actions"])[-length:]]
            platforms[r, :n] = [
                self.platform_index[p] + 2 if p in self.platform_index else UNKNOWN
                for p in list(row["seq_platforms"])[-length:]
            ]
            gaps[r, :n] = np.asarray(list(row["seq_gaps"])[-length:], dtype=np.float32)
        return {"items": items, "actions": actions, "platforms": platforms, "gaps": gaps, "bag": self.encode_bags(rows)}

    def encode_bags(self, rows: list[dict[str, Any] | None]) -> np.ndarray:
        """Encoder indices (B, S) of every item each row has seen (``seen_items``, else the
        sequence's items), unknown items as UNKNOWN, padded with PAD to the longest row."""
        bags, index = [], self.item_index
        for row in rows:
            seen = None if row is None else row.get("seen_items")
            if seen is None or len(seen) == 0:
                seen = [] if row is None or row.get("seq_items") is None else row["seq_items"]
            bags.append([index[i] + 2 if i in index else UNKNOWN for i in dict.fromkeys(seen)])
        out = np.full((len(rows), max([1, *map(len, bags)])), PAD, dtype=np.int64)
        for r, bag in enumerate(bags):
            out[r, : len(bag)] = bag
        return out
