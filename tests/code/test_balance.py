"""Connection rebalancing between the service's workers (serving/balance.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from serving.balance import IDLE, Rebalance, WorkerConnections


def _pair(tmp_path: Path) -> tuple[WorkerConnections, WorkerConnections]:
    path = tmp_path / "connections.bin"
    return WorkerConnections(path, 0, 2), WorkerConnections(path, 1, 2)


def _clients(n: int, start: int = 0) -> list[tuple[str, int]]:
    return [("127.0.0.1", 40000 + i) for i in range(start, start + n)]


def test_each_worker_sees_the_others_connections_and_a_connection_counts_once(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    for client in _clients(5) + _clients(5):  # each client twice: still five connections
        a.seen(client)
    b.seen(_clients(1, 100)[0])
    assert a.counts() == b.counts() == [5, 1]


def test_connections_move_off_the_busier_worker_until_the_spread_is_even(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    on_a, on_b = _clients(7), _clients(1, 100)
    for client in on_a:
        a.seen(client)
    for client in on_b:
        b.seen(client)
    assert not b.move(on_b[0])
    moved = 0
    for client in on_a:  # a's clients' next answers, one after the other
        if a.move(client):
            b.seen(client)  # it reconnects to b
            moved += 1
    assert moved == 3 and a.counts() == [4, 4]
    assert not any(w.move(c) for w, cs in ((a, on_a[3:]), (b, on_b)) for c in cs)  # even: nothing moves


def test_a_small_difference_moves_nothing_and_idle_connections_stop_counting(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    for client in _clients(5):
        a.seen(client)
    for client in _clients(4, 100):
        b.seen(client)
    assert not a.move(_clients(1)[0])  # 5 against 4
    time.sleep(IDLE * 1.2)
    for client in _clients(2):  # three of a's connections have gone quiet
        a.seen(client)
    assert a.counts()[0] == 2


def test_a_restarted_worker_starts_from_zero(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    for client in _clients(6):
        b.seen(client)
    b = WorkerConnections(tmp_path / "connections.bin", 1, 2)
    assert a.counts() == [0, 0]
    with pytest.raises(ValueError, match="outside"):
        WorkerConnections(tmp_path / "connections.bin", 2, 2)


def _request(middleware: Rebalance, client: tuple[str, int]) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware({"type": "http", "path": "/recommend", "client": list(client)}, receive, send))
    return sent


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def test_the_middleware_closes_a_connection_only_on_the_busier_worker(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    busy, idle = Rebalance(_app, workers=2), Rebalance(_app, workers=2)
    busy.connections, idle.connections = a, b
    for client in _clients(2):
        a.seen(client)  # two other connections on a, none on b
    assert (b"connection", b"close") not in _request(idle, _clients(1, 100)[0])[0]["headers"]
    start, body = _request(busy, _clients(1, 50)[0])  # a third connection on a, one on b
    assert (b"connection", b"close") in start["headers"] and body["body"] == b"{}"
    assert a.counts() == [2, 1]  # the moved connection no longer counts on a
