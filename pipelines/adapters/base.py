"""What every adapter returns, and the tolerant readers they share.

An adapter turns one platform's raw files into canonical frames (see
:mod:`pipelines.contract`) with the platform's *raw* user ids; ingest pseudonymises them.
A row the adapter cannot parse is not dropped: it comes through with ``_malformed=True`` and
its raw text in ``_raw``, so that validation quarantines it and the counts add up.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta, timezone, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from pipelines.contract import EVENT_COLUMNS, ITEM_COLUMNS, LINK_COLUMNS, clean_strings


@dataclass
class EventBatch:
    """Canonical events from one raw file (raw user ids), one row per raw row read."""

    source: str  # e.g. "synthetic/web"
    path: Path
    events: pd.DataFrame


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


def read_jsonl(path: Path, schema: pa.Schema, chunk_bytes: int = 64 << 20) -> tuple[pd.DataFrame, list[str]]:
    """Read JSON lines with pyarrow; lines that do not parse are returned separately, not lost."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        data += b"\n"
    buffer = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buffer == ord("\n"))
    starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64)
    nonempty = ends > starts
    # Cheap vectorised pre-filter: a record that does not look like an object is malformed.
    first = buffer[np.minimum(starts, len(buffer) - 1)] if len(buffer) else np.array([], dtype=np.uint8)
    last = buffer[np.maximum(ends - 1, 0)] if len(buffer) else np.array([], dtype=np.uint8)
    looks_ok = (first == ord("{")) & (last == ord("}"))
    bad_idx = np.flatnonzero(nonempty & ~looks_ok)
    bad: list[bytes] = [data[starts[i] : ends[i]] for i in bad_idx]
    # Cut the buffer around bad lines (few): the rest is parsed in large chunks.
    segments: list[bytes] = []
    lo = 0
    for i in bad_idx:
        segments.append(data[lo : starts[i]])
        lo = ends[i] + 1
    segments.append(data[lo:])
    good = b"".join(segments)
    tables: list[pa.Table] = []
    offset = 0
    while offset < len(good):
        cut = good.rfind(b"\n", offset, offset + chunk_bytes) if offset + chunk_bytes < len(good) else len(good) - 1
        chunk = good[offset : cut + 1]
        offset = cut + 1
        tables.extend(_parse_json_lines(chunk, schema, bad))
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return clean_strings(table).to_pandas(), [b.decode("utf-8", "replace") for b in bad]


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
    bad: list[str] = []

    def on_invalid(row: pacsv.InvalidRow) -> str:
        bad.append(row.text or "")
        return "skip"

    read_options = pacsv.ReadOptions(column_names=column_names, block_size=1 << 24)
    header = column_names or _header(path, delimiter)
    convert = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in header},
        null_values=[""],
        strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )
    parse = pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=on_invalid)
    table = pacsv.read_csv(path, read_options=read_options, parse_options=parse, convert_options=convert)
    return clean_strings(table).to_pandas(), bad


def _header(path: Path, delimiter: str) -> list[str]:
    with path.open("r", encoding="utf-8") as f:
        return f.readline().rstrip("\r\n").split(delimiter)


def epoch_to_utc(values: pd.Series, unit: str) -> tuple[pd.Series, pd.Series]:
    """Epoch numbers (possibly strings) to UTC timestamps; also the mask of unparseable ones."""
    numbers = pd.to_numeric(values, errors="coerce")
    ts = pd.to_datetime(numbers, unit=unit, utc=True, errors="coerce")
    return ts, numbers.isna() & values.notna()


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
    naive = pd.to_datetime(local, format=fmt, errors="coerce")
    out = pd.Series(pd.NaT, index=local.index, dtype="datetime64[ns, UTC]")
    for name in pd.unique(tz.dropna()):
        tzinfo_ = zone(str(name))
        if tzinfo_ is None:
            continue
        if isinstance(tzinfo_, ZoneInfo):
            tzinfo_ = str(name)  # pandas localises much faster by name than through zoneinfo
        sel = (tz == name).to_numpy()
        part = naive[sel]
        localized = part.dt.tz_localize(tzinfo_, ambiguous=np.zeros(len(part), dtype=bool), nonexistent="shift_forward")
        out[sel] = localized.dt.tz_convert("UTC")
    return out


def mapped(codes: pd.Series, vocabulary: dict[str, str]) -> pd.Series:
    """Map raw action codes to canonical actions; unknown codes stay as-is (and are quarantined)."""
    return codes.map(vocabulary).where(codes.isin(list(vocabulary)), codes)


def numeric_value(values: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Parse a numeric column; the mask marks present-but-unparseable values."""
    stripped = values.where(values.isna(), values.astype(str).str.strip())
    present = stripped.notna() & (stripped != "")
    numbers = pd.to_numeric(stripped.where(present), errors="coerce")
    return numbers, present & numbers.isna()


Adapter = Callable[[Path | None, Path], SourceData]
