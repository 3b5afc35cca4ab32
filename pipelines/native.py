"""The optional C kernels (pipelines/_native.c): ingest's, for strings held as a data buffer and
int64 offsets, as Arrow holds them (see :func:`pipelines.contract.string_buffers`), and two of
serving's candidate generation (:mod:`training.recommender`), the re-ranker's trees
(:mod:`training.trees`) and the VAE's forward pass (:mod:`training.vae_numpy`).

:func:`kernels` is None when the extension was not built (no C compiler at install) or when
``XINTEREST_NATIVE=0``: callers then compute the same values in Python and numpy.
"""

from __future__ import annotations

import os
from typing import Protocol


class Kernels(Protocol):
    def blake2b_128_joined(
        self, fields: list[tuple[object, object, object]], separator: bytes, null: bytes
    ) -> bytes: ...

    def hash64(self, data: object, offsets: object) -> bytes: ...

    def json_lines(
        self, data: object, starts: object, ends: object, names: list[bytes], kinds: bytes
    ) -> list[tuple[bytes, bytes | None, bytes | None]] | None: ...

    def repeated64(self, hashes: object, rows: object) -> bytes: ...

    def first_appearance(
        self, indices: object, valid: object | None, size: int, starts: object | None = None
    ) -> tuple[bytes, ...]: ...

    def hmac_sha256(
        self, key: bytes, prefix: bytes, data: object, offsets: object, width: int, portable: bool = False
    ) -> bytes: ...

    def sum_rows(
        self, indptr: object, indices: object, data: object, rows: object, weights: object | None, out: object
    ) -> None: ...

    def ranks_at(self, row: object, ordered: object, at: object) -> bytearray: ...

    def tree_margins(
        self, splits: object, leaves: object, depth: int, x: object, n_features: int, out: object
    ) -> None: ...

    def vae_person(
        self,
        params: object,
        layout: object,
        dims: object,
        items: object,
        actions: object,
        platforms: object,
        buckets: object,
        bag: object,
        logits: object,
        mu: object,
        attention: object,
    ) -> None: ...


_KERNELS = (
    "blake2b_128_joined",
    "hash64",
    "json_lines",
    "repeated64",
    "hmac_sha256",
    "first_appearance",
    "sum_rows",
    "ranks_at",
    "tree_margins",
    "vae_person",
)


_loaded: dict[str, Kernels | None] = {}


def kernels() -> Kernels | None:
    """The C module, or None (see the module docstring); looked up once per value of
    ``XINTEREST_NATIVE`` (serving calls this per person)."""
    flag = os.environ.get("XINTEREST_NATIVE", "1")
    if flag not in _loaded:
        _loaded[flag] = _load(flag)
    return _loaded[flag]


def _load(flag: str) -> Kernels | None:
    if flag == "0":
        return None
    try:
        from pipelines import _native  # type: ignore[attr-defined]
    except ImportError:
        return None
    # A module built from an older pipelines/_native.c (``make setup`` rebuilds it) may lack a kernel.
    if not all(hasattr(_native, name) for name in _KERNELS):
        return None
    return _native  # type: ignore[no-any-return]
