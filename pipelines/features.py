"""Feature pipelines: the event lake in, point-in-time offline feature tables out.

Each table is a snapshot series: one row per entity and day with activity, stamped with the
entity's last event of that day (``event_timestamp``), holding only what was known at that
moment. Windows are calendar-day windows ending on the snapshot's day. All computations are
vectorised: cumulative sums per entity plus binary search for window edges, so the cost is
O(n log n) in the number of events.
"""

from __future__ import annotations

import logging
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.contract import ACTIONS

log = logging.getLogger(__name__)

WINDOWS = {"1d": 1, "7d": 7, "30d": 30}
# Actions that say "I like this" (a rating counts when it is at least 3.5 of 5, or has no value).
POSITIVE_ACTIONS = ("like", "favorite", "comment", "share", "cart", "purchase", "rate")
TABLES = ("person_activity", "person_profile", "person_sequence", "item_stats", "user_identity")
DAY_NS = 86_400 * 10**9


@dataclass(frozen=True)
class FeatureConfig:
    """Knobs of the feature pipelines; defaults are the documented behaviour."""

    sequence_length: int = 50
    seen_items_cap: int = 500
    affinity_half_life_days: float = 14.0
    top_categories: int = 10


# -- helpers -------------------------------------------------------------------------------


def _epoch_days(ts: pd.Series) -> np.ndarray:
    return (ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[ns]").astype(np.int64)) // DAY_NS


def _epoch_micros(ts: pd.Series) -> np.ndarray:
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[us]").astype(np.int64)


def _epoch_seconds(ts: pd.Series) -> np.ndarray:
    return ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[s]").astype(np.int64)


class _Cumulative:
    """Per-key cumulative sums over days, answering "sum over (D - w, D]" for any (key, D)."""

    def __init__(self, keys: np.ndarray, days: np.ndarray, values: np.ndarray) -> None:
        order = np.lexsort((days, keys))
        self.keys, self.days = keys[order], days[order]
        values = values[order]
        self.cum = np.cumsum(values, axis=0)
        self.cum = np.vstack([np.zeros((1,) + self.cum.shape[1:], dtype=self.cum.dtype), self.cum])
        # Combined sortable position: key-major, day-minor.
        self.span = int(days.max() - days.min() + 2 * max(WINDOWS.values()) + 2) if len(days) else 1
        self.base = int(days.min()) - max(WINDOWS.values()) - 1 if len(days) else 0
        self.pos = self.keys.astype(np.int64) * self.span + (self.days - self.base)

    def upto(self, keys: np.ndarray, days: np.ndarray) -> np.ndarray:
        """Cumulative value of rows with the same key and day <= ``days``."""
        q = keys.astype(np.int64) * self.span + (days - self.base)
        idx = np.searchsorted(self.pos, q, side="right")
        start = np.searchsorted(self.pos, keys.astype(np.int64) * self.span, side="left")
        return self.cum[idx] - self.cum[start]

    def window(self, keys: np.ndarray, days: np.ndarray, width: int) -> np.ndarray:
        return self.upto(keys, days) - self.upto(keys, days - width)


def _snapshots(frame: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """One row per (keys, day): the last event time of that day for that entity."""
    grouped = frame.groupby([*keys, "day"], sort=False)["ts"].max().reset_index()
    return grouped.rename(columns={"ts": "event_timestamp"})


# -- categories ----------------------------------------------------------------------------

_TOKEN = re.compile(r"[a-z0-9]+")


def item_categories(events: pd.DataFrame, items: pd.DataFrame | None) -> pd.Series:
    """Category of each event's item; the item's platform when the catalog has no category."""
    category: dict[str, str] = {}
    if items is not None and len(items):
        known = items.dropna(subset=["category"]).drop_duplicates("item_id")
        category = dict(zip(known["item_id"], known["category"].astype(str), strict=True))
    mapped = events["item_id"].map(category)
    return mapped.where(mapped.notna(), events["platform"])


def search_categories(texts: pd.Series, items: pd.DataFrame | None) -> pd.Series:
    """Infer a category from search-query text: each query token votes for the categories whose
    name, item titles or tags contain it (weighted by how specific the token is)."""
    if items is None or not len(items) or items["category"].isna().all():
        return pd.Series(None, index=texts.index, dtype=object)
    votes: dict[str, Counter[str]] = defaultdict(Counter)
    known = items.dropna(subset=["category"])
    for column in ("category", "title", "tags"):
        if column not in known:
            continue
        for text, cat in zip(
            known[column].fillna("").astype(str).str.lower(), known["category"].astype(str), strict=True
        ):
            for token in set(_TOKEN.findall(text)):
                votes[token][cat] += 1
    resolved: dict[str, str | None] = {}
    for query in pd.unique(texts.dropna()):
        tally: Counter[str] = Counter()
        for token in _TOKEN.findall(str(query).lower()):
            counts = votes.get(token)
            if counts:
                total = sum(counts.values())
                for cat, n in counts.items():
                    tally[cat] += n / total  # a token used by one category counts fully
        resolved[query] = min(tally, key=lambda c: (-tally[c], c)) if tally else None
    return texts.map(resolved)


def event_categories(events: pd.DataFrame, items: pd.DataFrame | None) -> pd.Series:
    cats = item_categories(events, items)
    search = events["action"].eq("search")
    if search.any():
        cats = cats.where(~search, search_categories(events.loc[search, "text"], items).reindex(events.index))
    return cats


# -- tables --------------------------------------------------------------------------------


def person_activity(events: pd.DataFrame) -> pd.DataFrame:
    """Per (person, platform, day): counts of each action and of all events over the windows."""
    key_frame = events[["person_id", "platform"]]
    codes, uniques = pd.factorize(pd.MultiIndex.from_frame(key_frame))
    actions = pd.Categorical(events["action"], categories=list(ACTIONS)).codes
    onehot = np.zeros((len(events), len(ACTIONS)), dtype=np.int64)
    onehot[np.arange(len(events)), actions] = 1
    days = events["day"].to_numpy()
    cum = _Cumulative(codes, days, onehot)
    snaps = _snapshots(events.assign(_key=codes), ["_key"])
    keys, sdays = snaps["_key"].to_numpy(), snaps["day"].to_numpy()
    out = pd.DataFrame(
        {
            "person_id": uniques.get_level_values(0)[keys],
            "platform": uniques.get_level_values(1)[keys],
            "event_timestamp": snaps["event_timestamp"].to_numpy(),
        }
    )
    for name, width in WINDOWS.items():
        counts = cum.window(keys, sdays, width)
        for i, action in enumerate(ACTIONS):
            out[f"{action}_{name}"] = counts[:, i]
        out[f"events_{name}"] = counts.sum(axis=1)
    return out


def person_profile(events: pd.DataFrame, config: FeatureConfig) -> pa.Table:
    """Per (person, day): 30-day totals, platform mix, decayed category affinity, first/last event."""
    pcodes, persons = pd.factorize(events["person_id"])
    days = events["day"].to_numpy()
    snaps = _snapshots(events.assign(_p=pcodes), ["_p"])
    sp, sd = snaps["_p"].to_numpy(), snaps["day"].to_numpy()
    total = _Cumulative(pcodes, days, np.ones((len(events), 1), dtype=np.int64))
    seconds = _epoch_seconds(events["ts"])
    first = pd.Series(seconds).groupby(pcodes).min().to_numpy()

    # Platform mix over 30 days: every (snapshot, platform the person has used) pair.
    platform_codes, platforms = pd.factorize(events["platform"])
    rows, others, pair_keys = _pairs(pcodes, platform_codes, len(platforms), sp)
    mix = _Cumulative(
        pcodes.astype(np.int64) * len(platforms) + platform_codes, days, np.ones((len(days), 1), np.int64)
    )
    counts = mix.window(pair_keys, sd[rows], 30)[:, 0].astype(float)
    mix_offsets, mix_names, mix_shares, active = _ranked_lists(rows, others, counts, len(sp), None, 0.5)

    # Category affinity: exponentially decayed counts, half-life in days.
    known = events["category"].notna().to_numpy()
    ccodes, categories = pd.factorize(events["category"][known])
    cat_offsets, cat_names, cat_shares = _affinity(
        pcodes[known],
        ccodes,
        days[known],
        sp,
        sd,
        len(categories),
        config.affinity_half_life_days,
        config.top_categories,
    )
    return pa.table(
        {
            "person_id": pa.array(persons[sp], pa.string()),
            "event_timestamp": pa.array(snaps["event_timestamp"].to_numpy(), pa.timestamp("us", tz="UTC")),
            "events_total_30d": pa.array(total.window(sp, sd, 30)[:, 0], pa.int64()),
            "active_platforms_30d": pa.array(active, pa.int64()),
            "platform_names": _list(mix_offsets, np.asarray(platforms, dtype=object)[mix_names], pa.string()),
            "platform_shares": _list(mix_offsets, mix_shares, pa.float32()),
            "top_categories": _list(cat_offsets, np.asarray(categories, dtype=object)[cat_names], pa.string()),
            "category_affinity": _list(cat_offsets, cat_shares, pa.float32()),
            "first_event_ts": pa.array(first[sp], pa.int64()),
            "last_event_ts": pa.array(_epoch_seconds(snaps["event_timestamp"]), pa.int64()),
        }
    )


def _list(offsets: np.ndarray, values: np.ndarray, type_: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values, type=type_))


def _pairs(
    person_codes: np.ndarray, other_codes: np.ndarray, n_other: int, snap_person: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Expand snapshots to (snapshot row, other) for every ``other`` the person has events with."""
    pair = np.unique(person_codes.astype(np.int64) * n_other + other_codes)
    pp, po = pair // n_other, pair % n_other
    starts = np.searchsorted(pp, snap_person, side="left")
    ends = np.searchsorted(pp, snap_person, side="right")
    counts = ends - starts
    rows = np.repeat(np.arange(len(snap_person)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    idx = np.repeat(starts, counts) + offsets
    return rows, po[idx], pair[idx]


def _affinity(
    pcodes: np.ndarray,
    ccodes: np.ndarray,
    days: np.ndarray,
    sp: np.ndarray,
    sd: np.ndarray,
    n_cat: int,
    half_life: float,
    top: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not len(ccodes):
        return np.zeros(len(sp) + 1, dtype=np.int64), np.array([], dtype=np.int64), np.array([], dtype=np.float32)
    rows, cats, pair_keys = _pairs(pcodes, ccodes, n_cat, sp)
    # sum_d n_d 2^{-(D-d)/h} = 2^{-(D-d0)/h} * cumsum(n_d 2^{(d-d0)/h}); d0 = first day overall.
    # Exponents are capped so that spans of decades do not overflow (older terms are ~0 anyway).
    d0 = days.min()
    weight = np.exp2(np.minimum((days - d0) / half_life, 1000.0))
    cum = _Cumulative(pcodes.astype(np.int64) * n_cat + ccodes, days, weight[:, None])
    decayed = cum.upto(pair_keys, sd[rows])[:, 0] * np.exp2(-np.minimum((sd[rows] - d0) / half_life, 1000.0))
    offsets, names, shares, _ = _ranked_lists(rows, cats, decayed, len(sp), top, 1e-12)
    return offsets, names, shares


def _ranked_lists(
    rows: np.ndarray, others: np.ndarray, values: np.ndarray, n_rows: int, top: int | None, min_value: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row, the ``others`` by value (descending) and their shares of the row's total, as
    list offsets + flat arrays; also how many others each row has."""
    keep = values >= min_value
    rows, others, values = rows[keep], others[keep], values[keep]
    totals = np.bincount(rows, weights=values, minlength=n_rows)
    order = np.lexsort((others, -values, rows))
    rows, others, values = rows[order], others[order], values[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    active = np.bincount(rows, minlength=n_rows)
    if top is not None:
        sel = rank < top
        rows, others, values = rows[sel], others[sel], values[sel]
    shares = np.round(values / np.maximum(totals[rows], 1e-12), 6).astype(np.float32)
    offsets = np.searchsorted(rows, np.arange(n_rows + 1))
    return offsets, others, shares, active


def person_sequence(events: pd.DataFrame, config: FeatureConfig) -> pa.Table:
    """Per (person, day): the last N item events up to that day's last event, oldest first."""
    with_items = events[events["item_id"].notna()]
    # Sort by person, time, event id (ties in time are common: sources without time).
    person_codes, _ = pd.factorize(with_items["person_id"])
    id_rank = pd.factorize(with_items["event_id"], sort=True)[0]
    order = np.lexsort((id_rank, _epoch_micros(with_items["ts"]), person_codes))
    ev = with_items.iloc[order].reset_index(drop=True)
    pcodes, persons = pd.factorize(ev["person_id"])
    n = len(ev)
    if n == 0:
        return _empty_sequence()
    seconds = _epoch_seconds(ev["ts"])
    days = ev["day"].to_numpy()
    # The last event of each (person, day) ends a snapshot.
    last = np.ones(n, dtype=bool)
    last[:-1] = (pcodes[1:] != pcodes[:-1]) | (days[1:] != days[:-1])
    ends = np.flatnonzero(last)
    person_start = np.searchsorted(pcodes, pcodes[ends], side="left")
    starts = np.maximum(person_start, ends - config.sequence_length + 1)
    lengths = ends - starts + 1
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    idx = np.repeat(starts, lengths) + (np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths))
    gaps = (np.repeat(seconds[ends], lengths) - seconds[idx]).astype(np.float32)

    def listed(values: np.ndarray, type_: pa.DataType) -> pa.Array:
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, type=type_))

    # Seen items: the first events of each (person, item), up to the snapshot, most recent kept.
    item_codes = pd.factorize(ev["item_id"])[0].astype(np.int64)
    first = np.flatnonzero(
        ~pd.Series(pcodes.astype(np.int64) * (item_codes.max() + 1) + item_codes).duplicated().to_numpy()
    )
    hi = np.searchsorted(first, ends, side="right")
    lo = np.maximum(np.searchsorted(first, person_start, side="left"), hi - config.seen_items_cap)
    seen_lengths = hi - lo
    seen_offsets = np.concatenate([[0], np.cumsum(seen_lengths)]).astype(np.int32)
    seen_idx = first[
        np.repeat(lo, seen_lengths) + (np.arange(seen_offsets[-1]) - np.repeat(seen_offsets[:-1], seen_lengths))
    ]
    seen = pa.ListArray.from_arrays(
        pa.array(seen_offsets), pa.array(ev["item_id"].to_numpy()[seen_idx], type=pa.string())
    )

    return pa.table(
        {
            "person_id": pa.array(persons[pcodes[ends]], type=pa.string()),
            "event_timestamp": pa.array(ev["ts"].to_numpy()[ends], type=pa.timestamp("us", tz="UTC")),
            "seq_items": listed(ev["item_id"].to_numpy()[idx], pa.string()),
            "seq_actions": listed(ev["action"].to_numpy()[idx], pa.string()),
            "seq_platforms": listed(ev["platform"].to_numpy()[idx], pa.string()),
            "seq_gaps": listed(gaps, pa.float32()),
            "seq_last_ts": pa.array(seconds[ends], type=pa.int64()),
            "seen_items": seen,
        }
    )


