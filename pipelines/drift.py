"""Feature drift: the serving-time distributions of the last period against the training set's.

For every numeric feature of ``person_profile``, ``person_activity`` and ``item_stats``, the
population stability index

    PSI = sum_b (p_b - q_b) ln(p_b / q_b)

over ten bins cut at the training distribution's deciles (q: training share of bin b, p: last
period's). Rules of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift.

Reference: the training view of the latest training (``WORKDIR/eval/train_view``). Current:
the online store's values (pushes included) for every entity with a snapshot in the last
``days`` days, or seen in the feedback log.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import feature_store as fs
from pipelines.config import Settings, Workdir

log = logging.getLogger(__name__)
VIEWS = {"person_profile": ["person_id"], "person_activity": ["person_id", "platform"], "item_stats": ["item_id"]}
MAJOR, MODERATE = 0.25, 0.1


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """Population stability index of ``current`` against ``reference`` (NaNs dropped)."""
    reference = reference[~np.isnan(reference)]
    current = current[~np.isnan(current)]
    if len(reference) == 0 or len(current) == 0:
        return float("nan")
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    q = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(reference)
    p = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1) / len(current)
    q, p = np.maximum(q, eps), np.maximum(p, eps)
    return float(np.sum((p - q) * np.log(p / q)))


@dataclass
class DriftReport:
    days: int
    reference_rows: dict[str, int]
    current_rows: dict[str, int]
    psi: dict[str, float]
    top: list[tuple[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "psi": self.psi,
            "top_shifted": self.top,
            "thresholds": {"moderate": MODERATE, "major": MAJOR},
        }


def _numeric(frame: pd.DataFrame, keys: list[str]) -> list[str]:
    # Times (first/last event) move by definition; they are not a distribution shift.
    return [
        c
        for c in frame.columns
        if c not in (*keys, "event_timestamp") and not c.endswith("_ts") and pd.api.types.is_numeric_dtype(frame[c])
    ]


def drift(workdir: Workdir, settings: Settings, days: int = 7, feedback_persons: set[str] | None = None) -> DriftReport:
    reference_dir = workdir.root / "eval" / "train_view" / "feature_repo" / "data"
    if not reference_dir.exists():
        raise FileNotFoundError(f"no training view in {reference_dir}: train first (make train)")
    store = fs.open_store(workdir, settings)
    reader = fs.OnlineReader(store, list(VIEWS))
    scores: dict[str, float] = {}
    ref_rows, cur_rows = {}, {}
    for view, keys in VIEWS.items():
        reference = pd.read_parquet(reference_dir / f"{view}.parquet")
        serving = pd.read_parquet(workdir.feature_data / f"{view}.parquet", columns=[*keys, "event_timestamp"])
        recent = serving[serving["event_timestamp"] > serving["event_timestamp"].max() - timedelta(days=days)]
        entities = recent[keys].drop_duplicates()
        if feedback_persons and keys == ["person_id"]:
            extra = pd.DataFrame({"person_id": sorted(feedback_persons)})
            entities = pd.concat([entities, extra]).drop_duplicates()
        rows = [r for r in reader.read(view, entities.to_dict("records")) if r is not None]
        current = pd.DataFrame(rows)
        ref_rows[view], cur_rows[view] = len(reference), len(current)
        for column in _numeric(reference, keys):
            if column in current:
                scores[f"{view}.{column}"] = round(
                    psi(
                        reference[column].to_numpy(dtype=float),
                        pd.to_numeric(current[column], errors="coerce").to_numpy(dtype=float),
                    ),
                    5,
                )
    ranked = sorted(((k, v) for k, v in scores.items() if v == v), key=lambda kv: -kv[1])
    return DriftReport(days, ref_rows, cur_rows, scores, ranked[:10])


def save(report: DriftReport, folder: Path) -> tuple[Path, Path]:
    """The report as JSON and a bar chart of the most shifted features."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    json_path = folder / "drift.json"
    json_path.write_text(json.dumps(report.to_dict(), indent=2))
    top = report.top[:15]
    fig, ax = plt.subplots(figsize=(7, 0.35 * max(3, len(top)) + 1))
    ax.barh(
        [k for k, _ in top][::-1],
        [v for _, v in top][::-1],
        color=["#c0392b" if v > MAJOR else "#e67e22" if v > MODERATE else "#27ae60" for _, v in top][::-1],
    )
    ax.axvline(MODERATE, ls="--", color="grey")
    ax.axvline(MAJOR, ls="--", color="black")
    ax.set(title=f"feature drift, last {report.days} days vs training (PSI)", xlabel="PSI")
    fig.tight_layout()
    png = folder / "drift.png"
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return json_path, png


def log_to_mlflow(report: DriftReport, folder: Path, settings: Settings, workdir: Workdir, nested: bool = False) -> str:
    import mlflow

    from training import tracking

    tracking.setup(settings, workdir)
    json_path, png = save(report, folder)
    with mlflow.start_run(run_name="drift", nested=nested) as run:
        mlflow.log_metrics({f"psi.{k}": v for k, v in report.psi.items() if v == v})
        mlflow.log_artifact(str(json_path), "drift")
        mlflow.log_artifact(str(png), "drift")
        return run.info.run_id
