"""The frozen holdout of a training run, and model evaluation on it.

A holdout is what the test of one training saw: the test persons, their cutoff times, their
sequences and seen items as of the cutoff, the held-out items, and the Feast repo of the test
view (for the re-ranker's features). Training writes it next to the work directory; the
promotion gate evaluates the champion and a challenger on the challenger's holdout, which
neither model trained on.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines import feature_store as fs
from pipelines.config import Settings, Workdir
from training.metrics import classification_report, ranking_report
from training.recommender import Candidates, Recommender

KS = (10, 20, 50)


@dataclass
class Holdout:
    persons: list[str]
    at: list[pd.Timestamp]
    sequences: list[dict[str, Any] | None]
    seen: list[set[str]]
    relevant: list[list[str]]
    target_platform: str | None
    feature_root: Path  # a work directory whose feature_repo holds the test view's tables

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        payload = {
            "persons": self.persons,
            "at": [t.isoformat() for t in self.at],
            "sequences": self.sequences,
            "seen": [sorted(s) for s in self.seen],
            "relevant": self.relevant,
            "target_platform": self.target_platform,
        }
        (folder / "holdout.json").write_text(json.dumps(payload, default=_plain))
        if self.feature_root.resolve() != folder.resolve():
            shutil.copytree(self.feature_root / "feature_repo", folder / "feature_repo", dirs_exist_ok=True)
        return folder

    @classmethod
    def load(cls, folder: Path) -> Holdout:
        raw = json.loads((folder / "holdout.json").read_text())
        return cls(
            raw["persons"],
            [pd.Timestamp(t) for t in raw["at"]],
            raw["sequences"],
            [set(s) for s in raw["seen"]],
            raw["relevant"],
            raw["target_platform"],
            folder,
        )

    def store(self) -> Any:
        settings = Settings(workdir=self.feature_root, profile="local")
        return fs.open_store(Workdir.at(self.feature_root), settings)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def relevant_indices(relevant: list[list[str]], recommender: Recommender) -> list[set[int]]:
    """Decoder indices; items unknown to the model become distinct negative ids (a sure miss
    that still counts in the denominator)."""
    out, unknown = [], -1
    for items in relevant:
        row = set()
        for item in items:
            j = recommender.vocab.item_index.get(item)
            if j is None:
                j, unknown = unknown, unknown - 1
            row.add(j)
        out.append(row)
    return out


def pair_features(
    recommender: Recommender,
    store: Any,
    cands: Candidates,
    persons: list[str],
    sequences: list[dict[str, Any] | None],
    at: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray:
    """The re-ranker's features of (row, candidate column) pairs: signals + ``ranker_v1`` at ``at``."""
    last = [list(s["seq_platforms"])[-1] if s and s.get("seq_platforms") else None for s in sequences]
    signals = recommender.signal_columns(cands, last)
    n = cands.items.shape[1]
    picked = {k: np.asarray(v)[rows * n + cols] for k, v in signals.items()}
    item_idx = cands.items[rows, cols]
    at_rows = pd.to_datetime(np.asarray(at)[rows], utc=True)
    entity = pd.DataFrame(
        {
            "person_id": np.asarray(persons, dtype=object)[rows],
            "platform": recommender.item_platform[item_idx],
            "item_id": np.asarray(recommender.vocab.items, dtype=object)[item_idx],
            "event_timestamp": at_rows,
            "request_ts": (at_rows.astype("int64") // 10**9).astype(np.int64),
        }
    )
    frame = fs.historical_features(store, entity, fs.RANKER_SERVICE, day_grain=("item_stats",))
    return recommender.feature_matrix(picked, {c: frame[c].to_numpy() for c in frame.columns})


@dataclass
class Evaluation:
    metrics: dict[str, float]
    classification: dict[str, float]
    ranked: np.ndarray  # (persons, 50) re-ranked decoder indices
    labels: np.ndarray
    probability: np.ndarray
    alternatives: list[np.ndarray] = field(default_factory=list)  # (persons, 50) re-ranked by each alternative booster


def evaluate(
    recommender: Recommender,
    holdout: Holdout,
    store: Any | None = None,
    alternatives: Sequence[tuple[Any, dict[str, Any]]] = (),
) -> Evaluation:
    """Recall/NDCG@K of the re-ranked candidates, and the re-ranker's classification metrics
    on the candidates (a candidate is positive when it is a held-out item). ``alternatives``:
    other boosters (each with its meta: prior, calibration) that re-rank the same candidates
    from the same features, e.g. the re-ranker trained with other seeds; their ranked lists
    come back in the same order."""
    store = store or holdout.store()
    relevant = relevant_indices(holdout.relevant, recommender)
    cands = recommender.candidates(holdout.sequences, holdout.seen, holdout.target_platform)
    b, n = cands.items.shape
    rows, cols = np.repeat(np.arange(b), n), np.tile(np.arange(n), b)
    x = pair_features(
        recommender, store, cands, holdout.persons, holdout.sequences, np.asarray(holdout.at, dtype=object), rows, cols
    )

    def ranked_by(order: np.ndarray) -> np.ndarray:
        return np.take_along_axis(cands.items, order, axis=1)[:, : max(KS)]

    order, probability = recommender.rank(cands, x)
    ranked = ranked_by(order)
    labels = np.array([[int(c in rel) for c in row] for row, rel in zip(cands.items, relevant, strict=True)]).ravel()
    p = probability.ravel()
    threshold = float(recommender.meta.get("threshold", 0.5))
    classification = classification_report(labels, p, threshold) if len(labels) else {}
    hits = [bool(set(row) & rel) for row, rel in zip(cands.items, relevant, strict=True) if rel]
    classification["candidate_recall"] = float(np.mean(hits)) if hits else float("nan")
    others = [ranked_by(recommender.rank(cands, x, *other)[0]) for other in alternatives]
    return Evaluation(ranking_report(ranked, relevant, KS), classification, ranked, labels, p, others)
