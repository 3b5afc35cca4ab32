"""Platform adapters: each turns one kind of raw log into canonical tables.

``--source NAME[:PATH]`` on the CLI picks one; without a path, the public datasets are read
from ``XINTEREST_DATA_DIR`` and synthetic logs are generated into the workdir.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.adapters.base import AdapterError, EventBatch, SourceData

ADAPTERS = ("synthetic", "douban", "taobao", "movielens", "canonical")
DATASET_FOLDERS = {"douban": "douban-book-music", "taobao": "taobao-userbehavior", "movielens": "ml-latest-small"}


def parse_source(spec: str) -> tuple[str, Path | None]:
    """``"douban:/data/db"`` → ``("douban", Path("/data/db"))``; ``"synthetic"`` → ``("synthetic", None)``."""
    name, _, path = spec.partition(":")
    name = name.strip().lower()
    if name not in ADAPTERS:
        raise AdapterError(f"unknown source {name!r}: choose one of {', '.join(ADAPTERS)}")
    return name, Path(path).expanduser() if path else None


def read_source(name: str, path: Path | None, data_dir: Path) -> SourceData:
    """Open a source by adapter name; public datasets default to their folder under ``data_dir``."""
    if name == "canonical" and path is None:
        raise AdapterError("the canonical adapter needs a path: --source canonical:PATH")
    if path is None and name in DATASET_FOLDERS:
        path = data_dir / DATASET_FOLDERS[name]
    if path is None:
        raise AdapterError(f"source {name!r} needs a path")
    if name == "synthetic":
        from pipelines.adapters import synthetic

        return synthetic.read(path)
    if name == "douban":
        from pipelines.adapters import douban

        return douban.read(path)
    if name == "taobao":
        from pipelines.adapters import taobao

        return taobao.read(path)
    if name == "movielens":
        from pipelines.adapters import movielens

        return movielens.read(path)
    from pipelines.adapters import canonical

    return canonical.read(path)


__all__ = ["ADAPTERS", "AdapterError", "EventBatch", "SourceData", "parse_source", "read_source"]
