"""Spreading keep-alive connections over the service's worker processes.

BentoML's workers share one listening socket, and the worker that is idle when a burst of
clients connects accepts the whole burst: eight clients opening their connections at once
were seen to land seven (or all eight) on one of two workers, which then queued their
requests while the other worker idled. The requests of a keep-alive connection never move.

:class:`Rebalance` moves them: every worker keeps its number of requests in flight, and a
moving average of it, in a small file shared by the service's workers (one slot per worker);
a worker whose average is ``MARGIN`` (and a quarter of itself) above the least busy worker's
answers one response with ``Connection: close``. The client reconnects (HTTP/1.1 clients do so
by themselves), and the least busy worker, idle in its event loop, is the one that accepts
first. Under an even load nothing is closed. ``XINTEREST_REBALANCE=0`` turns it off.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

SLOT = struct.Struct("qdd")  # requests in flight now, their moving average, when it was taken
TAU = 0.05  # seconds: the moving average's time constant (a batch takes ~10-20 ms)
MARGIN = 1.5  # close when the average here is this much above the least busy worker's ...
SHARE = 0.25  # ... and at least this share of the average here (no churn under a heavy, even load)


class WorkerLoad:
    """The requests in flight of each worker of one service and their moving average (a time
    constant of ``TAU``), in a shared file of ``workers`` slots; this worker owns slot
    ``index`` (0-based). The average smooths the dips between one batch's responses and the
    clients' next requests, so that an even load is seen as even."""

    def __init__(self, path: Path, index: int, workers: int) -> None:
        if not 0 <= index < workers:
            raise ValueError(f"worker index {index} is outside 0..{workers - 1}")
        self.index, self.workers = index, workers
        size = SLOT.size * workers
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            if os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
            self._map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.mine, self.average, self._at = 0, 0.0, time.monotonic()
        self._publish()  # a restarted worker starts from zero

    @staticmethod
    def _now(mine: int, average: float, at: float, now: float) -> float:
        """The average at ``now`` of a count that has held ``mine`` since ``at``."""
        return mine + (average - mine) * math.exp(-max(0.0, now - at) / TAU)

    def _change(self, by: int) -> None:
        now = time.monotonic()
        self.average, self._at = self._now(self.mine, self.average, self._at, now), now
        self.mine += by
        self._publish()

    def _publish(self) -> None:
        SLOT.pack_into(self._map, self.index * SLOT.size, self.mine, self.average, self._at)

    def enter(self) -> None:
        self._change(1)

    def leave(self) -> None:
        self._change(-1)

    def loads(self) -> list[float]:
        """Every worker's average now."""
        now = time.monotonic()
        out = []
        for i in range(self.workers):
            mine, average, at = SLOT.unpack_from(self._map, i * SLOT.size)
            out.append(self._now(mine, average, at, now))
        return out

    def move_one(self) -> bool:
        """Whether a connection should move off this worker (its average is ``MARGIN``, and
        ``SHARE`` of itself, above the least busy worker's); when so, the one it moves is taken off its average at once, so
        that one imbalance closes one connection, not as many as answer before the average
        catches up."""
        loads = self.loads()
        others = loads[: self.index] + loads[self.index + 1 :]
        if not others or loads[self.index] - min(others) < max(MARGIN, SHARE * loads[self.index]):
            return False
        self._change(0)
        self.average = max(0.0, self.average - 1)
        self._publish()
        return True


def worker_load(workers: int) -> WorkerLoad | None:
    """This worker's :class:`WorkerLoad`, in a file named after the BentoML server process
    (the workers' parent); ``None`` outside a multi-worker server."""
    from bentoml._internal.context import server_context

    index = getattr(server_context, "worker_index", None)
    if workers < 2 or index is None:
        return None
    path = Path(tempfile.gettempdir()) / f"xinterest-load-{os.getppid()}.bin"
    return WorkerLoad(path, int(index) - 1, workers)  # BentoML's worker ids start at 1


class Rebalance:
    """ASGI middleware: counts this worker's HTTP requests in flight and, when the worker is
    busier than another by ``MARGIN``, adds ``Connection: close`` to a response."""

    def __init__(self, app: Any, workers: int) -> None:
        self.app = app
        self.load = worker_load(workers)
        self.moved = 0  # connections this worker asked its clients to move

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        load = self.load
        if load is None or scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_moving(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and load.move_one():
                self.moved += 1
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        load.enter()
        try:
            await self.app(scope, receive, send_moving)
        finally:
            load.leave()
