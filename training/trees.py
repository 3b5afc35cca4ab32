"""The re-ranker's trees walked in C for the few hundred rows of a request.

XGBoost's ``inplace_predict`` costs about half a millisecond per call before the first tree
(measured on the serving benchmark's model: 0.54 ms for one row, 2.7 ms for 400), a sizeable
share of a request that scores ~100 candidates per person. :class:`Trees` holds a booster's
trees as flat node arrays and adds their leaf values with the C kernel ``tree_margins``
(pipelines/_native.c), in XGBoost's order and float32 arithmetic: the same margins, bit for
bit. :func:`for_booster` builds it once per booster and checks it against XGBoost on probe rows;
where the model has what the kernel does not walk (categorical splits, vector leaves, several
trees per round) or the extension is missing, it gives None and XGBoost predicts as before.
"""

from __future__ import annotations

import json
import threading
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipelines.native import kernels

MAX_ROWS = 4096  # more rows (offline evaluation): XGBoost's own threads are faster
_cache: weakref.WeakKeyDictionary[Any, dict[int, Trees | None]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


NODE = np.dtype([("left", "<i4"), ("right", "<i4"), ("threshold", "<f4"), ("feature", "<u4")])  # struct tree_node
MISSING_LEFT = np.uint32(1 << 31)  # in ``feature``: a missing value (NaN) goes left


@dataclass(frozen=True)
class Trees:
    """Trees ``[0, n_trees)`` of a booster with a ranking objective (margins are its output)."""

    nodes: NDArray[np.void]  # NODE records of every tree, children as absolute positions (-1: leaf)
    roots: NDArray[np.int32]
    n_features: int
    base_score: np.float32  # the margin a row starts from without a base margin

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
        parts, roots, offset = [], [], 0
        for tree in trees:
            if int(tree["tree_param"].get("size_leaf_vector", "1")) > 1 or any(tree["split_type"]):
                return None  # vector leaves or categorical splits
            lc = np.asarray(tree["left_children"], dtype=np.int64)
            rc = np.asarray(tree["right_children"], dtype=np.int64)
            leaf = lc == -1
            part = np.zeros(len(lc), dtype=NODE)
            part["left"] = np.where(leaf, -1, lc + offset)
            part["right"] = np.where(leaf, -1, rc + offset)
            part["threshold"] = np.asarray(tree["split_conditions"], dtype=np.float32)
            part["feature"] = np.where(leaf, 0, np.asarray(tree["split_indices"], dtype=np.uint32)).astype(np.uint32)
            part["feature"] |= np.where(np.asarray(tree["default_left"], dtype=bool), MISSING_LEFT, np.uint32(0))
            parts.append(part)
            roots.append(offset)
            offset += len(lc)
        base = str(param["base_score"]).strip("[]").split(",")[0]
        return cls(
            np.concatenate(parts), np.asarray(roots, dtype=np.int32), int(param["num_feature"]), np.float32(base)
        )

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
        native.tree_margins(self.nodes, self.roots, x, self.n_features, out)
        return out


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
            trees = trees if same else None
    with _lock:
        per_booster[n_trees] = trees
    return trees
