"""The XGBoost ensemble re-ranker: features of (person, candidate) pairs, training, scoring.

It is an ensemble in the stacking sense: the base recommenders' scores (the VAE, an item-item
model, popularity, category affinity) sit beside the person, activity and item features from
the ``ranker_v1`` FeatureService. :func:`assemble` builds the matrix from named columns, and
both offline evaluation (Feast historical retrieval) and the service (online reads) call it,
so training and serving compute features the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

log = logging.getLogger(__name__)

SIGNALS = [
    "vae_score",
    "vae_rank",
    "vae_sim",
    "item_item_score",
    "item_item_rank",
    "pop_train",
    "pop_rank_platform",
    "cat_affinity",
    "platform_share",
    "same_platform_as_last",
]
FEAST_PERSON = ["events_total_30d", "active_platforms_30d", "seconds_since_last_event"]
FEAST_ACTIVITY = [
    "events_1d",
    "events_7d",
    "events_30d",
    "view_7d",
    "click_7d",
    "cart_30d",
    "purchase_30d",
    "rate_30d",
    "like_30d",
    "favorite_30d",
]
FEAST_ITEM = [
    "views_7d",
    "views_30d",
    "positives_7d",
    "positives_30d",
    "purchases_30d",
    "person_days_7d",
    "person_days_30d",
    "conversion_7d",
    "conversion_30d",
]
FEATURES = SIGNALS + FEAST_PERSON + FEAST_ACTIVITY + FEAST_ITEM


@dataclass(frozen=True)
class RankerConfig:
    negatives_per_positive: int = 20
    max_rounds: int = 400
    early_stopping: int = 30
    learning_rate: float = 0.05
    max_depth: int = 6
    seed: int = 0
    threads: int = 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lookup_share(names: Sequence[Any], shares: Sequence[Any], wanted: Sequence[Any]) -> NDArray[np.float32]:
    """Per pair: the share that the pair's list (names, shares) gives to ``wanted`` (0 if absent)."""
    out = np.zeros(len(wanted), dtype=np.float32)
    for i, (n, s, w) in enumerate(zip(names, shares, wanted, strict=True)):
        if w is None or n is None or s is None:
            continue
        for name, share in zip(n, s, strict=False):
            if name == w:
                out[i] = share
                break
    return out


def assemble(columns: dict[str, Any]) -> NDArray[np.float32]:
    """The feature matrix (pairs x :data:`FEATURES`); missing values are NaN (XGBoost's default
    direction handles them)."""
    n = len(columns["vae_score"])
    out = np.full((n, len(FEATURES)), np.nan, dtype=np.float32)
    for j, name in enumerate(FEATURES):
        value = columns.get(name)
        if value is None:
            continue
        try:  # numbers and None (→ NaN) convert directly; anything else goes through pandas
            out[:, j] = np.asarray(value, dtype=np.float32)
        except (TypeError, ValueError):
            out[:, j] = pd.to_numeric(pd.Series(value), errors="coerce").to_numpy(dtype=np.float32)
    return out


def sample_pairs(
    candidates: NDArray[np.int64], positives: list[set[int]], k: int, rng: np.random.Generator
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Training pairs (row, candidate position, label): every positive candidate plus ``k``
    sampled negatives per positive from the same person's candidates. Persons whose positive
    is not among the candidates contribute nothing (the re-ranker only ever sees candidates)."""
    rows, cols, labels = [], [], []
    for r, (cands, pos) in enumerate(zip(candidates, positives, strict=True)):
        hit = [c for c in range(len(cands)) if cands[c] in pos]
        if not hit:
            continue
        negatives = np.array([c for c in range(len(cands)) if cands[c] not in pos])
        take = negatives if len(negatives) <= k * len(hit) else rng.choice(negatives, k * len(hit), replace=False)
        for c in hit:
            rows.append(r), cols.append(c), labels.append(1)
        for c in take:
            rows.append(r), cols.append(int(c)), labels.append(0)
    return np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64), np.array(labels, dtype=np.int64)


def train(
    x: NDArray[np.float32], y: NDArray[np.int64], groups: NDArray[np.int64], config: RankerConfig | None = None
) -> tuple[Any, dict[str, Any]]:
    """Fit the booster; 20% of the persons (``groups``) are held out for early stopping."""
    import xgboost as xgb

    config = config or RankerConfig()
    rng = np.random.default_rng(config.seed)
    persons = np.unique(groups)
    held = set(rng.choice(persons, max(1, len(persons) // 5), replace=False).tolist())
    is_held = np.array([g in held for g in groups])
    n_pos, n_neg = int(y[~is_held].sum()), int((1 - y[~is_held]).sum())
    scale_pos_weight = n_neg / max(1, n_pos)
    params = {
        "objective": "binary:logistic",
        "eval_metric": ["auc", "logloss"],
        "eta": config.learning_rate,
        "max_depth": config.max_depth,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "min_child_weight": 2,
        "scale_pos_weight": scale_pos_weight,
        "nthread": config.threads,
        "seed": config.seed,
        "tree_method": "hist",
    }
    dtrain = xgb.DMatrix(x[~is_held], label=y[~is_held], feature_names=FEATURES)
    dvalid = xgb.DMatrix(x[is_held], label=y[is_held], feature_names=FEATURES)
    curves: dict[str, dict[str, list[float]]] = {}
    booster = xgb.train(
        params,
        dtrain,
        num_boost_round=config.max_rounds,
        evals=[(dtrain, "train"), (dvalid, "valid")],
        early_stopping_rounds=config.early_stopping,
        evals_result=curves,
        verbose_eval=False,
    )
    info = {
        "positives": n_pos,
        "negatives": n_neg,
        "negatives_per_positive": config.negatives_per_positive,
        "scale_pos_weight": round(scale_pos_weight, 3),
        "best_iteration": int(booster.best_iteration),
        "curves": curves,
        "holdout_persons": len(held),
    }
    return booster, info


def predict(booster: Any, x: NDArray[np.float32]) -> NDArray[np.float32]:
    """Probabilities from the booster (up to its best iteration)."""
    best = getattr(booster, "best_iteration", None)
    rounds = (0, best + 1) if best is not None else (0, 0)
    return booster.inplace_predict(x, iteration_range=rounds).astype(np.float32)


def contributions(booster: Any, x: NDArray[np.float32]) -> NDArray[np.float32]:
    """TreeSHAP contributions per feature (last column: the bias)."""
    import xgboost as xgb

    best = getattr(booster, "best_iteration", None)
    rounds = (0, best + 1) if best is not None else (0, 0)
    return booster.predict(xgb.DMatrix(x, feature_names=FEATURES), pred_contribs=True, iteration_range=rounds)


def calibrate(p: NDArray[np.float32], scale_pos_weight: float) -> NDArray[np.float32]:
    """Undo the positive up-weighting: the odds the booster learned are ``scale_pos_weight``
    times the odds on the sampled pairs."""
    return (p / (p + scale_pos_weight * (1 - p) + 1e-12)).astype(np.float32)
