"""The feedback loop: live interest shifts without retraining; scheduled, crash-safe retraining."""

from __future__ import annotations

import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipelines.config import Settings, Workdir
from pipelines.lake import Lake
from pipelines.retrain import retrain
from serving.feedback import FeedbackLog
from serving.loader import load
from tests.conftest import small_experiment
from tests.integration.test_service import Server
from training import tracking

pytestmark = pytest.mark.slow


def _copy(trained: tuple, tmp_path: Path) -> tuple[Settings, Workdir]:
    settings, workdir, _, _ = trained
    copy = Workdir.at(tmp_path / "work")
    shutil.copytree(workdir.root, copy.root)
    return Settings(**{**settings.model_dump(), "workdir": copy.root}), copy


def _versions(settings: Settings, workdir: Workdir) -> int:
    tracking.setup(settings, workdir)
    return len(MlflowClient().search_model_versions(f"name='{tracking.RECOMMENDER_MODEL}'"))


def test_feedback_shifts_recommendations_within_the_next_request(trained: tuple, tmp_path: Path) -> None:
    settings, copy = _copy(trained, tmp_path)
    rec = load(settings, copy).recommender
    web = [
        (i, c)
        for i, c, p in zip(rec.vocab.items, rec.item_category, rec.vocab.item_platform, strict=True)
        if p == "web"
    ]
    books = [i for i, c in web if c == "books"]
    games = [i for i, c in web if c == "games"]
    server = Server(copy.root)
    try:

        def event(item: str) -> dict[str, str]:
            return {"platform": "web", "user_id": "shifter", "item_id": item, "action": "view"}

        def share_of_games() -> float:
            body = server.post("/recommend", {"platform": "web", "user_id": "shifter", "k": 10}).json()
            assert body["person_known"]
            return sum(i["item_id"] in set(games) for i in body["items"]) / len(body["items"])

        assert server.post("/feedback", {"events": [event(i) for i in books[:15]]}).status_code == 200
        before = share_of_games()
        assert server.post("/feedback", {"events": [event(i) for i in games[:15]]}).status_code == 200
        after = share_of_games()
    finally:
        server.stop()
    assert after >= before + 0.3, (before, after)


def test_retrain_is_idempotent_and_gates_a_challenger_after_feedback(trained: tuple, tmp_path: Path) -> None:
    settings, copy = _copy(trained, tmp_path)
    lake = Lake(copy.lake)
    manifest = lake.manifest_path.read_bytes()
    versions = _versions(settings, copy)
    for _ in range(2):  # nothing in the feedback log: nothing changes
        outcome = retrain(copy, settings, small_experiment())
        assert not outcome.changed and lake.manifest_path.read_bytes() == manifest
        assert _versions(settings, copy) == versions

    # 1,000 events posted concurrently all reach the lake, each exactly once
    server = Server(copy.root)
    try:
        items = load(settings, copy).recommender.vocab.items
        bodies = [
            {
                "event": {
                    "platform": "web",
                    "user_id": f"crowd-{i % 97}",
                    "item_id": items[i % len(items)],
                    "action": "click",
                }
            }
            for i in range(1000)
        ]
        with ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(lambda b: server.post("/feedback", b), bodies))
    finally:
        server.stop()
    failed = Counter((r.status_code, r.text[:300]) for r in responses if r.status_code != 200)
    assert not failed, failed
    ids = [r.json()["event_ids"][0] for r in responses]
    assert len(set(ids)) == 1000

    outcome = retrain(copy, settings, small_experiment())
    assert outcome.changed and outcome.ingest["accepted"] == 1000
    assert (
        outcome.ingest["read"]
        == outcome.ingest["accepted"] + outcome.ingest["quarantined_total"] + outcome.ingest["duplicates"]
    )
    assert outcome.versions["recommender"] and outcome.gate  # a challenger was trained and went through the gate
    assert _versions(settings, copy) == versions + 1
    lake_ids = Lake(copy.lake).events(columns=["event_id"])["event_id"]
    counts = lake_ids[lake_ids.isin(ids)].value_counts()
    assert len(counts) == 1000 and (counts == 1).all()
    again = retrain(copy, settings, small_experiment())
    assert not again.changed and _versions(settings, copy) == versions + 1


def test_a_failure_mid_retrain_leaves_the_lake_and_the_champion(
    trained: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, copy = _copy(trained, tmp_path)
    FeedbackLog(copy.feedback).append([{"platform": "web", "user_id": "u1", "item_id": "w1", "action": "like"}])
    lake = Lake(copy.lake)
    manifest = lake.manifest_path.read_bytes()
    champion = load(settings, copy).version

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("injected failure during training")

    monkeypatch.setattr("pipelines.train.train", crash)
    with pytest.raises(RuntimeError, match="injected"):
        retrain(copy, settings, small_experiment())
    monkeypatch.undo()
    assert lake.manifest_path.read_bytes() == manifest
    assert load(settings, copy).version == champion