def _empty_sequence() -> pa.Table:
    return pa.table(
        {
            "person_id": pa.array([], pa.string()),
            "event_timestamp": pa.array([], pa.timestamp("us", tz="UTC")),
            "seq_items": pa.array([], pa.list_(pa.string())),
            "seq_actions": pa.array([], pa.list_(pa.string())),
            "seq_platforms": pa.array([], pa.list_(pa.string())),
            "seq_gaps": pa.array([], pa.list_(pa.float32())),
            "seq_last_ts": pa.array([], pa.int64()),
            "seen_items": pa.array([], pa.list_(pa.string())),
        }
    )


def positive_mask(events: pd.DataFrame) -> np.ndarray:
    action = events["action"].to_numpy()
    value = events["value"].to_numpy(dtype=float)
    positive = np.isin(action, POSITIVE_ACTIONS)
    low_rating = (action == "rate") & ~np.isnan(value) & (value < 3.5)
    return positive & ~low_rating


def item_stats(events: pd.DataFrame, items: pd.DataFrame | None) -> pd.DataFrame:
    """Per (item, day): views, positive actions, purchases and person-days over windows."""
    ev = events[events["item_id"].notna()]
    icodes, item_ids = pd.factorize(ev["item_id"])
    days = ev["day"].to_numpy()
    action = ev["action"].to_numpy()
    # Person-days: an item's distinct persons per day, summed over the window.
    first_of_day = ~pd.DataFrame({"i": icodes, "d": days, "p": ev["person_id"].to_numpy()}).duplicated().to_numpy()
    values = np.stack([action == "view", positive_mask(ev), action == "purchase", first_of_day], axis=1).astype(
        np.int64
    )
    cum = _Cumulative(icodes, days, values)
    snaps = _snapshots(ev.assign(_i=icodes), ["_i"])
    si, sd = snaps["_i"].to_numpy(), snaps["day"].to_numpy()
    out = pd.DataFrame({"item_id": item_ids[si], "event_timestamp": snaps["event_timestamp"].to_numpy()})
    platform_of = ev.groupby(icodes)["platform"].agg(lambda s: s.value_counts().index[0])
    out["item_platform"] = platform_of.reindex(si).to_numpy()
    if items is not None and len(items):
        catalog = items.drop_duplicates("item_id").set_index("item_id")
        home = catalog["platform"].reindex(out["item_id"]).to_numpy()
        out["item_platform"] = np.where(pd.notna(home), home, out["item_platform"])
    out["item_category"] = item_categories(out.rename(columns={"item_platform": "platform"}), items).to_numpy()
    for name, width in WINDOWS.items():
        counts = cum.window(si, sd, width)
        for j, kind in enumerate(("views", "positives", "purchases", "person_days")):
            out[f"{kind}_{name}"] = counts[:, j]
    for name in ("7d", "30d"):
        views = out[f"views_{name}"].to_numpy()
        out[f"conversion_{name}"] = np.where(views > 0, out[f"purchases_{name}"] / np.maximum(views, 1), 0.0).astype(
            np.float32
        )
    return out


