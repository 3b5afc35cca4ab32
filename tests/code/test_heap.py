"""The service's heap after loading: frozen out of the collector's way, thawed for a reload."""

from __future__ import annotations

import gc
import weakref

from serving.loader import settle_heap


class _Node:
    """An object in a reference cycle: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_settled_objects_are_skipped_by_full_collections_until_the_next_settle() -> None:
    kept = _Node()
    ref = weakref.ref(kept)
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        del kept  # garbage now, but frozen: a full collection does not look at it
        gc.collect()
        assert ref() is not None
        settle_heap()  # a reload: the previous freeze is undone before collecting
        assert ref() is None
    finally:
        gc.unfreeze()
