"""The service's batching of the requests in flight (serving/service.py, ``InFlight``)."""

from __future__ import annotations

import asyncio
import time

from serving.service import InFlight


def test_requests_in_flight_go_together_and_the_next_batch_waits_for_the_last_ones_clients() -> None:
    batches: list[list[int]] = []

    def run(batch: list[int]) -> list[int | Exception]:
        batches.append(list(batch))
        return [ValueError(f"no {x}") if x < 0 else 2 * x for x in batch]

    async def main() -> None:
        q = InFlight(run, limit=8, window=0.5)
        assert await q.submit(1) == 2  # alone: at once, a batch of one
        assert await asyncio.gather(*(q.submit(i) for i in range(4))) == [0, 2, 4, 6]
        assert batches[-1] == [0, 1, 2, 3]  # four at once: one batch

        async def later(i: int, delay: float) -> int:
            await asyncio.sleep(delay)
            return int(await q.submit(i))

        # The four clients come back 10 ms apart: one batch again, not one request then three.
        assert await asyncio.gather(*(later(i, 0.01 * i) for i in range(4))) == [0, 2, 4, 6]
        assert batches[-1] == [0, 1, 2, 3]
        # Two come back: they go when the window has passed, and the next batch expects two.
        assert await asyncio.gather(later(5, 0), later(6, 0.01)) == [10, 12]
        assert batches[-1] == [5, 6]
        assert await asyncio.gather(later(7, 0), later(8, 0.01)) == [14, 16]
        assert batches[-1] == [7, 8]
        # A request's own error is its answer alone.
        results = await asyncio.gather(q.submit(-1), q.submit(9), return_exceptions=True)
        assert isinstance(results[0], ValueError) and results[1] == 18
        assert batches[-1] == [-1, 9]

    asyncio.run(main())


def test_more_requests_than_the_limit_go_in_batches_of_the_limit() -> None:
    batches: list[list[int]] = []

    def run(batch: list[int]) -> list[int]:
        batches.append(list(batch))
        return batch

    async def main() -> None:
        q = InFlight(run, limit=3, window=0.5)
        assert await asyncio.gather(*(q.submit(i) for i in range(7))) == list(range(7))

    asyncio.run(main())
    assert [len(b) for b in batches] == [3, 3, 1]


def test_clients_that_arrived_during_a_batch_and_its_own_go_together_next() -> None:
    """Two clients, then two more while the first two's batch runs, each sending its next
    request as soon as it has its answer: the halves do not take turns (each batch paying the
    fixed cost), the next batch waits for all four."""
    batches: list[list[int]] = []

    def run(batch: list[int]) -> list[int]:
        batches.append(list(batch))
        time.sleep(0.2)  # long beside the later clients' 0.05 s: a loaded machine keeps the order
        return batch

    async def main() -> None:
        q = InFlight(run, limit=8, window=0.5)

        async def client(i: int, delay: float) -> None:
            await asyncio.sleep(delay)
            for _ in range(4):
                assert await q.submit(i) == i

        await asyncio.gather(client(0, 0), client(1, 0), client(2, 0.05), client(3, 0.05))

    asyncio.run(main())
    assert sorted(batches[0]) == [0, 1]
    assert [sorted(b) for b in batches[1:]] == [[0, 1, 2, 3]] * 3 + [[2, 3]]