def user_identity(persons: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
    """Each pseudonymised account's person, stamped with the account's first event (or the
    earliest event at all for accounts known only from links)."""
    first = events.groupby(["platform", "user_id"])["ts"].min()
    key = pd.MultiIndex.from_frame(persons[["platform", "user_id"]])
    stamp = first.reindex(key).to_numpy()
    earliest = events["ts"].min() if len(events) else pd.Timestamp("2000-01-01", tz="UTC")
    frame = persons[persons["platform"] != "_person"][["user_id", "person_id"]].copy()
    mask = (persons["platform"] != "_person").to_numpy()
    frame["event_timestamp"] = pd.Series(stamp[mask]).fillna(earliest).to_numpy()
    return frame.reset_index(drop=True)


def compute_features(
    events: pd.DataFrame,
    items: pd.DataFrame | None,
    persons: pd.DataFrame | None,
    config: FeatureConfig | None = None,
) -> dict[str, pa.Table]:
    """All offline feature tables from canonical events (already identity-resolved)."""
    config = config or FeatureConfig()
    events = events.reset_index(drop=True).copy()
    events["day"] = _epoch_days(events["ts"])
    events["category"] = event_categories(events, items)
    tables = {
        "person_activity": pa.Table.from_pandas(person_activity(events), preserve_index=False),
        "person_profile": person_profile(events, config),
        "person_sequence": person_sequence(events, config),
        "item_stats": pa.Table.from_pandas(item_stats(events, items), preserve_index=False),
    }
    if persons is not None:
        tables["user_identity"] = pa.Table.from_pandas(user_identity(persons, events), preserve_index=False)
    return {name: _utc_micros(table) for name, table in tables.items()}


def _utc_micros(table: pa.Table) -> pa.Table:
    i = table.schema.get_field_index("event_timestamp")
    return table.set_column(i, "event_timestamp", table.column(i).cast(pa.timestamp("us", tz="UTC")))


def write_tables(tables: dict[str, pa.Table], folder: Path) -> dict[str, int]:
    """Write each table to ``folder/<name>.parquet`` atomically; return row counts."""
    folder.mkdir(parents=True, exist_ok=True)
    counts = {}
    for name, table in tables.items():
        tmp = folder / f".{name}.parquet.tmp"
        pq.write_table(table, tmp)
        tmp.replace(folder / f"{name}.parquet")
        counts[name] = table.num_rows
    return counts
