"""Feature store figures on the local and prod profiles, measured in one process per profile.

- materialization: offline rows scanned and online rows written per second;
- online read latency (p50, p99) of one person's full ``ranker_v1`` FeatureService (person
  profile, person x platform activity, item stats, embedding, and the on-demand recency view):
  through our reader (``OnlineReader.read_service``), through ``feast serve``'s HTTP endpoint
  (started as a separate process, called over a keep-alive connection), and as a raw read of
  the same keys from the store (SQLite SELECTs / one Redis pipeline of HMGETs, no decoding).

    make bench-features        # or: python -m bench.features --events 200000 --reads 2000
"""

from __future__ import annotations

import argparse
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

from bench.common import READ_PATHS, publish, stop_tree, work_dir
from pipelines import feature_store as fs
from pipelines.config import Settings, Workdir
from pipelines.ingest import ensure_synthetic, ingest_sources

SERVICE = "ranker_v1"


def _entities(workdir: Workdir, n: int, seed: int = 0) -> list[dict[str, Any]]:
    activity = pd.read_parquet(workdir.feature_data / "person_activity.parquet", columns=["person_id", "platform"])
    items = pd.read_parquet(workdir.feature_data / "item_stats.parquet", columns=["item_id"])
    rng = np.random.default_rng(seed)
    rows = activity.drop_duplicates().sample(n, random_state=seed, replace=len(activity) < n)
    return [
        {
            "person_id": p,
            "platform": pl,
            "item_id": items["item_id"].iloc[rng.integers(len(items))],
            "request_ts": int(time.time()),
        }
        for p, pl in zip(rows["person_id"], rows["platform"], strict=True)
    ]


