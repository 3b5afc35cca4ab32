"""Ingest: raw sources in; a validated, deduplicated, identity-resolved, pseudonymised lake out.

For every run, ``read = accepted + quarantined + duplicates`` holds, for the whole run and for
each source: each raw row lands in exactly one of the three. Rows are checked in this order:
contract rules (quarantine with the first broken rule), duplicates within the run, bots
(quarantine), duplicates of events already in the lake.

The rows stay in Arrow from the adapters to the lake: validation, pseudonymisation (once per
distinct user), content ids, deduplication and bot detection work on whole columns, and only
the small tables (identity links, persons, items, quarantined rows) go through pandas.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipelines.adapters import EventBatch, SourceData, read_source
from pipelines.config import Settings, Workdir
from pipelines.contract import (
    EVENT_COLUMNS,
    EVENTS_SCHEMA,
    ITEM_COLUMNS,
    LINK_COLUMNS,
    REASONS,
    UserKeys,
    ValidationRules,
    as_micros,
    conform_table,
    content_ids,
    dictionary_codes,
    first_occurrences,
    flag_bots,
    micros,
    numpy_bool,
    reason_codes,
    string_buffers,
)
from pipelines.identity import Pseudonymiser, resolve_persons_indexed
from pipelines.lake import DICTIONARY_COLUMNS, Lake, Stored, stored_slices
from pipelines.native import kernels
from pipelines.synthetic import SyntheticConfig, generate

log = logging.getLogger(__name__)

EXTERNAL_PERSON = "_person"  # pseudo-platform for person ids a canonical source already carries
QUARANTINE_COLUMNS = ["source", "file", "reason", *EVENT_COLUMNS, "raw"]


@dataclass
class Counts:
    """Where the rows of one source (or table) went."""

    source: str
    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: Counter[str] = field(default_factory=Counter)

    @property
    def quarantined_total(self) -> int:
        return sum(self.quarantined.values())

    def balanced(self) -> bool:
        return self.read == self.accepted + self.quarantined_total + self.duplicates

    def to_dict(self) -> dict[str, object]:
        return {
            "source": self.source,
            "read": self.read,
            "accepted": self.accepted,
            "quarantined": dict(sorted(self.quarantined.items())),
            "quarantined_total": self.quarantined_total,
            "duplicates": self.duplicates,
        }


@dataclass
class IngestReport:
    run_id: str
    lake: str
    read: int
    accepted: int
    quarantined: dict[str, int]
    quarantined_total: int
    duplicates: int
    duplicates_of_lake: int
    sources: list[dict[str, object]]
    items: dict[str, object]
    links: dict[str, object]
    persons: int
    lake_events: int
    lake_changed: bool
    quarantine_file: str | None

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2))


class IngestError(RuntimeError):
    pass


def ingest_sources(
    specs: Iterable[tuple[str, Path | None]],
    workdir: Workdir,
    settings: Settings,
    report_path: Path | None = None,
    progress: bool = False,
    now: pd.Timestamp | None = None,
    lake_dir: Path | None = None,
) -> IngestReport:
    """Open each ``(adapter, path)`` and ingest them together into ``workdir``'s lake.

    A ``synthetic`` source without a path is generated (default size) under ``workdir/raw``.
    """
    sources = []
    for name, path in specs:
        if name == "synthetic" and path is None:
            path = ensure_synthetic(workdir.raw / "synthetic", seed=settings.seed, progress=progress)
        sources.append(read_source(name, path, settings.data_dir))
    return ingest(sources, workdir, settings, report_path=report_path, progress=progress, now=now, lake_dir=lake_dir)


def ensure_synthetic(folder: Path, seed: int = 0, progress: bool = False, n_events: int | None = None) -> Path:
    """The default synthetic raw logs in ``folder``, generated once."""
    if not (folder / "truth" / "expected_report.json").exists():
        config = SyntheticConfig(seed=seed) if n_events is None else SyntheticConfig(seed=seed, n_events=n_events)
        generate(folder, config, progress=progress)
    return folder


def ingest(
    sources: list[SourceData],
    workdir: Workdir,
    settings: Settings,
    report_path: Path | None = None,
    progress: bool = False,
    now: pd.Timestamp | None = None,
    rules: ValidationRules | None = None,
    lake_dir: Path | None = None,
    lake: Lake | None = None,
) -> IngestReport:
    """Ingest already-opened sources into ``lake`` (e.g. a staged view, see
    :meth:`Lake.stage`), else ``lake_dir`` (default ``workdir/lake``); quarantined rows go to
    ``workdir/quarantine`` and every report to ``workdir/reports``. See the module docstring
    for the order of checks."""
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    rules = rules or ValidationRules()
    if settings.using_demo_key:
        log.warning("pseudonymising with the local demo key: set XINTEREST_PSEUDONYM_KEY in production")
    pseudo = Pseudonymiser(settings.pseudonym_key.get_secret_value())
    lake = lake if lake is not None else Lake(lake_dir or workdir.lake)

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with (
        Progress(*columns, disable=not progress, transient=True) as bar,
        ThreadPoolExecutor(max_workers=4, thread_name_prefix="ingest") as pool,
    ):
        task = bar.add_task("ingest: reading sources", total=None)
        # Check batches in threads as soon as each is read (adapters may still be reading others);
        # results are taken in reading order, so the outcome is the same as one after another.
        checks = [
            (batch.source, batch.path, pool.submit(_check_loaded, batch, pseudo, now, rules))
            for source in sources
            for batch in source.batches
        ]
        # What depends only on the sources and the lake runs beside the checks (a spare worker
        # while the others wait for their files): the sources' identity links, the items, the
        # lake's person map.
        sourced_links = pool.submit(_source_links, sources, pseudo)
        items_of = pool.submit(_items, sources, lake)
        old_persons_of = pool.submit(lake.table, "persons")
        run = _Run()
        for source_name, path, check in checks:
            bar.update(task, description=f"ingest: {source_name} ({path.name})")
            run.add(source_name, check.result())
            bar.advance(task)
        bar.update(task, description="ingest: bots, identity, lake commit")
        events, us = run.events()
        days = us // DAY_US
        # What needs no mask starts now, in threads, beside the checks below: the valid rows put
        # in the lake's order (Arrow, without the GIL; rows dropped below are left out of each
        # date when it is written), one integer per user.
        ordered = pool.submit(run.in_order)
        users_of = pool.submit(UserKeys.of, events["platform"], events["user_id"])

        run.drop(_repeated(events["event_id"], run.keep, hashed=run.id_hashes), "duplicates")
        users = users_of.result()
        bots = flag_bots(users.keys, events["action"], events["ts"], rules, among=run.keep)
        run.quarantine(events.take(pa.array(np.flatnonzero(bots))), bots, "bot_suspected")  # few: no pass over all
        run.drop(bots, None)
        touched = _date_names(_distinct_days(days[run.keep]))
        in_lake = lake.events_table(columns=["event_id"], dates=touched)["event_id"]
        dup_lake = np.zeros(len(run.keep), dtype=bool)
        if len(in_lake):
            dup_lake = numpy_bool(pc.is_in(events["event_id"], value_set=in_lake.combine_chunks()))
        n_dup_lake = run.drop(dup_lake, "duplicates")
        run.accept()

        given_rows = events.select(["platform", "user_id", "person_id"]).slice(0, 0)
        if events["person_id"].null_count < events.num_rows:  # a source that names persons
            given = run.keep & numpy_bool(pc.is_valid(events["person_id"]))
            given_rows = events.filter(pa.array(given)).select(["platform", "user_id", "person_id"])
        given_rows = _replace(given_rows, "user_id", given_rows["user_id"].cast(pa.string()))
        links_counts, links = _links(sourced_links.result(), given_rows, lake)
        persons, person_of_row, remap = _identities(users, run.keep, links, old_persons_of.result(), pseudo)
        items_counts, items = items_of.result()
        order, table = ordered.result()
        # One dictionary entry per person (the map has a row per node, persons repeat), so that
        # each date's person ids are numbered without going back to their strings.
        person_code, person_ids = dictionary_codes(pa.array(persons["person_id"].to_numpy(), pa.string()))
        if len(person_code):  # rows not kept stay at -1
            person_of_row = np.where(person_of_row >= 0, person_code[np.maximum(person_of_row, 0)], -1)
        fresh = _fresh_partitions(table, days[order], run.keep[order], person_of_row[order], person_ids)
        # Every quarantined row has long been known; its file (pandas, holding the GIL) is encoded
        # beside the commit, whose writers mostly run without the GIL, rather than beside the
        # identity steps above; it is written only once the lake committed.
        quarantine_data = pool.submit(_quarantine_data, list(run.quarantined))
        changed = lake.commit(
            partitions=_partitions(lake, fresh, persons, remap),
            tables={"persons": persons, "links": links, "items": items},
        )
    quarantine_file = _write_quarantine(workdir, quarantine_data.result())  # only once the lake committed
    report = _report(run.counts, lake, links_counts, items_counts, persons, changed, quarantine_file, n_dup_lake)
    if report_path is not None:
        report.write(report_path)
    workdir.reports.mkdir(parents=True, exist_ok=True)
    report.write(workdir.reports / f"ingest-{report.run_id}.json")
    return report


DAY_US = 86_400_000_000


class _Run:
    """The rows of every batch, in reading order, and where each one went.

    Rows stay where they are once read; ``keep`` says which are still in, and every row
    dropped from it is counted for its source (as a duplicate or a quarantine reason).
    """

    def __init__(self) -> None:
        self.counts: dict[str, Counts] = {}
        self.quarantined: list[pa.Table] = []
        self._batches: list[_Checked] = []
        self._source: list[np.ndarray] = []  # per row: its source's index in `counts`
        self.keep = np.zeros(0, dtype=bool)
        self.source_of = np.zeros(0, dtype=np.int32)
        self.id_hashes: np.ndarray | None = None  # of every row's event id, once events() ran

    def add(self, source: str, batch: _Checked) -> None:
        """One checked batch, in reading order."""
        c = self.counts.setdefault(source, Counts(source))
        c.read += batch.n_read
        c.quarantined.update(batch.reasons)
        self.quarantined.append(batch.quarantined)
        self._batches.append(batch)
        self._source.append(np.full(batch.events.num_rows, list(self.counts).index(source), dtype=np.int32))

    def events(self) -> tuple[pa.Table, np.ndarray]:
        """Every batch's rows as one table (``keep``: the valid ones), and their ``ts`` in
        microseconds."""
        batches = self._batches
        self.keep = np.concatenate([b.valid for b in batches]) if batches else np.zeros(0, dtype=bool)
        self.source_of = np.concatenate(self._source) if batches else np.zeros(0, dtype=np.int32)
        events = pa.concat_tables([b.events for b in batches]) if batches else _empty_events()
        us = np.concatenate([b.us for b in batches]) if batches else np.zeros(0, dtype=np.int64)
        hashes = [b.id_hashes for b in batches]
        self.id_hashes = np.concatenate(hashes) if all(h is not None for h in hashes) else None
        # One dictionary of pseudonyms for all batches (a few entries per user, not per row).
        self._events = _replace(events, "user_id", events["user_id"].unify_dictionaries())
        return self._events, us

    def in_order(self) -> tuple[np.ndarray, pa.Table]:
        """The valid rows' positions in the lake's order (``ts``, then event id), and their columns
        (all but ``person_id``) gathered in that order: each date is then a slice, already sorted.
        Call after :meth:`events`; rows dropped later are left out when each date is built."""
        if not self._batches:
            return np.zeros(0, dtype=np.int64), _empty_events().select(_ORDERED_COLUMNS)
        starts = np.cumsum([0] + [len(b.us) for b in self._batches[:-1]])
        # Each batch's valid rows are already in order: merge them by ts, then order ties by id.
        positions = np.concatenate([b.order + start for b, start in zip(self._batches, starts, strict=True)])
        us = np.concatenate([b.us for b in self._batches])
        events = self._events
        order = _time_order(positions[np.argsort(us[positions], kind="stable")], us, events["event_id"])
        indices = pa.array(order)

        def gather(column: str) -> pa.Array | pa.ChunkedArray:
            values = events[column]
            if column in _ENCODED_COLUMNS:  # gather small integers, not strings (the lake stores them so)
                values = pc.dictionary_encode(values.combine_chunks())
            return values.take(indices)

        # One column per thread: a random gather is memory-bound, and take releases the GIL.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="gather") as pool:
            taken = list(pool.map(gather, _ORDERED_COLUMNS))
        return order, pa.table(dict(zip(_ORDERED_COLUMNS, taken, strict=True)))

    def drop(self, rows: np.ndarray, counted_as: str | None) -> int:
        """Take ``rows`` out of ``keep`` (those still in), counting them per source."""
        rows = rows & self.keep
        if counted_as is not None:
            self._add(rows, counted_as)
        self.keep &= ~rows
        return int(rows.sum())

    def quarantine(self, rows: pa.Table, mask: np.ndarray, reason: str) -> None:
        """Quarantine the kept ``rows`` (selected by ``mask``) with one reason."""
        if not mask.any():
            return
        names = np.array(list(self.counts))
        self.quarantined.append(_quarantine_table(rows, reason, names[self.source_of[mask]]))
        for i, n in enumerate(np.bincount(self.source_of[mask], minlength=len(names))):
            if n:
                self.counts[names[i]].quarantined[reason] += int(n)

    def accept(self) -> None:
        """Count the rows still kept as accepted."""
        self._add(self.keep, "accepted")

    def _add(self, rows: np.ndarray, field_name: str) -> None:
        names = list(self.counts)
        for i, n in enumerate(np.bincount(self.source_of[rows], minlength=len(names))):
            if n:
                c = self.counts[names[i]]
                setattr(c, field_name, getattr(c, field_name) + int(n))


def _distinct_days(days: np.ndarray) -> np.ndarray:
    """The distinct day numbers, ascending (counted in an array: days span a short range)."""
    if not len(days):
        return days
    first = int(days.min())
    return np.flatnonzero(np.bincount(days - first)) + first


def _date_names(days: np.ndarray) -> list[str]:
    """``YYYY-MM-DD`` (the lake's partition names) of day numbers since the epoch."""
    return np.datetime_as_string(days.astype("datetime64[D]"), unit="D").tolist()


def _empty_events() -> pa.Table:
    table = pa.table({f.name: pa.array([], f.type) for f in EVENTS_SCHEMA})
    return _replace(table, "user_id", pa.chunked_array([], pa.dictionary(pa.int32(), pa.string())))


@dataclass
class _Checked:
    """One batch after :func:`_check_batch`, with what later steps need from it, computed in
    the batch's own thread while other files are still being read."""

    n_read: int
    events: pa.Table  # every row, pseudonymised (see _check_batch)
    valid: np.ndarray
    quarantined: pa.Table
    reasons: Counter[str]
    us: np.ndarray  # ts in microseconds
    order: np.ndarray  # the valid rows' positions sorted by ts
    id_hashes: np.ndarray | None  # of the event ids (see _string_hashes)


def _check_loaded(batch: EventBatch, pseudo: Pseudonymiser, now: pd.Timestamp, rules: ValidationRules) -> _Checked:
    events = batch.loaded()
    checked, valid, quarantined, reasons = _check_batch(events, batch.source, batch.path, pseudo, now, rules)
    us, _ = micros(checked["ts"])
    # Valid rows only, and not a stable sort: the kept rows' event ids are distinct, so their
    # order by (ts, event id) does not depend on how rows with equal ts come out here.
    rows = np.flatnonzero(valid)
    order = rows[np.argsort(us[rows])]
    hashes = _string_hashes(checked["event_id"])
    return _Checked(len(events), checked, valid, quarantined, reasons, us, order, hashes)


_ORDERED_COLUMNS = [c for c in EVENT_COLUMNS if c != "person_id"]
# Plain string columns whose values repeat: dictionary-encoded before they are put in order, as the
# lake stores them (user ids already are, person ids are added so).
_ENCODED_COLUMNS = [
    c
    for c in DICTIONARY_COLUMNS
    if c in _ORDERED_COLUMNS and c != "user_id" and EVENTS_SCHEMA.field(c).type == pa.string()
]


def _repeated(
    values: pa.ChunkedArray, among: np.ndarray, bits: int | None = None, hashed: np.ndarray | None = None
) -> np.ndarray:
    """The rows in ``among`` whose value (not null) a row before them in ``among`` already has.

    Exact, and cheap when repeats are few: only rows whose 64-bit hash (``hashed``, else
    :func:`_string_hashes`; equal strings hash alike) another of them has can repeat a value,
    and only those are compared as strings, in order. The C kernel (``repeated64``) finds
    them; without it (or with ``bits`` given) the hashes are counted in buckets (``2**bits``,
    default about four per row), three times over different bits of them, and rows that shared
    a bucket with another every time are compared."""
    out = np.zeros(len(among), dtype=bool)
    hashed = _string_hashes(values) if hashed is None else hashed
    rows = np.flatnonzero(among & numpy_bool(pc.is_valid(values)))
    native = kernels() if bits is None else None
    if hashed is not None and native is not None:
        rows = rows[np.frombuffer(native.repeated64(hashed, rows), dtype=bool)]
    elif hashed is not None:
        for shift in (0, 21, 42):  # each pass looks at other bits of the hash
            width = bits if bits is not None else min(22, max(10, len(rows).bit_length() + 2))
            bucket = ((hashed[rows] >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
            rows = rows[np.bincount(bucket, minlength=1 << width)[bucket] > 1]
    if len(rows) < 2:
        return out
    codes, distinct = dictionary_codes(values.take(pa.array(rows)))
    out[rows[~first_occurrences(codes, len(distinct))]] = True
    return out


_MIX = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F), np.uint64(0x165667B19E3779F9))


def _string_hashes(values: pa.ChunkedArray) -> np.ndarray | None:
    """A 64-bit hash of every string (any value for nulls), equal strings always alike: of all
    its bytes in C (pipelines/_native.c), else from its length and its first and last eight
    bytes; None if the column is not strings."""
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return None
    native = kernels()
    if native is not None:
        parts = [np.frombuffer(native.hash64(*string_buffers(chunk)), dtype=np.uint64) for chunk in values.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    parts = []
    for chunk in values.chunks:
        data, offsets = string_buffers(chunk)
        lo, hi = (int(offsets[0]), int(offsets[-1])) if len(chunk) else (0, 0)
        padded = np.zeros(hi - lo + 8, dtype=np.uint8)  # every 8-byte read below stays inside
        if hi > lo:
            padded[: hi - lo] = np.frombuffer(data, dtype=np.uint8, count=hi - lo, offset=lo)
        words = np.ndarray((hi - lo + 1,), dtype="<u8", buffer=padded, strides=(1,))  # a word at every byte
        starts, length = offsets[:-1] - lo, np.diff(offsets)
        short = length < 8
        # A string under eight bytes: its bytes only (the word reads on into the next string).
        low_bytes = (np.uint64(1) << (8 * np.minimum(length, 7)).astype(np.uint64)) - np.uint64(1)
        head = words[starts] & np.where(short, low_bytes, ~np.uint64(0))
        tail = np.where(short, head, words[np.maximum(starts + length - 8, starts)]) * _MIX[1]
        h = head * _MIX[0] ^ (tail >> np.uint64(31) | tail << np.uint64(33))
        h ^= length.astype(np.uint64) * _MIX[2]
        h ^= h >> np.uint64(29)
        h *= _MIX[1]
        h ^= h >> np.uint64(32)
        parts.append(h)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)


def _check_batch(
    raw: pd.DataFrame | pa.Table,
    source: str,
    path: Path,
    pseudo: Pseudonymiser,
    now: pd.Timestamp,
    rules: ValidationRules,
) -> tuple[pa.Table, np.ndarray, pa.Table, Counter[str]]:
    """Validate one batch: all its rows in :data:`EVENT_COLUMNS` (pseudonymised, ``ts`` in
    microseconds, every valid row with an event id), the mask of valid rows, the quarantined
    rows, and how many rows each reason quarantined. Valid rows are not copied out: later
    steps work with masks over the batch as it is."""
    events = conform_table(raw)
    raw_user = events["user_id"]
    # Pseudonyms stay dictionary-encoded (an index per row) until the lake is written.
    events = _replace(events, "user_id", pseudo.user_dictionary(events["platform"], raw_user))
    given_person = events["person_id"]
    if given_person.null_count < len(given_person):
        events = _replace(events, "person_id", pseudo.user_array(EXTERNAL_PERSON, given_person))
    # Rows without a platform have no pseudonym: they fail on their platform before their user.
    code = reason_codes(events, now, rules)
    bad = code >= 0
    reasons = Counter({REASONS[i]: int(n) for i, n in enumerate(np.bincount(code[bad], minlength=len(REASONS))) if n})
    names = np.array(REASONS, dtype=object)[code[bad]]
    rejected = events.filter(pa.array(bad))
    # A user id without a platform is pseudonymised with an empty platform: no raw id is kept.
    no_platform = pseudo.user_dictionary("", raw_user.filter(pa.array(bad))).dictionary_decode()
    user = pc.coalesce(rejected["user_id"].cast(pa.string()), no_platform)
    quarantined = _quarantine_table(_replace(rejected, "user_id", user), names, source, path)
    events = _replace(events.select(EVENT_COLUMNS), "ts", as_micros(events["ts"]))
    missing = ~bad & numpy_bool(pc.is_null(events["event_id"]))
    if missing.any():
        ids = content_ids(events.filter(pa.array(missing)))
        filled = pc.replace_with_mask(events["event_id"].combine_chunks(), pa.array(missing), ids)
        events = _replace(events, "event_id", filled)
    return events, ~bad, quarantined, reasons


def _replace(table: pa.Table, column: str, values: pa.Array | pa.ChunkedArray) -> pa.Table:
    i = table.schema.get_field_index(column)
    return table.set_column(i, pa.field(column, values.type), values)


def _quarantine_table(
    rows: pa.Table,
    reason: np.ndarray | str,
    source: np.ndarray | str,
    path: Path | None = None,
) -> pa.Table:
    """Quarantined rows in :data:`QUARANTINE_COLUMNS` (``raw`` only for unparseable rows)."""
    n = rows.num_rows

    def text(values: np.ndarray | str | None) -> pa.Array:
        if values is None or isinstance(values, str):
            return pa.repeat(pa.scalar(values, pa.string()), n)
        return pa.array(values, type=pa.string())

    columns = {"source": text(source), "file": text(str(path) if path else None), "reason": text(reason)}
    for column in EVENT_COLUMNS:
        columns[column] = as_micros(rows[column]) if column == "ts" else rows[column]
    columns["user_id"] = columns["user_id"].cast(pa.string())
    columns["raw"] = rows["_raw"] if "_raw" in rows.column_names else text(None)
    return pa.table(columns)


def _identities(
    users: UserKeys,
    keep: np.ndarray,
    links: pd.DataFrame,
    old_persons: pd.DataFrame | None,
    pseudo: Pseudonymiser,
) -> tuple[pd.DataFrame, np.ndarray, bool]:
    """The person map (the lake's nodes, the new events' users, then nodes only in links), the
    row of its person for every kept row (-1 elsewhere), and whether persons of nodes already
    in the lake changed (identities merged: every stored event's person id must be redone)."""
    nodes, node_of_row = _new_nodes(users, keep)
    old_nodes = old_persons[["platform", "user_id"]] if old_persons is not None else nodes.iloc[:0]
    persons, node_row = resolve_persons_indexed(pd.concat([old_nodes, nodes], ignore_index=True), links, pseudo)
    remap = old_persons is not None and bool(
        (persons["person_id"].to_numpy()[node_row[: len(old_nodes)]] != old_persons["person_id"].to_numpy()).any()
    )
    person_of_row = np.full(len(keep), -1, dtype=np.int64)
    person_of_row[keep] = node_row[len(old_nodes) :][node_of_row]
    return persons, person_of_row, remap


def _new_nodes(users: UserKeys, rows: np.ndarray) -> tuple[pd.DataFrame, np.ndarray]:
    """The distinct ``(platform, user_id)`` of the selected ``rows``, in order of first
    appearance, and for each selected row the index of its node."""
    node_of_row, keys = dictionary_codes(pa.array(users.keys[rows], type=pa.int64()))
    platform, user = users.pairs(keys.to_numpy())  # a key names its pair: no rows to look up
    nodes = pd.DataFrame(
        {"platform": platform.to_numpy(zero_copy_only=False), "user_id": user.to_numpy(zero_copy_only=False)}
    )
    return nodes, node_of_row


def _source_links(sources: list[SourceData], pseudo: Pseudonymiser) -> tuple[Counts, list[pd.DataFrame]]:
    """The sources' identity links, complete ones pseudonymised, and how many were incomplete."""
    counts = Counts("links")
    frames = []
    for source in sources:
        links = source.links.reindex(columns=LINK_COLUMNS).astype(object)
        links = links.apply(lambda s: s.str.strip() if s.dtype == object else s).replace("", None)
        counts.read += len(links)
        complete = links.notna().all(axis=1)
        counts.quarantined["incomplete_link"] += int((~complete).sum())
        links = links[complete]
        if len(links):  # complete links hold strings only (stripping made anything else missing)
            links = links.assign(
                user_id_a=pseudo.users(links["platform_a"], links["user_id_a"]).to_numpy(),
                user_id_b=pseudo.users(links["platform_b"], links["user_id_b"]).to_numpy(),
            )
        frames.append(links)
    return counts, frames


def _links(sourced: tuple[Counts, list[pd.DataFrame]], given: pa.Table, lake: Lake) -> tuple[Counts, pd.DataFrame]:
    """Pseudonymised identity links: the lake's, the sources' (see :func:`_source_links`), and
    those implied by given person ids."""
    counts, frames = sourced
    given = given.select(["platform", "user_id", "person_id"]).to_pandas()  # new events with a person id
    if len(given):
        frames.append(
            pd.DataFrame(
                {
                    "platform_a": given["platform"].to_numpy(),
                    "user_id_a": given["user_id"].to_numpy(),
                    "platform_b": EXTERNAL_PERSON,
                    "user_id_b": given["person_id"].to_numpy(),
                }
            ).drop_duplicates()
        )
    incoming = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=LINK_COLUMNS)
    old = lake.table("links")
    old = old if old is not None else pd.DataFrame(columns=LINK_COLUMNS)
    n_sourced = counts.read - counts.quarantined_total
    merged = pd.concat([old, incoming], ignore_index=True)
    deduped = merged.drop_duplicates().sort_values(LINK_COLUMNS).reset_index(drop=True)
    new_links = len(deduped) - len(old)
    sourced_new = max(0, min(n_sourced, new_links))
    counts.accepted = sourced_new
    counts.duplicates = n_sourced - sourced_new
    return counts, deduped


