"""Tests of harness.metrics.retrieval_metrics against a naive float64 reference written here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.metrics import retrieval_metrics, retrieval_ranks


# --- independent reference: full float64 similarity, full sort, ties placed before the correct item ---


def _unit(x):
    x = np.asarray(x, dtype=np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0)


def _first_correct_rank(scores, correct):
    """1-based position of the first correct item when sorting by score, incorrect first on ties."""
    order = np.lexsort((correct.astype(int), -scores))  # last key is the primary one
    return int(np.flatnonzero(correct[order])[0]) + 1


def reference_ranks(images, texts, text_to_image):
    sim = _unit(images) @ _unit(texts).T  # [N, M]
    t2i_idx = np.asarray(text_to_image)
    positive = np.zeros(sim.shape, dtype=bool)
    positive[t2i_idx, np.arange(len(t2i_idx))] = True
    i2t = [_first_correct_rank(sim[i], positive[i]) for i in range(sim.shape[0]) if positive[i].any()]
    t2i = [_first_correct_rank(sim[:, j], positive[:, j]) for j in range(sim.shape[1])]
    return np.array(i2t), np.array(t2i)


def reference_metrics(images, texts, text_to_image, ks=(1, 5, 10)):
    i2t, t2i = reference_ranks(images, texts, text_to_image)
    out = {}
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        for k in ks:
            out[f"{name}_R@{k}"] = 100.0 * np.mean(r <= k)
    for name, r in (("i2t", i2t), ("t2i", t2i)):
        out[f"{name}_medr"] = float(np.median(r))
        out[f"{name}_meanr"] = float(np.mean(r))
    out["rsum"] = sum(out[f"{n}_R@{k}"] for n in ("i2t", "t2i") for k in ks)
    return out


def assert_metrics_equal(got, want, tol=1e-9):
    assert list(got) == list(want)
    for key in want:
        assert isinstance(got[key], float), key
        assert got[key] == pytest.approx(want[key], abs=tol), key


# --- data ---


def uneven_data(seed=0, n_images=40, dim=16, noise=1.0, dtype=np.float64):
    """Images with 0 to 4 captions each (image 3 has none), captions noisy copies of their image."""
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((n_images, dim))
    counts = rng.integers(1, 5, size=n_images)
    counts[3] = 0
    counts[7] = 0
    text_to_image = np.repeat(np.arange(n_images), counts)
    rng.shuffle(text_to_image)  # captions need not be grouped by image
    texts = images[text_to_image] + noise * rng.standard_normal((len(text_to_image), dim))
    return images.astype(dtype), texts.astype(dtype), text_to_image


def sign_data(seed=1, n_images=30, dim=16):
    """+-1 vectors in D = 16: normalized entries are +-1/4, so every score is exact in float32 and
    exact ties are everywhere (only 17 distinct score values)."""
    rng = np.random.default_rng(seed)
    images = rng.choice([-1.0, 1.0], size=(n_images, dim))
    images[5] = images[4]  # duplicate images: exact ties between a correct and an incorrect one
    text_to_image = np.concatenate([np.arange(n_images), rng.integers(0, n_images, size=25)])
    texts = images[text_to_image].copy()
    flip = rng.random(texts.shape) < 0.3
    texts[flip] *= -1
    return images.astype(np.float32), texts.astype(np.float32), text_to_image


# --- tests ---


def test_matches_reference_uneven_captions():
    images, texts, t2i = uneven_data()
    got = retrieval_metrics(images, texts, t2i)
    assert_metrics_equal(got, reference_metrics(images, texts, t2i))
    assert 0 < got["t2i_R@1"] < 100 and 0 < got["i2t_R@1"] < 100  # the data is not trivial


def test_ranks_match_reference_and_skip_captionless_images():
    images, texts, t2i = uneven_data(seed=3)
    i2t, t2i_ranks = retrieval_ranks(images, texts, t2i, chunk_size=6)
    ref_i2t, ref_t2i = reference_ranks(images, texts, t2i)
    assert len(i2t) == len(images) - 2  # images 3 and 7 have no caption
    np.testing.assert_array_equal(i2t, ref_i2t)
    np.testing.assert_array_equal(t2i_ranks, ref_t2i)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 30, None, 1000])
def test_exact_ties_against_correct_item_float32(chunk_size):
    images, texts, t2i = sign_data()
    got = retrieval_metrics(torch.from_numpy(images), torch.from_numpy(texts), t2i, chunk_size=chunk_size)
    assert_metrics_equal(got, reference_metrics(images, texts, t2i))
    i2t_ranks, t2i_ranks = retrieval_ranks(images, texts, t2i, chunk_size=chunk_size)
    ref_i2t, ref_t2i = reference_ranks(images, texts, t2i)
    np.testing.assert_array_equal(i2t_ranks, ref_i2t)
    np.testing.assert_array_equal(t2i_ranks, ref_t2i)


def test_chunk_sizes_give_identical_results():
    images, texts, t2i = uneven_data(seed=5, n_images=60, dim=32, dtype=np.float32)
    results = [retrieval_metrics(images, texts, t2i, chunk_size=c) for c in (1, 3, 16, 59, 60, None, 10**6)]
    assert all(r == results[0] for r in results[1:])
    assert_metrics_equal(results[0], reference_metrics(images, texts, t2i))


@pytest.mark.parametrize("chunk_size", [1, 7, None])
@pytest.mark.parametrize("kind", ["equal-0", "equal-1", "equal-2", "equal-3", "zero"])
@pytest.mark.parametrize("n_images, dim", [(97, 512), (9, 512), (13, 3), (33, 100)])
def test_collapsed_embeddings_get_worst_ranks(kind, chunk_size, n_images, dim):
    # A GEMM rounds the same dot product differently at different output positions (edge tiles;
    # e.g. 9 rows), and differently from a row-wise dot: none of that may rescue the correct item.
    rng = np.random.default_rng(0 if kind == "zero" else int(kind[-1]))
    counts = rng.integers(0, 6, size=n_images)
    t2i = np.repeat(np.arange(n_images), counts)
    vec = np.zeros(dim) if kind == "zero" else rng.standard_normal(dim) ** (1 + 2 * (kind == "equal-3"))
    images = torch.tensor(np.tile(vec, (n_images, 1)), dtype=torch.float32)
    texts = torch.tensor(np.tile(vec, (len(t2i), 1)), dtype=torch.float32)

    i2t_ranks, t2i_ranks = retrieval_ranks(images, texts, t2i, chunk_size=chunk_size)
    np.testing.assert_array_equal(t2i_ranks, np.full(len(t2i), n_images))
    np.testing.assert_array_equal(i2t_ranks, len(t2i) - counts[counts > 0] + 1)
    m = retrieval_metrics(images, texts, t2i, chunk_size=chunk_size)
    assert all(np.isfinite(v) for v in m.values())
    assert m["t2i_R@1"] == 0.0 and m["i2t_R@1"] == 0.0 and m["t2i_medr"] == n_images


@pytest.mark.parametrize("dtype, gap, rank", [
    (np.float32, 1e-7, 2),   # within 2 * eps32 * sqrt(2) = 3.4e-7: a tie, counted against
    (np.float32, 1e-6, 1),   # resolved
    (np.float64, 1e-12, 1),  # float64 resolves far smaller gaps
    (np.float64, 1e-16, 2),
])
def test_tie_tolerance(dtype, gap, rank):
    # Caption at angle 0; correct image at angle a, the other at angle b with cos b = cos a - gap.
    a = 0.7
    b = np.arccos(np.cos(a) - gap)
    images = np.array([[np.cos(b), np.sin(b)], [np.cos(a), np.sin(a)]], dtype=dtype)
    texts = np.array([[1.0, 0.0]], dtype=dtype)
    i2t, t2i = retrieval_ranks(images, texts, [1])
    assert t2i.tolist() == [rank]
    assert i2t.tolist() == [1]


def test_perfect_embeddings_score_100():
    rng = np.random.default_rng(2)
    images = rng.standard_normal((50, 24))
    t2i = np.repeat(np.arange(50), 3)
    texts = images[t2i] * rng.uniform(0.5, 2.0, size=(150, 1))  # scale must not matter
    m = retrieval_metrics(images, texts, t2i)
    assert all(m[f"{d}_R@{k}"] == 100.0 for d in ("i2t", "t2i") for k in (1, 5, 10))
    assert m["i2t_medr"] == m["t2i_medr"] == m["i2t_meanr"] == m["t2i_meanr"] == 1.0
    assert m["rsum"] == 600.0


def test_even_count_median_is_mean_of_middle_ranks():
    e = np.eye(4)
    images = e
    texts = np.stack([e[0], e[1], e[0] + 0.5 * e[2], e[0] + 0.6 * e[1] + 0.3 * e[3]])
    m = retrieval_metrics(images, texts, [0, 1, 2, 3])  # t2i ranks 1, 1, 2, 3
    assert m["t2i_medr"] == 1.5
    assert m["t2i_meanr"] == 1.75
    assert m["t2i_R@1"] == 50.0 and m["t2i_R@5"] == 100.0
    assert m["i2t_medr"] == 1.0


def test_numpy_and_torch_inputs_agree():
    images, texts, t2i = uneven_data(seed=7, dtype=np.float32)
    from_numpy = retrieval_metrics(images, texts, t2i)
    from_torch = retrieval_metrics(torch.from_numpy(images), torch.from_numpy(texts), torch.from_numpy(t2i))
    from_list = retrieval_metrics(images.tolist(), texts, list(t2i))
    grad = retrieval_metrics(torch.from_numpy(images).requires_grad_(), torch.from_numpy(texts), t2i)
    assert from_numpy == from_torch == grad
    assert list(from_list) == list(from_numpy)  # lists are float64, so only the keys must agree


def test_half_inputs_are_computed_in_float32():
    images, texts, t2i = sign_data()  # exact in half precision too
    got = retrieval_metrics(torch.from_numpy(images).half(), torch.from_numpy(texts).bfloat16(), t2i)
    assert_metrics_equal(got, reference_metrics(images, texts, t2i))


def test_float64_resolves_what_float32_cannot():
    # cos(caption, wrong image) = 1 - 5e-11: a tie in float32 (counted against), a loss in float64.
    images = np.array([[1.0, 0.0], [1.0, 1e-5]])
    texts = np.array([[1.0, 1e-5]])
    assert retrieval_metrics(images, texts, [1])["t2i_R@1"] == 100.0
    assert retrieval_metrics(images.astype(np.float32), texts.astype(np.float32), [1])["t2i_R@1"] == 0.0


def test_custom_ks_and_rsum():
    images, texts, t2i = uneven_data(seed=11)
    got = retrieval_metrics(images, texts, t2i, ks=(2, 3))
    assert_metrics_equal(got, reference_metrics(images, texts, t2i, ks=(2, 3)))
    assert got["rsum"] == pytest.approx(sum(v for k, v in got.items() if "_R@" in k))


def test_zero_vectors_do_not_give_nan():
    images, texts, t2i = uneven_data(seed=13)
    images[[0, 9]] = 0.0
    texts[[1, 2]] = 0.0
    got = retrieval_metrics(images, texts, t2i)
    assert all(np.isfinite(v) for v in got.values())
    assert_metrics_equal(got, reference_metrics(images, texts, t2i))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda i, t, x: (i[0], t, x), "image_emb must be 2-D"),
        (lambda i, t, x: (i, t[:, :-1], x), "dimension mismatch"),
        (lambda i, t, x: (i, t, x[:-1]), "one entry per caption"),
        (lambda i, t, x: (i, t, np.where(np.arange(len(x)) == 2, len(i), x)), r"\[0, 39\]"),
        (lambda i, t, x: (i, t, np.where(np.arange(len(x)) == 2, -1, x)), r"\[0, 39\]"),
        (lambda i, t, x: (i, t, x.astype(float)), "integer"),
        (lambda i, t, x: (i[:0], t, x), "empty"),
        (lambda i, t, x: (np.where(np.arange(len(i))[:, None] == 1, np.nan, i), t, x), "NaN"),
        (lambda i, t, x: (i, np.where(np.arange(len(t))[:, None] == 0, np.inf, t), x), "text_emb contains"),
    ],
)
def test_bad_inputs_raise_value_error(change, match):
    images, texts, t2i = uneven_data()
    with pytest.raises(ValueError, match=match):
        retrieval_metrics(*change(images, texts, t2i))


@pytest.mark.parametrize("kwargs", [{"ks": ()}, {"ks": (0, 1)}, {"ks": (1.5,)}, {"chunk_size": 0}])
def test_bad_options_raise_value_error(kwargs):
    images, texts, t2i = uneven_data()
    with pytest.raises(ValueError):
        retrieval_metrics(images, texts, t2i, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu_and_reference():
    images, texts, t2i = uneven_data(seed=17, n_images=300, dim=64, dtype=np.float32)
    cpu = retrieval_metrics(images, texts, t2i)
    cuda = [torch.from_numpy(a).cuda() for a in (images, texts, t2i)]
    assert_metrics_equal(retrieval_metrics(*cuda, chunk_size=37), cpu, tol=1e-6)
    images, texts, t2i = sign_data()
    gpu = retrieval_metrics(torch.from_numpy(images).cuda(), torch.from_numpy(texts).cuda(), t2i, chunk_size=4)
    assert_metrics_equal(gpu, reference_metrics(images, texts, t2i))
    collapsed = torch.ones(20, 512, device="cuda")
    m = retrieval_metrics(collapsed, torch.ones(60, 512, device="cuda"), np.repeat(np.arange(20), 3))
    assert m["t2i_R@1"] == 0.0 and m["t2i_medr"] == 20 and m["i2t_medr"] == 58
    with pytest.raises(ValueError, match="is on"):
        retrieval_metrics(torch.from_numpy(images).cuda(), torch.from_numpy(texts), t2i)


def test_reduced_precision_matmul_widens_the_tie_tolerance(monkeypatch):
    # Read-only check of the settings lookup; the real torch flags are left alone (other tests in
    # the same process may read them with the legacy API, which then raises).
    import types

    import harness.metrics.retrieval as hm

    assert hm._matmul_unit_roundoff(torch.device("cpu")) == 0.0
    monkeypatch.setattr(torch.backends.cuda, "matmul", types.SimpleNamespace(fp32_precision="tf32"))
    monkeypatch.setattr(torch.backends.mkldnn, "matmul", types.SimpleNamespace(fp32_precision="bf16"))
    assert hm._matmul_unit_roundoff(torch.device("cuda")) == 2.0**-11
    assert hm._matmul_unit_roundoff(torch.device("cpu")) == 2.0**-8
    # With the wider band a 1e-3 gap is a tie; at IEEE precision it is resolved.
    images = np.array([[np.cos(0.7 + 1e-3), np.sin(0.7 + 1e-3)], [np.cos(0.7), np.sin(0.7)]], np.float32)
    assert retrieval_ranks(images, np.array([[1.0, 0.0]], np.float32), [1])[1].tolist() == [2]
    monkeypatch.undo()
    assert retrieval_ranks(images, np.array([[1.0, 0.0]], np.float32), [1])[1].tolist() == [1]
