"""The event lake: parquet partitioned by date, committed atomically through a manifest.

Layout::

    lake/_manifest.json                 the current version: which files make up the lake
    lake/events/date=YYYY-MM-DD/part-<hash>.parquet
    lake/tables/<name>-<hash>.parquet   items, identity links, person map

Files are named by the hash of their bytes and never rewritten in place. A commit writes the
new files, then replaces the manifest in one rename, then removes files no manifest names.
A crash before the rename leaves the lake as it was; committing the same content twice
changes nothing, not even a timestamp.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.contract import EVENT_COLUMNS, EVENTS_SCHEMA, numpy_bool
from pipelines.native import kernels

MANIFEST = "_manifest.json"


@dataclass
class Manifest:
    version: int = 0
    partitions: dict[str, str] = field(default_factory=dict)  # date → relative file
    tables: dict[str, str] = field(default_factory=dict)  # name → relative file
    # date → events in its file; a lake written before the counts were kept has none, and its
    # files' footers are read instead (see Lake.n_events)
    rows: dict[str, int] = field(default_factory=dict)

    def files(self) -> set[str]:
        return set(self.partitions.values()) | set(self.tables.values())


STAGE = "_manifest.staged.json"


class Lake:
    """Read and commit the event lake at ``root``.

    A *stage* (:meth:`stage`) is the same lake under a second manifest: commits to it are
    invisible to readers of the lake until :meth:`publish` renames it over the real manifest
    (one atomic step), and :meth:`discard_stage` forgets it. Garbage collection keeps every
    file that either manifest names.
    """

    def __init__(self, root: Path, manifest_name: str = MANIFEST) -> None:
        self.root = Path(root)
        self.manifest_name = manifest_name

    @property
    def manifest_path(self) -> Path:
        return self.root / self.manifest_name

    def stage(self) -> Lake:
        """A staged view starting from the current version (or continuing an existing stage)."""
        staged = Lake(self.root, STAGE)
        if not staged.manifest_path.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            current = self.root / MANIFEST
            tmp = self.root / f"{STAGE}.tmp"
            tmp.write_bytes(
                current.read_bytes() if current.exists() else b'{"version": 0, "partitions": {}, "tables": {}}'
            )
            os.replace(tmp, staged.manifest_path)
        return staged

    def publish(self) -> None:
        """Make the staged version the lake's version (atomic)."""
        if self.manifest_name != STAGE or not self.manifest_path.exists():
            raise RuntimeError("publish() belongs to a staged lake with a stage on disk")
        os.replace(self.manifest_path, self.root / MANIFEST)
        self.collect_garbage()

    def discard_stage(self) -> None:
        """Forget a stage (its files are collected)."""
        (self.root / STAGE).unlink(missing_ok=True)
        if (self.root / MANIFEST).exists():
            Lake(self.root).collect_garbage()

    # -- reading -------------------------------------------------------------------------
    def manifest(self) -> Manifest:
        path = self.manifest_path
        if not path.exists():
            return Manifest()
        raw = json.loads(path.read_text())
        return Manifest(raw["version"], raw["partitions"], raw["tables"], raw.get("rows", {}))

    def dates(self) -> list[str]:
        return sorted(self.manifest().partitions)

    def events(self, columns: list[str] | None = None, dates: Iterable[str] | None = None) -> pd.DataFrame:
        """All events (or those of ``dates``) as a frame with canonical dtypes."""
        return self.events_table(columns, dates).to_pandas()

    def events_table(self, columns: list[str] | None = None, dates: Iterable[str] | None = None) -> pa.Table:
        manifest = self.manifest()
        parts = manifest.partitions
        wanted = parts if dates is None else {d: parts[d] for d in dates if d in parts}
        if not wanted:
            schema = EVENTS_SCHEMA if columns is None else pa.schema([EVENTS_SCHEMA.field(c) for c in columns])
            return schema.empty_table()
        files = [str(self.root / f) for _, f in sorted(wanted.items())]
        return ds.dataset(files, format="parquet", schema=EVENTS_SCHEMA).to_table(columns=columns)

    def table(self, name: str) -> pd.DataFrame | None:
        file = self.manifest().tables.get(name)
        return None if file is None else pq.read_table(self.root / file).to_pandas()

    def n_events(self) -> int:
        """Events in the lake: the manifest's count per date, or, for a date it has none of
        (a lake committed before the counts were kept), the file's footer."""
        manifest = self.manifest()
        return sum(
            manifest.rows[date] if date in manifest.rows else pq.ParquetFile(self.root / f).metadata.num_rows
            for date, f in manifest.partitions.items()
        )

    # -- writing -------------------------------------------------------------------------
    def commit(
        self,
        partitions: dict[str, pa.Table | Callable[[], pa.Table] | Stored] | None = None,
        tables: dict[str, pd.DataFrame] | None = None,
    ) -> bool:
        """Replace whole partitions (Arrow tables in :data:`EVENTS_SCHEMA`, any string column
        possibly dictionary-encoded) and named tables atomically; an empty partition is removed.
        A partition may also be given as a function that builds its table: it is called by the
        writers, in their threads; or as :class:`Stored`, a function that builds it already as
        stored. Return whether anything changed."""
        current = self.manifest()
        new = Manifest(current.version, dict(current.partitions), dict(current.tables), dict(current.rows))
        jobs: list[tuple[dict[str, str], str, str, Callable[[], pa.Table | None]]] = []
        checked = _UniqueDictionaries()  # partitions often share their columns' dictionaries
        for date, table in (partitions or {}).items():
            if isinstance(table, Stored):
                job = partial(_built_stored, table.build)
            else:
                build = table if callable(table) else partial(_as_is, table)  # empty: removed below
                job = partial(_built_in_order, build, checked)
            jobs.append((new.partitions, date, f"events/date={date}/part", job))
        for name, frame in (tables or {}).items():
            jobs.append(
                (new.tables, name, f"tables/{name}", partial(pa.Table.from_pandas, frame, preserve_index=False))
            )
        # Sorting, encoding and compressing release the GIL: two files at a time use both cores.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="commit") as pool:
            written = list(pool.map(lambda job: self._write(job[3](), job[2]), jobs))
        wrote = False
        for (target, key, _, _), result in zip(jobs, written, strict=True):
            if result is None:  # a partition built empty: removed
                target.pop(key, None)
                new.rows.pop(key, None)  # (a table's name is never a date)
                continue
            relative, was_new, n_rows = result
            target[key] = relative
            if target is new.partitions:
                new.rows[key] = n_rows
            wrote |= was_new
        if new.partitions == current.partitions and new.tables == current.tables:
            return False
        if wrote:
            os.sync()  # every data file is on disk before the manifest names it
        new.version = current.version + 1
        payload = {
            "version": new.version,
            "partitions": dict(sorted(new.partitions.items())),
            "tables": dict(sorted(new.tables.items())),
            "rows": dict(sorted(new.rows.items())),
        }
        tmp = self.root / f"{self.manifest_name}.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(payload, indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.manifest_path)
        self.collect_garbage()
        return True

    def _write(self, table: pa.Table | None, stem: str) -> tuple[str, bool, int] | None:
        """Write a file named by its content; return its relative path, whether it was new and
        its number of rows (None, writing nothing, for a partition built empty)."""
        if table is None:
            return None
        sink = pa.BufferOutputStream()
        if stem.startswith("events/"):
            # Dictionaries only where values repeat (event ids and times hardly do); strings come
            # dictionary-encoded (see _lake_order) and are written as they are. No Arrow schema is
            # stored: the parquet types read back as the contract's (strings, UTC timestamps).
            # Min/max statistics only for the numbers (see STATISTICS_COLUMNS).
            pq.write_table(
                table,
                sink,
                compression="zstd",
                use_dictionary=DICTIONARY_COLUMNS,
                write_statistics=STATISTICS_COLUMNS,
                store_schema=False,
            )
        else:
            pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue()  # hashed and written straight from Arrow's buffer, no copy
        relative = f"{stem}-{hashlib.sha256(data).hexdigest()[:20]}.parquet"
        path = self.root / relative
        if path.exists():
            return relative, False, table.num_rows
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        return relative, True, table.num_rows

    def collect_garbage(self) -> None:
        """Remove files that no manifest (the lake's or a stage's) names: left by a crash or an
        old version."""
        keep = set().union(
            *(Lake(self.root, name).manifest().files() for name in (MANIFEST, STAGE) if (self.root / name).exists())
        )
        # One bottom-up walk (os.walk): unnamed files go, then the folders left empty. A lake has
        # a folder per date, and three pathlib globs over MovieLens's 4,114 took 1.1 s of an
        # ingest (cProfile, once).
        root = str(self.root)
        for folder, subfolders, files in os.walk(root, topdown=False):
            relative = os.path.relpath(folder, root)
            prefix = "" if relative == "." else relative.replace(os.sep, "/") + "/"
            left = len(files)
            for name in files:
                if name.endswith((".parquet", ".tmp")) and prefix + name not in keep:
                    os.unlink(os.path.join(folder, name))
                    left -= 1
            if relative != "." and not left and not any(os.path.isdir(os.path.join(folder, d)) for d in subfolders):
                os.rmdir(folder)


