"""Tests of harness.metrics.ranking_metrics against pytorch-metric-learning's AccuracyCalculator, a naive
full sort written here, and hand-computed cases with ties and empty queries."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from harness.metrics import ranking_metrics

KEYS = ["R@1", "R@5", "R@10", "R-Precision", "mAP@R", "medr", "meanr", "n_queries", "n_empty"]


# --- independent reference: a full sort per query, irrelevant items first among equal scores ---------


def naive_metrics(scores, relevant, ks=(1, 5, 10)):
    scores, relevant = np.asarray(scores, dtype=np.float64), np.asarray(relevant, dtype=bool)
    first, rprec, ap = [], [], []
    for s, rel in zip(scores, relevant):
        n_rel = int(rel.sum())
        if n_rel == 0:
            continue
        order = np.lexsort((rel.astype(int), -s))  # by score descending, then irrelevant first
        positions = np.flatnonzero(rel[order]) + 1  # 1-based positions of the relevant items
        first.append(positions[0])
        top = positions[positions <= n_rel]
        rprec.append(len(top) / n_rel)
        ap.append(sum((i + 1) / p for i, p in enumerate(top)) / n_rel)
    first = np.array(first)
    out = {f"R@{k}": 100.0 * np.mean(first <= k) for k in ks}
    out.update({"R-Precision": 100.0 * np.mean(rprec), "mAP@R": 100.0 * np.mean(ap),
                "medr": float(np.median(first)), "meanr": float(np.mean(first)),
                "n_queries": float(len(first)), "n_empty": float(len(scores) - len(first))})
    return out


def assert_same(got, want, tol=1e-9):
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert isinstance(got[key], float), key
        assert got[key] == pytest.approx(value, abs=tol, nan_ok=True), key


def random_case(seed, n_q=40, n_items=120, density=0.05, levels=None):
    """Scores with exact ties when ``levels`` is given (integers in [0, levels)); some empty queries."""
    rng = np.random.default_rng(seed)
    if levels:
        scores = rng.integers(0, levels, size=(n_q, n_items)).astype(np.float32)
    else:
        scores = rng.standard_normal((n_q, n_items)).astype(np.float32)
    relevant = rng.random((n_q, n_items)) < density
    relevant[::7] = False  # empty queries
    relevant[1, :] = True  # every item relevant
    relevant[2, :] = False
    relevant[2, 5] = True  # exactly one relevant item
    return scores, relevant


# --- agreement with references --------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("density", [0.01, 0.1, 0.5])
@pytest.mark.parametrize("levels", [None, 3, 20])
def test_matches_naive_sort_with_ties_and_empty_queries(seed, density, levels):
    scores, relevant = random_case(seed, density=density, levels=levels)
    assert_same(ranking_metrics(scores, relevant, tol=0), naive_metrics(scores, relevant))


def test_matches_pytorch_metric_learning_accuracy_calculator():
    """Continuous scores (no ties), relevance = same label; queries whose label no reference has are
    the calculator's "lone" queries and our empty ones."""
    from pytorch_metric_learning.distances import DotProductSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN

    g = torch.Generator().manual_seed(0)
    n_labels, dim = 12, 8
    centres = torch.randn(n_labels + 2, dim, generator=g)
    ref_labels = torch.randint(0, n_labels, (300,), generator=g)
    query_labels = torch.randint(0, n_labels + 2, (150,), generator=g)  # labels 12, 13: no reference
    reference = centres[ref_labels] + 1.2 * torch.randn(300, dim, generator=g)
    query = centres[query_labels] + 1.2 * torch.randn(150, dim, generator=g)
    similarity = DotProductSimilarity(normalize_embeddings=False)
    calc = AccuracyCalculator(include=("mean_average_precision_at_r", "r_precision", "precision_at_1"),
                              knn_func=CustomKNN(similarity), k="max_bin_count")
    want = calc.get_accuracy(query, query_labels, reference, ref_labels, ref_includes_query=False)

    scores = similarity(query, reference)  # the very matrix the calculator ranks
    relevant = (query_labels[:, None] == ref_labels[None, :]).numpy()
    got = ranking_metrics(scores, relevant, ks=(1, 5))
    assert got["n_empty"] == float((query_labels >= n_labels).sum()) > 0
    assert got["n_queries"] + got["n_empty"] == 150
    assert 5 < got["mAP@R"] < 95  # a non-trivial case
    assert got["mAP@R"] == pytest.approx(100 * want["mean_average_precision_at_r"], abs=1e-9)
    assert got["R-Precision"] == pytest.approx(100 * want["r_precision"], abs=1e-9)
    assert got["R@1"] == pytest.approx(100 * want["precision_at_1"], abs=1e-9)
    assert_same(got, naive_metrics(scores, relevant, ks=(1, 5)))


