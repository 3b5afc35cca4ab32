"""Connection rebalancing between the service's workers (serving/balance.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from serving.balance import TAU, Rebalance, WorkerLoad

SETTLE = 12 * TAU  # the moving averages are within e^-12 of the counts


def _pair(tmp_path: Path) -> tuple[WorkerLoad, WorkerLoad]:
    path = tmp_path / "load.bin"
    return WorkerLoad(path, 0, 2), WorkerLoad(path, 1, 2)


def test_each_worker_sees_the_others_moving_average(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    for _ in range(5):
        a.enter()
    b.enter()
    time.sleep(SETTLE)
    loads = b.loads()
    assert loads == pytest.approx([5, 1], abs=0.01)
    assert a.loads() == pytest.approx(loads, abs=0.01)


def test_only_the_busier_worker_moves_and_one_imbalance_moves_one_connection(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    for _ in range(3):
        a.enter()
    b.enter()
    time.sleep(SETTLE)
    assert not b.move_one()
    assert a.move_one()  # 3 against 1: one connection moves ...
    assert not a.move_one()  # ... and its leaving is counted at once: 2 against 1 is even enough
    a.leave()
    b.enter()
    time.sleep(SETTLE)
    assert not a.move_one() and not b.move_one()


def test_a_short_dip_between_batches_is_not_an_imbalance(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    for w in (a, b):
        for _ in range(4):
            w.enter()
    time.sleep(SETTLE)
    for _ in range(3):  # b answers a batch; its clients' next requests are not in yet
        b.leave()
    assert not a.move_one()


def test_a_restarted_worker_starts_from_zero(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    for _ in range(6):
        b.enter()
    time.sleep(SETTLE)
    b = WorkerLoad(tmp_path / "load.bin", 1, 2)
    assert b.loads()[1] == 0
    with pytest.raises(ValueError, match="outside"):
        WorkerLoad(tmp_path / "load.bin", 2, 2)


def _request(middleware: Rebalance) -> list[dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(middleware({"type": "http", "path": "/recommend"}, receive, send))
    return sent


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def test_the_middleware_closes_a_connection_only_on_the_busier_worker(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    busy, idle = Rebalance(_app, workers=2), Rebalance(_app, workers=2)
    busy.load, idle.load = a, b
    for _ in range(3):
        a.enter()  # three requests of other connections in flight on a, none on b
    time.sleep(SETTLE)
    assert (b"connection", b"close") not in _request(idle)[0]["headers"]
    start, body = _request(busy)
    assert (b"connection", b"close") in start["headers"]
    assert body["body"] == b"{}"
    assert (busy.moved, idle.moved) == (1, 0)
    assert a.mine == 3 and b.mine == 0  # each request left its count as it found it


def test_under_a_heavy_load_a_small_difference_moves_nothing(tmp_path: Path) -> None:
    a, b = _pair(tmp_path)
    for _ in range(16):
        a.enter()
    for _ in range(14):
        b.enter()
    time.sleep(SETTLE)
    assert not a.move_one()  # 2 more, but an eighth of 16: reconnecting would cost more than it moves
    for _ in range(4):
        b.leave()
    time.sleep(SETTLE)
    assert a.move_one()  # 16 against 10