def _items(sources: list[SourceData], lake: Lake) -> tuple[Counts, pd.DataFrame]:
    """Upsert the sources' items into the lake's items table (last one wins per platform+id)."""
    counts = Counts("items")
    frames = []
    for source in sources:
        items = source.items.reindex(columns=ITEM_COLUMNS).astype(object)
        items = items.apply(lambda s: s.str.strip() if s.dtype == object else s).replace("", None)
        counts.read += len(items)
        complete = items["item_id"].notna() & items["platform"].notna()
        counts.quarantined["missing_item_id_or_platform"] += int((~complete).sum())
        frames.append(items[complete])
    incoming = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=ITEM_COLUMNS)
    unique_incoming = incoming.drop_duplicates(["platform", "item_id"], keep="last")
    old = lake.table("items")
    old = old if old is not None else pd.DataFrame(columns=ITEM_COLUMNS)
    old_keyed = old.set_index(["platform", "item_id"])
    new_keyed = unique_incoming.set_index(["platform", "item_id"])
    common = new_keyed.index.intersection(old_keyed.index)
    same = (new_keyed.loc[common].fillna("") == old_keyed.loc[common, new_keyed.columns].fillna("")).all(axis=1)
    unchanged = int(same.sum())
    counts.duplicates = (len(incoming) - len(unique_incoming)) + unchanged
    counts.accepted = len(unique_incoming) - unchanged
    merged = pd.concat([old, unique_incoming], ignore_index=True).drop_duplicates(["platform", "item_id"], keep="last")
    return counts, merged.sort_values(["platform", "item_id"]).reset_index(drop=True)[ITEM_COLUMNS]


