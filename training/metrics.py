"""Ranking and classification metrics.

Ranking metrics follow Liang et al. (2018): Recall@K divides the hits in the top K by
``min(K, number of held-out items)``; NDCG@K divides the DCG of the top K (binary relevance,
log2 discount) by the best achievable DCG for that person.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray


def top_k(scores: NDArray[np.floating], k: int) -> NDArray[np.int64]:
    """Indices of the ``k`` highest scores per row, best first (ties: lower index first)."""
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    return np.take_along_axis(part, order, axis=1)


def recall_at_k(ranked: NDArray[np.int64], relevant: list[set[int]], k: int) -> NDArray[np.float64]:
    """Per row: hits among the first ``k`` of ``ranked`` / min(k, |relevant|)."""
    out = np.zeros(len(relevant))
    for i, (row, rel) in enumerate(zip(ranked[:, :k], relevant, strict=True)):
        if rel:
            out[i] = sum(1 for j in row if j in rel) / min(k, len(rel))
    return out


def ndcg_at_k(ranked: NDArray[np.int64], relevant: list[set[int]], k: int) -> NDArray[np.float64]:
    """Per row: DCG@k / ideal DCG@k with binary relevance."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    out = np.zeros(len(relevant))
    for i, (row, rel) in enumerate(zip(ranked[:, :k], relevant, strict=True)):
        if rel:
            dcg = sum(discounts[r] for r, j in enumerate(row) if j in rel)
            out[i] = dcg / discounts[: min(k, len(rel))].sum()
    return out


def ranking_report(
    ranked: NDArray[np.int64], relevant: list[set[int]], ks: tuple[int, ...] = (10, 20, 50)
) -> dict[str, float]:
    """Mean Recall@K and NDCG@K over rows that have held-out items."""
    has = np.array([bool(r) for r in relevant])
    if not has.any():
        return {f"{m}@{k}": float("nan") for k in ks for m in ("recall", "ndcg")}
    out: dict[str, float] = {}
    for k in ks:
        out[f"recall@{k}"] = float(recall_at_k(ranked, relevant, k)[has].mean())
        out[f"ndcg@{k}"] = float(ndcg_at_k(ranked, relevant, k)[has].mean())
    out["persons"] = int(has.sum())
    return out


def classification_report(y: NDArray[np.integer], p: NDArray[np.floating], threshold: float = 0.5) -> dict[str, float]:
    """AUC, average precision, and precision/recall/F1/accuracy at ``threshold``."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    predicted = (p >= threshold).astype(int)
    both = len(np.unique(y)) == 2
    return {
        "auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, p)) if both else float("nan"),
        "precision": float(precision_score(y, predicted, zero_division=0)),
        "recall": float(recall_score(y, predicted, zero_division=0)),
        "f1": float(f1_score(y, predicted, zero_division=0)),
        "accuracy": float(accuracy_score(y, predicted)),
        "threshold": float(threshold),
        "positives": int(y.sum()),
        "negatives": int(len(y) - y.sum()),
    }


def best_f1_threshold(y: NDArray[np.integer], p: NDArray[np.floating]) -> float:
    """The probability threshold that maximises F1 (chosen on validation data, then fixed)."""
    from sklearn.metrics import precision_recall_curve

    precision, recall, thresholds = precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 0.5
