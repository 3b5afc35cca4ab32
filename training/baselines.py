"""Simple strong baselines beside the models: popularity, EASE and ItemKNN.

EASE: Steck (2019), "Embarrassingly Shallow Autoencoders for Sparse Data": the item-item
matrix B = I - P diag(1/diag(P)), P = (X^T X + lambda I)^-1, with a zero diagonal.
ItemKNN: cosine similarity between item columns, keeping each item's k nearest neighbours.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray

EASE_MAX_ITEMS = 20_000  # above this, the dense inverse is too large for one machine: use ItemKNN


def interaction_matrix(persons: list[int], items: list[int], n_persons: int, n_items: int) -> sp.csr_matrix:
    data = np.ones(len(persons), dtype=np.float32)
    x = sp.csr_matrix((data, (persons, items)), shape=(n_persons, n_items))
    x.data[:] = 1.0  # binary, whatever the number of events per pair
    return x


def popularity(x: sp.csr_matrix) -> NDArray[np.float64]:
    """Number of persons per item."""
    return np.asarray(x.sum(axis=0)).ravel().astype(np.float64)


def ease(x: sp.csr_matrix, l2: float = 200.0) -> NDArray[np.float32]:
    """The dense EASE item-item matrix (n_items x n_items)."""
    gram = (x.T @ x).toarray().astype(np.float64)
    gram[np.diag_indices_from(gram)] += l2
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)
    b[np.diag_indices_from(b)] = 0.0
    return b.astype(np.float32)


def prune(b: NDArray[np.float32], keep: int = 100) -> sp.csc_matrix:
    """Keep the ``keep`` weights of largest magnitude in each column: a small sparse model to
    ship. Negative weights matter to EASE's ranking too: on MovieLens latest-small, pruning to
    100 per column by magnitude loses less than half the NDCG@20 (against the dense model)
    that keeping the 100 largest positive weights loses."""
    n = b.shape[0]
    keep = min(keep, n)
    rows = np.argpartition(-np.abs(b), keep - 1, axis=0)[:keep, :]  # (keep, n)
    cols = np.broadcast_to(np.arange(n), rows.shape)
    values = b[rows, cols]
    return sp.csc_matrix((values.ravel(), (rows.ravel(), cols.ravel())), shape=b.shape)


def item_knn(x: sp.csr_matrix, k: int = 100, shrink: float = 10.0) -> sp.csc_matrix:
    """Cosine item-item similarities (with shrinkage), k nearest neighbours per item."""
    xc = x.tocsc().astype(np.float32)
    norms = np.sqrt(np.asarray(xc.multiply(xc).sum(axis=0)).ravel())
    sim = (xc.T @ xc).tocsr().astype(np.float32)
    sim.setdiag(0.0)
    sim.eliminate_zeros()
    coo = sim.tocoo()
    coo.data = coo.data / (norms[coo.row] * norms[coo.col] + shrink)
    dense_cols = coo.tocsc()
    out_rows, out_cols, out_vals = [], [], []
    for j in range(dense_cols.shape[1]):
        start, end = dense_cols.indptr[j], dense_cols.indptr[j + 1]
        if end == start:
            continue
        vals, rows = dense_cols.data[start:end], dense_cols.indices[start:end]
        if len(vals) > k:
            top = np.argpartition(-vals, k - 1)[:k]
            vals, rows = vals[top], rows[top]
        out_rows.append(rows)
        out_cols.append(np.full(len(rows), j))
        out_vals.append(vals)
    if not out_vals:
        return sp.csc_matrix(sim.shape, dtype=np.float32)
    return sp.csc_matrix(
        (np.concatenate(out_vals), (np.concatenate(out_rows), np.concatenate(out_cols))), shape=sim.shape
    )


def scores(x: sp.csr_matrix, model: sp.spmatrix | NDArray[np.float32]) -> NDArray[np.float32]:
    """Scores of every item for each row of ``x`` (persons' bags)."""
    out = x @ model
    return np.asarray(out.toarray() if sp.issparse(out) else out, dtype=np.float32)