def _time_order(order: np.ndarray, us: np.ndarray, event_id: pa.ChunkedArray) -> np.ndarray:
    """Row positions sorted by (``ts``, ``event_id``), the lake's order within a date, from
    positions already sorted by ``ts``."""
    # Equal timestamps are few: order just those rows by event id, inside their runs.
    ts = us[order]
    same = ts[1:] == ts[:-1]
    if same.any():
        tied = np.flatnonzero(np.concatenate([same, [False]]) | np.concatenate([[False], same]))
        ids = event_id.take(pa.array(order[tied]))
        resort = pc.sort_indices(
            pa.table({"ts": ts[tied], "id": ids}), sort_keys=[("ts", "ascending"), ("id", "ascending")]
        ).to_numpy()
        order[tied] = order[tied][resort]
    return order


def _fresh_partitions(
    table: pa.Table, days: np.ndarray, kept: np.ndarray, person_row: np.ndarray, person_ids: pa.Array
) -> dict[str, Stored]:
    """The new events of each date, built as stored when the commit's writers ask for them
    (:func:`stored_slices`): ``table`` holds rows in the lake's order (``days`` their day
    numbers), of which those in ``kept`` are stored, with the person id at ``person_row`` in
    ``person_ids``. Dates without a kept row are left out."""
    if not len(days):
        return {}
    starts = np.concatenate([[0], np.flatnonzero(np.diff(days)) + 1])
    ends = np.append(starts[1:], len(days))
    counts = np.add.reduceat(kept, starts)
    # Rows not kept have no person (-1): any entry does, they are left out.
    person = pa.DictionaryArray.from_arrays(pa.array(np.maximum(person_row, 0).astype(np.int32)), person_ids)
    stored = stored_slices(table.append_column("person_id", person).select(EVENT_COLUMNS), kept, starts, ends)
    return {name: part for name, part, n in zip(_date_names(days[starts]), stored, counts, strict=True) if n}


