"""The canonical data contract (v1): schemas, the action vocabulary, validation rules.

Every adapter emits frames with :data:`EVENT_COLUMNS`; everything downstream reads only
these. :func:`validate_events` splits a frame into accepted rows and quarantined rows, each
quarantined row carrying one reason code (the first rule it breaks, in the order below).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

ACTIONS: tuple[str, ...] = (
    "view",
    "click",
    "like",
    "favorite",
    "comment",
    "share",
    "search",
    "cart",
    "purchase",
    "rate",
)
ACTION_INDEX = {a: i for i, a in enumerate(ACTIONS)}

EVENT_COLUMNS: list[str] = [
    "event_id",
    "platform",
    "user_id",
    "person_id",
    "item_id",
    "action",
    "value",
    "text",
    "ts",
]
ITEM_COLUMNS: list[str] = ["item_id", "platform", "category", "title", "tags"]
LINK_COLUMNS: list[str] = ["platform_a", "user_id_a", "platform_b", "user_id_b"]

TS_TYPE = pa.timestamp("us", tz="UTC")
EVENTS_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("platform", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("person_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string()),
        pa.field("action", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("text", pa.string()),
        pa.field("ts", TS_TYPE, nullable=False),
    ]
)
ITEMS_SCHEMA = pa.schema(
    [
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("platform", pa.string(), nullable=False),
        pa.field("category", pa.string()),
        pa.field("title", pa.string()),
        pa.field("tags", pa.string()),
    ]
)

PLATFORM_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")

# Quarantine reason codes, in the order the rules are checked.
REASONS: tuple[str, ...] = (
    "malformed_row",  # the adapter could not parse the raw row at all
    "missing_platform",
    "invalid_platform",
    "missing_user_id",
    "unknown_action",
    "missing_item_id",
    "missing_search_text",
    "invalid_ts",
    "ts_out_of_range",
    "ts_in_future",
    "invalid_value",
    "bot_suspected",
)

# Sources without event time use one constant timestamp for all their events.
CONSTANT_TS = pd.Timestamp("2020-01-01T00:00:00Z")


@dataclass(frozen=True)
class ValidationRules:
    """Limits the contract checks apply; defaults suit real logs."""

    earliest_ts: pd.Timestamp = pd.Timestamp("1995-01-01T00:00:00Z")
    future_tolerance: pd.Timedelta = pd.Timedelta(days=1)
    # Browsing actions per (platform, user) per minute above which the user is treated as a bot.
    # Ratings are excluded: people rate dozens of items in a minute when onboarding.
    bot_actions_per_minute: int = 60
    bot_actions: tuple[str, ...] = ("view", "click", "search")


def empty_events() -> pd.DataFrame:
    return EVENTS_SCHEMA.empty_table().to_pandas()


def conform_events(frame: pd.DataFrame) -> pd.DataFrame:
    """Give an adapter's frame every canonical column with canonical dtypes (no row is dropped)."""
    out = pd.DataFrame(index=frame.index)
    for column in EVENT_COLUMNS:
        if column == "ts":
            out["ts"] = _to_utc(frame["ts"]) if "ts" in frame else pd.NaT
        elif column == "value":
            out["value"] = pd.to_numeric(frame["value"], errors="coerce") if "value" in frame else np.nan
        else:
            out[column] = _as_object(frame[column]) if column in frame else None
    return out


def _as_object(series: pd.Series) -> pd.Series:
    """Object-dtype strings with None for missing (readers already trimmed blanks, see
    :func:`clean_strings`)."""
    if series.dtype == object:
        return series.where(series.notna(), None)
    return series.astype(object).where(series.notna(), None)


def clean_strings(table: pa.Table) -> pa.Table:
    """Trim blanks around every string value and turn empty strings into nulls (in Arrow)."""
    columns = []
    for column in table.columns:
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            trimmed = pc.utf8_trim_whitespace(column)
            column = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, column.type), trimmed)
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


def utc_dates(ts: pd.Series) -> pd.Series:
    """``YYYY-MM-DD`` of each UTC timestamp (the lake's partition key), formatted once per day."""
    days = ts.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[D]")
    uniques, codes = np.unique(days, return_inverse=True)
    names = np.datetime_as_string(uniques, unit="D").astype(object)
    return pd.Series(names[codes] if len(days) else np.array([], dtype=object), index=ts.index, dtype=object)


