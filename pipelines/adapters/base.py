"""What every adapter returns, and the tolerant readers they share.

An adapter turns one platform's raw files into canonical frames (see
:mod:`pipelines.contract`) with the platform's *raw* user ids; ingest pseudonymises them.
A row the adapter cannot parse is not dropped: it comes through with ``_malformed=True`` and
its raw text in ``_raw``, so that validation quarantines it and the counts add up.
"""

from __future__ import annotations

import io
import mmap
import os
import re
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from pipelines.contract import (
    EVENT_COLUMNS,
    ITEM_COLUMNS,
    LINK_COLUMNS,
    TS_TYPE,
    clean_strings,
    dictionary_codes,
    string_buffers,
)
from pipelines.native import kernels

Events = pd.DataFrame | pa.Table


@dataclass
class EventBatch:
    """Canonical events from one raw file (raw user ids), one row per raw row read: a pandas
    frame, or an Arrow table with the same columns (strings, float64 ``value``, UTC ``ts``).
    While a background read is still running, ``events`` is its Future (see :func:`prefetched`)."""

    source: str  # e.g. "synthetic/web"
    path: Path
    events: Events | Future[Events]

    def loaded(self) -> Events:
        """The events, waiting for the background read if there is one."""
        return self.events.result() if isinstance(self.events, Future) else self.events


@dataclass
class SourceData:
    """Everything one source yields: event batches (lazily), and optional items and links."""

    name: str
    batches: Iterator[EventBatch]
    items: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=ITEM_COLUMNS))
    links: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=LINK_COLUMNS))


class AdapterError(ValueError):
    """The input cannot be read at all (missing folder, wrong layout); the message says why."""


def require(path: Path, what: str) -> Path:
    if not path.exists():
        raise AdapterError(f"{what} not found: {path}")
    return path


# Readers parse blocks of this size in parallel. Each block becomes a chunk of every column, and
# each chunk costs some Python later: a few MiB keeps both cores busy with few chunks.
BLOCK_BYTES = 4 << 20


def with_malformed(events: pd.DataFrame, raw: list[str]) -> pd.DataFrame:
    """Append the rows that could not be parsed (``_malformed``, raw text in ``_raw``) to a batch."""
    if not raw:
        return events
    frame = events.iloc[:0].reindex(range(len(raw)))
    frame = frame.reindex(columns=list(dict.fromkeys([*EVENT_COLUMNS, *frame.columns])))
    frame["_malformed"] = True
    frame["_raw"] = pd.Series(raw, dtype=object)
    out = pd.concat([events.reindex(columns=frame.columns), frame], ignore_index=True)
    out["_malformed"] = out["_malformed"].eq(True)
    return out


def with_malformed_table(events: pa.Table, raw: list[str]) -> pa.Table:
    """Arrow form of :func:`with_malformed`: the unparsed rows come last, every field null."""
    if not raw:
        return events
    n, k = events.num_rows, len(raw)
    bad = pa.table({name: pa.nulls(k, events.schema.field(name).type) for name in events.column_names})
    flags = pa.array(np.concatenate([np.zeros(n, dtype=bool), np.ones(k, dtype=bool)]))
    texts = pa.concat_arrays([pa.nulls(n, pa.string()), pa.array(raw, pa.string())])
    return pa.concat_tables([events, bad]).append_column("_malformed", flags).append_column("_raw", texts)


def read_jsonl(path: Path, schema: pa.Schema, chunk_bytes: int = 64 << 20) -> tuple[pd.DataFrame, list[str]]:
    """Read JSON lines with pyarrow; lines that do not parse are returned separately, not lost."""
    table, bad = read_jsonl_table(path, schema, chunk_bytes)
    return table.to_pandas(), bad


