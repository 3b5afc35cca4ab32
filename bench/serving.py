"""`/recommend` throughput and latency over HTTP, on the local and prod profiles.

The service runs as `bentoml serve` (its own process); a separate load process keeps a fixed
number of requests in flight (1, 8, 32) for a fixed time and records each latency. The load
process is a plain HTTP/1.1 client (asyncio protocol, one keep-alive connection per request in
flight, each response read whole and its JSON parsed): it costs ~0.1 ms of CPU per request,
about a tenth of httpx's, which matters when it shares the machine's cores with the server. A
response with ``Connection: close`` (the service moving a connection to a less busy worker,
serving/balance.py) makes it reconnect, as HTTP/1.1 clients do; the reconnection is in that
request's latency, and ``connections`` counts the connections a level opened. Every
request is ``{"person_id": ..., "k": 20, "target_platform": ...}`` for a known person: the
full path (online features, VAE, candidates, re-ranking).

Two in-process floors, measured in the same run, without HTTP:

- ``floor`` (the issue's floor): one call at a time in this process, one online feature
  read plus the model forward; ``p99_c8_over_floor_p99`` is the service's p99 at
  concurrency 8 over this floor's p99. With 8 requests in flight on 2 cores, the service's
  latency also holds the requests queued ahead of it, which a one-at-a-time floor does not.
  The machine's speed drifts within minutes, so the floor (1,000 calls) and concurrency 8
  alternate for ``--rounds`` rounds (default 5) while the service idles between them; each
  round's ratio compares measurements seconds apart, ``rounds`` keeps them all, and the
  figures reported for the floor and concurrency 8 are the round with the median ratio.
- ``floor_c8`` (like with like): as many processes as the service has workers, each driven
  by its share of the 8 callers in flight, each process answering its callers' requests
  together as a service worker answers the requests in flight (``Engine.recommend_many``),
  for the same duration; ``p99_c8_over_floor_c8_p99`` is the service's p99 at
  concurrency 8 over this floor's p99: what HTTP, BentoML and the load process add.

Both floors settle their heap once their engine is loaded and read every item's statistics
before the first request, as the service's workers do (``serving.loader.settle_heap``: no full
garbage collections over the loaded model; ``Engine.refresh_item_stats``: the item-stats cache
is refreshed off the request path).

The prod profile serves the same registered model with its features in Redis.

    make bench-serving        # or: python -m bench.serving --seconds 10 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from rich.table import Table

from bench.common import publish, stop_tree, work_dir
from pipelines import feature_store as fs
from pipelines.config import Settings, Workdir
from pipelines.ingest import ensure_synthetic, ingest_sources

LEVELS = (1, 8, 32)
KEY = "bench-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def prepare(base: Path, events: int) -> tuple[Settings, Workdir]:
    """A trained work directory (local profile), made once."""
    from pipelines.train import train

    settings = Settings(workdir=base / "local", pseudonym_key=KEY)
    workdir = Workdir.at(settings.workdir)
    if not (workdir.reports / "train-latest.json").exists():
        shutil.rmtree(workdir.root, ignore_errors=True)
        raw = ensure_synthetic(base / f"raw-{events}", n_events=events)
        ingest_sources([("synthetic", raw)], workdir, settings)
        train(workdir, settings, progress=True)
    return settings, workdir


def prod_copy(settings: Settings, workdir: Workdir, base: Path) -> tuple[Settings, Workdir]:
    """The same lake and registry, with the features in Redis and the Feast registry in PostgreSQL."""
    target = Workdir.at(base / "prod")
    shutil.rmtree(target.root, ignore_errors=True)
    shutil.copytree(workdir.lake, target.lake)
    prod = Settings(
        workdir=target.root,
        pseudonym_key=KEY,
        profile="prod",
        feast_project=f"xbench_serving_{int(time.time())}",
        mlflow_tracking_uri=f"sqlite:///{workdir.mlflow_db}",
    )
    target.feature_data.mkdir(parents=True, exist_ok=True)
    shutil.copy(workdir.feature_data / "person_embedding.parquet", target.feature_data / "person_embedding.parquet")
    fs.refresh(target, prod)
    return prod, target


def persons(workdir: Workdir, n: int = 2000) -> list[dict[str, Any]]:
    seq = pd.read_parquet(workdir.feature_data / "person_sequence.parquet", columns=["person_id", "seq_platforms"])
    latest = seq.groupby("person_id").tail(1).sample(min(n, seq["person_id"].nunique()), random_state=0)
    return [
        {"person_id": p, "k": 20, "target_platform": str(list(pl)[-1])}
        for p, pl in zip(latest["person_id"], latest["seq_platforms"], strict=True)
    ]


def floor_engine(settings: Settings, workdir: Workdir, requests: list[dict[str, Any]]) -> Any:
    """The engine of the one-at-a-time floor, loaded in this process and warmed up."""
    from serving.loader import engine, one_thread_per_request, settle_heap

    one_thread_per_request()  # as the service does
    eng = engine(settings, workdir)
    eng.refresh_item_stats(pause=0.0)  # as the service does: requests never read item stats
    for r in requests[:50]:
        eng.recommend(r["person_id"], 20, r["target_platform"])
    settle_heap()  # as the service does once its model is loaded
    return eng


def floor(eng: Any, requests: list[dict[str, Any]], n: int = 1000) -> dict[str, float]:
    """The one-at-a-time floor: ``n`` calls of ``eng`` (see :func:`floor_engine`), one online
    feature read plus the model forward each, no HTTP."""
    times = []
    for r in requests[:n]:
        t = time.perf_counter()
        eng.recommend(r["person_id"], 20, r["target_platform"])
        times.append(time.perf_counter() - t)
    ms = np.asarray(times) * 1000
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


def _floor_share(
    settings: Settings,
    workdir: Workdir,
    requests: list[dict[str, Any]],
    callers: int,
    seconds: float,
    start: Any,
    results: Any,
) -> None:
    """One process of the concurrent floor: ``callers`` requests in flight, answered together
    (as a service worker answers the requests in flight), again and again for ``seconds``."""
    from serving.engine import Ask
    from serving.loader import engine, one_thread_per_request, settle_heap

    one_thread_per_request()
    eng = engine(settings, workdir)
    eng.refresh_item_stats(pause=0.0)  # nothing runs beside it yet
    asks = [Ask(r["person_id"], 20, r["target_platform"]) for r in requests]
    for lo in range(0, 50, callers):
        eng.recommend_many(asks[lo : lo + callers])
    settle_heap()
    start.wait()
    latencies, i = [], 0
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop:
        batch = [asks[(i + j) % len(asks)] for j in range(callers)]
        t = time.perf_counter()
        eng.recommend_many(batch)
        latencies += [time.perf_counter() - t] * callers
        i += callers
    results.put(latencies)


def floor_concurrent(
    settings: Settings, workdir: Workdir, requests: list[dict[str, Any]], concurrency: int, seconds: float
) -> dict[str, float]:
    """The floor at ``concurrency``: the service's number of worker processes, each with its
    share of the callers, no HTTP."""
    import multiprocessing

    from serving.service import worker_count

    processes = min(worker_count(), concurrency)
    shares = [concurrency // processes + (1 if p < concurrency % processes else 0) for p in range(processes)]
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(processes), context.Queue()
    family = [
        context.Process(
            target=_floor_share,
            args=(settings, workdir, requests[p::processes], share, seconds, start, results),
        )
        for p, share in enumerate(shares)
    ]
    for process in family:
        process.start()
    latencies = [t for _ in family for t in results.get(timeout=600)]
    for process in family:
        process.join()
    ms = np.asarray(latencies) * 1000
    return {
        "processes": processes,
        "concurrency": concurrency,
        "requests": len(ms),
        "rps": len(ms) / seconds,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
    }


LOAD = r"""
import asyncio, json, sys, time


