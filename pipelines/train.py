"""The end-to-end training flow: lake → features → split → models → evaluation → MLflow.

``xinterest train`` and ``make train`` run :func:`train`. The models evaluated are the models
registered (no retraining on the test period), so the logged metrics describe what deploys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import feature_store as fs
from pipelines.config import Settings, Workdir
from pipelines.lake import Lake
from training import tracking
from training.data import sequence_rows
from training.data import split as make_split
from training.experiment import ExperimentConfig, ExperimentResult, run
from training.trainer import infer

log = logging.getLogger(__name__)


class TrainError(RuntimeError):
    pass


@dataclass
class TrainOutcome:
    run_id: str
    versions: dict[str, str]
    metrics: dict[str, dict[str, float]]
    classification: dict[str, float]
    champion: str | None
    promoted: bool
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


def data_snapshot(lake: Lake) -> str:
    """A short hash of the lake's manifest: which exact files the training read."""
    manifest = lake.manifest_path
    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.exists() else "empty"
    return f"v{lake.manifest().version}-{digest}"


def sanity_problems(result: ExperimentResult) -> list[str]:
    """Reasons not to let a first model become champion automatically."""
    problems = []
    ours = result.metrics.get("vae+ranker", {})
    pop = result.metrics.get("popularity", {})
    value = ours.get("ndcg@20", float("nan"))
    if value != value:
        problems.append("NDCG@20 of the recommender is not a number")
    elif value <= pop.get("ndcg@20", 0.0):
        problems.append(f"NDCG@20 {value:.4f} does not beat popularity ({pop.get('ndcg@20', 0.0):.4f})")
    auc = result.classification.get("auc", float("nan"))
    if auc == auc and auc < 0.55:
        problems.append(f"re-ranker AUC {auc:.3f} is close to chance")
    return problems


def write_embeddings(workdir: Workdir, settings: Settings, result: ExperimentResult, version: str) -> int:
    """Encode every person's latest sequence (the serving view) and write the interest embeddings
    to the Feast ``person_embedding`` view, then materialize it."""
    sequences = pd.read_parquet(workdir.feature_data / "person_sequence.parquet")
    latest = sequences.sort_values("event_timestamp").groupby("person_id").tail(1)
    rec = result.recommender
    rows = sequence_rows(latest)
    inputs = rec.vocab.encode_sequences(rows, rec.sequence_length)
    _, mu, _ = infer(rec.vae, inputs)
    fs.write_embeddings(workdir, latest["person_id"].tolist(), mu, version, datetime.now(UTC))
    store = fs.open_store(workdir, settings)
    fs.materialize(store, workdir, ["person_embedding"])
    return len(latest)


