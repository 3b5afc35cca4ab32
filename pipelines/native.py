"""The optional C kernels of ingest (pipelines/_native.c), for strings held as a data buffer and
int64 offsets, as Arrow holds them.

:func:`kernels` is None when the extension was not built (no C compiler at install) or when
``XINTEREST_NATIVE=0``: callers then compute the same values in Python and numpy.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
import pyarrow as pa


class Kernels(Protocol):
    def blake2b_128_joined(
        self, fields: list[tuple[object, object, object]], separator: bytes, null: bytes
    ) -> bytes: ...

    def hash64(self, data: object, offsets: object) -> bytes: ...


def kernels() -> Kernels | None:
    """The C module, or None (see the module docstring)."""
    if os.environ.get("XINTEREST_NATIVE", "1") == "0":
        return None
    try:
        from pipelines import _native  # type: ignore[attr-defined]
    except ImportError:
        return None
    # A module built from an older pipelines/_native.c (``make setup`` rebuilds it) may lack a kernel.
    if not all(hasattr(_native, name) for name in ("blake2b_128_joined", "hash64")):
        return None
    return _native  # type: ignore[no-any-return]


def hash64(data: bytes) -> int:
    """The C ``hash64`` of one string, in Python (its reference)."""
    prime, n = 0x100000001B3, len(data)
    h = 0xCBF29CE484222325 ^ n
    whole = n - n % 8
    for i in range(0, whole, 8):
        h = ((h ^ int.from_bytes(data[i : i + 8], "little")) * prime) & _MASK
    for byte in data[whole:]:
        h = ((h ^ byte) * prime) & _MASK
    for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h = ((h ^ (h >> 33)) * multiplier) & _MASK
    return h ^ (h >> 33)


_MASK = (1 << 64) - 1


def buffers(values: pa.Array) -> tuple[object, np.ndarray]:
    """A string or binary array's data buffer and its ``len + 1`` offsets as int64 (nulls are
    empty ranges, or whatever bytes the array keeps for them)."""
    n = len(values)
    width = np.int64 if pa.types.is_large_string(values.type) or pa.types.is_large_binary(values.type) else np.int32
    if values.buffers()[1] is None:  # no offsets buffer: every value null or the array empty
        return b"", np.zeros(n + 1, dtype=np.int64)
    offsets = np.frombuffer(values.buffers()[1], dtype=width)[values.offset : values.offset + n + 1]
    data = values.buffers()[2]
    return (data if data is not None else b""), np.ascontiguousarray(offsets, dtype=np.int64)
