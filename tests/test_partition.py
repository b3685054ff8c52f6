"""Label partitions: spectral clustering of CPSD affinities against planted structure, scikit-learn and edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from sklearn.cluster import SpectralClustering
from sklearn.metrics import adjusted_rand_score

from mlic.models.label_graph import (
    STRATEGIES,
    affinity,
    assignment_from_groups,
    canonical_partition,
    cooccurrence,
    cooccurrence_strength,
    eigengap_k,
    label_partition,
    laplacian_spectrum,
    normalized_laplacian,
    partition_groups,
    random_partition,
    same_part_fraction,
    spectral_partition,
)

GROUPS = [[0, 5, 9, 13], [1, 6, 10, 14], [2, 7, 11, 15], [3, 8, 12, 16], [4, 17, 18, 19]]


def planted_labels(n: int = 3000, seed: int = 0, noise: float = 0.03) -> np.ndarray:
    """Images that each pick a group and carry 1–3 of its labels, plus rare labels from anywhere."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, 20), dtype=np.uint8)
    for row in labels:
        group = GROUPS[rng.integers(len(GROUPS))]
        row[rng.choice(group, size=rng.integers(1, 4), replace=False)] = 1
        row[rng.random(20) < noise] = 1
    return labels


@pytest.fixture(scope="module")
def planted() -> np.ndarray:
    return planted_labels()


def test_co_partition_recovers_planted_groups_and_dis_mixes_them(planted: np.ndarray) -> None:
    M, N = cooccurrence(planted)
    truth = assignment_from_groups(GROUPS, 20)
    co = spectral_partition(affinity(M, N, "co"), 5, seed=0)
    assert adjusted_rand_score(truth, co) == pytest.approx(1.0)
    assert same_part_fraction(co, GROUPS) == 1.0
    dis = spectral_partition(affinity(M, N, "dis"), 4, seed=0)
    assert adjusted_rand_score(truth, dis) < 0.05  # DGP: labels that never co-occur share a part
    assert same_part_fraction(dis, GROUPS) < 0.15
    assert all(len({int(truth[i]) for i in part}) >= 3 for part in partition_groups(dis))


def test_agrees_with_scikit_learn_spectral_clustering_on_planted_structure(planted: np.ndarray) -> None:
    # sklearn embeds with the random-walk eigenvectors D^(-1/2) u and no row normalisation; ours is Ng-Jordan-Weiss
    # (row-normalised). Both find the same well-separated parts.
    P = affinity(*cooccurrence(planted), "co")
    ours = spectral_partition(P, 5, seed=0)
    theirs = SpectralClustering(n_clusters=5, affinity="precomputed", random_state=0, n_init=10).fit_predict(P)
    assert adjusted_rand_score(ours, theirs) == pytest.approx(1.0)


def test_partition_is_deterministic_complete_and_canonical(planted: np.ndarray) -> None:
    P = affinity(*cooccurrence(planted), "dis")
    for k in (2, 3, 7):
        first = spectral_partition(P, k, seed=3)
        assert np.array_equal(first, spectral_partition(P, k, seed=3))
        assert first.shape == (20,) and sorted(set(first.tolist())) == list(range(k))
        assert first[0] == 0 and np.array_equal(first, canonical_partition(first))
    assert np.array_equal(spectral_partition(P, 1), np.zeros(20))
    with pytest.raises(ValueError, match="k must lie"):
        spectral_partition(P, 21)


def test_isolated_labels_and_unseen_labels_get_parts_without_empty_parts() -> None:
    labels = planted_labels(800)
    labels[:, [3, 8]] = 0  # two labels never seen: zero affinity rows for CGP
    P = affinity(*cooccurrence(labels), "co")
    assert np.isfinite(P).all()
    for k in (2, 5, 10, 19, 20):
        assign = spectral_partition(P, k)
        assert sorted(set(assign.tolist())) == list(range(k))
    # more parts than connected labels: every connected label alone, isolated ones fill the rest
    tiny = np.zeros((4, 4))
    tiny[0, 1] = tiny[1, 0] = 1.0
    assert sorted(np.bincount(spectral_partition(tiny, 3))) == [1, 1, 2]
    assert sorted(np.bincount(spectral_partition(tiny, 4))) == [1, 1, 1, 1]
    # identical embedding rows (two copies of one component) cannot leave a part empty either
    dup = np.kron(np.eye(2), np.ones((3, 3)))
    assert sorted(np.bincount(spectral_partition(dup, 4))) == [1, 1, 2, 2]


def test_affinity_input_is_validated() -> None:
    with pytest.raises(ValueError, match="symmetric"):
        spectral_partition(np.array([[0, 1.0], [0.5, 0]]), 2)
    with pytest.raises(ValueError, match="non-negative"):
        spectral_partition(-np.ones((2, 2)), 2)


