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
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipelines.contract import EVENT_COLUMNS, EVENTS_SCHEMA

MANIFEST = "_manifest.json"


@dataclass
class Manifest:
    version: int = 0
    partitions: dict[str, str] = field(default_factory=dict)  # date → relative file
    tables: dict[str, str] = field(default_factory=dict)  # name → relative file

    def files(self) -> set[str]:
        return set(self.partitions.values()) | set(self.tables.values())


class Lake:
    """Read and commit the event lake at ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    # -- reading -------------------------------------------------------------------------
    def manifest(self) -> Manifest:
        path = self.root / MANIFEST
        if not path.exists():
            return Manifest()
        raw = json.loads(path.read_text())
        return Manifest(raw["version"], raw["partitions"], raw["tables"])

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
        return sum(pq.ParquetFile(self.root / f).metadata.num_rows for f in self.manifest().partitions.values())

    # -- writing -------------------------------------------------------------------------
    def commit(
        self,
        partitions: dict[str, pa.Table] | None = None,
        tables: dict[str, pd.DataFrame] | None = None,
    ) -> bool:
        """Replace whole partitions (Arrow tables in :data:`EVENTS_SCHEMA`) and named tables
        atomically; an empty partition is removed. Return whether anything changed."""
        current = self.manifest()
        new = Manifest(current.version, dict(current.partitions), dict(current.tables))
        wrote = False
        for date, table in (partitions or {}).items():
            if table.num_rows == 0:
                new.partitions.pop(date, None)
                continue
            table = table.select(EVENT_COLUMNS).cast(EVENTS_SCHEMA)
            table = table.sort_by([("ts", "ascending"), ("event_id", "ascending")])
            new.partitions[date], written = self._write(table, f"events/date={date}/part")
            wrote |= written
        for name, frame in (tables or {}).items():
            new.tables[name], written = self._write(pa.Table.from_pandas(frame, preserve_index=False), f"tables/{name}")
            wrote |= written
        if new.partitions == current.partitions and new.tables == current.tables:
            return False
        if wrote:
            os.sync()  # every data file is on disk before the manifest names it
        new.version = current.version + 1
        payload = {
            "version": new.version,
            "partitions": dict(sorted(new.partitions.items())),
            "tables": dict(sorted(new.tables.items())),
        }
        tmp = self.root / f"{MANIFEST}.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps(payload, indent=1))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.root / MANIFEST)
        self.collect_garbage()
        return True

    def _write(self, table: pa.Table, stem: str) -> tuple[str, bool]:
        """Write a file named by its content; return its relative path and whether it was new."""
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        relative = f"{stem}-{hashlib.sha256(data).hexdigest()[:20]}.parquet"
        path = self.root / relative
        if path.exists():
            return relative, False
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        return relative, True

    def collect_garbage(self) -> None:
        """Remove files that the manifest does not name (left by a crash or an old version)."""
        keep = self.manifest().files()
        for path in list(self.root.rglob("*.parquet")) + list(self.root.rglob("*.tmp")):
            if path.relative_to(self.root).as_posix() not in keep:
                path.unlink(missing_ok=True)
        for folder in sorted((p for p in self.root.rglob("*") if p.is_dir()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()
