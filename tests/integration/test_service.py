"""The REST service over real HTTP (`bentoml serve` in a subprocess), and the promotion gate."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from pipelines.config import Settings, Workdir
from pipelines.lake import Lake
from tests.conftest import TEST_KEY, require_or_skip

pytestmark = pytest.mark.slow


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, workdir: Path, extra_env: dict[str, str] | None = None) -> None:
        self.port = _port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "XINTEREST_WORKDIR": str(workdir),
            "XINTEREST_PSEUDONYM_KEY": TEST_KEY,
            "XINTEREST_ALIAS_POLL_SECONDS": "1",
            "XINTEREST_PORT": str(self.port),
            **(extra_env or {}),
        }
        bentoml = Path(sys.executable).parent / "bentoml"
        self.proc = subprocess.Popen(
            [str(bentoml), "serve", "serving.service:XInterest", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.client = httpx.Client(base_url=self.url, timeout=30)
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                if self.client.get("/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError("the service did not become ready")

    def post(self, path: str, body: Any) -> httpx.Response:
        return self.client.post(path, json=body)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the server and every process it started (BentoML's workers leave its group)."""
        import psutil

        try:
            family = [psutil.Process(self.proc.pid), *psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        for process in family:
            try:
                process.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(family, timeout=30)
        for process in alive:
            process.kill()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def served(
    trained: tuple, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, Settings, Workdir, Path]]:
    settings, workdir, _, raw = trained
    copy = Workdir.at(tmp_path_factory.mktemp("served") / "work")
    shutil.copytree(workdir.root, copy.root)
    server = Server(copy.root)
    yield server, Settings(**{**settings.model_dump(), "workdir": copy.root}), copy, raw
    server.stop()


def _known_user(raw: Path, copy: Workdir) -> tuple[str, str]:
    truth = pd.read_parquet(raw / "truth" / "persons.parquet")
    profile = pd.read_parquet(copy.feature_data / "person_profile.parquet")
    from pipelines.identity import Pseudonymiser

    pseudo = Pseudonymiser(TEST_KEY)
    persons = Lake(copy.lake).table("persons").set_index(["platform", "user_id"])["person_id"]
    for cookie in truth["cookie"]:
        person = persons.get(("web", pseudo.user("web", cookie)))
        if person is not None and person in set(profile["person_id"]):
            return cookie, person
    raise AssertionError("no known web user")


def test_recommend_by_account_and_by_person(served: tuple) -> None:
    server, _, copy, raw = served
    cookie, person = _known_user(raw, copy)
    by_account = server.post("/recommend", {"platform": "web", "user_id": cookie, "k": 5, "explain": True})
    assert by_account.status_code == 200, by_account.text
    body = by_account.json()
    assert body["model_version"] == "1" and body["person_id"] == person and body["person_known"]
    assert [i["rank"] for i in body["items"]] == [1, 2, 3, 4, 5]
    assert all(i["platform"] == "web" for i in body["items"])  # the account's platform is the default target
    assert body["items"][0]["explanation"]["features"] and body["items"][0]["explanation"]["because_of"]
    by_person = server.post("/recommend", {"person_id": person, "k": 5, "target_platform": "web"}).json()
    assert [i["item_id"] for i in by_person["items"]] == [i["item_id"] for i in body["items"]]
    scores = server.post("/score", {"person_id": person, "item_ids": [body["items"][0]["item_id"], "no-such-item"]})
    assert scores.status_code == 200
    assert scores.json()["scores"][0]["probability"] > 0 and scores.json()["scores"][1]["probability"] is None