def _partitions(
    lake: Lake, fresh: dict[str, Stored], persons: pd.DataFrame, remap: bool
) -> dict[str, pa.Table | Stored]:
    """The partitions to (re)write: the touched dates, or every date when identities merged.
    ``fresh`` builds the new events of each date in the lake's order (see
    :func:`_fresh_partitions`); dates already in the lake are merged with them here."""
    in_lake = set(lake.dates())
    touched = set(in_lake) if remap else set()
    touched |= {d for d in fresh if d in in_lake}
    out: dict[str, pa.Table | Stored] = dict(fresh)
    person_of = None
    for date in sorted(touched):
        old = lake.events_table(dates=[date])  # one file per date, all of that date's events
        if not old.num_rows:
            continue
        if remap:
            if person_of is None:
                index = pd.MultiIndex.from_frame(persons[["platform", "user_id"]])
                person_of = pd.Series(persons["person_id"].to_numpy(), index=index)
            old_users = UserKeys.of(old["platform"], old["user_id"])
            old_nodes, old_node_of_row = _new_nodes(old_users, np.ones(old.num_rows, dtype=bool))
            person = pa.array(person_of.reindex(pd.MultiIndex.from_frame(old_nodes)).to_numpy(), type=pa.string())
            old = old.set_column(
                old.schema.get_field_index("person_id"),
                EVENTS_SCHEMA.field("person_id"),
                person.take(pa.array(old_node_of_row)),
            )
        out[date] = pa.concat_tables([old, fresh[date]().cast(old.schema)]) if date in fresh else old
    return out


