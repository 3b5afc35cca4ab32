"""The canonical data contract (v1): schemas, the action vocabulary, validation rules.

Every adapter emits frames with :data:`EVENT_COLUMNS`; everything downstream reads only
these. :func:`validate_events` splits a frame into accepted rows and quarantined rows, each
quarantined row carrying one reason code (the first rule it breaks, in the order below).

Ingest works on Arrow tables (:func:`conform_table`, :func:`reason_codes`, :func:`bot_flags`,
:func:`content_ids`); the pandas functions stay for everyone else and share the definitions:
:func:`validate_events` and :func:`bot_mask` convert their frame and call the Arrow ones,
:func:`conform_table` conforms frames with :func:`conform_events`, and both content-id
functions hash through the same code, so each answer is the same by construction.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from pipelines.native import kernels

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

REASON_INDEX = {r: i for i, r in enumerate(REASONS)}
FLAG_COLUMNS = ("_malformed", "_value_invalid")  # adapter-detected faults (see conform_table)
RAW_COLUMN = "_raw"  # the raw text of a row the adapter could not parse

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


def conform_table(events: pa.Table | pd.DataFrame) -> pa.Table:
    """Arrow form of :func:`conform_events`, plus the adapter's extra columns; no row is dropped.

    Strings are ``string`` (null for missing), ``value`` is float64 with null (never NaN) for
    missing, ``ts`` is a UTC timestamp (in the unit it came in). ``_malformed`` and
    ``_value_invalid`` are True only where the adapter said exactly True; ``_raw`` is kept.
    """
    if isinstance(events, pd.DataFrame):
        columns = _frame_columns(conform_events(events))
        for flag in FLAG_COLUMNS:
            if flag in events:
                columns[flag] = pa.array(events[flag].eq(True).to_numpy(dtype=bool))
        if RAW_COLUMN in events:
            columns[RAW_COLUMN] = _string_array(events[RAW_COLUMN].where(events[RAW_COLUMN].notna(), None))
        return pa.table(columns)
    n = events.num_rows
    columns = {}
    for column in EVENT_COLUMNS:
        if column not in events.column_names:
            columns[column] = pa.nulls(n, EVENTS_SCHEMA.field(column).type)
        elif column == "value":
            columns[column] = _nan_to_null(pc.cast(events[column], pa.float64()))
        elif column == "ts":
            columns[column] = _utc_timestamps(events[column])
        else:
            values = events[column]
            columns[column] = values if values.type == pa.string() else pc.cast(values, pa.string())
    for flag in FLAG_COLUMNS:
        if flag in events.column_names:
            columns[flag] = pc.fill_null(pc.cast(events[flag], pa.bool_()), False)
    if RAW_COLUMN in events.column_names:
        columns[RAW_COLUMN] = pc.cast(events[RAW_COLUMN], pa.string())
    return pa.table(columns)


def _frame_columns(events: pd.DataFrame) -> dict[str, pa.Array]:
    """The canonical columns of a conformed frame as Arrow arrays."""
    columns: dict[str, pa.Array] = {}
    for column in EVENT_COLUMNS:
        if column not in events:  # validation reads neither ids: frames may lack them
            columns[column] = pa.nulls(len(events), EVENTS_SCHEMA.field(column).type)
            continue
        series = events[column]
        if column == "value":
            columns[column] = pa.array(series.to_numpy(dtype=np.float64, na_value=np.nan), from_pandas=True)
        elif column == "ts":
            ts = series if isinstance(series.dtype, pd.DatetimeTZDtype) else series.dt.tz_localize("UTC")
            columns[column] = pa.array(ts)
        else:
            columns[column] = _string_array(series)
    return columns


def _string_array(series: pd.Series) -> pa.Array:
    """Object values (None for missing) as Arrow strings. Values that are not strings become
    ``str(value)``: what the pandas code compared and hashed them as (f-strings, ``str(p)``)."""
    values = series.to_numpy(dtype=object)
    if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
        return pa.array(values, type=pa.string(), from_pandas=True)
    return pa.array([None if v is None else str(v) for v in values], type=pa.string())


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
            column = pa.chunked_array([_clean(chunk) for chunk in column.chunks], type=column.type)
        columns.append(column)
    return pa.Table.from_arrays(columns, names=table.column_names)


# First or last bytes that may be whitespace to utf8_trim_whitespace: ASCII blanks (it counts
# the separators 0x1C-0x1F too) and any non-ASCII byte (a multi-byte character might be one).
_MAYBE_BLANK = np.zeros(256, dtype=bool)
_MAYBE_BLANK[[0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x1F, 0x20]] = True
_MAYBE_BLANK[0x80:] = True


def string_buffers(values: pa.Array) -> tuple[pa.Buffer | bytes, np.ndarray]:
    """A string or binary array's data buffer (``b""`` when it has none) and its ``len + 1``
    offsets into it, as int64 (a null's range is empty, or whatever bytes the array keeps)."""
    n = len(values)
    if values.buffers()[1] is None:  # no offsets at all: every value null
        return b"", np.zeros(n + 1, dtype=np.int64)
    wide = pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type)
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64 if wide else np.int32)
    data = values.buffers()[2]
    return (data if data is not None else b""), offsets[values.offset : values.offset + n + 1].astype(np.int64)