def read_jsonl_table(path: Path, schema: pa.Schema, chunk_bytes: int = 64 << 20) -> tuple[pa.Table, list[str]]:
    """:func:`read_jsonl` as an Arrow table (strings trimmed, empty strings null)."""
    with path.open("rb") as f:
        # A private (copy-on-write) map of the file: no copy of it in memory, only the pages
        # of the few lines blanked out below are copied. (It is released with its last user.)
        empty = os.fstat(f.fileno()).st_size == 0
        data = bytearray() if empty else mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = _newlines(buffer)
    if len(buffer) and buffer[-1] != ord("\n"):
        ends = np.append(ends, len(buffer))  # the last line has no newline of its own
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    nonempty = ends > starts
    # Cheap vectorised pre-filter: a record that does not look like an object is malformed.
    first = buffer[np.minimum(starts, len(buffer) - 1)] if len(buffer) else np.array([], dtype=np.uint8)
    last = buffer[np.maximum(ends - 1, 0)] if len(buffer) else np.array([], dtype=np.uint8)
    looks_ok = (first == ord("{")) & (last == ord("}"))
    bad_idx = np.flatnonzero(nonempty & ~looks_ok)
    bad: list[bytes] = [bytes(data[starts[i] : ends[i]]) for i in bad_idx]
    # Blank the bad lines out in place: the JSON reader skips whitespace, so the rest parses
    # in one multi-threaded pass over the file's own buffer.
    for i in bad_idx:
        buffer[starts[i] : ends[i]] = ord(" ")
    lines = nonempty & looks_ok
    if not lines.any():
        table = schema.empty_table()
    else:
        # Plain lines (nearly all of a log) in C; anything else through pyarrow, as before.
        table = _parse_json_native(data, starts[lines], ends[lines], schema)
        if table is None:
            widest = int((ends - starts).max())
            table = _parse_json_buffer(data, schema, bad, chunk_bytes, max(BLOCK_BYTES, widest + 2))
    return clean_strings(table), [b.decode("utf-8", "replace") for b in bad]


_JSON_KINDS = {pa.string(): "s", pa.int64(): "i", pa.float64(): "f"}


def _parse_json_native(
    data: bytearray | mmap.mmap, starts: np.ndarray, ends: np.ndarray, schema: pa.Schema
) -> pa.Table | None:
    """The objects at ``data[starts[i]:ends[i]]``, one per line, as ``pyarrow.json.read_json``
    reads them with ``schema`` (other keys ignored), parsed by the C kernel (``json_lines`` in
    pipelines/_native.c). None without the kernel, for a schema with types other than string,
    int64 and float64, or when a line holds more than the kernel reads exactly as pyarrow does
    (nested values, exponents, a value of another type than its column's, invalid JSON, ...):
    the caller then parses the whole file with pyarrow, so that every line gets pyarrow's answer."""
    native = kernels()
    kinds = [_JSON_KINDS.get(f.type) for f in schema]
    if native is None or None in kinds:
        return None
    names = [f.name.encode() for f in schema]
    columns = native.json_lines(
        data,
        np.ascontiguousarray(starts, np.int64),
        np.ascontiguousarray(ends, np.int64),
        names,
        "".join(kinds).encode(),
    )
    if columns is None:
        return None
    n = len(starts)
    arrays = []
    for column, kind, (values, text, valid) in zip(schema, kinds, columns, strict=True):
        bitmap, nulls = None, 0
        if valid is not None:  # a byte per row: Arrow's bitmap holds a bit
            mask = np.frombuffer(valid, dtype=bool)
            bitmap, nulls = pa.py_buffer(np.packbits(mask, bitorder="little")), n - int(np.count_nonzero(mask))
        if kind == "s":
            arrays.append(pa.StringArray.from_buffers(n, pa.py_buffer(values), pa.py_buffer(text), bitmap, nulls))
        else:
            arrays.append(pa.Array.from_buffers(column.type, n, [bitmap, pa.py_buffer(values)], nulls))
    return pa.Table.from_arrays(arrays, schema=schema)


def _newlines(buffer: np.ndarray, step: int = 4 << 20) -> np.ndarray:
    """Offsets of every newline, found a few MiB at a time into one reused mask: a mask as big
    as the file would cost more in fresh pages than the comparison itself."""
    mask = np.empty(min(step, len(buffer)), dtype=bool)
    found = []
    for lo in range(0, len(buffer), step):
        part = buffer[lo : lo + step]
        np.equal(part, ord("\n"), out=mask[: len(part)])
        found.append(np.flatnonzero(mask[: len(part)]) + lo)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