def test_cold_starts(served: tuple) -> None:
    server, _, copy, _ = served
    unknown = server.post("/recommend", {"platform": "miniapp", "user_id": "never-seen", "k": 4}).json()
    assert unknown["cold_start"] == "popularity" and not unknown["person_known"] and len(unknown["items"]) == 4
    assert all(i["platform"] == "miniapp" for i in unknown["items"])
    profile = pd.read_parquet(copy.feature_data / "person_profile.parquet")
    seq = pd.read_parquet(copy.feature_data / "person_sequence.parquet")
    only_web = set(seq[seq["seq_platforms"].map(lambda p: set(p) == {"web"})]["person_id"])
    only_web -= set(profile[profile["platform_names"].map(lambda p: set(p) != {"web"})]["person_id"])
    person = sorted(only_web)[0]
    cross = server.post("/recommend", {"person_id": person, "target_platform": "miniapp", "k": 4}).json()
    assert cross["cold_start"] == "cross_platform" and cross["person_known"]
    assert all(i["platform"] == "miniapp" for i in cross["items"]) and len(cross["items"]) == 4


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('{"person_id": ', "json"),
        ({"person_id": "p", "k": "many"}, "k"),
        ({"person_id": "p", "k": 0}, "k"),
        ({"person_id": "p", "k": 201}, "k"),
        ({"platform": "mars", "user_id": "x"}, "platform"),
        ({"k": 5}, "person_id"),
        ({"person_id": "p", "platform": "web", "user_id": "x"}, "either"),
        ({"person_id": "p", "target_platform": "mars"}, "platform"),
    ],
)
def test_invalid_recommend_requests_are_4xx_with_a_message(served: tuple, body: Any, needle: str) -> None:
    server = served[0]
    if isinstance(body, str):
        response = server.client.post("/recommend", content=body, headers={"content-type": "application/json"})
    else:
        response = server.post("/recommend", body)
    assert 400 <= response.status_code < 500, response.text
    assert needle.lower() in response.text.lower()


def test_invalid_score_and_feedback_requests(served: tuple) -> None:
    server = served[0]
    assert server.post("/score", {"person_id": "p", "item_ids": []}).status_code == 400
    assert server.post("/score", {"person_id": "p", "item_ids": ["x"] * 1001}).status_code == 400
    bad_action = server.post(
        "/feedback", {"event": {"platform": "web", "user_id": "u", "item_id": "w1", "action": "teleport"}}
    )
    assert bad_action.status_code == 400 and "action" in bad_action.text
    no_item = server.post("/feedback", {"event": {"platform": "web", "user_id": "u", "action": "view"}})
    assert no_item.status_code == 400 and "item_id" in no_item.text
    assert server.post("/feedback", {}).status_code == 400


