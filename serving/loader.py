"""Load a registered recommender (the champion, or a given version) with its feature store."""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import feature_store as fs
from pipelines.config import Settings, Workdir
from pipelines.identity import Pseudonymiser
from serving.engine import Engine
from training import ranker, tracking
from training.recommender import Recommender

log = logging.getLogger(__name__)


class ModelNotFound(LookupError):
    pass


class LineageMismatch(RuntimeError):
    pass


@dataclass
class Loaded:
    version: str
    recommender: Recommender
    tags: dict[str, str]


def resolve_version(client: Any, version: str | None) -> Any:
    """The model version object: ``version``, else the one holding the ``champion`` alias."""
    from mlflow.exceptions import MlflowException

    try:
        if version is None:
            return client.get_model_version_by_alias(tracking.RECOMMENDER_MODEL, tracking.CHAMPION)
        return client.get_model_version(tracking.RECOMMENDER_MODEL, str(version))
    except MlflowException as e:
        what = f"version {version}" if version else f"a version with alias '{tracking.CHAMPION}'"
        raise ModelNotFound(
            f"{tracking.RECOMMENDER_MODEL} has no {what}: run `make train` (or promote a version)"
        ) from e


def load(settings: Settings, workdir: Workdir, version: str | None = None) -> Loaded:
    import mlflow
    from mlflow import MlflowClient

    tracking.setup(settings, workdir)
    mv = resolve_version(MlflowClient(), version)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{tracking.RECOMMENDER_MODEL}/{mv.version}"))
    recommender = Recommender.load(local / "artifacts" / "bundle")
    recommender.meta["version"] = str(mv.version)
    return Loaded(str(mv.version), recommender, dict(mv.tags))


def check_lineage(loaded: Loaded, store: Any, settings: Settings) -> None:
    """Refuse a model whose feature contract does not match this feature store."""
    problems = []
    services = {s.name for s in store.list_feature_services()}
    for name in loaded.tags.get("feature_services", "").split(","):
        if name and name not in services:
            problems.append(f"FeatureService {name!r} is not in the feature store (project {settings.feast_project})")
    if not loaded.tags.get("feature_services"):
        problems.append("the version has no feature_services lineage tag")
    expected = loaded.recommender.meta.get("ranker_features")
    if expected is not None and list(expected) != ranker.FEATURES:
        problems.append("the re-ranker was trained on a different feature list than this code computes")
    for tag in ("vae_version", "ranker_version", "data_snapshot"):
        if tag not in loaded.tags:
            problems.append(f"the version has no {tag} lineage tag")
    if problems:
        raise LineageMismatch(
            f"{tracking.RECOMMENDER_MODEL} v{loaded.version} does not match this feature store: " + "; ".join(problems)
        )


def engine(settings: Settings, workdir: Workdir, version: str | None = None) -> Engine:
    """A ready engine: registered model + the work directory's online store, lineage checked."""
    loaded = load(settings, workdir, version)
    store = fs.open_store(workdir, settings)
    check_lineage(loaded, store, settings)
    return Engine(loaded.recommender, store, Pseudonymiser(settings.pseudonym_key.get_secret_value()), loaded.version)


def settle_heap() -> None:
    """Collect, then move every object alive into the collector's permanent generation
    (``gc.freeze``): a loaded model, the feature store and the libraries they import are half a
    million long-lived objects, and each full collection walked them all, a stall of 0.3-0.5 s
    on this machine's worker every ~15 s under load (the requests in flight waited it out).
    Call it once what a server keeps is loaded; before a reload, the previous freeze is undone
    (``gc.unfreeze``) so that the replaced model can be collected."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def one_thread_per_request() -> None:
    """Run each request on one thread (the service's parallelism is its worker processes and
    their requests): torch's intra-op threads and BLAS's (numpy's OpenBLAS) limited to one. A
    serving process's products are small, and with OpenBLAS's default thread per core its
    workers spin between them beside the other processes: two processes answering 8 requests
    in flight in turn (bench/serving.py's floor_c8) managed 198-212 requests/s, against 636-730
    with one thread (measured once, 2 cores)."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    threadpool_limits(limits=1, user_api="blas")  # kept for the process (not a context here)
