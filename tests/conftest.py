"""Shared fixtures. Tests are split as in Made-With-ML: ``code`` (units), ``data``
(expectations on data and adapters), ``model`` (behaviour of trained models), and
``integration`` (Feast, MLflow, BentoML for real)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.config import REPO_ROOT, Settings, Workdir
from pipelines.synthetic import SyntheticConfig, generate

TEST_KEY = "test-pseudonym-key"


def require_or_skip(env: str, reason: str) -> None:
    """Skip with ``reason`` on a user's machine; fail in CI, where ``env`` is set to 1."""
    if os.environ.get(env) == "1":
        pytest.fail(f"{reason} (required here: {env}=1)")
    pytest.skip(reason)


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