def train(
    workdir: Workdir,
    settings: Settings,
    config: ExperimentConfig | None = None,
    progress: bool = False,
    register: bool = True,
    lake: Lake | None = None,
) -> TrainOutcome:
    import mlflow
    from mlflow import MlflowClient

    started = time.perf_counter()
    config = config or ExperimentConfig(sequence_length=settings.sequence_length, seed=settings.seed)
    lake = lake or Lake(workdir.lake)
    events = lake.events()
    if events.empty:
        raise TrainError(
            f"the lake at {workdir.lake} is empty: ingest data first (xinterest ingest / xinterest train --events)"
        )
    items, persons = lake.table("items"), lake.table("persons")
    features = fs.refresh(workdir, settings, events, items, persons)
    split = make_split(events, seed=settings.seed)
    if split.test.empty:
        raise TrainError("no person has enough interactions (3) to hold one out: more data is needed")
    scratch = workdir.root / "eval"
    shutil.rmtree(scratch, ignore_errors=True)
    snapshot = data_snapshot(lake)

    tracking.setup(settings, workdir)
    client = MlflowClient()
    with mlflow.start_run(run_name=f"train-{datetime.now(UTC):%Y%m%d-%H%M%S}") as parent:
        mlflow.set_tags(
            {
                "data_snapshot": snapshot,
                "feature_services": "vae_v1,ranker_v1",
                "feast_project": settings.feast_project,
                "profile": settings.profile,
                "code_version": tracking.code_version(),
            }
        )
        mlflow.log_params(
            {
                "seed": settings.seed,
                "protocol": split.info["protocol"],
                "events": len(events),
                "persons": split.info["persons"],
                "test_persons": split.info["test_persons"],
            }
        )
        mlflow.log_dict(features, "features.json")
        with mlflow.start_run(run_name="vae", nested=True) as vae_run:
            mlflow.log_params({f"vae.{k}": v for k, v in config.to_dict().items() if k not in ("train", "reranker")})
            mlflow.log_params({f"train.{k}": v for k, v in config.train.to_dict().items()})

            def on_epoch(record: dict[str, float]) -> None:
                mlflow.log_metrics({k: float(v) for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))

            result = run(split, items, persons, scratch, config, progress, on_epoch)
            mlflow.log_metrics(
                {
                    "best_epoch": result.history.best_epoch,
                    "seconds_per_epoch": result.history.seconds_per_epoch,
                    **tracking.flat_metrics({"vae": result.metrics["vae"]}, "test."),
                }
            )
        with mlflow.start_run(run_name="ranker", nested=True) as ranker_run:
            mlflow.log_params({f"ranker.{k}": v for k, v in config.reranker.to_dict().items()})
            info = result.split_info["ranker"]
            mlflow.log_params(
                {
                    "objective": info["objective"],
                    "scale_pos_weight": info["scale_pos_weight"],
                    "negative_sampling_rate": info["negative_rate"],
                    "train_positives": info["positives"],
                    "train_negatives": info["negatives"],
                    "best_iteration": info["best_iteration"],
                    "threshold": round(result.split_info["threshold"], 6),
                }
            )
            mlflow.log_metrics({f"test.{k}": v for k, v in result.classification.items() if isinstance(v, int | float)})
            mlflow.log_metrics(tracking.flat_metrics({"vae+ranker": result.metrics["vae+ranker"]}, "test."))
        with mlflow.start_run(run_name="baselines", nested=True):
            baselines = {k: v for k, v in result.metrics.items() if k not in ("vae", "vae+ranker")}
            mlflow.log_metrics(tracking.flat_metrics(baselines, "test."))
        mlflow.log_metrics(tracking.flat_metrics(result.metrics, "test."))
        mlflow.log_metrics({f"timing.{k}": v for k, v in result.timings.items()})
        with tracking.scratch() as tmp:
            folder = Path(tmp)
            for path in tracking.log_figure_curves(result.curves, folder):
                mlflow.log_artifact(str(path), "plots")
            tracking.write_json(
                folder,
                "metrics.json",
                {
                    "metrics": result.metrics,
                    "breakdown": result.breakdown,
                    "classification": result.classification,
                    "split": result.split_info,
                },
            )
            mlflow.log_artifact(str(folder / "metrics.json"))
            mlflow.log_text(tracking.metrics_markdown(result.metrics), "metrics.md")
            versions, promoted, champion = {}, False, None
            if register:
                versions = _register(
                    result, folder, workdir, snapshot, settings, vae_run.info.run_id, ranker_run.info.run_id
                )
                champion, promoted = _first_champion(client, versions["recommender"], result)
        run_id = parent.info.run_id
    if register:
        from training.gate import holdout_dir

        result.holdout.save(holdout_dir(workdir, versions["recommender"]))
        write_embeddings(workdir, settings, result, versions["recommender"])
    outcome = TrainOutcome(
        run_id,
        versions,
        result.metrics,
        result.classification,
        champion,
        promoted,
        time.perf_counter() - started,
        {"split": result.split_info, "timings": result.timings, "breakdown": result.breakdown, "features": features},
    )
    (workdir.reports).mkdir(parents=True, exist_ok=True)
    (workdir.reports / "train-latest.json").write_text(json.dumps(outcome.__dict__, indent=2, default=_json))
    return outcome


def _json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _register(
    result: ExperimentResult,
    folder: Path,
    workdir: Workdir,
    snapshot: str,
    settings: Settings,
    vae_run: str,
    ranker_run: str,
) -> dict[str, str]:
    summary = {k: v for k, v in result.metrics["vae+ranker"].items() if k.startswith(("ndcg", "recall"))}
    summary["auc"] = result.classification.get("auc", float("nan"))
    return register(result.recommender, summary, folder, workdir, snapshot, settings, vae_run, ranker_run)


