"""What every benchmark shares: its work folder, the results file, and the MLflow run."""

from __future__ import annotations

import json
import logging
import os
import platform
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from pipelines.config import REPO_ROOT, Workdir, get_settings, tracking_uri

RESULTS = REPO_ROOT / "bench" / "results"
WORK = REPO_ROOT / "bench" / ".work"
console = Console()


# The online read paths bench/features.py measures, with their labels (its table and README's).
READ_PATHS = (
    ("raw_store", "raw store read"),
    ("xinterest", "xinterest OnlineReader"),
    ("feast_serve_http", "`feast serve` (HTTP)"),
)


def work_dir(name: str) -> Path:
    path = WORK / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    out: dict[str, float] = {}
    start = time.perf_counter()
    yield out
    out["seconds"] = time.perf_counter() - start


def publish(name: str, results: dict[str, Any], metrics: dict[str, float], table: Table | None = None) -> Path:
    """Write ``bench/results/NAME.json``, print the figures, and log them to MLflow."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "date": time.strftime("%Y-%m-%d"), "machine": machine(), **results}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    if table is not None:
        console.print(table)
    console.print(f"figures written to {path}")
    _log_mlflow(name, payload, metrics, path)
    return path


def _metric_name(name: str) -> str:
    """MLflow allows letters, digits, ``_ - . / :`` and spaces in metric names."""
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", name)


def _log_mlflow(name: str, payload: dict[str, Any], metrics: dict[str, float], path: Path) -> None:
    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    settings = get_settings()
    workdir = Workdir.at(settings.workdir)
    workdir.root.mkdir(parents=True, exist_ok=True)
    from training.tracking import use

    use(tracking_uri(settings, workdir))
    mlflow.set_experiment("xinterest-benchmarks")
    with mlflow.start_run(run_name=name):
        mlflow.set_tag("benchmark", name)
        mlflow.log_metrics({_metric_name(k): float(v) for k, v in metrics.items() if v == v})
        mlflow.log_artifact(str(path))
    console.print(f"logged to MLflow ({mlflow.get_tracking_uri()}, experiment xinterest-benchmarks)")


def stop_tree(pid: int, timeout: float = 30) -> None:
    """Terminate a process and all its descendants (servers' workers may leave its group)."""
    import psutil

    try:
        family = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for process in family:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=timeout)
    for process in alive:
        process.kill()