def test_laplacian_spectrum_counts_components_and_eigengap_finds_k(planted: np.ndarray) -> None:
    blocks = np.kron(np.eye(3), np.ones((4, 4)))  # 3 disconnected cliques
    values = laplacian_spectrum(blocks)
    assert np.allclose(values[:3], 0, atol=1e-9) and values[3] > 0.5 and values.max() <= 2
    assert eigengap_k(blocks, k_max=8) == 3
    assert eigengap_k(affinity(*cooccurrence(planted), "co"), k_max=10) == 5
    L = normalized_laplacian(np.array([[0, 2.0, 0], [2.0, 0, 0], [0, 0, 0]]))  # isolated label: zero row
    np.testing.assert_allclose(L, [[1, -1, 0], [-1, 1, 0], [0, 0, 0]])


def test_random_partitions_are_seeded_complete_and_non_empty() -> None:
    for sizes in ("cuts", "balanced"):
        a = random_partition(20, 5, seed=1, sizes=sizes)
        assert np.array_equal(a, random_partition(20, 5, seed=1, sizes=sizes))
        assert not np.array_equal(a, random_partition(20, 5, seed=2, sizes=sizes))
        assert sorted(set(a.tolist())) == list(range(5))
    assert sorted(np.bincount(random_partition(20, 3, seed=0, sizes="balanced"))) == [6, 7, 7]
    for seed in range(50):  # the reference's cuts could leave a part empty; ours never do
        assert np.bincount(random_partition(6, 6, seed=seed)).min() == 1


def test_strategies_registry_and_label_partition(planted: np.ndarray) -> None:
    assert set(STRATEGIES) == {"cgp", "dgp", "random", "single"}
    assert np.array_equal(label_partition(planted, "single", 1), np.zeros(20))
    with pytest.raises(ValueError, match="one part"):
        label_partition(planted, "single", 2)
    with pytest.raises(ValueError, match="Available: cgp, dgp, random, single"):
        label_partition(planted, "spectral", 2)
    cgp = label_partition(sp.csr_matrix(planted), "cgp", 5, tau=2)
    assert adjusted_rand_score(assignment_from_groups(GROUPS, 20), cgp) == pytest.approx(1.0)


def test_cooccurrence_strength_is_the_strongest_companion() -> None:
    M = np.array([[0, 6, 1], [6, 0, 3], [1, 3, 0]])
    N = np.array([10, 8, 0])
    np.testing.assert_allclose(cooccurrence_strength(M, N), [0.6, 0.75, 0.0])


def test_cooccurrence_handles_many_sparse_labels() -> None:
    # 500 labels × 20k sparse images (benchmarks/bench_graph.py times 100k); correctness only, no timing asserted.
    rng = np.random.default_rng(0)
    n, c = 20_000, 500
    rows, cols = np.repeat(np.arange(n), 3), rng.integers(0, c, size=3 * n)
    labels = sp.csr_matrix((np.ones(3 * n), (rows, cols)), shape=(n, c))
    labels.data[:] = 1
    M, N = cooccurrence(labels)
    assert M.shape == (c, c) and N.sum() == labels.sum() and (M == M.T).all()


def test_the_reference_method_is_the_best_of_four_sklearn_clusterings_by_calinski_harabasz(planted: np.ndarray
                                                                                          ) -> None:
    """CPSD's procedure, computed here explicitly: four scikit-learn spectral clusterings of the precomputed
    affinity, the one with the highest Calinski–Harabasz score on the affinity's rows kept."""
    from sklearn.metrics import calinski_harabasz_score

    noisy = planted_labels(n=800, seed=3, noise=0.15)  # weak structure: the four runs can differ
    for kind, k in (("co", 5), ("dis", 3)):
        P = affinity(*cooccurrence(noisy), kind, tau=2.0)
        runs = [SpectralClustering(n_clusters=k, affinity="precomputed", n_init=20, random_state=7 * 4 + r)
                .fit(P).labels_ for r in range(4)]
        expected = max(runs, key=lambda labels: calinski_harabasz_score(P, labels))
        got = spectral_partition(P, k, seed=7, method="reference")
        assert adjusted_rand_score(expected, got) == 1.0 and set(got) == set(range(k))
    truth = assignment_from_groups(GROUPS, 20)
    assert adjusted_rand_score(truth, label_partition(planted, "cgp", 5, tau=2.0, method="reference")) == 1.0
    with pytest.raises(ValueError, match="unknown partition method"):
        spectral_partition(affinity(*cooccurrence(planted), "co"), 5, method="ncut")
