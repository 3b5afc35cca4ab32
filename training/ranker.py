"""The XGBoost ensemble re-ranker: features of (person, candidate) pairs, training, scoring.

It is an ensemble in the stacking sense: the base recommenders' scores (the VAE, an item-item
model, popularity, category affinity) sit beside the person, activity and item features from
the ``ranker_v1`` FeatureService. :func:`assemble` builds the matrix from named columns, and
both offline evaluation (Feast historical retrieval) and the service (online reads) call it,
so training and serving compute features the same way.

The booster learns to *order* each person's candidates: LambdaMART (``rank:ndcg``, one query
group per person), which on the real datasets re-ranks clearly better than a pointwise
logistic loss on the same pairs (person-level features cannot explain a person's base rate
away). Class imbalance (a few positives among a person's candidates) is handled by the
pairwise loss itself, which pairs every positive with the person's sampled negatives. Its
scores become probabilities by Platt scaling fitted on the held-out persons and corrected
for the negative sampling rate, so ``/score`` answers "how likely is this candidate to be
one of the person's next items". ``objective="binary:logistic"`` (weighted by the class
ratio) remains available.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Collection, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from training import trees

log = logging.getLogger(__name__)
_USED_TREES: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()

SIGNALS = [
    "vae_score",
    "vae_rank",
    "vae_sim",
    "item_item_score",
    "item_item_rank",
    "recent_item_item",
    "last_item_item",
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
    objective: str = "rank:ndcg"  # or "binary:logistic"
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
    """Per pair: the share that the pair's list (names, shares) gives to ``wanted`` (0 if absent;
    the first entry of a repeated name). Pairs of one person share the same list objects, so
    each distinct pair of lists becomes one lookup table, and a run of pairs with the same
    lists (a person's candidates) looks it up again without a search."""
    out: list[Any] = []
    tables: dict[tuple[int, int], dict[Any, Any]] = {}
    last: tuple[Any, Any] = (None, None)
    table: dict[Any, Any] = {}
    for n, s, w in zip(names, shares, wanted, strict=True):
        if w is None or n is None or s is None:
            out.append(0.0)
            continue
        if n is not last[0] or s is not last[1]:
            last, key = (n, s), (id(n), id(s))
            if key not in tables:
                tables[key] = {}
                for name, share in zip(n, s, strict=False):
                    tables[key].setdefault(name, share)
            table = tables[key]
        out.append(table.get(w, 0.0))
    return np.array(out, dtype=np.float32)


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


def holdout_rows(candidates: NDArray[np.int64], positives: list[set[int]], seed: int) -> NDArray[np.bool_]:
    """A seeded fifth of the persons (rows) with a positive among their candidates: the persons
    :func:`train` holds out for early stopping and calibration."""
    hits = np.flatnonzero([any(c in pos for c in cands) for cands, pos in zip(candidates, positives, strict=True)])
    held = np.zeros(len(candidates), dtype=bool)
    if len(hits):
        held[np.random.default_rng(seed).choice(hits, max(1, len(hits) // 5), replace=False)] = True
    return held


def sample_pairs(
    candidates: NDArray[np.int64],
    positives: list[set[int]],
    k: int,
    rng: np.random.Generator,
    whole: NDArray[np.bool_] | None = None,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Training pairs (row, candidate position, label): every positive candidate plus ``k``
    sampled negatives per positive from the same person's candidates; for the rows marked in
    ``whole``, every candidate (the held-out persons: their whole lists, as the re-ranker will
    see them). Persons whose positive is not among the candidates contribute nothing (the
    re-ranker only ever sees candidates)."""
    rows, cols, labels = [], [], []
    for r, (cands, pos) in enumerate(zip(candidates, positives, strict=True)):
        hit = [c for c in range(len(cands)) if cands[c] in pos]
        if not hit:
            continue
        negatives = np.array([c for c in range(len(cands)) if cands[c] not in pos])
        every = (whole is not None and whole[r]) or len(negatives) <= k * len(hit)
        take = negatives if every else rng.choice(negatives, k * len(hit), replace=False)
        for c in hit:
            rows.append(r), cols.append(c), labels.append(1)
        for c in take:
            rows.append(r), cols.append(int(c)), labels.append(0)
    return np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64), np.array(labels, dtype=np.int64)


def available_negatives(
    candidates: NDArray[np.int64], positives: list[set[int]], skip: NDArray[np.bool_] | None = None
) -> int:
    """Negatives :func:`sample_pairs` could have drawn (candidates of persons with a hit),
    without the rows marked in ``skip``."""
    total = 0
    for r, (cands, pos) in enumerate(zip(candidates, positives, strict=True)):
        if skip is not None and skip[r]:
            continue
        hits = sum(1 for c in cands if c in pos)
        if hits:
            total += len(cands) - hits
    return total


PRIOR = ("vae_rank", "item_item_rank", "pop_rank_platform")  # base rankers the prior blends


def _logistic(x: NDArray[np.float64], y: NDArray[np.int64], iterations: int = 50) -> NDArray[np.float64]:
    """Weights (last: the intercept) of a logistic regression, by Newton's method on the log
    loss (a small ridge keeps it finite when the classes separate)."""
    x = np.column_stack([x, np.ones(len(x))])
    w = np.zeros(x.shape[1])
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - y) + 1e-6 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-6 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    return w


def _platt(margin: NDArray[np.float32], y: NDArray[np.int64]) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a * margin + b)."""
    a, b = _logistic(margin.astype(np.float64)[:, None], y)
    return float(a), float(b)


def _prior_inputs(x: NDArray[np.float32]) -> NDArray[np.float64]:
    """Log-ranks of the base recommenders (a missing rank counts as far down the list)."""
    cols = x[:, [FEATURES.index(name) for name in PRIOR]].astype(np.float64)
    return np.log1p(np.clip(np.nan_to_num(cols, nan=1e6), 0.0, None))


def prior_margin(x: NDArray[np.float32], prior: dict[str, Any] | None) -> NDArray[np.float32] | None:
    """The stacking prior's log-odds per pair: a linear blend of the base rankers' log-ranks."""
    if not prior:
        return None
    w = np.asarray(prior["weights"], dtype=np.float64)
    return (_prior_inputs(x) @ w[:-1] + w[-1]).astype(np.float32)


def train(
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    groups: NDArray[np.int64],
    config: RankerConfig | None = None,
    negative_rate: float = 1.0,
    held: Collection[int] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Fit the booster; some persons (``groups``) are held out for early stopping and for the
    probability calibration: ``held``, which then come with all their candidates (their
    NDCG@20 is that of the lists the re-ranker will order, and the calibration needs no
    sampling correction), else a seeded 20%. ``negative_rate`` is the share of the available
    negatives that were sampled for the other persons."""
    import xgboost as xgb

    config = config or RankerConfig()
    ranking = config.objective.startswith("rank:")
    order = np.argsort(groups, kind="stable")  # query groups must be contiguous
    x, y, groups = x[order], y[order], groups[order]
    whole_lists = held is not None
    if held is None:
        persons = np.unique(groups)
        held = np.random.default_rng(config.seed).choice(persons, max(1, len(persons) // 5), replace=False)
    held_groups = np.unique(np.asarray(list(held), dtype=groups.dtype))
    is_held = np.isin(groups, held_groups)
    n_pos, n_neg = int(y[~is_held].sum()), int((1 - y[~is_held]).sum())
    scale_pos_weight = 1.0 if ranking else n_neg / max(1, n_pos)
    params: dict[str, Any] = {
        "objective": config.objective,
        "eval_metric": ["auc", "ndcg@20"] if ranking else ["auc", "logloss"],
        "eta": config.learning_rate,
        "max_depth": config.max_depth,
        "subsample": 0.8,
        "colsample_bytree": 0.8,
        "min_child_weight": 2,
        "nthread": config.threads,
        "seed": config.seed,
        "tree_method": "hist",
    }
    if not ranking:
        params["scale_pos_weight"] = scale_pos_weight

    def matrix(rows: NDArray[np.bool_]) -> Any:
        return xgb.DMatrix(x[rows], label=y[rows], qid=groups[rows] if ranking else None, feature_names=FEATURES)

    # The trees boost from a prior: a logistic blend of the base rankers' log-ranks, fitted on
    # the training persons. Where the pairs hold little signal beyond the base rankers,
    # early stopping leaves the blend nearly as it is instead of overfitting person features.
    prior = {
        "inputs": list(PRIOR),
        "weights": _logistic(_prior_inputs(x[~is_held]), y[~is_held]).tolist(),
    }
    dtrain, dvalid = matrix(~is_held), matrix(is_held)
    dtrain.set_base_margin(prior_margin(x[~is_held], prior))
    dvalid.set_base_margin(prior_margin(x[is_held], prior))
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
    calibration = None
    if ranking:
        rounds = (0, int(booster.best_iteration) + 1)
        margin = booster.predict(dvalid, output_margin=True, iteration_range=rounds)  # includes the prior
        a, b = _platt(margin, y[is_held])
        held_rate = 1.0 if whole_lists else negative_rate  # the held-out pairs' sampling rate
        calibration = [a, b + float(np.log(max(held_rate, 1e-12)))]
    info = {
        "objective": config.objective,
        "positives": n_pos,
        "negatives": n_neg,
        "negatives_per_positive": config.negatives_per_positive,
        "negative_rate": round(negative_rate, 4),
        "scale_pos_weight": round(scale_pos_weight, 3),
        "calibration": calibration,
        "prior": prior,
        "best_iteration": int(booster.best_iteration),
        "curves": curves,
        "holdout_persons": len(held_groups),
        "holdout_whole_lists": whole_lists,
    }
    return booster, info


SCORING_META = ("objective", "scale_pos_weight", "calibration", "prior", "best_iteration")


def scoring_meta(info: dict[str, Any]) -> dict[str, Any]:
    """What :func:`probability` needs of :func:`train`'s ``info``: a model's ``meta``."""
    return {k: info[k] for k in SCORING_META}


def predict(
    booster: Any,
    x: NDArray[np.float32],
    prior: dict[str, Any] | None = None,
    margin: NDArray[np.float32] | None = None,
) -> NDArray[np.float32]:
    """The booster's output (up to its best iteration): scores for a ranking objective,
    probabilities for the logistic one. :func:`probability` turns either into probabilities.
    ``margin``: the prior's margin of ``x``, when already computed (else from ``prior``)."""
    rounds = (0, used_trees(booster))
    margin = prior_margin(x, prior) if margin is None else margin
    walked = fast_trees(booster) if len(x) <= trees.MAX_ROWS else None
    if walked is not None:  # the same margins as XGBoost's, without its fixed cost per call
        return walked.margins(x, margin)
    if margin is None:
        return booster.inplace_predict(x, iteration_range=rounds).astype(np.float32)
    return booster.inplace_predict(x, iteration_range=rounds, base_margin=margin).astype(np.float32)


def used_trees(booster: Any) -> int:
    """How many of the booster's trees its predictions use: up to the best iteration of early
    stopping, else all. Read from the booster once (each read is a call into XGBoost's C API:
    two per request were 4% of the service's batch time): a booster is not trained further
    and its ``best_iteration`` is not set again once it predicts (a loaded model's is set as it
    loads, :meth:`training.recommender.Recommender.load`)."""
    used = _USED_TREES.get(booster)
    if used is None:
        best = getattr(booster, "best_iteration", None)
        used = _USED_TREES[booster] = best + 1 if best is not None else int(booster.num_boosted_rounds())
    return used


def fast_trees(booster: Any) -> trees.Trees | None:
    """The trees :func:`predict` uses walked by the C kernel, built and checked against XGBoost
    on the first call (the service calls this as it loads a model); None where XGBoost predicts
    (see :mod:`training.trees`)."""
    return trees.for_booster(booster, used_trees(booster))


def contributions(booster: Any, x: NDArray[np.float32], prior: dict[str, Any] | None = None) -> NDArray[np.float32]:
    """TreeSHAP contributions per feature to the log-odds (last column: the bias, which
    includes the stacking prior's blend)."""
    import xgboost as xgb

    rounds = (0, used_trees(booster))
    data = xgb.DMatrix(x, feature_names=FEATURES)
    margin = prior_margin(x, prior)
    if margin is not None:
        data.set_base_margin(margin)
    return booster.predict(data, pred_contribs=True, iteration_range=rounds)


def calibrate(p: NDArray[np.float32], scale_pos_weight: float) -> NDArray[np.float32]:
    """Undo the positive up-weighting: the odds the booster learned are ``scale_pos_weight``
    times the odds on the sampled pairs."""
    return (p / (p + scale_pos_weight * (1 - p) + 1e-12)).astype(np.float32)


def probability(
    booster: Any, x: NDArray[np.float32], meta: dict[str, Any], margin: NDArray[np.float32] | None = None
) -> NDArray[np.float32]:
    """Calibrated probabilities: Platt scaling of the ranking scores when the model has a
    ``calibration`` (a, b), else the logistic output with the class weighting undone.
    ``margin``: as for :func:`predict`."""
    raw = predict(booster, x, meta.get("prior"), margin)
    calibration = meta.get("calibration")
    if calibration:
        a, b = calibration
        return (1.0 / (1.0 + np.exp(-(a * raw.astype(np.float64) + b)))).astype(np.float32)
    return calibrate(raw, float(meta.get("scale_pos_weight", 1.0)))