class Connection(asyncio.Protocol):
    # One keep-alive HTTP/1.1 connection: each request is written whole and its response read
    # whole (status line, headers, the Content-Length bytes of body) before the next one.
    def __init__(self):
        self.buffer, self.waiter, self.transport, self.closing = bytearray(), None, None, False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:head_end]).lower()
        at = head.find(b"\r\ncontent-length:")
        if at < 0:
            return self._finish(error=RuntimeError("a response without Content-Length"))
        stop = head.find(b"\r\n", at + 2)
        end = head_end + 4 + int(head[at + 17 : stop if stop > 0 else None])
        if len(self.buffer) >= end:
            body = bytes(self.buffer[head_end + 4 : end])
            del self.buffer[:end]
            self.closing = b"\r\nconnection: close" in head
            self._finish((int(head[9:12]), body))

    def _finish(self, result=None, error=None):
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error) if error else waiter.set_result(result)

    def connection_lost(self, exc):
        self._finish(error=exc or ConnectionError("the server closed the connection"))

    def request(self, payload):
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(payload)
        return self.waiter


async def main(url, requests, concurrency, seconds):
    host, port = url.split("//")[1].split(":")
    payloads = [
        b"POST /recommend HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (host.encode(), port.encode(), len(body), body)
        for body in (json.dumps(r).encode() for r in requests)
    ]
    loop = asyncio.get_running_loop()
    latencies, errors, reconnects = [], 0, 0
    stop = time.perf_counter() + seconds

    async def worker(offset):
        nonlocal errors, reconnects
        conn, i = None, offset
        while time.perf_counter() < stop:
            t = time.perf_counter()  # a request's latency holds its (re)connection, if any
            if conn is None:
                conn = (await loop.create_connection(Connection, host, int(port)))[1]
                reconnects += 1
            try:
                status, body = await conn.request(payloads[i % len(payloads)])
            except (OSError, RuntimeError):
                errors += 1
                conn.transport.close()
                conn = None
                continue
            elapsed = time.perf_counter() - t
            if conn.closing:  # the server asked this connection to move (serving/balance.py)
                conn.transport.close()
                conn = None
            if status == 200 and json.loads(body)["items"]:
                latencies.append(elapsed)
            else:
                errors += 1
            i += concurrency
        if conn is not None:
            conn.transport.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker(o) for o in range(concurrency)))
    elapsed = time.perf_counter() - started
    print(json.dumps({"latencies": latencies, "errors": errors, "elapsed": elapsed, "connections": reconnects}))


