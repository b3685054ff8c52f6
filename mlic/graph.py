"""Label graphs: co-occurrence counts, conditional probabilities, CPSD affinities, the ML-GCN adjacency.

All functions take and return numpy arrays indexed by label (the column order of the label matrix).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def cooccurrence(labels: np.ndarray | sp.spmatrix) -> tuple[np.ndarray, np.ndarray]:
    """Pair counts `M` (`M[i, j]` = images with both labels i and j, zero diagonal) and label counts `N`.

    Accepts a dense `N×C` 0/1 matrix or a scipy sparse one; a sparse product keeps 100k images × 500 labels fast.
    """
    if sp.issparse(labels):
        mat = sp.csr_matrix(labels, dtype=np.float32)
    else:
        dense = np.asarray(labels)
        if dense.ndim != 2:
            raise ValueError(f"labels must be a 2-D N×C matrix, got shape {dense.shape}")
        if dense.size and (dense.min() < 0 or dense.max() > 1):
            raise ValueError("labels must be 0/1")
        mat = sp.csr_matrix(dense.astype(np.float32))
    pair = np.asarray((mat.T @ mat).todense(), dtype=np.float64)
    counts = np.diag(pair).copy()
    np.fill_diagonal(pair, 0.0)
    return pair.round().astype(np.int64), counts.round().astype(np.int64)


def conditional_probability(M: np.ndarray, N: np.ndarray) -> np.ndarray:
    """`S[i, j] = M[i, j] / N[i]`, the probability of label j given label i; rows of never-seen labels are 0."""
    N = np.asarray(N, dtype=np.float64)
    safe = np.where(N > 0, N, 1.0)
    return np.where(N[:, None] > 0, np.asarray(M, dtype=np.float64) / safe[:, None], 0.0)


def affinity(M: np.ndarray, N: np.ndarray, kind: str = "co", tau: float = 3.0) -> np.ndarray:
    """CPSD's label affinity (seed 001, Eq. 1): `co = ½(S^(1/τ) + (Sᵀ)^(1/τ))` with zero diagonal, `dis = 1 − co`
    with unit diagonal.

    τ = 3 is the paper's setting; τ = 2 reproduces the reference code's square root. Labels that never occur have
    zero co-occurrence affinity (and full dis-occurrence affinity) rather than NaN.
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    S = conditional_probability(M, N)
    co = 0.5 * (S ** (1.0 / tau) + S.T ** (1.0 / tau))
    np.fill_diagonal(co, 0.0)
    if kind == "co":
        return co
    if kind == "dis":
        dis = 1.0 - co
        np.fill_diagonal(dis, 1.0)
        return dis
    raise ValueError(f"kind must be 'co' or 'dis', got {kind!r}")


def mlgcn_adjacency(M: np.ndarray, N: np.ndarray, *, tau: float = 0.4, p: float = 0.25) -> np.ndarray:
    """ML-GCN's re-weighted label correlation matrix, as the reference code builds it (`gen_A`).

    Conditional probabilities are binarised at `tau`; each column is scaled so that its off-diagonal entries sum to
    `p`, and the identity is added. (The paper re-weights rows and puts 1 − p on the diagonal; the released code,
    followed here, normalises columns and keeps a diagonal of 1.)
    """
    binary = (conditional_probability(M, N) >= tau).astype(np.float64)
    np.fill_diagonal(binary, 0.0)
    scaled = binary * p / (binary.sum(axis=0, keepdims=True) + 1e-6)
    return scaled + np.eye(len(binary))


def normalize_adjacency(A: np.ndarray) -> np.ndarray:
    """ML-GCN's propagation matrix `D Aᵀ D` with `D = diag(rowsum(A))^(−1/2)` (reference `gen_adj`)."""
    A = np.asarray(A, dtype=np.float64)
    d = A.sum(axis=1) ** -0.5
    return (A @ np.diag(d)).T @ np.diag(d)