def _as_is(table: pa.Table) -> pa.Table:
    return table


@dataclass(frozen=True)
class Stored:
    """A partition whose ``build`` gives its table already as stored (what :func:`_lake_order`
    would make of it: :data:`_STORED_SCHEMA`, sorted by ``ts`` then ``event_id``, one chunk,
    each dictionary holding the values that occur in order of first appearance): the commit
    writes it as it is. Calling it builds the table."""

    build: Callable[[], pa.Table]

    def __call__(self) -> pa.Table:
        return self.build()


def stored_slices(table: pa.Table, kept: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> list[Stored]:
    """Rows ``starts[i]:ends[i]`` of ``table`` (the contract's columns, every row already in the
    lake's order), the ``kept`` ones, as :class:`Stored` partitions, one per slice. Each
    dictionary column is renumbered by first appearance for all the slices in one pass (the C
    kernel restarts its numbering at each slice), and every column's kept rows are gathered
    once, a slice then being a view of them. Without the C kernels, or with a dictionary that
    holds a value twice or indices wider than int32, each slice is ordered on its own, as the
    commit orders any other partition (:func:`_lake_order`): the same tables."""
    native = kernels()
    before = np.concatenate([[0], np.cumsum(kept, dtype=np.int64)])  # kept rows before each row
    kept_starts, kept_ends = before[starts], before[ends]
    rows = np.flatnonzero(kept)
    columns: dict[str, pa.Array] = {}
    occurring: dict[str, tuple[np.ndarray, np.ndarray, pa.Array]] = {}  # used entries, their ends, dictionary
    for name in _DICTIONARY_STRINGS if native is not None else ():
        column = table[name]
        if not pa.types.is_dictionary(column.type):
            column = pc.dictionary_encode(column)
        values = column.unify_dictionaries().combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        dictionary, indices = values.dictionary, values.indices
        if indices.type != pa.int32() or pc.count_distinct(dictionary).as_py() != len(dictionary):
            native = None
            break
        codes = np.frombuffer(indices.buffers()[1], dtype=np.int32, count=len(indices), offset=4 * indices.offset)
        valid = numpy_bool(pc.is_valid(indices))[rows] if indices.null_count else None
        new, used, used_ends = native.first_appearance(
            np.ascontiguousarray(codes[rows]), valid, len(dictionary), kept_starts.astype(np.int64)
        )
        new = np.frombuffer(new, dtype=np.int32)
        columns[name] = pa.array(new, mask=~valid) if valid is not None and not valid.all() else pa.array(new)
        ends_of_used = np.concatenate([[0], np.frombuffer(used_ends, dtype=np.int64)])
        occurring[name] = (np.frombuffer(used, dtype=np.int32), ends_of_used, dictionary)
    if native is None:
        checked = _UniqueDictionaries()

        def ordered(i: int) -> pa.Table:
            lo, hi = int(starts[i]), int(ends[i])
            return _lake_order(table.slice(lo, hi - lo).filter(pa.array(kept[lo:hi])), checked)

        return [Stored(partial(ordered, i)) for i in range(len(starts))]
    kept_plain = table.select([c for c in EVENT_COLUMNS if c not in columns]).filter(pa.array(kept))
    for name in kept_plain.column_names:
        columns[name] = kept_plain[name].cast(EVENTS_SCHEMA.field(name).type).combine_chunks()

    def build(i: int) -> pa.Table:
        lo, n = int(kept_starts[i]), int(kept_ends[i] - kept_starts[i])
        arrays = []
        for name in EVENT_COLUMNS:
            part = columns[name].slice(lo, n)
            if name in occurring:
                used, used_ends, dictionary = occurring[name]
                part = pa.DictionaryArray.from_arrays(
                    part, dictionary.take(pa.array(used[used_ends[i] : used_ends[i + 1]]))
                )
            arrays.append(part)
        return pa.Table.from_arrays(arrays, schema=_STORED_SCHEMA)

    return [Stored(partial(build, i)) for i in range(len(starts))]


def _built_stored(build: Callable[[], pa.Table]) -> pa.Table | None:
    """A :class:`Stored` partition's table (None if it is empty)."""
    table = build()
    if table.schema != _STORED_SCHEMA:
        raise ValueError(f"a partition given as stored has the schema {table.schema}, not the lake's")
    return table if table.num_rows else None


def _built_in_order(build: Callable[[], pa.Table], checked: _UniqueDictionaries | None = None) -> pa.Table | None:
    """A partition built by ``build`` as stored (see :func:`_lake_order`); None if it is empty."""
    table = build()
    return _lake_order(table, checked) if table.num_rows else None


class _UniqueDictionaries:
    """Whether dictionaries hold each value once, each dictionary checked once: the dates of one
    commit are slices of the same columns, with the same dictionaries. Each entry keeps its
    dictionary alive, so that no other array can take its buffers' place while it is known."""

    def __init__(self) -> None:
        self._known: dict[tuple[int, ...], tuple[pa.Array, bool]] = {}

    def unique(self, dictionary: pa.Array) -> bool:
        key = (dictionary.offset, len(dictionary), *(b.address if b is not None else 0 for b in dictionary.buffers()))
        known = self._known.get(key)
        if known is None:
            known = (dictionary, pc.count_distinct(dictionary).as_py() == len(dictionary))
            self._known[key] = known
        return known[1]


# Columns whose values repeat within a date: stored dictionary-encoded (the strings among them
# given to the writer as Arrow dictionaries, see _lake_order).
DICTIONARY_COLUMNS = ["platform", "user_id", "person_id", "item_id", "action", "value", "text"]
_DICTIONARY_STRINGS = [c for c in DICTIONARY_COLUMNS if EVENTS_SCHEMA.field(c).type == pa.string()]
# Columns with min/max statistics in the event files: the numbers. A string column's range prunes
# nothing within a date (every platform and action occurs each day; ids are hashes spread over the
# whole range), and computing it was a quarter of the time spent writing the lake.
STATISTICS_COLUMNS = [f.name for f in EVENTS_SCHEMA if not pa.types.is_string(f.type)]
_STORED_SCHEMA = pa.schema(
    [f.with_type(pa.dictionary(pa.int32(), pa.string())) if f.name in _DICTIONARY_STRINGS else f for f in EVENTS_SCHEMA]
)


def _lake_order(table: pa.Table, checked: _UniqueDictionaries | None = None) -> pa.Table:
    """A partition as stored: the contract's columns and types, sorted by ``ts`` then
    ``event_id``, in one chunk, the repeating strings dictionary-encoded in order of first
    appearance (so the same rows always make the same bytes, whether their strings came plain
    or dictionary-encoded)."""
    table = table.select(EVENT_COLUMNS)
    table = table.cast(
        pa.schema(
            [
                _STORED_SCHEMA.field(f.name) if pa.types.is_dictionary(f.type) else EVENTS_SCHEMA.field(f.name)
                for f in table.schema
            ]
        )
    )
    if not _sorted(table):  # ingest hands over sorted slices: checking is linear, sorting is not
        table = table.sort_by([("ts", "ascending"), ("event_id", "ascending")])
    columns = [
        _first_appearance(table[c], checked) if c in _DICTIONARY_STRINGS else table[c].combine_chunks()
        for c in EVENT_COLUMNS
    ]
    return pa.Table.from_arrays(columns, schema=_STORED_SCHEMA)


def _first_appearance(values: pa.ChunkedArray, checked: _UniqueDictionaries | None = None) -> pa.DictionaryArray:
    """A string column, plain or dictionary-encoded, as one dictionary array holding the values
    that occur, in order of first appearance (what dictionary-encoding the plain strings gives)."""
    if not pa.types.is_dictionary(values.type):
        return pc.dictionary_encode(values.combine_chunks())
    chunks = values.unify_dictionaries().chunks
    if not chunks:
        return pa.array([], pa.string()).dictionary_encode()
    dictionary = chunks[0].dictionary
    # Number the entries in use by first appearance: a pass over integers, not strings.
    indices, occurring = _renumbered(pa.concat_arrays([chunk.indices for chunk in chunks]), dictionary)
    # A dictionary known to hold each value once needs no look at the values that occur.
    if not (checked is not None and checked.unique(dictionary)) and pc.count_distinct(occurring).as_py() != len(
        occurring
    ):  # one value at two entries
        return pc.dictionary_encode(pc.cast(values, pa.string()).combine_chunks())
    return pa.DictionaryArray.from_arrays(indices, occurring)


def _renumbered(indices: pa.Array, dictionary: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Dictionary indices renumbered by first appearance (int32, nulls kept), and the entries
    that occur in that order: one pass in C (pipelines/_native.c), else Arrow's hash kernel."""
    native = kernels()
    if native is None or indices.type != pa.int32() or not len(indices):
        used = pc.dictionary_encode(indices)
        return pc.cast(used.indices, pa.int32()), dictionary.take(used.dictionary)
    values = np.frombuffer(indices.buffers()[1], dtype=np.int32, count=len(indices), offset=4 * indices.offset)
    valid = numpy_bool(pc.is_valid(indices)) if indices.null_count else None
    renumbered, used = native.first_appearance(values, valid, len(dictionary))
    new = np.frombuffer(renumbered, dtype=np.int32)
    occurring = dictionary.take(pa.array(np.frombuffer(used, dtype=np.int32)))
    return (pa.array(new, mask=~valid) if valid is not None else pa.array(new)), occurring


def _sorted(table: pa.Table) -> bool:
    """Whether rows are already in (``ts``, ``event_id``) order; a stable sort would then
    leave them as they are."""
    ts = pc.cast(table["ts"], pa.int64()).to_numpy()
    step = np.diff(ts)
    if (step < 0).any():
        return False
    ties = np.flatnonzero(step == 0)
    if not len(ties):
        return True
    ids = table["event_id"]
    return bool(pc.all(pc.less_equal(ids.take(pa.array(ties)), ids.take(pa.array(ties + 1)))).as_py())
