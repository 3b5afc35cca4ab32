"""`xinterest forget`: a person disappears from the lake, the features and the online store."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipelines import feature_store as fs
from pipelines.config import Settings, Workdir
from pipelines.forget import forget
from pipelines.ingest import ingest_sources
from pipelines.lake import Lake
from serving.feedback import FeedbackLog
from tests.conftest import TEST_KEY


def test_forget_removes_a_person_everywhere(tmp_path: Path, synthetic_small: Path) -> None:
    settings = Settings(workdir=tmp_path / "w", pseudonym_key=TEST_KEY)
    workdir = Workdir.at(settings.workdir)
    ingest_sources([("synthetic", synthetic_small)], workdir, settings)
    fs.refresh(workdir, settings)
    persons = Lake(workdir.lake).table("persons")
    linked = persons.groupby("person_id")["platform"].agg(set)
    person = linked[linked.map(lambda p: "web" in p and len(p) >= 2)].index[0]
    account = persons[(persons["person_id"] == person) & (persons["platform"] == "web")]
    truth = pd.read_parquet(synthetic_small / "truth" / "persons.parquet")
    from pipelines.identity import Pseudonymiser

    pseudo = Pseudonymiser(TEST_KEY)
    cookie = next(c for c in truth["cookie"] if pseudo.user("web", c) in set(account["user_id"]))
    FeedbackLog(workdir.feedback).append(
        [
            {"platform": "web", "user_id": cookie, "item_id": "w1", "action": "view"},
            {"platform": "web", "user_id": "someone-else", "item_id": "w1", "action": "view"},
        ]
    )
    events_before = Lake(workdir.lake).n_events()
    report = forget(workdir, settings, person)

    lake = Lake(workdir.lake)
    assert report.lake_events > 0 and lake.n_events() == events_before - report.lake_events
    assert not lake.events(columns=["person_id"])["person_id"].eq(person).any()
    assert not lake.table("persons")["person_id"].eq(person).any()
    for name in ("person_profile", "person_sequence", "person_activity"):
        assert not pd.read_parquet(workdir.feature_data / f"{name}.parquet")["person_id"].eq(person).any()
    reader = fs.OnlineReader(fs.open_store(workdir, settings), ["person_sequence", "person_profile", "user_identity"])
    assert reader.read_one("person_sequence", {"person_id": person}) is None
    assert reader.read_one("person_profile", {"person_id": person}) is None
    assert reader.read_one("user_identity", {"user_id": account["user_id"].iloc[0]}) is None
    log = "".join(p.read_text() for p in workdir.feedback.glob("*.jsonl"))
    assert report.feedback_lines == 1 and cookie not in log and "someone-else" in log
