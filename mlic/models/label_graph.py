"""Label graphs: co-occurrence counts, conditional probabilities, CPSD affinities, the ML-GCN adjacency.

All functions take and return numpy arrays indexed by label (the column order of the label matrix).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

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


# ---------------------------------------------------------------------------------------------------------------------
# Label partitions (CPSD's task decomposition, seed 001 §3.2)
# ---------------------------------------------------------------------------------------------------------------------
_DEGREE_EPS = 1e-12


def _check_affinity(P: np.ndarray) -> np.ndarray:
    """A float copy of the square, symmetric, non-negative affinity `P` with its diagonal zeroed.

    Self-loops do not change a graph cut; like scipy's `csgraph.laplacian` (which scikit-learn's spectral clustering
    uses) they are ignored, so the dis-occurrence affinity's unit diagonal has no effect.
    """
    A = np.array(P, dtype=np.float64)
    if A.ndim != 2 or A.shape[0] != A.shape[1]:
        raise ValueError(f"affinity must be a square C×C matrix, got shape {A.shape}")
    if not np.isfinite(A).all():
        raise ValueError("affinity has NaN or infinite entries")
    if (A < 0).any():
        raise ValueError("affinity must be non-negative")
    if not np.allclose(A, A.T, atol=1e-10):
        raise ValueError("affinity must be symmetric (CPSD symmetrises S before clustering)")
    np.fill_diagonal(A, 0.0)
    return A


def normalized_laplacian(P: np.ndarray) -> np.ndarray:
    """`L = I − D^(−1/2) P D^(−1/2)` (seed 001, Eq. 2) with the diagonal of `P` ignored.

    A label with no edge (zero degree) gets an all-zero row and column, hence eigenvalue 0: it is a connected
    component of its own, the convention of scipy's `csgraph.laplacian(normed=True)`.
    """
    A = _check_affinity(P)
    degree = A.sum(axis=1)
    connected = degree > _DEGREE_EPS
    inv_sqrt = np.where(connected, 1.0 / np.sqrt(np.where(connected, degree, 1.0)), 0.0)
    L = -(inv_sqrt[:, None] * A * inv_sqrt[None, :])
    L[np.diag_indices_from(L)] = connected.astype(np.float64)
    return L


def laplacian_spectrum(P: np.ndarray) -> np.ndarray:
    """Eigenvalues of the normalised Laplacian of `P`, ascending, in [0, 2] — the eigengap figure's data.

    The number of eigenvalues near 0 counts the (nearly) disconnected label groups; a large gap after the k-th
    eigenvalue suggests k parts.
    """
    L = normalized_laplacian(P)
    with _single_thread_if_small(len(L)):
        return np.clip(np.linalg.eigvalsh(L), 0.0, 2.0)


def eigengap_k(P: np.ndarray, *, k_max: int | None = None) -> int:
    """The k (2 ≤ k ≤ `k_max`) after whose eigenvalue the spectrum jumps most: `argmax λ_(k+1) − λ_k` (1-based)."""
    values = laplacian_spectrum(P)
    k_max = min(k_max or len(values) - 1, len(values) - 1)
    if k_max < 2:
        return 1
    gaps = np.diff(values)[1:k_max]  # gaps[i] = λ_(i+3) − λ_(i+2), 1-based: the gap after the (i+2)-th eigenvalue
    return int(np.argmax(gaps)) + 2


def spectral_embedding(P: np.ndarray, k: int) -> np.ndarray:
    """Ng–Jordan–Weiss embedding: the `k` eigenvectors of the smallest eigenvalues of the normalised Laplacian (the
    solution of seed 001's Eq. 2), one row per label, each row scaled to unit length.

    Zero rows (labels with no edge) stay zero. `np.linalg.eigh` is deterministic for a given input.
    """
    if not 1 <= k <= len(P):
        raise ValueError(f"k must lie in [1, {len(P)}], got {k}")
    _, vectors = np.linalg.eigh(normalized_laplacian(P))
    embedding = vectors[:, :k]
    norms = np.linalg.norm(embedding, axis=1, keepdims=True)
    return np.divide(embedding, norms, out=np.zeros_like(embedding), where=norms > 0)


PARTITION_METHODS = ("mlic", "reference")


def spectral_partition(P: np.ndarray, k: int, *, seed: int = 0, n_init: int = 20, method: str = "mlic"
                       ) -> np.ndarray:
    """Split the labels into `k` parts by normalised spectral clustering of the precomputed affinity `P`.

    `method="reference"` is the CPSD code's exact procedure (`partition/generate_with_adj.py`): scikit-learn's
    `SpectralClustering(affinity="precomputed", n_init=n_init)` run four times (the reference loops over four
    `gamma` values that a precomputed affinity ignores, so the runs differ only by their seed) and the labels with
    the best Calinski–Harabasz score on the rows of `P` kept; give it the reference's affinity, the square root
    (`affinity(..., tau=2)`). It reproduces the partitions CPSD ships for COCO; the default `"mlic"` method below
    agrees with them at k ≤ 3 and differs at larger k. Both are seeded and deterministic.

    Eigenvectors of the normalised Laplacian (row-normalised, Ng–Jordan–Weiss), then scikit-learn's k-means with
    `n_init` restarts (the reference's `n_init=20`). Every label gets a part and no part is empty:

    - labels without any edge (degree 0, e.g. never seen in training) carry no spectral information; the connected
      labels are clustered into `min(k, #connected)` parts and each isolated label then goes to an empty part if
      one is left, else to the currently smallest part (ties: lowest part number);
    - if k-means leaves a part empty (identical embedding rows), the label farthest from its centroid in the largest
      part moves there.

    Parts are numbered by their smallest label index (part 0 holds label 0), so equal partitions compare equal.

    Versus the reference (`partition/generate_with_adj.py`): it calls `SpectralClustering(affinity='precomputed')`
    (random-walk eigenvectors `D^(−1/2) u`, no row normalisation, no seed) four times with a `gamma` that precomputed
    affinities ignore and keeps the run with the best Calinski–Harabasz score on the rows of `S`; here the restarts
    are k-means's own, chosen by inertia, and the result is deterministic for a seed. On well separated structure
    both give the same partition (tested).

    Args:
        P: `C×C` symmetric non-negative affinity (`affinity(M, N, "co" | "dis")`); the diagonal is ignored.
        k: number of parts, 1 ≤ k ≤ C.
        seed: seed of k-means.
        n_init: k-means restarts.

    Returns:
        `[C]` int64 part index of every label, values 0..k−1, each used.
    """
    A = _check_affinity(P)
    C = len(A)
    if not 1 <= k <= C:
        raise ValueError(f"k must lie in [1, {C}] for {C} labels, got {k}")
    if method not in PARTITION_METHODS:
        raise ValueError(f"unknown partition method {method!r}; choose from {', '.join(PARTITION_METHODS)}")
    with _single_thread_if_small(C):
        if method == "reference":
            return _reference_partition(A, k, seed=seed, n_init=n_init)
        return _spectral_partition(A, k, seed=seed, n_init=n_init)


def _reference_partition(A: np.ndarray, k: int, *, seed: int, n_init: int, runs: int = 4) -> np.ndarray:
    """CPSD's procedure: the best of `runs` scikit-learn spectral clusterings by Calinski–Harabasz score."""
    from sklearn.cluster import SpectralClustering
    from sklearn.metrics import calinski_harabasz_score

    if k == 1:
        return np.zeros(len(A), dtype=np.int64)
    best, best_score = None, -np.inf
    for run in range(runs):
        labels = SpectralClustering(n_clusters=k, affinity="precomputed", n_init=n_init,
                                    random_state=seed * runs + run).fit(A).labels_
        score = calinski_harabasz_score(A, labels) if len(np.unique(labels)) > 1 else -np.inf
        if score > best_score:
            best, best_score = labels, score
    return canonical_partition(best)


_SMALL_PROBLEM = 2000


@contextlib.contextmanager
def _single_thread_if_small(C: int) -> Iterator[None]:
    """BLAS / OpenMP limited to one thread for label graphs of up to 2000 labels: there, thread start-up and
    contention cost far more than they save (500 labels: 0.2 s single-threaded, seconds with two busy threads)."""
    if C > _SMALL_PROBLEM:
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def _spectral_partition(A: np.ndarray, k: int, *, seed: int, n_init: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    C = len(A)
    assign = np.zeros(C, dtype=np.int64)
    if k == 1:
        return assign
    connected = np.flatnonzero(A.sum(axis=1) > _DEGREE_EPS)
    isolated = np.flatnonzero(A.sum(axis=1) <= _DEGREE_EPS)
    k_conn = min(k, len(connected))
    embedding = np.zeros((C, max(k_conn, 1)))
    if k_conn == len(connected):
        assign[connected] = np.arange(len(connected))
    elif k_conn > 0:
        sub = A[np.ix_(connected, connected)]
        embedding[connected] = spectral_embedding(sub, k_conn)
        km = KMeans(n_clusters=k_conn, n_init=n_init, random_state=seed).fit(embedding[connected])
        assign[connected] = km.labels_
    sizes = np.bincount(assign[connected], minlength=k) if len(connected) else np.zeros(k, dtype=np.int64)
    for label in isolated:
        part = int(np.argmin(sizes))  # an empty part first (size 0), else the smallest
        assign[label] = part
        sizes[part] += 1
    assign = _fill_empty_parts(assign, k, embedding)
    return canonical_partition(assign)


def _fill_empty_parts(assign: np.ndarray, k: int, embedding: np.ndarray) -> np.ndarray:
    assign = assign.copy()
    for part in range(k):
        if (assign == part).any():
            continue
        largest = int(np.argmax(np.bincount(assign, minlength=k)))
        members = np.flatnonzero(assign == largest)
        centroid = embedding[members].mean(axis=0)
        far = members[int(np.argmax(np.linalg.norm(embedding[members] - centroid, axis=1)))]
        assign[far] = part
    return assign


def canonical_partition(assign: np.ndarray) -> np.ndarray:
    """Renumber parts by first appearance in label order (part 0 holds label 0), so equal partitions are equal."""
    assign = np.asarray(assign, dtype=np.int64)
    _, first = np.unique(assign, return_index=True)
    order = np.argsort(first, kind="stable")
    new_id = np.empty(len(order), dtype=np.int64)
    new_id[order] = np.arange(len(order))
    return new_id[np.searchsorted(np.unique(assign), assign)]


def random_partition(C: int, k: int, *, seed: int, sizes: str = "cuts") -> np.ndarray:
    """A random partition of `C` labels into `k` non-empty parts: the paper's baseline strategy (Figure 3).

    Args:
        C: number of labels.
        k: number of parts, 1 ≤ k ≤ C.
        seed: seed of the draw.
        sizes: ``"cuts"`` (default, as the reference `generate_rand_partirion.py`): shuffle the labels and cut the
            sequence at k − 1 random distinct positions, so part sizes vary. The reference draws cuts in 0..C−1,
            where a cut at 0 or a repeated cut leaves a part empty (or trips its assert); here cuts are drawn
            without replacement from 1..C−1, so every part is non-empty. ``"balanced"``: sizes differ by at most 1.

    Returns:
        `[C]` int64 part index per label (canonical numbering: part 0 holds label 0).
    """
    if not 1 <= k <= C:
        raise ValueError(f"k must lie in [1, {C}], got {k}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(C)
    if sizes == "cuts":
        cuts = np.sort(rng.choice(np.arange(1, C), size=k - 1, replace=False)) if k > 1 else np.array([], int)
        part_of_position = np.searchsorted(cuts, np.arange(C), side="right")
    elif sizes == "balanced":
        part_of_position = np.arange(C) % k
    else:
        raise ValueError(f"sizes must be 'cuts' or 'balanced', got {sizes!r}")
    assign = np.empty(C, dtype=np.int64)
    assign[order] = part_of_position
    return canonical_partition(assign)


def partition_groups(assign: np.ndarray) -> list[np.ndarray]:
    """The label indices of each part (ascending), parts in order: the inverse of `assignment_from_groups`."""
    assign = np.asarray(assign)
    return [np.flatnonzero(assign == part) for part in range(int(assign.max()) + 1)] if assign.size else []


def assignment_from_groups(groups: list[list[int]] | list[np.ndarray], C: int) -> np.ndarray:
    """`[C]` part index from a list of label-index groups; labels in no group get part −1."""
    assign = np.full(C, -1, dtype=np.int64)
    for part, group in enumerate(groups):
        assign[np.asarray(group, dtype=np.int64)] = part
    return assign


def same_part_fraction(assign: np.ndarray, groups: list[list[int]] | list[np.ndarray]) -> float:
    """Of all label pairs that share a part of `assign`, the fraction that also share a group of `groups`.

    Near 1 when parts follow the groups (co-occurrence partitions on planted groups), near 0 when parts mix labels
    of different groups (dis-occurrence partitions). Pairs with a label outside every group are not counted.
    """
    truth = assignment_from_groups(groups, len(assign))
    i, j = np.triu_indices(len(assign), k=1)
    keep = (np.asarray(assign)[i] == np.asarray(assign)[j]) & (truth[i] >= 0) & (truth[j] >= 0)
    return float((truth[i][keep] == truth[j][keep]).mean()) if keep.any() else float("nan")


def cooccurrence_strength(M: np.ndarray, N: np.ndarray) -> np.ndarray:
    """Per label, `max_j P(j | i)`: how often its most frequent companion appears with it (0 for unseen labels).

    The x-axis of the per-label gain figure: labels a model can guess from their company have values near 1.
    """
    S = conditional_probability(M, N)
    S = S.copy()
    np.fill_diagonal(S, 0.0)
    return S.max(axis=1) if S.size else np.zeros(0)


def _spectral_strategy(kind: str) -> Callable[..., np.ndarray]:
    def partition(labels: np.ndarray, k: int, *, tau: float, seed: int, n_init: int, method: str = "mlic"
                  ) -> np.ndarray:
        M, N = cooccurrence(labels)
        return spectral_partition(affinity(M, N, kind, tau=tau), k, seed=seed, n_init=n_init, method=method)

    partition.__doc__ = f"Spectral clustering of the {kind}-occurrence affinity."
    return partition


def _random_strategy(labels: np.ndarray, k: int, *, tau: float, seed: int, n_init: int, method: str = "mlic"
                     ) -> np.ndarray:
    return random_partition(labels.shape[1], k, seed=seed)


def _single_strategy(labels: np.ndarray, k: int, *, tau: float, seed: int, n_init: int, method: str = "mlic"
                     ) -> np.ndarray:
    if k != 1:
        raise ValueError(f"strategy 'single' (plain self-distillation) has one part, got k={k}")
    return np.zeros(labels.shape[1], dtype=np.int64)


STRATEGIES: dict[str, Callable[..., np.ndarray]] = {
    "cgp": _spectral_strategy("co"),
    "dgp": _spectral_strategy("dis"),
    "random": _random_strategy,
    "single": _single_strategy,
}
"""Task-decomposition strategies by name: CGP (co-occurrence graph partition), DGP (dis-occurrence graph partition),
random (the paper's baseline) and single (one part: the full-label teacher of plain self-distillation)."""


def label_partition(labels: np.ndarray, strategy: str, k: int, *, tau: float = 3.0, seed: int = 0,
                    n_init: int = 20, method: str = "mlic") -> np.ndarray:
    """Partition the columns of a training label matrix with a strategy of `STRATEGIES`.

    Args:
        labels: `N×C` 0/1 training labels (dense or scipy sparse).
        strategy: ``"cgp"`` (spectral clustering of the co-occurrence affinity), ``"dgp"`` (of the dis-occurrence
            affinity), ``"random"`` (`random_partition`) or ``"single"`` (one part; k must be 1).
        k: number of parts.
        tau: the affinity's smoothing exponent (paper 3; the reference code's square root is τ = 2).
        seed: k-means seed, or the random draw's.
        n_init: k-means restarts.
        method: the spectral procedure of CGP and DGP (`spectral_partition`: ``"mlic"`` or ``"reference"``).

    Returns:
        `[C]` part index per label.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Unknown partition strategy {strategy!r}. Available: {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[strategy](labels, k, tau=tau, seed=seed, n_init=n_init, method=method)