def _parse_json_buffer(
    data: bytearray | mmap.mmap, schema: pa.Schema, bad: list[bytes], chunk_bytes: int, block_size: int
) -> pa.Table:
    """Parse the (pre-filtered) buffer at once; if a line still fails, parse it chunk by chunk
    and isolate the failing lines (appended to ``bad``)."""
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        read = pajson.ReadOptions(block_size=block_size)
        return pajson.read_json(pa.py_buffer(data), read_options=read, parse_options=options)
    except pa.ArrowInvalid:
        pass
    good = bytes(data)
    tables: list[pa.Table] = []
    offset = 0
    while offset < len(good):
        cut = good.rfind(b"\n", offset, offset + chunk_bytes) if offset + chunk_bytes < len(good) else len(good) - 1
        chunk = good[offset : cut + 1]
        offset = cut + 1
        tables.extend(_parse_json_lines(chunk, schema, bad))
    return pa.concat_tables(tables) if tables else schema.empty_table()


def _parse_json_lines(chunk: bytes, schema: pa.Schema, bad: list[bytes]) -> list[pa.Table]:
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    try:
        block = max(1 << 20, len(chunk) + 1)
        read = pajson.ReadOptions(block_size=block)
        return [pajson.read_json(io.BytesIO(chunk), read_options=read, parse_options=options)]
    except pa.ArrowInvalid:
        lines = [line for line in chunk.split(b"\n") if line.strip()]
        return _parse_json_chunk(lines, schema, bad)


def _parse_json_chunk(lines: list[bytes], schema: pa.Schema, bad: list[bytes]) -> list[pa.Table]:
    """Parse a chunk; on a parse error, bisect to isolate the offending lines."""
    if not lines:
        return []
    options = pajson.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
    data = b"\n".join(lines)
    try:
        block = max(1 << 20, len(data) + 1)
        return [
            pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(block_size=block), parse_options=options)
        ]
    except pa.ArrowInvalid:
        if len(lines) == 1:
            bad.append(lines[0])
            return []
        mid = len(lines) // 2
        return _parse_json_chunk(lines[:mid], schema, bad) + _parse_json_chunk(lines[mid:], schema, bad)


def read_delimited(
    path: Path, delimiter: str = ",", column_names: list[str] | None = None
) -> tuple[pd.DataFrame, list[str]]:
    """Read CSV/TSV as strings; rows with the wrong number of fields are returned separately."""
    table, bad = read_delimited_table(path, delimiter, column_names)
    return table.to_pandas(), bad


def read_delimited_table(
    path: Path, delimiter: str = ",", column_names: list[str] | None = None, use_threads: bool = True
) -> tuple[pa.Table, list[str]]:
    """:func:`read_delimited` as an Arrow table of strings (trimmed, empty strings null).

    ``use_threads=False`` parses on the calling thread alone: for a file read beside others
    (see :func:`prefetched`), so that its blocks do not queue behind theirs in Arrow's pool."""
    bad: list[str] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append(row.text or "")
        return "skip"

    read_options = pacsv.ReadOptions(column_names=column_names, block_size=BLOCK_BYTES, use_threads=use_threads)
    header = column_names or _header(path, delimiter)
    convert = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in header},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    parse = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid)
    table = pacsv.read_csv(path, read_options=read_options, parse_options=parse, convert_options=convert)
    return clean_strings(table), bad


def _header(path: Path, delimiter: str) -> list[str]:
    with path.open("r", encoding="utf-8") as f:
        return f.readline().rstrip("\r\n").split(delimiter)


def epoch_to_utc(values: pd.Series, unit: str) -> tuple[pd.Series, pd.Series]:
    """Epoch numbers (possibly strings) to UTC timestamps; also the mask of unparseable ones."""
    numbers = pd.to_numeric(values, errors="coerce")
    ts = pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce")
    return ts, numbers.isna() & values.notna()


