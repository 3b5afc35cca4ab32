"""MLflow: runs, plots, models, the registry and lineage.

Conventions (README "MLflow"): experiment ``xinterest``; one parent run per training with
child runs ``vae``, ``ranker`` and ``baselines``; three registered models, ``xinterest-vae``,
``xinterest-ranker`` and the deployable ``xinterest-recommender``; promotion is the alias
``champion`` on a recommender version (stages are deprecated in MLflow 3). Every version is
tagged with its lineage.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from pipelines.config import REPO_ROOT, Settings, Workdir, tracking_uri

log = logging.getLogger(__name__)

EXPERIMENT = "xinterest"
VAE_MODEL = "xinterest-vae"
RANKER_MODEL = "xinterest-ranker"
RECOMMENDER_MODEL = "xinterest-recommender"
CHAMPION = "champion"
LINEAGE_TAGS = ("data_snapshot", "feature_services", "feast_project", "vae_version", "ranker_version", "code_version")
# What the logged models need; pinned to what this project installs (no slow inference of the environment).
PIP_REQUIREMENTS = [
    "torch==2.13.0",
    "feast[redis,postgres,duckdb]==0.67.0",
    "mlflow==3.17.2",
    "xgboost-cpu",
    "pandas<3",
    "scipy",
    "scikit-learn",
]


def setup(settings: Settings, workdir: Workdir) -> str:
    """Point MLflow at the settings' tracking store; create the experiment with its artifacts
    in the work directory (a local SQLite store would otherwise put them in ./mlruns)."""
    import mlflow

    for noisy in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    uri = tracking_uri(settings, workdir)
    workdir.root.mkdir(parents=True, exist_ok=True)
    use(uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        mlflow.create_experiment(EXPERIMENT, artifact_location=workdir.mlflow_artifacts.as_uri())
    mlflow.set_experiment(EXPERIMENT)
    return uri


def use(uri: str) -> None:
    """Point this process's MLflow client at ``uri`` without exporting it: ``set_tracking_uri``
    also writes ``MLFLOW_TRACKING_URI`` into the environment, which every later subprocess
    (an ``xinterest`` command for another work directory, say) would then inherit."""
    import os

    import mlflow

    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


def code_version() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def log_figure_curves(curves: dict[str, Any], folder: Path) -> list[Path]:
    """ROC, precision-recall, VAE training curves and ranker learning curves as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if "roc" in curves:
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        axes[0].plot(curves["roc"]["fpr"], curves["roc"]["tpr"])
        axes[0].plot([0, 1], [0, 1], "--", color="grey")
        axes[0].set(title="re-ranker ROC (test candidates)", xlabel="false positive rate", ylabel="true positive rate")
        axes[1].plot(curves["pr"]["recall"], curves["pr"]["precision"])
        axes[1].set(title="re-ranker precision-recall", xlabel="recall", ylabel="precision")
        fig.tight_layout()
        paths.append(folder / "ranker_roc_pr.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    history = curves.get("vae_history") or []
    if history:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
        epochs = [h["epoch"] for h in history]
        axes[0].plot(epochs, [h["nll"] for h in history])
        axes[0].set(title="VAE reconstruction (-log p(x|z))", xlabel="epoch")
        axes[1].plot(epochs, [h["kl"] for h in history])
        axes[1].set(title="KL(q(z|x) || N(0, I))", xlabel="epoch")
        axes[2].plot(epochs, [h["valid_ndcg20"] for h in history])
        axes[2].set(title="validation NDCG@20", xlabel="epoch")
        fig.tight_layout()
        paths.append(folder / "vae_training.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    learning = curves.get("ranker") or {}
    if learning:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for split_name, values in learning.items():
            ax.plot(values.get("auc", []), label=f"{split_name} AUC")
        ax.set(title="re-ranker learning curve", xlabel="boosting round")
        ax.legend()
        fig.tight_layout()
        paths.append(folder / "ranker_learning.png")
        fig.savefig(paths[-1], dpi=90)
        plt.close(fig)
    return paths


def metrics_markdown(metrics: dict[str, dict[str, float]]) -> str:
    columns = ["recall@10", "ndcg@10", "recall@20", "ndcg@20", "recall@50", "ndcg@50"]
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for model, values in metrics.items():
        lines.append(f"| {model} | " + " | ".join(f"{values.get(c, float('nan')):.4f}" for c in columns) + " |")
    return "\n".join(lines)


def flat_metrics(metrics: dict[str, dict[str, float]], prefix: str = "") -> dict[str, float]:
    out = {}
    for model, values in metrics.items():
        for name, value in values.items():
            if isinstance(value, int | float) and value == value:
                out[f"{prefix}{model.replace('+', '_')}.{name.replace('@', '_at_')}"] = float(value)
    return out


def champion_version(client: Any) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(RECOMMENDER_MODEL, CHAMPION)
    except MlflowException:
        return None


def version_tags(lineage: dict[str, str], summary: dict[str, float]) -> dict[str, str]:
    tags = {k: str(v) for k, v in lineage.items()}
    tags.update({f"metric.{k.replace('@', '_at_')}": f"{v:.6f}" for k, v in summary.items()})
    return tags


def write_json(folder: Path, name: str, payload: Any) -> Path:
    path = folder / name
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def scratch() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="xinterest-mlflow-")