def test_feedback_is_logged_and_pushed(served: tuple) -> None:
    server, _, copy, _ = served
    user = "fb-" + uuid.uuid4().hex[:6]
    response = server.post(
        "/feedback",
        {
            "events": [
                {"platform": "web", "user_id": user, "item_id": "w3", "action": "view"},
                {"platform": "web", "user_id": user, "item_id": "w4", "action": "like"},
            ]
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["accepted"] == 2 and body["durable"] and body["pushed"]
    logged = "".join(p.read_text() for p in copy.feedback.glob("*.jsonl"))
    assert all(e in logged for e in body["event_ids"])
    after = server.post("/recommend", {"platform": "web", "user_id": user, "k": 3}).json()
    assert after["person_known"] and after["cold_start"] is None  # the new account has a profile now


def test_the_gate_refuses_a_degraded_model_accepts_a_good_one_and_serving_follows(served: tuple) -> None:
    import mlflow
    import numpy as np

    from pipelines.train import register
    from serving.loader import load
    from training import tracking
    from training.gate import holdout_dir, promote

    server, settings, copy, _ = served
    champion = load(settings, copy)
    holdout = holdout_dir(copy, champion.version)

    def register_copy(recommender: Any, tag: str) -> str:
        tracking.setup(settings, copy)
        with mlflow.start_run(run_name=tag) as run:
            versions = register(
                recommender,
                {},
                Path(str(copy.root / f"tmp-{tag}")),
                copy,
                champion.tags["data_snapshot"],
                settings,
                run.info.run_id,
                run.info.run_id,
            )
        shutil.copytree(holdout, holdout_dir(copy, versions["recommender"]))
        return versions["recommender"]

    degraded = load(settings, copy).recommender
    rng = np.random.default_rng(0)
    degraded.vocab.items = list(rng.permutation(degraded.vocab.items))  # every score now points at a random item
    degraded.vocab.__post_init__()
    bad = register_copy(degraded, "degraded")
    decision = promote(copy, settings, bad)
    assert not decision.promoted and "refused" in decision.reason
    assert decision.figures["challenger"]["ndcg@20"] < decision.figures["champion"]["ndcg@20"]
    assert server.post("/recommend", {"person_id": "x", "k": 1}).json()["model_version"] == champion.version

    good = register_copy(load(settings, copy).recommender, "good")
    decision = promote(copy, settings, good)
    assert decision.promoted, decision.reason
    deadline = time.time() + 60
    while time.time() < deadline:
        if server.post("/recommend", {"person_id": "x", "k": 1}).json()["model_version"] == good:
            break
        time.sleep(0.5)
    assert server.post("/recommend", {"person_id": "x", "k": 1}).json()["model_version"] == good


def test_feedback_survives_a_kill_right_after_the_response(trained: tuple, tmp_path: Path) -> None:
    _, workdir, _, _ = trained
    copy = tmp_path / "work"
    shutil.copytree(workdir.root, copy)
    server = Server(copy)
    try:
        response = server.post(
            "/feedback",
            {"event": {"platform": "ios", "user_id": "killed", "item_id": "a1", "action": "purchase", "value": 1}},
        )
        event_id = response.json()["event_ids"][0]
    finally:
        server.stop(signal.SIGKILL)
    lines = [json.loads(line) for p in (copy / "feedback").glob("*.jsonl") for line in p.read_text().splitlines()]
    assert [e for e in lines if e["event_id"] == event_id][0]["action"] == "purchase"


@pytest.mark.prod
def test_service_on_the_prod_profile(tmp_path: Path) -> None:
    """Train a small model with the Redis online store, the SQL registry and MLflow on
    PostgreSQL (a fresh database), then serve it over HTTP."""
    import psycopg

    from pipelines.ingest import ingest_sources
    from pipelines.synthetic import SyntheticConfig, generate
    from pipelines.train import train
    from tests.conftest import small_experiment

    base = Settings()
    database = "xt_" + uuid.uuid4().hex[:10]
    admin = base.postgres_url.replace("postgresql+psycopg://", "postgresql://")
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {database}")
        import redis

        redis.Redis.from_url(f"redis://{base.redis_url}").ping()
    except Exception as e:
        require_or_skip("XINTEREST_REQUIRE_PROD", f"prod stores not reachable ({type(e).__name__}: {e})")
    url = base.postgres_url.rsplit("/", 1)[0] + f"/{database}"
    env = {
        "XINTEREST_PROFILE": "prod",
        "XINTEREST_POSTGRES_URL": url,
        "MLFLOW_TRACKING_URI": url,
        "XINTEREST_FEAST_PROJECT": database,
    }
    settings = Settings(
        workdir=tmp_path / "work",
        pseudonym_key=TEST_KEY,
        profile="prod",
        postgres_url=url,
        mlflow_tracking_uri=url,
        feast_project=database,
        sequence_length=30,
    )
    workdir = Workdir.at(settings.workdir)
    store = None
    try:
        raw = generate(tmp_path / "raw", SyntheticConfig(n_events=15_000, seed=5))
        ingest_sources([("synthetic", raw)], workdir, settings)
        outcome = train(workdir, settings, small_experiment())
        assert outcome.champion == "1"
        from pipelines import feature_store as fs

        store = fs.open_store(workdir, settings)
        assert store.config.online_store.type == "redis"
        server = Server(workdir.root, env)
        try:
            body = server.post("/recommend", {"platform": "web", "user_id": "nobody", "k": 3}).json()
            assert body["model_version"] == "1" and body["cold_start"] == "popularity"
            fb = server.post(
                "/feedback", {"event": {"platform": "web", "user_id": "p1", "item_id": "w2", "action": "view"}}
            )
            assert fb.json()["pushed"]
            after = server.post("/recommend", {"platform": "web", "user_id": "p1", "k": 3}).json()
            assert after["person_known"]
        finally:
            server.stop()
    finally:
        if store is not None:
            store.teardown()
        from sqlalchemy import create_engine

        create_engine(url).dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