def _clean(values: pa.Array) -> pa.Array:
    """:func:`clean_strings` for one array. Trimming copies every string, and most columns
    have nothing to trim: look at each value's first and last byte, and trim only if needed."""
    if not len(values):
        return values
    data, offsets = string_buffers(values)
    nonempty = offsets[1:] > offsets[:-1]
    if nonempty.any():
        data = np.frombuffer(data, dtype=np.uint8)
        edges = np.concatenate([data[offsets[:-1][nonempty]], data[offsets[1:][nonempty] - 1]])
        if _MAYBE_BLANK[edges].any():
            values = pc.utf8_trim_whitespace(values)
            return pc.if_else(pc.equal(values, ""), pa.scalar(None, values.type), values)
    if (~nonempty & np.asarray(values.is_valid().to_numpy(zero_copy_only=False), dtype=bool)).any():
        return pc.if_else(pc.equal(values, ""), pa.scalar(None, values.type), values)
    return values


def _to_utc(series: pd.Series) -> pd.Series:
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        return series.dt.tz_convert("UTC")
    return pd.to_datetime(series, utc=True, errors="coerce")


def _utc_timestamps(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """An Arrow column as UTC timestamps; anything but timestamps goes through pandas' parser."""
    if pa.types.is_timestamp(values.type):
        return values if values.type.tz == "UTC" else pc.cast(values, pa.timestamp(values.type.unit, "UTC"))
    return pa.array(_to_utc(values.to_pandas()))


def _nan_to_null(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """NaN is how pandas says missing; the contract (and the lake) says null."""
    nan = pc.is_nan(values)
    return pc.if_else(nan, pa.scalar(None, values.type), values) if pc.any(nan).as_py() else values


_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def timestamp_ints(ts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """The integers of an Arrow timestamp column (nulls as 0) and the mask of valid ones."""
    ints = pc.cast(ts, pa.int64())
    valid = numpy_bool(pc.is_valid(ints))
    return np.asarray(pc.fill_null(ints, 0).to_numpy(), dtype=np.int64), valid


def micros(ts: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Microseconds since the epoch (nulls as 0, mask of valid ones), rounded down as pandas
    and numpy do when they cast nanoseconds to microseconds."""
    ints, valid = timestamp_ints(ts)
    factor = _NS_PER_UNIT[ts.type.unit]
    if factor < 1_000:
        return ints // (1_000 // factor), valid
    return ints * (factor // 1_000), valid


def as_micros(ts: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A timestamp column as the lake's ``timestamp[us, UTC]``."""
    if ts.type == TS_TYPE:
        return ts
    ints, valid = micros(ts)
    return pa.array(ints, type=pa.int64(), mask=~valid).cast(TS_TYPE)


def numpy_bool(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow column as a numpy mask, null counting as False: each chunk's bits
    unpacked at once (Arrow's own conversion goes value by value)."""
    if not pa.types.is_boolean(mask.type):
        return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)
    parts = [np.zeros(0, dtype=bool)]
    for chunk in mask.chunks if isinstance(mask, pa.ChunkedArray) else [mask]:
        values = _bits(chunk.buffers()[1], chunk.offset, len(chunk))
        if chunk.null_count:
            values &= _bits(chunk.buffers()[0], chunk.offset, len(chunk))
        parts.append(values)
    return np.concatenate(parts)


def _bits(bitmap: pa.Buffer | None, offset: int, n: int) -> np.ndarray:
    """``n`` bits of an Arrow bitmap from bit ``offset``, as a writable numpy bool array."""
    if bitmap is None or not n:  # no values buffer (or nothing to read): all false
        return np.zeros(n, dtype=bool)
    first, last = offset // 8, (offset + n + 7) // 8
    packed = np.frombuffer(bitmap, dtype=np.uint8, count=last - first, offset=first)
    return np.unpackbits(packed, bitorder="little")[offset % 8 : offset % 8 + n].view(bool)


def validate_events(
    events: pd.DataFrame, now: pd.Timestamp, rules: ValidationRules | None = None
) -> tuple[pd.DataFrame, pd.Series]:
    """Return ``(events, reason)``: ``reason`` is None where the row honours the contract.

    ``events`` must be conformed (:func:`conform_events`); invalid numeric values come in as
    an extra boolean column ``_value_invalid`` when the adapter detected them.
    """
    columns = _frame_columns(events)
    for flag in FLAG_COLUMNS:
        if flag in events:  # any truthy value counts here, as it always has
            columns[flag] = pa.array(events[flag].fillna(False).to_numpy(dtype=bool))
    codes = reason_codes(pa.table(columns), now, rules)
    names = np.array([*REASONS, None], dtype=object)  # code -1 (valid) picks the last: None
    return events, pd.Series(names[codes], index=events.index, dtype=object)


def reason_codes(events: pa.Table, now: pd.Timestamp, rules: ValidationRules | None = None) -> np.ndarray:
    """The first broken rule of each row of a conformed table (:func:`conform_table`), as an
    index into :data:`REASONS`; -1 where the row honours the contract."""
    rules = rules or ValidationRules()
    code = np.full(events.num_rows, -1, dtype=np.int8)

    def flag(mask: np.ndarray, reason: str) -> None:
        np.copyto(code, REASON_INDEX[reason], where=mask & (code < 0))

    def present(column: str) -> np.ndarray:
        return numpy_bool(pc.is_valid(events[column]))

    if "_malformed" in events.column_names:
        flag(numpy_bool(events["_malformed"]), "malformed_row")
    platform = events["platform"]
    has_platform = present("platform")
    flag(~has_platform, "missing_platform")
    # Few distinct platforms: check each name once with Python's own regex semantics.
    names = [p for p in pc.unique(platform).to_pylist() if p is not None and PLATFORM_PATTERN.match(p)]
    flag(has_platform & ~numpy_bool(pc.is_in(platform, value_set=pa.array(names, pa.string()))), "invalid_platform")
    flag(~present("user_id"), "missing_user_id")
    action = events["action"]
    flag(~numpy_bool(pc.is_in(action, value_set=pa.array(ACTIONS, pa.string()))), "unknown_action")
    is_search = numpy_bool(pc.equal(action, "search"))
    flag(~present("item_id") & ~is_search, "missing_item_id")
    flag(is_search & ~present("text"), "missing_search_text")
    ts, has_ts = timestamp_ints(events["ts"])
    flag(~has_ts, "invalid_ts")
    # Compare in the column's own unit, exactly: t*f < e  <=>  t < ceil(e/f); t*f > x  <=>  t > floor(x/f).
    factor = _NS_PER_UNIT[events["ts"].type.unit]
    earliest = -(-pd.Timestamp(rules.earliest_ts).value // factor)
    latest = (pd.Timestamp(now) + rules.future_tolerance).value // factor
    flag(has_ts & (ts < earliest), "ts_out_of_range")
    flag(has_ts & (ts > latest), "ts_in_future")
    invalid_value = ~numpy_bool(pc.fill_null(pc.is_finite(events["value"]), True))
    if "_value_invalid" in events.column_names:
        invalid_value |= numpy_bool(events["_value_invalid"])
    flag(invalid_value, "invalid_value")
    return code


def bot_mask(events: pd.DataFrame, rules: ValidationRules | None = None) -> pd.Series:
    """True for every event of a (platform, user) that exceeds the browsing-rate limit in any minute."""
    table = pa.table(
        {
            "platform": _string_array(_as_object(events["platform"])),
            "user_id": _string_array(_as_object(events["user_id"])),
            "action": _string_array(_as_object(events["action"])),
            "ts": pa.array(_to_utc(events["ts"])),
        }
    )
    return pd.Series(bot_flags(table, rules), index=events.index)


def bot_flags(events: pa.Table, rules: ValidationRules | None = None) -> np.ndarray:
    """Arrow form of :func:`bot_mask`: a numpy mask over the rows of ``events`` (columns
    ``platform``, ``user_id``, ``action``, ``ts``)."""
    return flag_bots(user_keys(events["platform"], events["user_id"]), events["action"], events["ts"], rules)


def user_keys(platform: pa.Array | pa.ChunkedArray, user_id: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """One int64 per row for its ``(platform, user_id)`` (-1 where either is missing): exact,
    and far cheaper to group and to look up than pairs of strings; see :class:`UserKeys`."""
    return UserKeys.of(platform, user_id).keys


@dataclass(frozen=True)
class UserKeys:
    """``keys[row] = user_code * len(platforms) + platform_code`` (-1 where either is missing),
    with the distinct ``platforms`` and ``users`` the codes index: a key names its pair."""

    keys: np.ndarray
    platforms: pa.Array
    users: pa.Array

    @classmethod
    def of(cls, platform: pa.Array | pa.ChunkedArray, user_id: pa.Array | pa.ChunkedArray) -> UserKeys:
        """Keys of every row; ``user_id`` may be dictionary-encoded."""
        platform_codes, platforms = dictionary_codes(platform)
        if pa.types.is_dictionary(user_id.type):
            user_codes, users = _value_codes(user_id)
        else:
            user_codes, users = dictionary_codes(user_id)
        width = max(len(platforms), 1)
        keys = np.where((platform_codes >= 0) & (user_codes >= 0), user_codes * width + platform_codes, -1)
        return cls(keys, platforms, users)

    def pairs(self, keys: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """The ``(platform, user_id)`` strings of some (non-negative) keys."""
        width = max(len(self.platforms), 1)
        return self.platforms.take(pa.array(keys % width)), _plain(self.users.take(pa.array(keys // width)))


def flag_bots(
    keys: np.ndarray,
    action: pa.Array | pa.ChunkedArray,
    ts: pa.Array | pa.ChunkedArray,
    rules: ValidationRules | None = None,
    among: np.ndarray | None = None,
) -> np.ndarray:
    """The rows whose user (``keys``, see :func:`user_keys`) exceeds the browsing-rate limit in
    some minute. Only rows in ``among`` (default: all) are counted or flagged."""
    rules = rules or ValidationRules()
    n = len(keys)
    among = np.ones(n, dtype=bool) if among is None else among
    browsing = numpy_bool(pc.is_in(action, value_set=pa.array(rules.bot_actions, pa.string())))
    stamps, has_ts = timestamp_ints(ts)
    counted = among & browsing & has_ts & (keys >= 0)  # groupby drops missing keys
    if not counted.any():
        return np.zeros(n, dtype=bool)
    dense = keys.max() <= 4 * len(keys)  # codes from user_keys: small integers, countable in an array
    if dense:
        # A user over the limit in some minute is over it in total: count minutes only for those.
        busy = np.bincount(keys[counted], minlength=int(keys.max()) + 1) > rules.bot_actions_per_minute
        counted &= busy[np.maximum(keys, 0)]
        if not counted.any():
            return np.zeros(n, dtype=bool)
    minute = stamps[counted] // (60 * _NS_PER_UNIT["s"] // _NS_PER_UNIT[ts.type.unit])  # floor, as pandas does
    user = keys[counted]
    span = int(minute.max() - minute.min()) + 1
    if (int(user.max()) + 1) * span < 2**62:  # (user, minute) as one integer: one hash pass counts them
        cells = pc.value_counts(pa.array(user * span + (minute - minute.min())))
        over = cells.field("values").to_numpy()[cells.field("counts").to_numpy() > rules.bot_actions_per_minute]
        bot_users = over // span
    else:
        per_minute = (
            pa.table({"key": user, "minute": minute})
            .group_by(["key", "minute"], use_threads=False)
            .aggregate([("key", "count")])
        )
        bot_users = per_minute["key"].to_numpy()[per_minute["key_count"].to_numpy() > rules.bot_actions_per_minute]
    if not len(bot_users):
        return np.zeros(n, dtype=bool)
    if not dense:
        return among & (keys >= 0) & np.isin(keys, bot_users)
    is_bot = np.zeros(int(keys.max()) + 1, dtype=bool)  # dense codes (see user_keys): a lookup table
    is_bot[bot_users] = True
    return among & (keys >= 0) & is_bot[np.maximum(keys, 0)]


def dictionary_codes(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Dictionary-encode a column: int64 codes (-1 for null), numbered in order of first
    appearance, and the distinct values."""
    encoded = pc.dictionary_encode(values)
    if isinstance(encoded, pa.Array):
        return pc.fill_null(encoded.indices, -1).to_numpy().astype(np.int64), encoded.dictionary
    # A chunked column is encoded against one dictionary shared by every chunk.
    if not encoded.num_chunks:
        return np.zeros(0, dtype=np.int64), pa.array([], values.type)
    codes = [pc.fill_null(chunk.indices, -1).to_numpy().astype(np.int64) for chunk in encoded.chunks]
    return np.concatenate(codes), encoded.chunks[-1].dictionary


def _value_codes(values: pa.DictionaryArray | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Codes of a dictionary-encoded column's values (-1 for null), the same code for the same
    value in every chunk (the chunks' dictionaries are unified: a few entries, not rows), and
    the distinct values they index."""
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    chunks = values.unify_dictionaries().chunks
    if not chunks:
        return np.zeros(0, dtype=np.int64), pa.array([], values.type.value_type)
    # Equal values may still sit at two places in a dictionary: number the distinct values.
    remap, distinct = dictionary_codes(chunks[0].dictionary)
    codes = np.concatenate([pc.fill_null(chunk.indices, -1).to_numpy().astype(np.int64) for chunk in chunks])
    return np.where(codes >= 0, remap[np.maximum(codes, 0)] if len(remap) else codes, -1), distinct


def _plain(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A dictionary-encoded column decoded to its values; any other column as it is."""
    return values.cast(values.type.value_type) if pa.types.is_dictionary(values.type) else values


def first_occurrences(codes: np.ndarray, n_distinct: int) -> np.ndarray:
    """Mask of the first row of each code, for codes from :func:`dictionary_codes`.

    Codes are numbered in order of first appearance, so a row is a first occurrence exactly
    when its code exceeds every code before it: one pass, no sort.
    """
    if not len(codes):
        return np.zeros(0, dtype=bool)
    before = np.maximum.accumulate(np.concatenate([[-1], codes[:-1]]))
    first = codes > before
    if int(first.sum()) != n_distinct or not np.array_equal(codes[first], np.arange(n_distinct)):
        first = np.zeros(len(codes), dtype=bool)  # numbering not by first appearance: sort instead
        first[np.unique(codes, return_index=True)[1]] = True
    return first


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
    return pd.Series(_hash_fields([*parts, value, ts]).to_numpy(zero_copy_only=False), index=events.index, dtype=object)


def content_ids(events: pa.Table) -> pa.Array:
    """Arrow form of :func:`content_event_ids` over a conformed table: the same id for the
    same content (value null rather than NaN, ``ts`` in any unit, rounded to microseconds)."""
    parts = [_plain(events[c]) for c in ("platform", "user_id", "item_id", "action", "text")]
    value = pc.cast(_nan_to_null(events["value"]), pa.string())
    us, valid = micros(events["ts"])
    ts = pc.cast(pa.array(us, type=pa.int64(), mask=~valid), pa.string())
    return _hash_fields([*parts, value, ts])


def _hash_fields(fields: Iterable[pa.Array | pa.ChunkedArray], step: int = 1 << 16) -> pa.Array:
    """``h`` + the hex BLAKE2b-128 of each row's fields (strings) joined by ``\x1f``, a
    missing value written as ``\x00``."""
    fields = [f.combine_chunks() if isinstance(f, pa.ChunkedArray) else f for f in fields]
    native = kernels()
    if native is not None:  # every row in C, without the GIL, and without joining (pipelines/_native.c)
        parts = [
            (*string_buffers(f), None if f.null_count == 0 else pc.is_valid(f).to_numpy(zero_copy_only=False))
            for f in fields
        ]
        return prefixed_hex(b"h", native.blake2b_128_joined(parts, b"\x1f", b"\x00"))
    joined = pc.binary_join_element_wise(*fields, "\x1f", null_handling="replace", null_replacement="\x00")
    joined = joined.cast(pa.binary())
    # BLAKE2b has no vectorised form in Python: hash row by row, as cheaply as Python allows
    # (copying a configured hash object beats parsing the digest_size keyword on every row), a
    # slice of rows at a time so that the Python objects of one slice reuse the memory of the
    # last. Only the raw digests are collected; the ``h`` + hex text is written for all rows at once.
    new = hashlib.blake2b(digest_size=16).copy
    digests = bytearray()
    for lo in range(0, len(joined), step):
        for data in joined.slice(lo, step).to_numpy(zero_copy_only=False):
            digest = new()
            digest.update(data)
            digests += digest.digest()
    return prefixed_hex(b"h", digests)


# Two lowercase hex digits per byte value, as one little-endian uint16 each (the digits' bytes in order).
_HEX_PAIRS = np.array([int.from_bytes(f"{i:02x}".encode(), "little") for i in range(256)], dtype="<u2")


def prefixed_hex(prefix: bytes, digests: bytes | bytearray, width: int = 16) -> pa.Array:
    """``prefix + digest.hex()`` for each ``width``-byte digest in ``digests``, as Arrow strings."""
    n = len(digests) // width
    size = len(prefix) + 2 * width
    out = np.empty((n, size), dtype=np.uint8)
    out[:, : len(prefix)] = np.frombuffer(prefix, dtype=np.uint8)
    pairs = _HEX_PAIRS[np.frombuffer(digests, dtype=np.uint8).reshape(n, width)]
    out[:, len(prefix) :] = pairs.view(np.uint8).reshape(n, 2 * width)
    offsets = np.arange(0, n * size + 1, size, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(out))
