"""The re-ranker's trees walked in C for the few hundred rows of a request.

XGBoost's ``inplace_predict`` costs about half a millisecond per call before the first tree
(measured on the serving benchmark's model: 0.54 ms for one row, 2.7 ms for 400), a sizeable
share of a request that scores ~100 candidates per person. :class:`Trees` holds a booster's
trees completed to their deepest level (so that every walk takes the same steps, with no branch
on the data) and adds their leaf values with the C kernel ``tree_margins``
(pipelines/_native.c), eight rows side by side, in XGBoost's order and float32 arithmetic: the
same margins, bit for bit (0.86 ms for 400 rows against XGBoost's 2.0 ms, measured once). :func:`for_booster` builds it once per booster and checks it against XGBoost on probe rows;
where the model has what the kernel does not walk (categorical splits, vector leaves, several
trees per round, more than ``MAX_DEPTH`` levels) or the extension is missing, it gives None and XGBoost predicts as before.
"""

from __future__ import annotations

import json
import logging
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipelines.native import kernels

log = logging.getLogger(__name__)
# More rows (offline evaluation) go to XGBoost, whose threads are faster there: on the serving
# benchmark's model, 50,000 rows took 66 ms with XGBoost on two threads against 93 ms walked
# here, and 4,096 rows 9.7 against 7.3 ms (measured once, random rows).
MAX_ROWS = 4096
_cache: weakref.WeakKeyDictionary[Any, dict[int, Trees | None]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


SPLIT = np.dtype([("feature", "<u4"), ("threshold", "<f4")])  # struct tree_split
MISSING_LEFT = np.uint32(1 << 31)  # in ``feature``: a missing value (NaN) goes left
MAX_DEPTH = 12  # deeper trees (lossguide growth) are left to XGBoost: 2^depth leaves each


@dataclass(frozen=True)
class Trees:
    """Trees ``[0, n_trees)`` of a booster with a ranking objective (margins are its output),
    each complete to ``depth``: a leaf above it is repeated under splits whose way does not
    matter, so every walk takes ``depth`` steps without a branch on the data."""

    splits: NDArray[np.void]  # SPLIT records, 2^depth - 1 per tree, breadth-first
    leaves: NDArray[np.float32]  # 2^depth per tree
    depth: int
    n_features: int
    base_score: np.float32  # the margin a row starts from without a base margin

    @property
    def n_trees(self) -> int:
        return len(self.leaves) >> self.depth

    @classmethod
    def from_booster(cls, booster: Any, n_trees: int) -> Trees | None:
        """The first ``n_trees`` trees of ``booster``, or None where the kernel cannot walk them."""
        model = json.loads(booster.save_raw("json"))
        learner = model["learner"]
        gbm = learner["gradient_booster"]
        objective = learner["objective"]["name"]
        if gbm.get("name") != "gbtree" or not objective.startswith("rank:"):
            return None  # other objectives transform the margin; dart weights its trees
        trees = gbm["model"]["trees"][:n_trees]
        if int(gbm["model"]["gbtree_model_param"]["num_parallel_tree"]) != 1 or len(trees) != n_trees:
            return None
        param = learner["learner_model_param"]
        if int(param.get("num_target", "1")) != 1 or int(param.get("num_class", "0")) > 1:
            return None
        if any(int(t["tree_param"].get("size_leaf_vector", "1")) > 1 or any(t["split_type"]) for t in trees):
            return None  # vector leaves or categorical splits
        depth = max((leaf_depths(t["left_children"], t["right_children"])[1] for t in trees), default=0)
        if not 1 <= depth <= MAX_DEPTH:
            return None
        splits = np.zeros((len(trees), (1 << depth) - 1), dtype=SPLIT)
        leaves = np.zeros((len(trees), 1 << depth), dtype=np.float32)
        for t, tree in enumerate(trees):
            _complete(tree, depth, splits[t], leaves[t])
        base = str(param["base_score"]).strip("[]").split(",")[0]
        return cls(splits.ravel(), leaves.ravel(), depth, int(param["num_feature"]), np.float32(base))

    def margins(self, x: NDArray[np.float32], base_margin: NDArray[np.float32] | None = None) -> NDArray[np.float32]:
        """Each row's margin: ``base_margin`` (else the base score) plus every tree's leaf."""
        native = kernels()
        if native is None:
            raise RuntimeError("the C extension is not built")
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"x must have {self.n_features} columns, not shape {x.shape}")
        out = (
            np.full(len(x), self.base_score, dtype=np.float32)
            if base_margin is None
            else np.array(base_margin, dtype=np.float32).reshape(len(x))
        )
        native.tree_margins(self.splits, self.leaves, self.depth, x, self.n_features, out)
        return out


