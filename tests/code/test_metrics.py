from __future__ import annotations

import math

import numpy as np

from training.metrics import classification_report, ndcg_at_k, ranking_report, recall_at_k, top_k


def test_top_k_orders_and_breaks_ties_by_index() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    assert top_k(scores, 3).tolist() == [[1, 3, 2], [0, 1, 2]]


def test_recall_and_ndcg_by_hand() -> None:
    ranked = np.array([[5, 1, 7, 2], [9, 8, 3, 4]])
    relevant = [{1, 2}, {4}]
    # person 0: hits at ranks 2 and 4; person 1: hit at rank 4
    assert recall_at_k(ranked, relevant, 2).tolist() == [0.5, 0.0]
    assert recall_at_k(ranked, relevant, 4).tolist() == [1.0, 1.0]
    ndcg = ndcg_at_k(ranked, relevant, 4)
    ideal0 = 1 + 1 / math.log2(3)
    assert math.isclose(ndcg[0], (1 / math.log2(3) + 1 / math.log2(5)) / ideal0)
    assert math.isclose(ndcg[1], (1 / math.log2(5)) / 1.0)


def test_recall_denominator_is_min_of_k_and_held_out() -> None:
    ranked = np.array([[1, 2, 3]])
    assert recall_at_k(ranked, [{1, 2, 3, 4, 5}], 2).tolist() == [1.0]
    # an unknown held-out item (negative id) counts in the denominator and is never hit
    assert recall_at_k(ranked, [{1, -1}], 3).tolist() == [0.5]


def test_ranking_report_skips_persons_without_held_out_items() -> None:
    ranked = np.array([[1, 2], [3, 4]])
    report = ranking_report(ranked, [{1}, set()], ks=(1,))
    assert report["recall@1"] == 1.0 and report["persons"] == 1


def test_classification_report() -> None:
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    r = classification_report(y, p, threshold=0.5)
    assert r["auc"] == 0.75 and r["precision"] == 0.5 and r["recall"] == 0.5 and r["accuracy"] == 0.5
