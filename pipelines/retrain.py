"""Retraining on the feedback loop: feedback log → lake → features → challenger → gate.

Safe to run on a schedule:
- the feedback log is ingested like any source (same validation, quarantine, dedup and report
  invariant); with nothing new, nothing else happens: no training, no new version;
- the lake changes are staged (a second manifest) and published last, after the challenger is
  trained and gated. A crash before the gate leaves the lake and the champion alias as they
  were; the feature tables and online store may already hold the staged events (training
  rebuilds them from the stage). A crash between the gate and the publish leaves a moved alias
  on the old lake. Either way the next run discards the stale stage, stages the feedback log
  again (it is never consumed) and rebuilds, trains and gates from there;
- the drift of the last period against the training set is computed and logged with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from pipelines.adapters.base import EventBatch, SourceData, with_malformed
from pipelines.config import Settings, Workdir
from pipelines.contract import EVENT_COLUMNS
from pipelines.ingest import IngestReport, ingest
from pipelines.lake import Lake
from serving.feedback import read_log

log = logging.getLogger(__name__)


@dataclass
class RetrainOutcome:
    changed: bool
    ingest: dict[str, Any]
    versions: dict[str, str] = field(default_factory=dict)
    promoted: bool = False
    champion: str | None = None
    gate: str = ""
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    drift_top: list[tuple[str, float]] = field(default_factory=list)


def feedback_source(workdir: Workdir) -> SourceData:
    """The feedback log as a canonical source (torn or corrupt lines come through as malformed rows)."""
    frame, bad = read_log(workdir.feedback)
    events = frame.reindex(columns=EVENT_COLUMNS).copy()
    events["ts"] = pd.to_datetime(frame["ts"], utc=True, errors="coerce", format="ISO8601")
    events["value"] = pd.to_numeric(frame["value"], errors="coerce")
    batch = EventBatch("feedback", workdir.feedback, with_malformed(events, bad))
    return SourceData(name="feedback", batches=iter([batch]))


def retrain(workdir: Workdir, settings: Settings, config: Any = None, progress: bool = False) -> RetrainOutcome:
    from pipelines.drift import drift, log_to_mlflow
    from pipelines.train import train
    from training.gate import promote

    lake = Lake(workdir.lake)
    lake.discard_stage()  # a previous run that died before publishing
    stage = lake.stage()
    report: IngestReport = ingest([feedback_source(workdir)], workdir, settings, progress=progress, lake=stage)
    if not report.lake_changed:
        stage.discard_stage()
        log.info("retrain: no new events in the feedback log; nothing to do")
        return RetrainOutcome(False, report.to_dict())
    feedback_persons = set(stage.events(columns=["person_id"])["person_id"]) - set(
        lake.events(columns=["person_id"])["person_id"]
    )
    try:
        drift_report = drift(workdir, settings, feedback_persons=feedback_persons)
        log_to_mlflow(drift_report, workdir.reports / "drift", settings, workdir)
        top = drift_report.top
    except FileNotFoundError:
        top = []
    outcome = train(workdir, settings, config, progress=progress, lake=stage)
    decision = promote(workdir, settings, outcome.versions["recommender"])
    stage.publish()
    return RetrainOutcome(
        True,
        report.to_dict(),
        outcome.versions,
        decision.promoted or outcome.promoted,
        decision.challenger if decision.promoted else outcome.champion,
        decision.reason,
        outcome.metrics,
        top,
    )