# --- hand cases -------------------------------------------------------------------------------------


def test_tie_with_an_irrelevant_item_ranks_the_relevant_one_after_it():
    # relevant items score 3 and 2; an irrelevant item also scores 2, so the second relevant one is 3rd
    got = ranking_metrics([[3.0, 2.0, 2.0, 1.0]], [[True, False, True, False]], ks=(1, 2, 3))
    assert got == {"R@1": 100.0, "R@2": 100.0, "R@3": 100.0, "R-Precision": 50.0, "mAP@R": 50.0,
                   "medr": 1.0, "meanr": 1.0, "n_queries": 1.0, "n_empty": 0.0}
    # a relevant item tied with two irrelevant ones comes third
    got = ranking_metrics([[1.0, 1.0, 1.0, 0.0]], [[False, True, False, False]], ks=(1, 2, 3))
    assert (got["R@1"], got["R@2"], got["R@3"], got["medr"], got["mAP@R"]) == (0.0, 0.0, 100.0, 3.0, 0.0)


def test_constant_scores_give_the_worst_ranks():
    n = 10
    relevant = np.zeros((3, n), dtype=bool)
    relevant[0, :2] = True  # R = 2: positions 9 and 10
    relevant[1, 4] = True  # R = 1: position 10
    relevant[2, :] = True  # R = n: every position is relevant
    got = ranking_metrics(np.zeros((3, n)), relevant, ks=(1, 9))
    assert got["R@1"] == pytest.approx(100 / 3)  # only the all-relevant query
    assert got["R@9"] == pytest.approx(200 / 3)
    assert got["medr"] == 9.0 and got["meanr"] == pytest.approx((9 + 10 + 1) / 3)
    assert got["R-Precision"] == pytest.approx(100 / 3)
    assert got["mAP@R"] == pytest.approx(100 / 3)


def test_perfect_ranking_scores_100():
    rng = np.random.default_rng(3)
    relevant = rng.random((30, 50)) < 0.2
    relevant[:, 0] = True
    scores = relevant + 0.1 * rng.random((30, 50))  # every relevant item above every irrelevant one
    got = ranking_metrics(scores, relevant)
    assert (got["R@1"], got["R-Precision"], got["mAP@R"], got["medr"]) == (100.0, 100.0, 100.0, 1.0)


def test_map_at_r_hand_computed():
    # R = 3; relevant at positions 1, 3 and 5: R-Precision 2/3, mAP@R = (1/1 + 2/3) / 3
    scores = [[9.0, 8.0, 7.0, 6.0, 5.0, 4.0]]
    relevant = [[True, False, True, False, True, False]]
    got = ranking_metrics(scores, relevant)
    assert got["R-Precision"] == pytest.approx(200 / 3)
    assert got["mAP@R"] == pytest.approx(100 * (1 + 2 / 3) / 3)


def test_empty_queries_are_left_out_and_counted():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.1], [0.3, 0.3, 0.3]])
    relevant = np.array([[False, False, True], [False, False, False], [False, False, False]])
    got = ranking_metrics(scores, relevant, ks=(1, 2))
    assert (got["n_queries"], got["n_empty"]) == (1.0, 2.0)
    assert (got["R@1"], got["R@2"], got["medr"]) == (0.0, 100.0, 2.0)
    nothing = ranking_metrics(scores, np.zeros((3, 3), dtype=bool))
    assert (nothing["n_queries"], nothing["n_empty"]) == (0.0, 3.0)
    assert all(np.isnan(nothing[k]) for k in ("R@1", "R-Precision", "mAP@R", "medr", "meanr"))


def test_tie_tolerance():
    gap = 1e-7  # below 2 eps(float32): a tie in float32 by default
    scores = np.array([[1.0, 1.0 + gap]], dtype=np.float32)  # rounds to 1 + eps, not to 1
    relevant = [[True, False]]
    assert scores[0, 1] > scores[0, 0]
    assert ranking_metrics(scores, relevant, ks=(1,))["R@1"] == 0.0  # behind either way
    scores = np.array([[1.0 + gap, 1.0]], dtype=np.float32)
    assert ranking_metrics(scores, relevant, ks=(1,))["R@1"] == 0.0  # within tol: a tie, against it
    assert ranking_metrics(scores, relevant, ks=(1,), tol=0)["R@1"] == 100.0
    assert ranking_metrics(scores.astype(np.float64), relevant, ks=(1,))["R@1"] == 100.0  # float64 resolves it