_NS_PER = {"s": 1_000_000_000, "ms": 1_000_000}
_MAX_NS = 2**63 - 1  # pandas' timestamps are int64 nanoseconds; beyond that they are NaT


def epoch_ints_to_utc(values: pa.Array | pa.ChunkedArray, unit: str) -> pa.Array:
    """Integer epochs in ``unit`` ("s" or "ms") to ``timestamp[us, UTC]``, null where pandas'
    ``to_datetime(unit=...)`` would give NaT (outside its nanosecond range)."""
    ints = pc.fill_null(pc.cast(values, pa.int64()), 0).to_numpy()
    valid = np.asarray(pc.is_valid(values).to_numpy(zero_copy_only=False), dtype=bool)
    bound = _MAX_NS // _NS_PER[unit]
    valid &= (ints >= -bound) & (ints <= bound)
    micros = np.where(valid, ints, 0) * (_NS_PER[unit] // 1_000)
    return pa.array(micros, type=pa.int64(), mask=~valid).cast(TS_TYPE)


def epoch_to_utc_array(values: pa.Array | pa.ChunkedArray, unit: str) -> pa.Array:
    """Arrow form of :func:`epoch_to_utc` for a string column, as ``timestamp[us, UTC]``.

    Plain digit strings, nearly all of them, are converted in Arrow; anything else (signs,
    decimals, exponents, garbage) goes through :func:`epoch_to_utc` itself, so every value
    gets exactly the timestamp pandas would give it.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    plain = pc.fill_null(pc.match_substring_regex(values, r"^[0-9]{1,15}$"), False)
    out = epoch_ints_to_utc(pc.cast(pc.if_else(plain, values, pa.scalar(None, values.type)), pa.int64()), unit)
    other = np.flatnonzero(np.asarray(pc.and_(pc.invert(plain), pc.is_valid(values)).to_numpy(zero_copy_only=False)))
    if not len(other):
        return out
    ts, _ = epoch_to_utc(pd.Series(values.take(other).to_pylist(), dtype=object), unit)
    fixed = _ns_to_micros(ts.to_numpy(dtype="datetime64[ns]").view(np.int64), ts.isna().to_numpy())
    return pc.replace_with_mask(out, _mask(len(values), other), fixed)


def _mask(n: int, rows: np.ndarray) -> pa.Array:
    mask = np.zeros(n, dtype=bool)
    mask[rows] = True
    return pa.array(mask)


def _ns_to_micros(ns: np.ndarray, missing: np.ndarray) -> pa.Array:
    """int64 nanoseconds (pandas) to ``timestamp[us, UTC]``, rounded down as pandas casts."""
    return pa.array(np.where(missing, 0, ns) // 1_000, type=pa.int64(), mask=missing).cast(TS_TYPE)


_OFFSET = re.compile(r"^(?:UTC)?([+-])(\d{2}):?(\d{2})$")


def zone(name: str) -> tzinfo | None:
    """An IANA zone name (``Asia/Shanghai``) or a fixed offset (``+08:00``); None if neither."""
    match = _OFFSET.match(name)
    if match:
        sign = -1 if match.group(1) == "-" else 1
        return timezone(sign * timedelta(hours=int(match.group(2)), minutes=int(match.group(3))))
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def local_to_utc(local: pd.Series, tz: pd.Series, fmt: str | None = None) -> pd.Series:
    """Local wall-clock strings plus a timezone column to UTC timestamps (NaT where invalid).

    Ambiguous wall-clock times (the repeated hour when clocks go back) resolve to standard
    time; times in the skipped hour shift forward: both are documented, neither is dropped.
    """
    codes, names = pd.factorize(tz)
    naive = pd.to_datetime(local, format=fmt, errors="coerce").to_numpy(dtype="datetime64[ns]")
    return pd.Series(pd.to_datetime(_local_ns(naive, codes, list(names)), utc=True), index=local.index)


def local_to_utc_array(
    local: pa.Array | pa.ChunkedArray, tz: pa.Array | pa.ChunkedArray, fmt: str | None = None
) -> pa.Array:
    """Arrow form of :func:`local_to_utc`, as ``timestamp[us, UTC]``."""
    codes, names = dictionary_codes(tz)
    ns = _local_ns(_naive_times(local, fmt), codes, names.to_pylist())
    return _ns_to_micros(ns.view(np.int64), np.isnat(ns))


ISO_SECONDS = "%Y-%m-%dT%H:%M:%S"
_DAYS_IN_MONTH = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31])


def _naive_times(local: pa.Array | pa.ChunkedArray, fmt: str | None) -> np.ndarray:
    """``pd.to_datetime(local, format=fmt, errors="coerce")`` as ``datetime64[ns]``.

    With the format ``YYYY-MM-DDTHH:MM:SS``, strings of exactly that shape holding a real
    date and time (years 1678-2261, well inside pandas' range) are converted with integer
    arithmetic straight from Arrow's buffer; pandas parses every other string, so each value
    still gets exactly pandas' answer.
    """
    if isinstance(local, pa.ChunkedArray):
        local = local.combine_chunks()
    n = len(local)
    out = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
    done = np.zeros(n, dtype=bool)
    if fmt == ISO_SECONDS and n and local.buffers()[2] is not None:
        seconds, done = _iso_seconds(local)
        out[done] = (seconds[done] * 1_000_000_000).astype("datetime64[ns]")
    rest = np.flatnonzero(~done & np.asarray(local.is_valid().to_numpy(zero_copy_only=False), dtype=bool))
    if len(rest):
        parsed = pd.to_datetime(
            pd.Series(local.take(pa.array(rest)).to_pylist(), dtype=object), format=fmt, errors="coerce"
        )
        out[rest] = parsed.to_numpy(dtype="datetime64[ns]")
    return out


def _iso_seconds(local: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """Seconds since the epoch of ``YYYY-MM-DDTHH:MM:SS`` strings, and the mask of the strings
    that have exactly that shape and a valid date and time."""
    data, offsets = string_buffers(local)
    data = np.frombuffer(data, dtype=np.uint8)
    valid = np.asarray(local.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    rows = np.flatnonzero(valid & (np.diff(offsets) == 19))
    starts = offsets[:-1][rows]
    # One byte position at a time: small temporaries instead of a rows x 19 index matrix.
    shaped = np.ones(len(rows), dtype=bool)
    for position, char in ((4, "-"), (7, "-"), (10, "T"), (13, ":"), (16, ":")):
        shaped &= data[starts + position] == ord(char)

    def number(first: int, digits: int) -> np.ndarray:
        value = np.zeros(len(rows), dtype=np.int32)
        for position in range(first, first + digits):
            digit = data[starts + position].astype(np.int32) - ord("0")
            shaped[(digit < 0) | (digit > 9)] = False
            value = value * 10 + digit
        return value

    year, month, day = number(0, 4), number(5, 2), number(8, 2)
    hour, minute, second = number(11, 2), number(14, 2), number(17, 2)
    leap = (year % 4 == 0) & ((year % 100 != 0) | (year % 400 == 0))
    month_days = _DAYS_IN_MONTH[np.clip(month, 0, 12)] + (leap & (month == 2))
    ok = shaped & (year >= 1678) & (year <= 2261) & (month >= 1) & (month <= 12) & (day >= 1) & (day <= month_days)
    ok &= (hour <= 23) & (minute <= 59) & (second <= 59)
    # Days from the civil date (H. Hinnant's algorithm), exact for the proleptic Gregorian calendar.
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    days = (era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468).astype(np.int64)
    seconds = np.zeros(len(local), dtype=np.int64)
    seconds[rows] = days * 86400 + hour * 3600 + minute * 60 + second
    done = np.zeros(len(local), dtype=bool)
    done[rows] = ok
    return seconds, done


def _local_ns(wall: np.ndarray, codes: np.ndarray, names: list[str]) -> np.ndarray:
    """UTC ``datetime64[ns]`` of naive local times; ``codes`` index ``names`` (-1: no zone)."""
    out = np.full(len(wall), np.datetime64("NaT"), dtype="datetime64[ns]")
    for code, name in enumerate(names):
        tzinfo_ = zone(str(name))
        if tzinfo_ is None:
            continue
        if isinstance(tzinfo_, ZoneInfo):
            tzinfo_ = str(name)  # pandas localises much faster by name than through zoneinfo
        sel = codes == code
        part = pd.DatetimeIndex(wall[sel])
        localized = part.tz_localize(tzinfo_, ambiguous=np.zeros(len(part), dtype=bool), nonexistent="shift_forward")
        out[sel] = localized.tz_convert("UTC").tz_localize(None).to_numpy(dtype="datetime64[ns]")
    return out


def mapped(codes: pd.Series, vocabulary: dict[str, str]) -> pd.Series:
    """Map raw action codes to canonical actions; unknown codes stay as-is (and are quarantined)."""
    return codes.map(vocabulary).where(codes.isin(list(vocabulary)), codes)


def mapped_array(codes: pa.Array | pa.ChunkedArray, vocabulary: dict[str, str]) -> pa.Array:
    """Arrow form of :func:`mapped`."""
    return per_value(codes, lambda code: vocabulary.get(code, code))


def per_value(values: pa.Array | pa.ChunkedArray, function: Callable[[str], str]) -> pa.Array:
    """Apply a Python string function to a string column, once per distinct value (codes,
    platform names: a handful of values over millions of rows); nulls stay null."""
    codes, distinct = dictionary_codes(values)
    mapped_values = pa.array([function(v) for v in distinct.to_pylist()], type=pa.string())
    return mapped_values.take(pa.array(codes, mask=codes < 0))


def numeric_value(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse a numeric column; the mask marks present-but-unparseable values."""
    stripped = values.where(values.isna(), values.astype(str).str.strip())
    present = stripped.notna() & (stripped != "")
    numbers = pd.to_numeric(stripped.where(present), errors="coerce")
    return numbers, present & numbers.isna()


def numeric_value_array(values: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """Arrow form of :func:`numeric_value` for a string column: float64 values (null where
    missing or unparseable) and the invalid mask. Each distinct string goes through
    :func:`numeric_value` once, with a missing value among them when the column has one, so
    pandas' parser sees the same kinds of values and gives the same numbers."""
    codes, distinct = dictionary_codes(values)
    missing = codes < 0
    texts = distinct.to_pylist() + ([None] if missing.any() else [])
    numbers, invalid = numeric_value(pd.Series(texts, dtype=object))
    index = np.where(missing, len(texts) - 1, codes)
    number = numbers.to_numpy(dtype=np.float64, na_value=np.nan)[index]
    return pa.array(number, from_pandas=True), pa.array(invalid.to_numpy(dtype=bool)[index])


def prefetched(jobs: list[tuple[str, Path, Callable[[Path], Events]]]) -> Iterator[EventBatch]:
    """Start reading every file in background threads and yield the batches at once, in order,
    each holding the Future of its events (:meth:`EventBatch.loaded`), so that the caller can
    check one file while others are still being parsed: parsing and most Arrow compute release
    the GIL, so both cores work. Up to three files are read at once; the largest starts first
    and the rest smallest first: the longest read is not left for last, and something is
    ready early."""
    if not jobs:
        return
    sizes = [path.stat().st_size if path.exists() else 0 for _, path, _ in jobs]
    largest = int(np.argmax(sizes))
    order = [largest, *sorted((i for i in range(len(jobs)) if i != largest), key=lambda i: sizes[i])]
    pool = ThreadPoolExecutor(max_workers=min(len(jobs), 3), thread_name_prefix="read")
    futures = {i: pool.submit(jobs[i][2], jobs[i][1]) for i in order}
    pool.shutdown(wait=False)  # its threads finish the reads, then exit
    done = False
    try:
        for i, (source, path, _) in enumerate(jobs):
            yield EventBatch(source, path, futures[i])
        done = True
    finally:
        if not done:  # the caller gave up: do not start reads nobody will use
            for future in futures.values():
                future.cancel()


Adapter = Callable[[Path | None, Path], SourceData]