def leaf_depths(left: list[int], right: list[int]) -> tuple[int, int]:
    """The shallowest and the deepest leaf of one tree (splits from the root) of XGBoost's
    child arrays."""
    depths, stack = [], [(0, 0)]
    while stack:
        node, level = stack.pop()
        if left[node] == -1:
            depths.append(level)
        else:
            stack += [(left[node], level + 1), (right[node], level + 1)]
    return min(depths), max(depths)


def _complete(tree: dict[str, Any], depth: int, splits: NDArray[np.void], leaves: NDArray[np.float32]) -> None:
    """Fill one tree's complete ``splits`` and ``leaves`` from XGBoost's JSON arrays."""
    left, right = tree["left_children"], tree["right_children"]
    feature, value, default_left = tree["split_indices"], tree["split_conditions"], tree["default_left"]
    inner = (1 << depth) - 1
    stack = [(0, 0, 0)]  # (XGBoost node, breadth-first position, level)
    while stack:
        node, at, level = stack.pop()
        if left[node] == -1:  # a leaf: every leaf under ``at`` holds its value (float32 as stored)
            first = (at + 1) * (1 << (depth - level)) - 1 - inner
            leaves[first : first + (1 << (depth - level))] = np.float32(value[node])
            continue
        splits[at] = (int(feature[node]) | (int(MISSING_LEFT) if default_left[node] else 0), np.float32(value[node]))
        stack += [(left[node], 2 * at + 1, level + 1), (right[node], 2 * at + 2, level + 1)]


def _probe(n_features: int) -> NDArray[np.float32]:
    """Rows that reach many leaves: wide random values, zeros, negatives and missing values."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((256, n_features)) * rng.choice([1e-3, 1.0, 1e3, 1e6], (256, n_features))).astype(
        np.float32
    )
    x[rng.random(x.shape) < 0.15] = np.nan
    x[rng.random(x.shape) < 0.1] = 0.0
    return x


def for_booster(booster: Any, n_trees: int) -> Trees | None:
    """The :class:`Trees` of ``booster``'s first ``n_trees`` trees (built once per booster), or
    None when the kernel cannot give what XGBoost gives: a model it cannot walk, no C
    extension, or probe rows on which the two differ in any bit."""
    with _lock:
        per_booster = _cache.setdefault(booster, {})
        if n_trees in per_booster:
            return per_booster[n_trees]
    trees = None
    if kernels() is not None and n_trees > 0:
        trees = Trees.from_booster(booster, n_trees)
        if trees is not None:
            x = _probe(trees.n_features)
            margin = np.random.default_rng(1).standard_normal(len(x)).astype(np.float32)
            rounds = (0, n_trees)
            same = np.array_equal(
                trees.margins(x), booster.inplace_predict(x, iteration_range=rounds).astype(np.float32)
            ) and np.array_equal(
                trees.margins(x, margin),
                booster.inplace_predict(x, iteration_range=rounds, base_margin=margin).astype(np.float32),
            )
            if not same:
                log.warning("the C tree walk differs from XGBoost on this model's probe rows: XGBoost predicts")
                trees = None
    with _lock:
        per_booster[n_trees] = trees
    return trees