# --- inputs -----------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")
def test_dense_and_sparse_relevance_agree():
    scores, relevant = random_case(5, density=0.1, levels=5)
    want = ranking_metrics(scores, relevant)
    coo = sp.coo_array(relevant)
    # duplicates and stored zeros mean the same matrix
    rows = np.concatenate([coo.row, coo.row[:10], [0, 3]])
    cols = np.concatenate([coo.col, coo.col[:10], [0, 1]])
    data = np.concatenate([np.ones(len(coo.row) + 10, dtype=np.int8), [0, 0]])
    assert not relevant[0, 0] and not relevant[3, 1]
    messy = sp.coo_matrix((data, (rows, cols)), shape=relevant.shape)
    messy_torch = torch.sparse_coo_tensor(np.stack([rows, cols]), data, relevant.shape,  # uncoalesced
                                          check_invariants=True)
    forms = [torch.from_numpy(relevant), sp.csr_array(relevant), sp.csc_matrix(relevant), messy,
             messy_torch, torch.from_numpy(relevant).to_sparse(), torch.from_numpy(relevant).to_sparse_csr()]
    for form in forms:
        assert ranking_metrics(scores, form) == want, type(form)
    assert ranking_metrics(torch.from_numpy(scores), relevant) == want


@pytest.mark.parametrize("levels", [None, 4])
def test_chunk_size_does_not_change_the_result(levels):
    scores, relevant = random_case(6, n_q=37, n_items=90, density=0.2, levels=levels)
    want = ranking_metrics(scores, relevant)
    for chunk_size in (1, 2, 5, 36, 37, 1000):
        assert ranking_metrics(scores, relevant, chunk_size=chunk_size) == want, chunk_size


def test_transposed_scores_rank_the_other_direction():
    scores, relevant = random_case(10, n_q=30, n_items=50, density=0.1, levels=8)
    want = ranking_metrics(np.ascontiguousarray(scores.T), np.ascontiguousarray(relevant.T))
    assert ranking_metrics(torch.from_numpy(scores).T, sp.csr_array(relevant).T, chunk_size=7) == want
    assert ranking_metrics(scores.T, relevant.T) == want
    assert_same(ranking_metrics(scores.T, relevant.T, tol=0), naive_metrics(scores.T, relevant.T))


def test_float64_integer_and_half_scores():
    scores, relevant = random_case(7, levels=6)
    want = ranking_metrics(scores, relevant, tol=0)
    assert ranking_metrics(scores.astype(np.int64), relevant) == want
    assert ranking_metrics(scores.astype(np.float64), relevant) == want
    assert ranking_metrics(torch.from_numpy(scores).half(), relevant) == want


def test_many_relevant_items_per_query():
    """R large against N: the top-k step is capped at N and chunks shrink to fit the bookkeeping."""
    scores, relevant = random_case(8, n_q=20, n_items=40, density=0.7, levels=7)
    want = naive_metrics(scores, relevant)
    for chunk_size in (None, 3):
        assert_same(ranking_metrics(scores, relevant, tol=0, chunk_size=chunk_size), want)


@pytest.mark.parametrize("kwargs, match", [
    ({"relevant": np.ones((3, 4), dtype=bool)}, "shape"),
    ({"relevant": np.ones((4, 5), dtype=np.int64)}, "boolean"),
    ({"relevant": sp.csr_array(np.full((4, 5), 2))}, "0/1"),
    ({"scores": np.full((4, 5), np.nan)}, "NaN"),
    ({"scores": np.zeros((0, 5))}, "non-empty"),
    ({"scores": sp.csr_array(np.ones((4, 5)))}, "dense"),
    ({"ks": (0,)}, "ks"),
    ({"ks": ()}, "ks"),
    ({"tol": -1.0}, "tol"),
    ({"chunk_size": 0}, "chunk_size"),
])
def test_bad_inputs_raise_value_error(kwargs, match):
    args = {"scores": np.ones((4, 5)), "relevant": np.ones((4, 5), dtype=bool), **kwargs}
    with pytest.raises(ValueError, match=match):
        ranking_metrics(**args)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    scores, relevant = random_case(9, n_q=300, n_items=500, density=0.03, levels=50)
    want = ranking_metrics(scores, relevant)
    got = ranking_metrics(torch.from_numpy(scores).cuda(), torch.from_numpy(relevant).cuda())
    assert got == want