def _to_utc(series: pd.Series) -> pd.Series:
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC")
    return pd.to_datetime(series, utc=True, errors="coerce")


def validate_events(
    events: pd.DataFrame, now: pd.Timestamp, rules: ValidationRules | None = None
) -> tuple[pd.DataFrame, pd.Series]:
    """Return ``(events, reason)``: ``reason`` is None where the row honours the contract.

    ``events`` must be conformed (:func:`conform_events`); invalid numeric values come in as
    an extra boolean column ``_value_invalid`` when the adapter detected them.
    """
    rules = rules or ValidationRules()
    reason = pd.Series(np.full(len(events), None, dtype=object), index=events.index)

    def flag(mask: pd.Series | np.ndarray, code: str) -> None:
        hit = np.asarray(mask, dtype=bool) & reason.isna().to_numpy()
        if hit.any():
            reason[hit] = code

    if "_malformed" in events:
        flag(events["_malformed"].fillna(False), "malformed_row")
    platform = events["platform"]
    flag(platform.isna(), "missing_platform")
    valid_names = {p for p in pd.unique(platform.dropna()) if PLATFORM_PATTERN.match(str(p))}
    flag(platform.notna() & ~platform.isin(valid_names), "invalid_platform")
    flag(events["user_id"].isna(), "missing_user_id")
    action = events["action"]
    flag(~action.isin(ACTIONS), "unknown_action")
    is_search = action.eq("search")
    flag(events["item_id"].isna() & ~is_search, "missing_item_id")
    flag(is_search & events["text"].isna(), "missing_search_text")
    ts = events["ts"]
    flag(ts.isna(), "invalid_ts")
    flag(ts < rules.earliest_ts, "ts_out_of_range")
    flag(ts > now + rules.future_tolerance, "ts_in_future")
    value = events["value"]
    invalid_value = ~np.isfinite(value.fillna(0.0).to_numpy(dtype=float))
    if "_value_invalid" in events:
        invalid_value |= events["_value_invalid"].fillna(False).to_numpy(dtype=bool)
    flag(invalid_value, "invalid_value")
    return events, reason


def bot_mask(events: pd.DataFrame, rules: ValidationRules | None = None) -> pd.Series:
    """True for every event of a (platform, user) that exceeds the browsing-rate limit in any minute."""
    rules = rules or ValidationRules()
    browsing = events[events["action"].isin(rules.bot_actions)]
    if browsing.empty:
        return pd.Series(False, index=events.index)
    minute = browsing["ts"].dt.floor("min")
    per_minute = browsing.groupby([browsing["platform"], browsing["user_id"], minute], sort=False).size()
    over = per_minute[per_minute > rules.bot_actions_per_minute]
    if over.empty:
        return pd.Series(False, index=events.index)
    bots = set(zip(over.index.get_level_values(0), over.index.get_level_values(1), strict=True))
    keys = pd.MultiIndex.from_arrays([events["platform"], events["user_id"]])
    return pd.Series(keys.isin(list(bots)), index=events.index)


CONTENT_COLUMNS = ["platform", "user_id", "item_id", "action", "value", "text", "ts"]


def content_event_ids(events: pd.DataFrame) -> pd.Series:
    """A deterministic id from a row's content: ``h`` + BLAKE2b-128 of its canonical fields.

    Hash the pseudonymised user id, never the raw one, so an event id reveals nothing.
    Fields are joined with a unit separator; a missing field is a NUL, so "" and missing differ.
    """
    if events.empty:
        return pd.Series([], index=events.index, dtype=object)
    parts = [
        pa.array(events[c].to_numpy(dtype=object), type=pa.string(), from_pandas=True)
        for c in ("platform", "user_id", "item_id", "action", "text")
    ]
    value = pc.cast(pa.array(events["value"].to_numpy(dtype=float), from_pandas=True), pa.string())
    ts = pc.cast(
        pa.array(
            events["ts"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy().astype("datetime64[us]").astype(np.int64)
        ),
        pa.string(),
    )
    joined = pc.binary_join_element_wise(*parts, value, ts, "\x1f", null_handling="replace", null_replacement="\x00")
    digests = [
        "h" + hashlib.blake2b(v.encode(), digest_size=16).hexdigest() for v in joined.to_numpy(zero_copy_only=False)
    ]
    return pd.Series(digests, index=events.index, dtype=object)