def _quarantine_data(parts: list[pa.Table]) -> bytes | None:
    """The quarantine file's bytes for these quarantined rows (None when there are none)."""
    frames = [p.to_pandas() for p in parts if p.num_rows]  # few rows: pandas as before, same file
    if not frames:
        return None
    frame = pd.concat(frames, ignore_index=True)[QUARANTINE_COLUMNS]
    frame["value"] = frame["value"].astype(float)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _write_quarantine(workdir: Workdir, data: bytes | None) -> str | None:
    """Write quarantined rows (user ids pseudonymised; raw text only for unparseable rows),
    encoded by :func:`_quarantine_data`, into a file named by their hash."""
    if data is None:
        return None
    folder = workdir.quarantine
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"quarantine-{hashlib.sha256(data).hexdigest()[:16]}.parquet"
    if not path.exists():
        path.write_bytes(data)
    return str(path)


def _report(
    counts: dict[str, Counts],
    lake: Lake,
    links: Counts,
    items: Counts,
    persons: pd.DataFrame,
    changed: bool,
    quarantine_file: str | None,
    dup_lake: int,
) -> IngestReport:
    total = Counts("total")
    for c in counts.values():
        if not c.balanced():
            raise IngestError(f"row accounting broken for {c.source}: {c.to_dict()}")
        total.read += c.read
        total.accepted += c.accepted
        total.duplicates += c.duplicates
        total.quarantined.update(c.quarantined)
    return IngestReport(
        run_id=uuid.uuid4().hex[:12],
        lake=str(lake.root),
        read=total.read,
        accepted=total.accepted,
        quarantined=dict(sorted(total.quarantined.items())),
        quarantined_total=total.quarantined_total,
        duplicates=total.duplicates,
        duplicates_of_lake=dup_lake,
        sources=[c.to_dict() for c in counts.values()],
        items=items.to_dict(),
        links=links.to_dict(),
        persons=int(persons.loc[persons["platform"] != EXTERNAL_PERSON, "person_id"].nunique()) if len(persons) else 0,
        lake_events=lake.n_events(),
        lake_changed=changed,
        quarantine_file=quarantine_file,
    )


__all__ = ["Counts", "IngestError", "IngestReport", "ingest", "ingest_sources"]