def _percentiles(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1000
    return {
        "p50_ms": round(float(np.percentile(ms, 50)), 3),
        "p99_ms": round(float(np.percentile(ms, 99)), 3),
        "mean_ms": round(float(ms.mean()), 3),
    }


def _time_calls(call: Any, entities: list[dict[str, Any]], warmup: int = 50) -> list[float]:
    for e in entities[:warmup]:
        call(e)
    out = []
    for e in entities:
        t = time.perf_counter()
        call(e)
        out.append(time.perf_counter() - t)
    return out


def _raw_reader(store: Any) -> Any:
    """The same keys, read from the store with no decoding: the floor of any online read."""
    from feast.infra.key_encoding_utils import serialize_entity_key
    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import Value

    config = store.config
    views = {fv.name: fv for fv in store.list_feature_views()}
    wanted = ["person_profile", "person_activity", "item_stats", "person_embedding"]

    def keys_of(view: str, e: dict[str, Any]) -> bytes:
        join = list(views[view].join_keys)
        key = EntityKey(join_keys=join, entity_values=[Value(string_val=e[j]) for j in join])
        return serialize_entity_key(key, entity_key_serialization_version=config.entity_key_serialization_version)

    if config.online_store.type == "sqlite":
        import sqlite3

        conn = sqlite3.connect(str(Path(config.repo_path) / config.online_store.path), check_same_thread=False)
        tables = {v: f"{config.project}_{v}" for v in wanted}

        def read(e: dict[str, Any]) -> int:
            n = 0
            for view in wanted:
                rows = conn.execute(
                    f'SELECT entity_key, feature_name, value, event_ts FROM "{tables[view]}" WHERE entity_key IN (?)',
                    (keys_of(view, e),),
                ).fetchall()
                n += len(rows)
            return n

        return read
    import mmh3
    import redis

    host, _, port = config.online_store.connection_string.split(",")[0].partition(":")
    client = redis.Redis(host=host, port=int(port or 6379))
    fields = {v: [mmh3.hash_bytes(f"{v}:{f.name}") for f in views[v].features] + [f"_ts:{v}".encode()] for v in wanted}

    def read_redis(e: dict[str, Any]) -> int:
        with client.pipeline(transaction=False) as pipe:
            for view in wanted:
                pipe.hmget(keys_of(view, e) + config.project.encode(), fields[view])
            return len(pipe.execute())

    return read_redis


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _feast_serve(workdir: Workdir, entities: list[dict[str, Any]]) -> list[float]:
    import httpx

    port = _free_port()
    feast = Path(sys.executable).parent / "feast"
    proc = subprocess.Popen(
        [str(feast), "serve", "-p", str(port), "--no-access-log"],
        cwd=workdir.feature_repo,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=30) as client:
            for _ in range(600):
                try:
                    if client.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
            else:
                raise RuntimeError("feast serve did not start")

            def call(e: dict[str, Any]) -> None:
                body = {"feature_service": SERVICE, "entities": {k: [v] for k, v in e.items()}}
                response = client.post(f"{url}/get-online-features", json=body)
                response.raise_for_status()

            return _time_calls(call, entities)
    finally:
        stop_tree(proc.pid)


def run_profile(profile: str, raw: Path, base: Path, reads: int) -> dict[str, Any]:
    settings = Settings(
        workdir=base / profile,
        pseudonym_key="bench-key",
        profile=profile,
        feast_project=f"xbench_{profile}_{int(time.time())}",
    )
    workdir = Workdir.at(settings.workdir)
    shutil.rmtree(workdir.root, ignore_errors=True)
    ingest_sources([("synthetic", raw)], workdir, settings)
    result = fs.refresh(workdir, settings)
    store = fs.open_store(workdir, settings)
    try:
        online_rows = sum(
            pd.read_parquet(workdir.feature_data / f"{v.name}.parquet", columns=list(v.join_keys))
            .drop_duplicates()
            .shape[0]
            for v in store.list_feature_views()
        )
        entities = _entities(workdir, reads)
        reader = fs.OnlineReader(store)
        service = store.get_feature_service(SERVICE)
        ours = _time_calls(lambda e: reader.read_service(service, e), entities)
        raw_read = _raw_reader(store)
        raw_times = _time_calls(raw_read, entities)
        served = _feast_serve(workdir, entities[: min(len(entities), 1000)])
    finally:
        if profile == "prod":
            store.teardown()
    offline_rows = sum(result["rows"].values())
    seconds = result["materialize_seconds"]
    return {
        "materialize_seconds": seconds,
        "offline_rows": offline_rows,
        "online_rows": online_rows,
        "materialize_offline_rows_per_second": round(offline_rows / seconds),
        "materialize_online_rows_per_second": round(online_rows / seconds),
        "online_read": {
            "xinterest": _percentiles(ours),
            "feast_serve_http": _percentiles(served),
            "raw_store": _percentiles(raw_times),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--reads", type=int, default=2000)
    parser.add_argument("--profiles", default="local,prod")
    args = parser.parse_args()
    base = work_dir("features")
    raw = ensure_synthetic(base / f"raw-{args.events}", n_events=args.events)
    results: dict[str, Any] = {"events": args.events, "reads": args.reads, "service": SERVICE, "profiles": {}}
    metrics: dict[str, float] = {}
    table = Table(title=f"feature store, {args.events:,} synthetic events; online read of one {SERVICE} row")
    for column in ("profile", "materialize rows/s (offline | online)", "path", "p50 ms", "p99 ms", "x raw p50"):
        table.add_column(column, justify="right")
    for profile in args.profiles.split(","):
        r = run_profile(profile, raw, base, args.reads)
        results["profiles"][profile] = r
        raw_p50 = r["online_read"]["raw_store"]["p50_ms"]
        for path, label in READ_PATHS:
            p = r["online_read"][path]
            table.add_row(
                profile,
                f"{r['materialize_offline_rows_per_second']:,} | {r['materialize_online_rows_per_second']:,}",
                label,
                f"{p['p50_ms']:.3f}",
                f"{p['p99_ms']:.3f}",
                f"{p['p50_ms'] / raw_p50:.2f}",
            )
            metrics[f"{profile}_{path}_p50_ms"] = p["p50_ms"]
            metrics[f"{profile}_{path}_p99_ms"] = p["p99_ms"]
        r["ratio_xinterest_to_raw_p50"] = round(r["online_read"]["xinterest"]["p50_ms"] / raw_p50, 2)
        r["ratio_feast_serve_to_xinterest_p50"] = round(
            r["online_read"]["feast_serve_http"]["p50_ms"] / r["online_read"]["xinterest"]["p50_ms"], 2
        )
        metrics[f"{profile}_materialize_offline_rows_per_second"] = r["materialize_offline_rows_per_second"]
    publish("features", results, metrics, table)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    main()
