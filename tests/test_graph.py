"""Label graphs against hand-computed small examples."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from mlic.models.label_graph import (
    affinity,
    conditional_probability,
    cooccurrence,
    mlgcn_adjacency,
    normalize_adjacency,
)

M = np.array([[0, 6, 1], [6, 0, 3], [1, 3, 0]])
N = np.array([10, 8, 4])


def test_cooccurrence_counts_pairs_and_labels_dense_and_sparse() -> None:
    labels = np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 0, 0]], dtype=np.uint8)
    pair, count = cooccurrence(labels)
    assert pair.tolist() == [[0, 2, 2], [2, 0, 1], [2, 1, 0]] and count.tolist() == [3, 2, 2]
    pair_sp, count_sp = cooccurrence(sp.csr_matrix(labels))
    assert (pair_sp == pair).all() and (count_sp == count).all()


def test_conditional_probability_rows_are_given_the_row_label() -> None:
    S = conditional_probability(M, N)
    assert S[0].tolist() == pytest.approx([0, 0.6, 0.1]) and S[1, 2] == pytest.approx(3 / 8)
    assert conditional_probability(M, np.array([10, 0, 4]))[1].tolist() == [0, 0, 0]  # unseen label: no NaN


def test_cpsd_affinities_on_the_three_label_example() -> None:
    # S01 = 6/10, S10 = 6/8: with tau = 2, co01 = (sqrt(.6) + sqrt(.75)) / 2 = 0.820311
    co = affinity(M, N, "co", tau=2)
    expected = [[0, 0.820311, 0.408114], [0.820311, 0, 0.739199], [0.408114, 0.739199, 0]]
    np.testing.assert_allclose(co, expected, atol=1e-6)
    dis = affinity(M, N, "dis", tau=2)
    np.testing.assert_allclose(dis, 1 - np.array(expected) + np.eye(3) * 0, atol=1e-6)
    assert np.allclose(np.diag(dis), 1)
    co3 = affinity(M, N, "co", tau=3)
    assert co3[0, 1] == pytest.approx(0.5 * (0.6 ** (1 / 3) + 0.75 ** (1 / 3)))
    assert np.isfinite(affinity(np.zeros((3, 3)), np.zeros(3), "dis")).all()


def test_mlgcn_adjacency_and_normalisation_match_hand_computation() -> None:
    A = mlgcn_adjacency(M, N, tau=0.4, p=0.25)
    # binarised P(j|i) >= .4: [[0,1,0],[1,0,0],[0,1,0]]; column sums [1,2,0] -> scale by .25/colsum; + I
    np.testing.assert_allclose(A, [[1, 0.125, 0], [0.25, 1, 0], [0, 0.125, 1]], atol=1e-6)
    adj = normalize_adjacency(A)
    np.testing.assert_allclose(adj, [[0.888889, 0.210818, 0], [0.105409, 0.8, 0.105409], [0, 0, 0.888889]],
                               atol=1e-6)
