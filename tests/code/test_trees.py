"""The re-ranker's trees walked by the C kernel (training.trees) give XGBoost's own margins, bit
for bit; models the kernel cannot walk are left to XGBoost."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from tests.conftest import native_or_skip
from training import ranker, trees


def _rows(n: int, features: int, seed: int, infinite: bool = True) -> np.ndarray:
    """Values around the splits, with missing values (NaN), zeros, wide scales and (unless not
    ``infinite``: XGBoost trains on none) infinities."""
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, features)) * rng.choice([1e-3, 1.0, 1e4], (n, features))).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan
    x[rng.random(x.shape) < 0.05] = 0.0
    if infinite:
        x[rng.random(x.shape) < 0.01] = np.inf
        x[rng.random(x.shape) < 0.01] = -np.inf
    return x


def _booster(objective: str = "rank:ndcg", rounds: int = 40, seed: int = 0, **params: object) -> xgb.Booster:
    x = _rows(2000, 12, seed, infinite=False)
    rng = np.random.default_rng(seed + 1)
    y = (np.nan_to_num(x[:, 0]) + rng.normal(size=len(x)) > 0.5).astype(np.float32)
    data = xgb.DMatrix(x, label=y)
    if objective.startswith("rank:"):
        data.set_group([20] * (len(x) // 20))
    config = {"objective": objective, "max_depth": 6, "eta": 0.3, "nthread": 1, "seed": seed, **params}
    return xgb.train(config, data, num_boost_round=rounds)


@pytest.mark.parametrize("rows", [1, 7, 63, 64, 65, 400])
def test_margins_are_xgboosts_bit_for_bit(rows: int) -> None:
    native_or_skip()
    booster = _booster()
    x = _rows(rows, 12, seed=rows)
    margin = np.random.default_rng(rows).standard_normal(rows).astype(np.float32) * 3
    for n_trees in (1, 17, 40):
        walked = trees.for_booster(booster, n_trees)
        assert walked is not None and walked.n_trees == n_trees
        rounds = (0, n_trees)
        expected = booster.inplace_predict(x, iteration_range=rounds).astype(np.float32)
        assert np.array_equal(walked.margins(x), expected)
        expected = booster.inplace_predict(x, iteration_range=rounds, base_margin=margin).astype(np.float32)
        assert np.array_equal(walked.margins(x, margin), expected)


def test_predict_uses_the_walked_trees_and_gives_what_xgboost_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    native_or_skip()
    booster = _booster(rounds=30)
    booster.set_attr(best_iteration="21")  # predict stops at the best iteration
    x = _rows(300, 12, seed=9)
    walked = ranker.fast_trees(booster)
    assert walked is not None and walked.n_trees == 22
    walks = []
    real = trees.Trees.margins

    def counted(self: trees.Trees, *args: object) -> np.ndarray:
        walks.append(self.n_trees)
        return real(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(trees.Trees, "margins", counted)
    fast = ranker.predict(booster, x)
    assert walks == [22]  # the walk answered, with the trees up to the best iteration
    monkeypatch.setattr(trees, "MAX_ROWS", 0)  # XGBoost predicts
    assert np.array_equal(fast, ranker.predict(booster, x)) and walks == [22]
    assert not np.array_equal(fast, booster.inplace_predict(x).astype(np.float32))  # all 30 trees differ


def test_models_the_kernel_does_not_walk_are_left_to_xgboost() -> None:
    native_or_skip()
    assert trees.for_booster(_booster("binary:logistic"), 10) is None  # the output is a sigmoid
    assert trees.for_booster(_booster(num_parallel_tree=2, subsample=0.8, rounds=5), 5) is None  # forests
    assert trees.for_booster(_booster(booster="dart", rounds=5), 5) is None  # weighted trees
    booster = _booster("binary:logistic")
    x = _rows(50, 12, seed=3)
    assert np.array_equal(ranker.predict(booster, x), booster.inplace_predict(x).astype(np.float32))


def test_trees_are_completed_to_the_deepest_leaf() -> None:
    """A tree shallower than the deepest repeats its leaves: the margins do not change."""
    native_or_skip()
    booster = _booster(rounds=8, max_depth=0, max_leaves=5, grow_policy="lossguide")  # uneven depths
    walked = trees.for_booster(booster, 8)
    assert walked is not None and walked.depth >= 3
    shallowest = min(trees.leaf_depths(t["left_children"], t["right_children"])[0] for t in _json_trees(booster))
    assert shallowest < walked.depth  # some leaf sits above the deepest level: it is repeated
    x = _rows(500, 12, seed=4)
    assert np.array_equal(walked.margins(x), booster.inplace_predict(x).astype(np.float32))


def _json_trees(booster: xgb.Booster) -> list[dict[str, list[int]]]:
    import json

    return json.loads(booster.save_raw("json"))["learner"]["gradient_booster"]["model"]["trees"]


def test_the_kernel_refuses_arrays_that_do_not_fit() -> None:
    native = native_or_skip()
    walked = trees.for_booster(_booster(rounds=3), 3)
    assert walked is not None
    x = _rows(4, 12, seed=1)
    out = np.zeros(4, dtype=np.float32)
    used = int(walked.splits["feature"].max() & 0x7FFFFFFF)
    narrow = np.ascontiguousarray(x[:, :used])
    with pytest.raises(ValueError, match="feature x does not have"):
        native.tree_margins(walked.splits, walked.leaves, walked.depth, narrow, used, out)
    with pytest.raises(ValueError, match="2\\^depth"):
        native.tree_margins(walked.splits, walked.leaves[:-1], walked.depth, x, 12, out)
    with pytest.raises(ValueError, match="2\\^depth"):
        native.tree_margins(walked.splits, walked.leaves, walked.depth, x, 12, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="depth 1 to 16"):
        native.tree_margins(walked.splits, walked.leaves, 0, x, 12, out)


def test_a_walk_that_differs_from_xgboost_is_not_used(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    native_or_skip()
    booster = _booster(rounds=5)
    real = trees.Trees.margins

    def off_by_one_ulp(self: trees.Trees, x: np.ndarray, base_margin: np.ndarray | None = None) -> np.ndarray:
        out = real(self, x, base_margin)
        return np.nextafter(out, np.float32(np.inf))

    monkeypatch.setattr(trees.Trees, "margins", off_by_one_ulp)
    with caplog.at_level("WARNING", logger="training.trees"):
        assert trees.for_booster(booster, 5) is None
    assert "differs from XGBoost" in caplog.text
    x = _rows(20, 12, seed=2)
    assert np.array_equal(ranker.predict(booster, x), booster.inplace_predict(x).astype(np.float32))


def test_the_trees_a_prediction_uses_are_read_from_the_booster_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The best iteration is read through XGBoost's C API once per booster, not per request."""
    booster = _booster(rounds=12)
    booster.set_attr(best_iteration="7")
    reads = []
    real = xgb.Booster.attr

    def counted(self: xgb.Booster, key: str) -> str | None:
        reads.append(key)
        return real(self, key)

    monkeypatch.setattr(xgb.Booster, "attr", counted)
    x = _rows(50, 12, seed=4)
    first = ranker.predict(booster, x)
    assert ranker.used_trees(booster) == 8 and reads == ["best_iteration"]
    assert np.array_equal(ranker.predict(booster, x), first) and reads == ["best_iteration"]
    other = _booster(rounds=12)  # another booster, without a best iteration: all its trees
    assert ranker.used_trees(other) == 12 and len(reads) == 2