def register(
    rec: Any,
    summary: dict[str, float],
    folder: Path,
    workdir: Workdir,
    snapshot: str,
    settings: Settings,
    vae_run: str,
    ranker_run: str,
) -> dict[str, str]:
    """Log and register the three models of one recommender (inside an active MLflow run) and
    tag every version with its lineage; return the new versions."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.models import infer_signature

    from training import ranker
    from training.mlflow_models import RecommenderModel, VAEModel

    client = MlflowClient()
    bundle = rec.save(folder / "bundle")
    lineage = {
        "data_snapshot": snapshot,
        "feature_services": "vae_v1,ranker_v1",
        "feast_project": settings.feast_project,
        "code_version": tracking.code_version(),
    }

    example_seq = pd.DataFrame(
        [
            {
                "seq_items": rec.vocab.items[:3],
                "seq_actions": ["view", "click", "view"],
                "seq_platforms": [rec.vocab.item_platform[0]] * 3,
                "seq_gaps": [120.0, 60.0, 0.0],
            }
        ]
    )
    vae_info = mlflow.pyfunc.log_model(
        name="vae",
        python_model=VAEModel(),
        artifacts={"bundle": str(bundle)},
        input_example=example_seq,
        registered_model_name=tracking.VAE_MODEL,
        pip_requirements=tracking.PIP_REQUIREMENTS,
        signature=infer_signature(
            example_seq, pd.DataFrame({"items": [["a"]], "scores": [[0.1]], "embedding": [[0.1]]})
        ),
    )
    x_example = pd.DataFrame(np.nan_to_num(np.zeros((2, len(ranker.FEATURES)), np.float32)), columns=ranker.FEATURES)
    ranker_info = mlflow.xgboost.log_model(
        rec.booster,
        name="ranker",
        input_example=x_example,
        registered_model_name=tracking.RANKER_MODEL,
        pip_requirements=tracking.PIP_REQUIREMENTS,
    )
    vae_version, ranker_version = str(vae_info.registered_model_version), str(ranker_info.registered_model_version)
    rec.meta.update(
        {"vae_version": vae_version, "ranker_version": ranker_version, "ranker_features": ranker.FEATURES, **lineage}
    )
    bundle = rec.save(folder / "bundle")
    request = pd.DataFrame({"person_id": ["p0"], "platform": [rec.vocab.platforms[0]], "k": [10]})
    response = pd.DataFrame(
        {"person_id": ["p0"], "rank": [1], "item_id": ["i"], "platform": ["web"], "score": [0.5], "cold_start": [""]}
    )
    rec_info = mlflow.pyfunc.log_model(
        name="recommender",
        python_model=RecommenderModel(),
        artifacts={"bundle": str(bundle)},
        signature=infer_signature(request, response),
        input_example=request,
        model_config={"feature_repo": str(workdir.feature_repo)},
        registered_model_name=tracking.RECOMMENDER_MODEL,
        pip_requirements=tracking.PIP_REQUIREMENTS,
    )
    version = str(rec_info.registered_model_version)
    tags = tracking.version_tags({**lineage, "vae_version": vae_version, "ranker_version": ranker_version}, summary)
    for name, value in tags.items():
        client.set_model_version_tag(tracking.RECOMMENDER_MODEL, version, name, value)
    for model, v, run_id in (
        (tracking.VAE_MODEL, vae_version, vae_run),
        (tracking.RANKER_MODEL, ranker_version, ranker_run),
    ):
        for name, value in {**lineage, "run": run_id}.items():
            client.set_model_version_tag(model, v, name, str(value))
    return {"vae": vae_version, "ranker": ranker_version, "recommender": version}


def _first_champion(client: Any, version: str, result: ExperimentResult) -> tuple[str | None, bool]:
    """The first recommender that passes the sanity checks becomes champion; later ones go
    through the promotion gate (``xinterest promote``)."""
    current = tracking.champion_version(client)
    if current is not None:
        return str(current.version), False
    problems = sanity_problems(result)
    if problems:
        log.warning("version %s is not made champion: %s", version, "; ".join(problems))
        return None, False
    client.set_registered_model_alias(tracking.RECOMMENDER_MODEL, tracking.CHAMPION, version)
    return version, True
