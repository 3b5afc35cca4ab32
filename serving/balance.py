"""Spreading keep-alive connections over the service's worker processes.

BentoML's workers share one listening socket, and the worker that is idle when a burst of
clients connects accepts the whole burst: eight clients opening their connections at once
were seen to land seven (or all eight) on one of two workers, which then queued their
requests while the other worker idled. The requests of a keep-alive connection never move.

:class:`Rebalance` moves them, as a least-connections balancer would: every worker counts its
live connections (the client addresses it has served in the last ``IDLE`` seconds) in a small
file shared by the service's workers (one slot per worker), and a worker with ``MARGIN`` more
than the worker with the fewest answers one response with ``Connection: close``. The client
reconnects (HTTP/1.1 clients do so by themselves), and the least busy worker, idle in its
event loop, is the one most likely to accept. Connections are counted, not requests in flight:
the count does not dip between one batch's answers and the clients' next requests, so an even
spread is seen as even at any load and nothing is closed. ``XINTEREST_REBALANCE=0`` turns it
off.
"""

from __future__ import annotations

import mmap
import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

SLOT = struct.Struct("q")  # one worker's live connections
IDLE = 0.5  # seconds without a request after which a connection no longer counts
MARGIN = 2  # a connection moves when this worker has this many more than the one with fewest


class WorkerConnections:
    """The live connections of each worker of one service, in a shared file of ``workers``
    slots; this worker owns slot ``index`` (0-based) and its connections' last requests."""

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
        self.last: dict[Any, float] = {}  # client address -> time of its last request here
        self._pruned = time.monotonic()
        self._publish()  # a restarted worker starts from zero

    def _publish(self) -> None:
        SLOT.pack_into(self._map, self.index * SLOT.size, len(self.last))

    def seen(self, client: Any) -> None:
        """A request of ``client``'s connection (called as it starts and as it is answered)."""
        now = time.monotonic()
        self.last[client] = now
        if now - self._pruned > IDLE / 4:
            self._pruned = now
            for stale in [c for c, t in self.last.items() if now - t > IDLE]:
                del self.last[stale]
        self._publish()

    def counts(self) -> list[int]:
        """Every worker's live connections."""
        return [SLOT.unpack_from(self._map, i * SLOT.size)[0] for i in range(self.workers)]

    def move(self, client: Any) -> bool:
        """Whether ``client``'s connection should move off this worker (``MARGIN`` more
        connections here than in the worker with fewest); when so, it no longer counts here."""
        counts = self.counts()
        others = counts[: self.index] + counts[self.index + 1 :]
        if not others or len(self.last) - min(others) < MARGIN:
            return False
        self.last.pop(client, None)
        self._publish()
        return True


def worker_connections(workers: int) -> WorkerConnections | None:
    """This worker's :class:`WorkerConnections`, in a file named after the BentoML server
    process (the workers' parent); ``None`` outside a multi-worker server."""
    from bentoml._internal.context import server_context

    index = getattr(server_context, "worker_index", None)
    if workers < 2 or index is None:
        return None
    path = Path(tempfile.gettempdir()) / f"xinterest-connections-{os.getppid()}.bin"
    return WorkerConnections(path, int(index) - 1, workers)  # BentoML's worker ids start at 1


class Rebalance:
    """ASGI middleware: counts this worker's live connections and, when it has ``MARGIN`` more
    than another worker, adds ``Connection: close`` to the response."""

    def __init__(self, app: Any, workers: int) -> None:
        self.app = app
        self.connections = worker_connections(workers)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        connections, client = self.connections, scope.get("client")
        if connections is None or scope["type"] != "http" or client is None:
            await self.app(scope, receive, send)
            return
        client = tuple(client)

        async def send_moving(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if connections.move(client):
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
                else:
                    connections.seen(client)
            await send(message)

        connections.seen(client)
        await self.app(scope, receive, send_moving)