url, path, concurrency, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
from uvloop import run  # a dev dependency: the figures in README were measured with it
run(main(url, json.load(open(path)), concurrency, seconds))
"""


def drive(url: str, requests_path: Path, concurrency: int, seconds: float) -> dict[str, float]:
    subprocess.run(
        [sys.executable, "-c", LOAD, url, str(requests_path), str(concurrency), "2"], check=True, capture_output=True
    )  # warm-up
    out = subprocess.run(
        [sys.executable, "-c", LOAD, url, str(requests_path), str(concurrency), str(seconds)],
        check=True,
        capture_output=True,
        text=True,
    )
    result = json.loads(out.stdout)
    ms = np.asarray(result["latencies"]) * 1000
    return {
        "concurrency": concurrency,
        "requests": len(ms),
        "errors": result["errors"],
        "connections": result["connections"],
        "rps": len(ms) / result["elapsed"],
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
        "p99_ms": float(np.percentile(ms, 99)),
    }


def serve(settings: Settings, workdir: Workdir) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = _free_port()
    env = {
        **os.environ,
        "XINTEREST_WORKDIR": str(workdir.root),
        "XINTEREST_PROFILE": settings.profile,
        "XINTEREST_PSEUDONYM_KEY": KEY,
        "XINTEREST_FEAST_PROJECT": settings.feast_project,
        "XINTEREST_PORT": str(port),
    }
    if settings.mlflow_tracking_uri:
        env["MLFLOW_TRACKING_URI"] = settings.mlflow_tracking_uri
    bentoml = Path(sys.executable).parent / "bentoml"
    proc = subprocess.Popen(
        [str(bentoml), "serve", "serving.service:XInterest", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(360):
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop_tree(proc.pid)
    raise RuntimeError("the service did not become ready")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--profiles", default="local,prod")
    parser.add_argument(
        "--rounds", type=int, default=5, help="alternated rounds of the one-at-a-time floor and concurrency 8"
    )
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    base = work_dir("serving")
    settings, workdir = prepare(base, args.events)
    results: dict[str, Any] = {"events": args.events, "duration_seconds": args.seconds, "k": 20, "profiles": {}}
    metrics: dict[str, float] = {}
    table = Table(title="/recommend (k=20, re-ranked) over HTTP vs the in-process floor")
    for column in ("profile", "concurrency", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"):
        table.add_column(column, justify="right")
    for profile in args.profiles.split(","):
        s, w = (settings, workdir) if profile == "local" else prod_copy(settings, workdir, base)
        requests = persons(w)
        requests_path = base / f"requests-{profile}.json"
        requests_path.write_text(json.dumps(requests))
        floor_c8 = floor_concurrent(s, w, requests, LEVELS[1], args.seconds)
        eng = floor_engine(s, w, requests)
        proc, url = serve(s, w)
        try:
            # The one-at-a-time floor and concurrency 8 alternate (the service idles while the
            # floor runs): the machine's speed drifts within minutes, and each round's ratio
            # compares two measurements taken a few seconds apart.
            rounds = []
            first = drive(url, requests_path, LEVELS[0], args.seconds)
            for _ in range(args.rounds):
                floor_round = floor(eng, requests)
                c8 = drive(url, requests_path, LEVELS[1], args.seconds)
                rounds.append({"floor": floor_round, "c8": c8, "ratio": c8["p99_ms"] / floor_round["p99_ms"]})
            median = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
            levels = [first, median["c8"], *(drive(url, requests_path, c, args.seconds) for c in LEVELS[2:])]
        finally:
            stop_tree(proc.pid)
            if profile == "prod":
                fs.open_store(w, s).teardown()
        del eng
        floor_figures = median["floor"]
        results["profiles"][profile] = {
            "levels": levels,
            "floor": floor_figures,
            "p99_c8_over_floor_p99": median["ratio"],
            "rounds": [
                {"floor_p99_ms": r["floor"]["p99_ms"], "c8_p99_ms": r["c8"]["p99_ms"], "ratio": r["ratio"]}
                for r in rounds
            ],
            "floor_c8": floor_c8,
            "p99_c8_over_floor_c8_p99": levels[1]["p99_ms"] / floor_c8["p99_ms"],
        }
        for level in levels:
            table.add_row(
                profile,
                str(level["concurrency"]),
                f"{level['rps']:.0f}",
                f"{level['p50_ms']:.1f}",
                f"{level['p95_ms']:.1f}",
                f"{level['p99_ms']:.1f}",
                str(level["errors"]),
            )
            metrics[f"{profile}.c{level['concurrency']}.p99_ms"] = level["p99_ms"]
            metrics[f"{profile}.c{level['concurrency']}.rps"] = level["rps"]
        table.add_row(
            profile,
            "floor (in-process)",
            f"{1000 / floor_figures['mean_ms']:.0f}",
            f"{floor_figures['p50_ms']:.1f}",
            f"{floor_figures['p95_ms']:.1f}",
            f"{floor_figures['p99_ms']:.1f}",
            "",
        )
        table.add_row(
            profile,
            f"floor c{LEVELS[1]} ({floor_c8['processes']} processes)",
            f"{floor_c8['rps']:.0f}",
            f"{floor_c8['p50_ms']:.1f}",
            f"{floor_c8['p95_ms']:.1f}",
            f"{floor_c8['p99_ms']:.1f}",
            "",
        )
        metrics[f"{profile}.floor.p99_ms"] = floor_figures["p99_ms"]
        metrics[f"{profile}.floor_c8.p99_ms"] = floor_c8["p99_ms"]
    publish("serving", results, metrics, table)


if __name__ == "__main__":
    main()
