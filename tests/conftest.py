"""Shared fixtures. Tests are split as in Made-With-ML: ``code`` (units), ``data``
(expectations on data and adapters), ``model`` (behaviour of trained models), and
``integration`` (Feast, MLflow, BentoML for real)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.config import REPO_ROOT, Settings, Workdir
from pipelines.native import Kernels, kernels
from pipelines.synthetic import SyntheticConfig, generate

TEST_KEY = "test-pseudonym-key"


def require_or_skip(env: str, reason: str) -> None:
    """Skip with ``reason`` on a user's machine; fail in CI, where ``env`` is set to 1."""
    if os.environ.get(env) == "1":
        pytest.fail(f"{reason} (required here: {env}=1)")
    pytest.skip(reason)


def native_or_skip() -> Kernels:
    """The C kernels (pipelines/_native.c); the test is skipped without them (fails where they
    are required, as in CI)."""
    native = kernels()
    if native is None:
        require_or_skip("XINTEREST_REQUIRE_NATIVE", "the C kernels pipelines/_native.c were not built (no C compiler?)")
    assert native is not None
    return native


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("XINTEREST_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
    if not (path / "douban-book-music").exists():
        require_or_skip("XINTEREST_REQUIRE_DATA", f"public datasets not found at {path}: set XINTEREST_DATA_DIR")
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(workdir=tmp_path / "work", pseudonym_key=TEST_KEY, seed=0)


@pytest.fixture
def workdir(settings: Settings) -> Workdir:
    return Workdir.at(settings.workdir)


@pytest.fixture(scope="session")
def synthetic_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20k synthetic events with every kind of fault, generated once per session."""
    return generate(tmp_path_factory.mktemp("synthetic"), SyntheticConfig(n_events=20_000, seed=7))


def small_experiment() -> object:
    """A fast configuration for tests: few epochs, fewer candidates."""
    from training.experiment import ExperimentConfig
    from training.ranker import RankerConfig
    from training.trainer import TrainConfig

    return ExperimentConfig(
        n_candidates=50,
        sequence_length=30,
        train=TrainConfig(epochs=25, patience=5),
        reranker=RankerConfig(max_rounds=120),
    )


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Workdir, object, Path]:
    """A work directory with 40k synthetic events ingested and one trained, registered model
    (champion v1). Tests that change the registry make their own copy."""
    from pipelines.ingest import ingest_sources
    from pipelines.train import train

    root = tmp_path_factory.mktemp("trained")
    raw = generate(root / "raw", SyntheticConfig(n_events=40_000, seed=11))
    settings = Settings(workdir=root / "work", pseudonym_key=TEST_KEY, seed=0, sequence_length=30)
    workdir = Workdir.at(settings.workdir)
    ingest_sources([("synthetic", raw)], workdir, settings)
    outcome = train(workdir, settings, small_experiment())
    return settings, workdir, outcome, raw
