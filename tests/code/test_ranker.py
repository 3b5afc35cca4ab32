"""The re-ranker on crafted pairs: it learns to order candidates, and its probabilities are
calibrated (Platt scaling with the negative-sampling correction)."""

from __future__ import annotations

import numpy as np
import pytest

from training import ranker


def _pairs(persons: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """20 candidates per person; the positive is likelier where ``item_item_score`` is high."""
    rng = np.random.default_rng(seed)
    n = 20
    x = rng.normal(size=(persons * n, len(ranker.FEATURES))).astype(np.float32)
    signal = x[:, ranker.FEATURES.index("item_item_score")]
    y = np.zeros(persons * n, dtype=np.int64)
    for p in range(persons):
        block = slice(p * n, (p + 1) * n)
        logits = 2.0 * signal[block]
        probs = np.exp(logits) / np.exp(logits).sum()
        y[p * n + rng.choice(n, p=probs)] = 1
    groups = np.repeat(np.arange(persons), n)
    return x, y, groups


def test_platt_recovers_a_known_logistic() -> None:
    rng = np.random.default_rng(0)
    margin = rng.normal(size=20_000).astype(np.float32)
    y = (rng.random(20_000) < 1 / (1 + np.exp(-(1.5 * margin - 0.5)))).astype(np.int64)
    a, b = ranker._platt(margin, y)
    assert a == pytest.approx(1.5, abs=0.1)
    assert b == pytest.approx(-0.5, abs=0.1)


@pytest.mark.parametrize("objective", ["rank:ndcg", "binary:logistic"])
def test_ranker_learns_the_order_and_gives_probabilities(objective: str) -> None:
    x, y, groups = _pairs(600, seed=1)
    shuffle = np.random.default_rng(2).permutation(len(y))  # groups need not arrive contiguous
    config = ranker.RankerConfig(objective=objective, max_rounds=60, threads=1)
    booster, info = ranker.train(x[shuffle], y[shuffle], groups[shuffle], config)
    assert (info["calibration"] is not None) == objective.startswith("rank:")

    tx, ty, _ = _pairs(300, seed=3)
    p = ranker.probability(booster, tx, info)
    # ordering: the positive ranks in the top quarter of its 20 candidates far more often than chance
    ranks = [
        (-p[i * 20 : (i + 1) * 20]).argsort().tolist().index(int(ty[i * 20 : (i + 1) * 20].argmax()))
        for i in range(300)
    ]
    assert np.mean(np.array(ranks) < 5) > 0.45
    # calibration: the mean probability is close to the positive rate (1 in 20)
    if objective.startswith("rank:"):
        assert p.mean() == pytest.approx(ty.mean(), rel=0.35)


def test_probabilities_stay_calibrated_when_negatives_are_subsampled() -> None:
    """Train on a quarter of the negatives, say so, and the probabilities on all the pairs still
    average the true positive rate (1 in 20); without the correction they are about 3x too high."""
    x, y, groups = _pairs(800, seed=4)
    keep = (y == 1) | (np.random.default_rng(5).random(len(y)) < 0.25)
    config = ranker.RankerConfig(max_rounds=30, threads=1)
    booster, info = ranker.train(x[keep], y[keep], groups[keep], config, negative_rate=0.25)
    tx, ty, _ = _pairs(400, seed=6)
    assert ranker.probability(booster, tx, info).mean() == pytest.approx(ty.mean(), rel=0.35)
    uncorrected = {**info, "calibration": [info["calibration"][0], info["calibration"][1] - np.log(0.25)]}
    assert ranker.probability(booster, tx, uncorrected).mean() > 2 * ty.mean()


def test_held_out_persons_with_whole_lists_calibrate_without_correction() -> None:
    """The persons held out (for early stopping and calibration) keep all their candidates, the
    others a quarter of their negatives: the probabilities still average the true positive rate;
    applying the sampling correction to the whole lists would make them about 4x too low."""
    x, y, groups = _pairs(800, seed=4)
    candidates = np.arange(800 * 20).reshape(800, 20)
    positives = [{int(candidates[p][y[p * 20 : (p + 1) * 20].argmax()])} for p in range(800)]
    held = ranker.holdout_rows(candidates, positives, seed=0)
    assert held.sum() == 160 and np.array_equal(held, ranker.holdout_rows(candidates, positives, seed=0))
    rows, cols, labels = ranker.sample_pairs(candidates, positives, 5, np.random.default_rng(1), whole=held)
    assert all((rows == r).sum() == 20 for r in np.flatnonzero(held))
    assert all((rows == r).sum() == 6 for r in np.flatnonzero(~held))
    pick = rows * 20 + cols
    rate = 5 / 19
    config = ranker.RankerConfig(max_rounds=30, threads=1)
    booster, info = ranker.train(x[pick], labels, rows, config, rate, np.flatnonzero(held))
    assert info["holdout_persons"] == 160 and info["holdout_whole_lists"]
    tx, ty, _ = _pairs(400, seed=6)
    assert ranker.probability(booster, tx, info).mean() == pytest.approx(ty.mean(), rel=0.35)
    corrected = {**info, "calibration": [info["calibration"][0], info["calibration"][1] + np.log(rate)]}
    assert ranker.probability(booster, tx, corrected).mean() < 0.5 * ty.mean()


def test_holdout_rows_are_a_fifth_of_the_persons_with_a_hit() -> None:
    candidates = np.arange(100 * 5).reshape(100, 5)
    positives = [{int(candidates[r, 0])} if r % 2 else {-1} for r in range(100)]  # odd rows have a hit
    held = ranker.holdout_rows(candidates, positives, seed=3)
    assert held.sum() == 10 and not held[::2].any()
    assert not np.array_equal(held, ranker.holdout_rows(candidates, positives, seed=4))


def test_prior_is_part_of_predictions_and_contributions() -> None:
    x, y, groups = _pairs(300, seed=5)
    booster, info = ranker.train(x, y, groups, ranker.RankerConfig(max_rounds=20, threads=1))
    raw = ranker.predict(booster, x[:50], info["prior"])
    assert not np.allclose(raw, ranker.predict(booster, x[:50]))  # the prior is in the predictions
    contributions = ranker.contributions(booster, x[:50], info["prior"])
    # TreeSHAP: the contributions (bias included, the prior in it) add up to the model's margin
    np.testing.assert_allclose(contributions.sum(axis=1), raw, rtol=1e-4, atol=1e-4)


def test_lookup_share_gives_each_pair_its_lists_share_of_the_wanted_name() -> None:
    a_names, a_shares = ["web", "ios", "web"], [0.5, 0.3, 0.2]  # a repeated name: its first share
    b_names, b_shares = ["ios"], [0.9]
    names = [a_names, a_names, a_names, b_names, b_names, None, a_names, a_names]
    shares = [a_shares, a_shares, a_shares, b_shares, b_shares, None, a_shares, a_shares]
    wanted = ["web", "ios", "android", "ios", "web", "web", None, "ios"]
    got = ranker.lookup_share(names, shares, wanted)
    assert got.dtype == np.float32 and got.shape == (8,)
    np.testing.assert_array_equal(got, np.asarray([0.5, 0.3, 0.0, 0.9, 0.0, 0.0, 0.0, 0.3], dtype=np.float32))
    assert ranker.lookup_share([], [], []).shape == (0,)
