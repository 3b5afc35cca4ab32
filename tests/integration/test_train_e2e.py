"""`xinterest train` / `recommend` end to end, and the registry across trainings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from pipelines.config import Settings, Workdir
from serving.loader import load
from training import tracking

pytestmark = pytest.mark.slow


def test_training_registers_three_models_with_lineage_and_a_champion(trained: tuple) -> None:
    settings, workdir, outcome, _ = trained
    assert set(outcome.versions) == {"vae", "ranker", "recommender"}
    assert outcome.promoted and outcome.champion == outcome.versions["recommender"]
    tracking.setup(settings, workdir)
    client = MlflowClient()
    mv = client.get_model_version_by_alias(tracking.RECOMMENDER_MODEL, tracking.CHAMPION)
    for tag in ("data_snapshot", "feature_services", "vae_version", "ranker_version", "code_version"):
        assert mv.tags.get(tag), tag
    assert (
        client.get_model_version(tracking.VAE_MODEL, mv.tags["vae_version"]).tags["data_snapshot"]
        == mv.tags["data_snapshot"]
    )
    # the ensemble beats popularity on held-out data, and every figure is there
    m = outcome.metrics
    assert {"popularity", "itemknn", "vae", "vae+ranker"} <= set(m)
    assert m["vae+ranker"]["ndcg@20"] > m["popularity"]["ndcg@20"]
    run = client.get_run(outcome.run_id)
    artifacts = {a.path for a in client.list_artifacts(outcome.run_id, "plots")}
    assert {"plots/ranker_roc_pr.png", "plots/vae_training.png"} <= artifacts
    assert "test.vae_ranker.ndcg_at_20" in run.data.metrics
    # embeddings were written back to the Feast view
    assert (workdir.feature_data / "person_embedding.parquet").stat().st_size > 1000


def _cli(args: list[str], workdir: Path, key: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XINTEREST_PSEUDONYM_KEY": key, "XINTEREST_WORKDIR": str(workdir)}
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env, timeout=1200
    )


def test_train_and_recommend_on_events_without_time(tmp_path: Path, trained: tuple) -> None:
    """A canonical file whose events all share one timestamp: random holdout, set-mode encoder,
    and `recommend` answers every requested row (unknown persons get the cold-start list)."""
    _, workdir, _, _ = trained
    events = _lake_events(workdir).sample(12_000, random_state=0)
    frame = events[["platform", "user_id", "item_id", "action", "value"]].assign(ts="2020-01-01T00:00:00Z")
    frame = frame[frame["action"] != "search"]
    path = tmp_path / "events.csv"
    frame.to_csv(path, index=False)
    work = tmp_path / "w"
    result = _cli(["train", "--events", str(path), "--epochs", "4"], work, "key")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "random-80/20" in (work / "reports" / "train-latest.json").read_text()
    users = pd.DataFrame(
        {
            "platform": list(frame["platform"].iloc[:5]) + ["web", "miniapp"],
            "user_id": list(frame["user_id"].iloc[:5]) + ["never-seen-1", "never-seen-2"],
        }
    )
    users.to_csv(tmp_path / "users.csv", index=False)
    out = tmp_path / "recs.parquet"
    result = _cli(["recommend", "--users", str(tmp_path / "users.csv"), "--k", "7", "--out", str(out)], work, "key")
    assert result.returncode == 0, result.stderr[-3000:]
    recs = pd.read_parquet(out)
    assert list(recs.columns) == ["platform", "user_id", "rank", "item_id", "score"]
    assert (recs.groupby(["platform", "user_id"]).size() == 7).all()
    assert len(recs.groupby(["platform", "user_id"])) == len(users)


def _lake_events(workdir: Workdir) -> pd.DataFrame:
    from pipelines.lake import Lake

    return Lake(workdir.lake).events()


def test_a_second_training_adds_versions_without_breaking_the_first(tmp_path: Path, trained: tuple) -> None:
    import shutil

    from pipelines.train import train
    from tests.conftest import small_experiment

    settings, workdir, first, _ = trained
    copy = Workdir.at(tmp_path / "copy")
    shutil.copytree(workdir.root, copy.root)
    settings2 = Settings(**{**settings.model_dump(), "workdir": copy.root})
    second = train(copy, settings2, small_experiment())
    assert int(second.versions["recommender"]) == int(first.versions["recommender"]) + 1
    assert int(second.versions["vae"]) == int(first.versions["vae"]) + 1
    assert second.champion == first.versions["recommender"] and not second.promoted  # the gate decides, not training
    old = load(settings2, copy, first.versions["recommender"])
    assert old.version == first.versions["recommender"] and old.recommender.booster is not None
