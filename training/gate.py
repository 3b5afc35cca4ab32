"""The promotion gate: a challenger takes the ``champion`` alias only when, on the same frozen
holdout, it is not worse than the champion beyond the tolerances:

- NDCG@20 of the re-ranked list: at least (1 - NDCG_TOLERANCE) x the champion's;
- AUC of the re-ranker on the holdout candidates: at least the champion's - AUC_TOLERANCE.

The holdout is the challenger's own test set (written by its training), which neither model
trained on. ``force`` skips the comparison (for humans); setting the alias in the MLflow UI
does the same, and serving follows whatever holds it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from pipelines import feature_store as fs
from pipelines.config import Settings, Workdir
from serving.loader import LineageMismatch, check_lineage, load, resolve_version
from training import tracking
from training.holdout import Holdout, evaluate

log = logging.getLogger(__name__)

NDCG_TOLERANCE = 0.05  # relative
AUC_TOLERANCE = 0.01  # absolute


@dataclass
class GateDecision:
    challenger: str
    champion: str | None
    promoted: bool
    reason: str
    figures: dict[str, dict[str, float]] = field(default_factory=dict)


class GateError(RuntimeError):
    pass


def holdout_dir(workdir: Workdir, version: str) -> Any:
    return workdir.root / "holdouts" / f"v{version}"


def _latest(client: Any) -> str:
    versions = client.search_model_versions(f"name='{tracking.RECOMMENDER_MODEL}'")
    if not versions:
        raise GateError(f"no version of {tracking.RECOMMENDER_MODEL} is registered: run `make train`")
    return str(max(int(v.version) for v in versions))


def promote(workdir: Workdir, settings: Settings, version: str | None = None, force: bool = False) -> GateDecision:
    from mlflow import MlflowClient

    tracking.setup(settings, workdir)
    client = MlflowClient()
    challenger_version = version or _latest(client)
    resolve_version(client, challenger_version)  # a clear error when it does not exist
    champion = tracking.champion_version(client)
    champion_version = str(champion.version) if champion is not None else None
    if champion_version == challenger_version:
        return GateDecision(challenger_version, champion_version, False, "the challenger already holds the alias")
    store = fs.open_store(workdir, settings)
    challenger = load(settings, workdir, challenger_version)
    try:
        check_lineage(challenger, store, settings)
    except LineageMismatch as e:
        return GateDecision(challenger_version, champion_version, False, str(e))
    if force or champion_version is None:
        client.set_registered_model_alias(tracking.RECOMMENDER_MODEL, tracking.CHAMPION, challenger_version)
        why = "forced" if force else "no champion yet"
        client.set_model_version_tag(tracking.RECOMMENDER_MODEL, challenger_version, "gate", why)
        return GateDecision(challenger_version, champion_version, True, why)
    folder = holdout_dir(workdir, challenger_version)
    if not (folder / "holdout.json").exists():
        return GateDecision(
            challenger_version,
            champion_version,
            False,
            f"no frozen holdout for v{challenger_version} in {folder}; use --force to promote anyway",
        )
    holdout = Holdout.load(folder)
    holdout_store = holdout.store()
    figures = {}
    for name, v in (("champion", champion_version), ("challenger", challenger_version)):
        model = challenger if v == challenger_version else load(settings, workdir, v)
        result = evaluate(model.recommender, holdout, holdout_store)
        figures[name] = {
            "version": float(v),
            "ndcg@20": result.metrics["ndcg@20"],
            "recall@20": result.metrics["recall@20"],
            "auc": result.classification.get("auc", float("nan")),
        }
    old, new = figures["champion"], figures["challenger"]
    worse = []
    if new["ndcg@20"] < (1 - NDCG_TOLERANCE) * old["ndcg@20"]:
        worse.append(f"NDCG@20 {new['ndcg@20']:.4f} < {(1 - NDCG_TOLERANCE):.2f} x {old['ndcg@20']:.4f}")
    if new["auc"] == new["auc"] and old["auc"] == old["auc"] and new["auc"] < old["auc"] - AUC_TOLERANCE:
        worse.append(f"AUC {new['auc']:.4f} < {old['auc']:.4f} - {AUC_TOLERANCE}")
    summary = f"NDCG@20 {new['ndcg@20']:.4f} vs {old['ndcg@20']:.4f}, AUC {new['auc']:.4f} vs {old['auc']:.4f}"
    client.set_model_version_tag(
        tracking.RECOMMENDER_MODEL,
        challenger_version,
        "gate",
        ("refused: " + "; ".join(worse)) if worse else f"accepted: {summary}",
    )
    if worse:
        return GateDecision(challenger_version, champion_version, False, "refused: " + "; ".join(worse), figures)
    client.set_registered_model_alias(tracking.RECOMMENDER_MODEL, tracking.CHAMPION, challenger_version)
    return GateDecision(challenger_version, champion_version, True, f"accepted: {summary}", figures)
