"""CCA family: linear-cca, kernel-cca, the dcca loss and the CCA evaluators, checked against a plain
numpy/scipy SVD reference written here, scikit-learn's CCA and cca-zoo's (R)CCA."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pluggy
import pytest
import scipy.linalg
import torch

from harness import hookspecs
from harness.components import EvalContext
from harness.data import DatasetInfo, Split
import harness_plugins.cca as cca_plugin
from harness_plugins.cca import estimators as cca_estimators, linalg as cca_linalg
from harness_plugins.cca import (CanonicalCorrelationEvaluator, DCCAELoss, DCCALoss, KernelCCA, LinearCCA,
                                 LinearProbeEvaluator)

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# --- independent reference and helpers ---------------------------------------------------------------


def reference_cca(X, Y, k, reg=0.0, reg_y=None):
    """Textbook CCA: Σ^{-1/2} by scipy's sqrtm + inverse, T = Σ₁₁^{-1/2}Σ₁₂Σ₂₂^{-1/2}, full numpy SVD."""
    reg_y = reg if reg_y is None else reg_y
    n = X.shape[0]
    mx, my = X.mean(0), Y.mean(0)
    Xc, Yc = X - mx, Y - my
    S11 = Xc.T @ Xc / (n - 1) + reg * np.eye(X.shape[1])
    S22 = Yc.T @ Yc / (n - 1) + reg_y * np.eye(Y.shape[1])
    S12 = Xc.T @ Yc / (n - 1)
    R1 = np.linalg.inv(np.real(scipy.linalg.sqrtm(S11)))
    R2 = np.linalg.inv(np.real(scipy.linalg.sqrtm(S22)))
    U, D, Vt = np.linalg.svd(R1 @ S12 @ R2)
    W1, W2 = R1 @ U[:, :k], R2 @ Vt[:k].T
    return D[:k], (lambda A: (A - mx) @ W1), (lambda B: (B - my) @ W2)


def pearson(U, V):
    U = U - U.mean(0)
    V = V - V.mean(0)
    return (U * V).sum(0) / np.sqrt((U * U).sum(0) * (V * V).sum(0))


def assert_equal_up_to_sign(A, B, atol):
    """Columns of A equal columns of B, each up to a sign."""
    A, B = np.asarray(A), np.asarray(B)
    signs = np.sign((A * B).sum(0))
    np.testing.assert_allclose(A, B * signs, atol=atol, rtol=0)


def unit_variance(A, ref):
    """Scale A's columns by ref's (training) standard deviations, to compare up to scale."""
    return A / np.asarray(ref).std(0, ddof=1)


def correlated_views(n, d1=8, d2=6, k=3, seed=0, held_out=200):
    """k latent pairs with well separated correlations mixed into d1 and d2 dimensions, plus noise."""
    rng = np.random.default_rng(seed)
    m = n + held_out
    rho = np.linspace(0.9, 0.4, k)
    z1 = rng.standard_normal((m, k))
    z2 = rho * z1 + np.sqrt(1 - rho**2) * rng.standard_normal((m, k))
    X = z1 @ rng.standard_normal((k, d1)) + 0.5 * rng.standard_normal((m, d1))
    Y = z2 @ rng.standard_normal((k, d2)) + 0.5 * rng.standard_normal((m, d2))
    return X[:n], Y[:n], X[n:], Y[n:]


@pytest.fixture(scope="module")
def views():
    return correlated_views(400)


# --- registration ------------------------------------------------------------------------------------


def test_plugin_registers_through_the_hook_contract():
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(cca_plugin)
    found = {}
    for hook in ("register_estimators", "register_losses", "register_evaluators"):
        getattr(pm.hook, hook)(register=lambda name, factory: found.__setitem__(name, factory))
    assert found == {"linear-cca": LinearCCA, "kernel-cca": KernelCCA, "dcca": DCCALoss, "dccae": DCCAELoss,
                     "canonical-correlation": CanonicalCorrelationEvaluator, "linear-probe": LinearProbeEvaluator}
    for factory in found.values():
        assert factory.__doc__ and factory.__doc__.strip().splitlines()[0]


# --- linear CCA vs references -------------------------------------------------------------------------


@pytest.mark.parametrize("reg, reg_y", [(0.0, None), (0.3, None), (0.05, 1.5)])
def test_linear_cca_matches_numpy_svd_reference(views, reg, reg_y):
    X, Y, Xt, Yt = views
    k = 4
    D, fx, fy = reference_cca(X, Y, k, reg, reg_y)
    model = LinearCCA(k=k, reg=reg, reg_y=reg_y).fit(X, Y)
    np.testing.assert_allclose(model.canonical_correlations_, D, atol=1e-6, rtol=0)
    assert model.total_correlation_ == pytest.approx(D.sum(), abs=1e-6)
    for A, B in ((X, Y), (Xt, Yt)):  # train and held-out
        U, V = model.transform(A, B)
        assert_equal_up_to_sign(U, fx(A), atol=1e-6)
        assert_equal_up_to_sign(V, fy(B), atol=1e-6)
        np.testing.assert_allclose(model.correlations(A, B), pearson(fx(A), fy(B)), atol=1e-6, rtol=0)
    if reg == 0:
        train = model.correlations(X, Y)
        np.testing.assert_allclose(train, D, atol=1e-10)
        assert np.all(np.diff(train) <= 0)  # descending on the training data
        np.testing.assert_allclose(np.cov(model.transform_x(X).T), np.eye(k), atol=1e-10)


def test_linear_cca_matches_scikit_learn(views):
    from sklearn.cross_decomposition import CCA

    X, Y, Xt, Yt = views
    k = 3
    # scikit-learn's CCA is unregularised; a tight tol lets its NIPALS iterations converge fully.
    ref = CCA(n_components=k, scale=False, tol=1e-14, max_iter=100_000).fit(X, Y)
    model = LinearCCA(k=k).fit(X, Y)
    ref_train = ref.transform(X, Y)
    for A, B in ((X, Y), (Xt, Yt)):
        U, V = model.transform(A, B)
        RU, RV = ref.transform(A, B)
        np.testing.assert_allclose(model.correlations(A, B), pearson(RU, RV), atol=1e-6, rtol=0)
        # scikit-learn does not normalise the scores; our training projections have unit variance.
        assert_equal_up_to_sign(U, unit_variance(RU, ref_train[0]), atol=1e-6)
        assert_equal_up_to_sign(V, unit_variance(RV, ref_train[1]), atol=1e-6)


@pytest.mark.parametrize("shrinkage", [0.0, 0.2, (0.1, 0.6)])
def test_linear_cca_matches_cca_zoo(views, shrinkage):
    pytest.importorskip("cca_zoo")  # a dev dependency only on Python >= 3.11
    from cca_zoo.linear import CCA, RidgeCCA

    X, Y, Xt, Yt = views
    k = 4
    if shrinkage == 0.0:
        ref = CCA(n_components=k).fit([X, Y])
        model = LinearCCA(k=k).fit(X, Y)
    else:
        c1, c2 = shrinkage if isinstance(shrinkage, tuple) else (shrinkage, shrinkage)
        ref = RidgeCCA(n_components=k, shrinkage=[c1, c2]).fit([X, Y])
        # cca-zoo constrains wᵀ((1−c)Σ + cI)w = 1 with the same (n−1) covariance: reg = c/(1−c).
        model = LinearCCA(k=k, reg=c1 / (1 - c1), reg_y=c2 / (1 - c2)).fit(X, Y)
    ref_train = ref.transform([X, Y])
    for A, B in ((X, Y), (Xt, Yt)):
        RU, RV = ref.transform([A, B])
        U, V = model.transform(A, B)
        np.testing.assert_allclose(model.correlations(A, B), pearson(RU, RV), atol=1e-6, rtol=0)
        assert_equal_up_to_sign(unit_variance(U, model.transform_x(X)), unit_variance(RU, ref_train[0]), 1e-6)
        assert_equal_up_to_sign(unit_variance(V, model.transform_y(Y)), unit_variance(RV, ref_train[1]), 1e-6)


def independent_scaled_views(seed, n=100):
    """Independent views with feature scales 0.1–3: the ridge shrinks the (noise) correlations of the
    low-variance directions most, so the order of D is not that of the training correlations."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 8)) * rng.uniform(0.1, 3, 8),
            rng.standard_normal((n, 6)) * rng.uniform(0.1, 3, 6))


def torch_everywhere(monkeypatch):
    """Send CPU inputs down the code path CUDA tensors take (torch linear algebra)."""
    original = cca_linalg._as_arrays

    def patched(*arrays):
        out, kind = original(*arrays)
        return [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in out], kind

    for module in (cca_linalg, cca_estimators):  # every module that calls it
        monkeypatch.setattr(module, "_as_arrays", patched)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("make", [lambda: LinearCCA(k=4, reg=1.0), lambda: LinearCCA(k=4, reg=0.0, reg_y=2.0),
                                  lambda: KernelCCA(k=4), lambda: KernelCCA(k=4, nystrom=60)],
                         ids=["linear-reg", "linear-reg_y", "rbf", "rbf-nystrom"])
def test_regularised_training_correlations_come_out_descending(make, backend, monkeypatch):
    if backend == "torch":
        torch_everywhere(monkeypatch)
    for seed in range(6):
        X, Y = independent_scaled_views(seed)
        model = make().fit(X, Y)
        train = np.asarray(model.correlations(X, Y))
        assert np.all(np.diff(train) <= 1e-12), (seed, train)
        # D moved with the weights: each component's training correlation is ≥ its own Dᵢᵢ.
        D = model.canonical_correlations_
        assert np.all(train >= D - 1e-12) and model.total_correlation_ == pytest.approx(D.sum())
        if isinstance(model, LinearCCA):  # the reference's components, reordered by training correlation
            ref_D, fx, fy = reference_cca(X, Y, 4, model.reg, model.reg_y)
            order = np.argsort(-pearson(fx(X), fy(Y)), kind="stable")
            np.testing.assert_allclose(D, ref_D[order], atol=1e-8, rtol=0)
            assert_equal_up_to_sign(model.transform_x(X), fx(X)[:, order], atol=1e-6)
            assert_equal_up_to_sign(model.transform_y(Y), fy(Y)[:, order], atol=1e-6)


# --- rank deficiency, scale and dtype -----------------------------------------------------------------


def rank_deficient(X):
    """X plus constant pixels (0 and 0.7), a duplicated column and a linear combination of columns."""
    n = X.shape[0]
    extra = np.column_stack([np.zeros(n), np.full(n, 0.7), X[:, 2], X[:, 0] - 2 * X[:, 3], np.zeros(n)])
    return np.column_stack([X[:, :3], extra[:, :2], X[:, 3:], extra[:, 2:]])


@pytest.mark.parametrize("dtype, atol", [(np.float64, 1e-6), (np.float32, 2e-4)])
@pytest.mark.parametrize("scale", [1.0, 1e-8, 1e6])
def test_rank_deficient_covariances_at_reg_zero(views, dtype, atol, scale):
    X, Y, Xt, Yt = views
    k = 4
    D, fx, fy = reference_cca(X, Y, k)  # the same problem without the degenerate columns
    # A tiny or huge scale catches absolute eigenvalue floors (at 1e-8 every variance is ~1e-16).
    Xd, Xtd = (rank_deficient(A).astype(dtype) * dtype(scale) for A in (X, Xt))
    Yd, Ytd = (rank_deficient(B).astype(dtype) * dtype(scale) for B in (Y, Yt))
    model = LinearCCA(k=k, reg=0.0).fit(Xd, Yd)
    assert model.x_weights_.dtype == dtype
    np.testing.assert_allclose(model.canonical_correlations_, D, atol=atol, rtol=0)
    for A, B, (RA, RB) in ((Xd, Yd, (X, Y)), (Xtd, Ytd, (Xt, Yt))):
        U, V = model.transform(A, B)
        assert U.dtype == dtype and np.isfinite(U).all() and np.isfinite(V).all()
        np.testing.assert_allclose(model.correlations(A, B), pearson(fx(RA), fy(RB)), atol=atol, rtol=0)
        assert_equal_up_to_sign(U.astype(np.float64), fx(RA), atol=50 * atol)


@pytest.mark.parametrize("offset", [3.0, 1e7])
def test_offset_data_gives_the_centred_result(views, offset):
    """A moderate offset takes the raw-product fast path (XᵀX − n·x̄x̄ᵀ); a huge one, whose cancellation
    would lose most digits, must be detected and centred explicitly. Both equal the reference."""
    X, Y, Xt, Yt = views
    D, fx, fy = reference_cca(X, Y, 3)
    model = LinearCCA(k=3).fit(X + offset, Y - offset)
    np.testing.assert_allclose(model.canonical_correlations_, D, atol=1e-9, rtol=0)
    assert_equal_up_to_sign(model.transform_x(Xt + offset), fx(Xt), atol=1e-7)
    assert_equal_up_to_sign(model.transform_y(Yt - offset), fy(Yt), atol=1e-7)


def test_whitener_uses_cholesky_only_when_safely_full_rank():
    rng = np.random.default_rng(3)
    X = rng.standard_normal((200, 6))
    S = np.cov(X, rowvar=False)
    A = cca_linalg._whitener(S, 0.0)
    assert A.shape == (6, 6)
    np.testing.assert_allclose(A.T @ S @ A, np.eye(6), atol=1e-12)
    np.testing.assert_allclose(np.tril(A, -1), 0.0)  # L⁻ᵀ is upper triangular: the Cholesky path
    # A duplicated column makes S singular: Cholesky may even succeed on the rounding noise, but the
    # trace bound sends it to the pseudo-inverse square root, which drops the null direction.
    S_singular = np.cov(np.column_stack([X, X[:, 0]]), rowvar=False)
    A = cca_linalg._whitener(S_singular, 0.0)
    assert A.shape == (7, 6)
    np.testing.assert_allclose(A.T @ S_singular @ A, np.eye(6), atol=1e-10)
    # ... and a ridge makes it full rank again.
    A = cca_linalg._whitener(S_singular, 0.5)
    assert A.shape == (7, 7)
    np.testing.assert_allclose(A.T @ (S_singular + 0.5 * np.eye(7)) @ A, np.eye(7), atol=1e-12)


def test_fewer_directions_than_k_gives_zero_components_and_a_warning():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((6, 10))  # rank 5 after centring
    Y = X[:, :8] + 0.1 * rng.standard_normal((6, 8))
    with pytest.warns(RuntimeWarning, match="only 5 of k=7"):
        model = LinearCCA(k=7).fit(X, Y)
    corr = model.correlations(X, Y)
    assert np.isfinite(corr).all()
    np.testing.assert_allclose(corr[5:], 0.0)
    np.testing.assert_allclose(model.canonical_correlations_[5:], 0.0)


def test_parameter_and_shape_errors(views):
    X, Y, _, _ = views
    with pytest.raises(ValueError, match="exceeds"):
        LinearCCA(k=7).fit(X, Y)  # Y has 6 columns
    with pytest.raises(ValueError, match="same number of rows"):
        LinearCCA(k=2).fit(X, Y[:-1])
    with pytest.raises(ValueError, match=">= 0"):
        LinearCCA(k=2, reg=-1).fit(X, Y)
    with pytest.raises(ValueError, match=r"\[n, 8\]"):
        LinearCCA(k=2).fit(X, Y).transform_x(Y)


# --- numpy / torch / device ---------------------------------------------------------------------------


def test_torch_in_torch_out_and_numpy_in_numpy_out(views):
    X, Y, Xt, Yt = views
    ref = LinearCCA(k=3).fit(X, Y)
    tX, tY = torch.tensor(X, requires_grad=True), torch.tensor(Y)
    model = LinearCCA(k=3).fit(tX, tY)
    U, V = model.transform(tX, tY)
    assert isinstance(U, torch.Tensor) and U.dtype == torch.float64 and not U.requires_grad
    corr = model.correlations(torch.tensor(Xt), torch.tensor(Yt))
    assert isinstance(corr, torch.Tensor)
    np.testing.assert_allclose(corr.numpy(), ref.correlations(Xt, Yt), atol=1e-12)
    # A numpy fit transforms tensors into tensors, and float32 stays float32.
    U32 = ref.transform_x(torch.tensor(Xt, dtype=torch.float32))
    assert isinstance(U32, torch.Tensor) and U32.dtype == torch.float32
    assert isinstance(ref.transform_x(Xt), np.ndarray)
    f32 = LinearCCA(k=3).fit(X.astype(np.float32), Y.astype(np.float32))
    assert f32.transform_x(X.astype(np.float32)).dtype == np.float32
    np.testing.assert_allclose(f32.canonical_correlations_, ref.canonical_correlations_, atol=1e-5)


@CUDA
def test_cuda_tensors_stay_on_the_gpu(views):
    X, Y, Xt, Yt = views
    ref = LinearCCA(k=3).fit(X, Y)
    cX, cY = torch.tensor(X, device="cuda"), torch.tensor(Y, device="cuda")
    model = LinearCCA(k=3).fit(cX, cY)
    assert model.x_weights_.is_cuda
    U, V = model.transform(torch.tensor(Xt, device="cuda"), torch.tensor(Yt, device="cuda"))
    assert U.is_cuda and V.is_cuda
    corr = model.correlations(torch.tensor(Xt, device="cuda"), torch.tensor(Yt, device="cuda"))
    np.testing.assert_allclose(corr.cpu().numpy(), ref.correlations(Xt, Yt), atol=1e-8)
    k = KernelCCA(k=2, nystrom=100).fit(cX, cY)
    assert k.transform_x(torch.tensor(Xt, device="cuda")).is_cuda


# --- kernel CCA ---------------------------------------------------------------------------------------


def test_linear_kernel_equals_ridge_linear_cca(views):
    X, Y, Xt, Yt = views
    reg = 0.05
    kcca = KernelCCA(k=3, kernel="linear", reg=reg).fit(X, Y)
    # kernel-cca's reg is relative to the total variance: LinearCCA's absolute ridge is reg·tr(Σ).
    lin = LinearCCA(k=3, reg=reg * np.trace(np.cov(X.T)), reg_y=reg * np.trace(np.cov(Y.T))).fit(X, Y)
    np.testing.assert_allclose(kcca.canonical_correlations_, lin.canonical_correlations_, atol=1e-6)
    for A, B in ((X, Y), (Xt, Yt)):
        np.testing.assert_allclose(kcca.correlations(A, B), lin.correlations(A, B), atol=1e-6, rtol=0)
        assert_equal_up_to_sign(kcca.transform_x(A), lin.transform_x(A), atol=1e-6)
        assert_equal_up_to_sign(kcca.transform_y(B), lin.transform_y(B), atol=1e-6)


def test_kernel_cca_defaults_do_not_overfit_noise():
    rng = np.random.default_rng(2)
    X, Y = rng.standard_normal((400, 10)), rng.standard_normal((400, 10))
    model = KernelCCA(k=2).fit(X, Y)
    train = model.correlations(X, Y)
    assert train.max() < 0.7  # an unregularised kernel CCA reaches 1 here
    assert KernelCCA(k=2, reg=1e-6).fit(X, Y).correlations(X, Y).min() > 0.95
    held_out = model.correlations(rng.standard_normal((400, 10)), rng.standard_normal((400, 10)))
    assert np.abs(held_out).max() < 0.25


def nonlinear_views(n, rng):
    """y = t² + noise against x = t + noise: no linear correlation, a strong nonlinear one."""
    t = rng.uniform(-2, 2, n)
    X = np.column_stack([t + 0.05 * rng.standard_normal(n), rng.standard_normal((n, 2))])
    Y = np.column_stack([t**2 + 0.1 * rng.standard_normal(n), rng.standard_normal((n, 2))])
    return X, Y


def test_rbf_kernel_cca_finds_a_nonlinear_relation_out_of_sample():
    rng = np.random.default_rng(3)
    X, Y = nonlinear_views(500, rng)
    Xt, Yt = nonlinear_views(500, rng)
    assert LinearCCA(k=1).fit(X, Y).correlations(Xt, Yt)[0] < 0.25
    exact = KernelCCA(k=1).fit(X, Y)
    assert exact.correlations(Xt, Yt)[0] > 0.8
    nystrom = KernelCCA(k=1, nystrom=150).fit(X, Y)
    assert nystrom.correlations(Xt, Yt)[0] == pytest.approx(exact.correlations(Xt, Yt)[0], abs=0.03)
    poly = KernelCCA(k=1, kernel="poly", degree=2).fit(X, Y)
    assert poly.correlations(Xt, Yt)[0] > 0.8


def test_out_of_sample_transform_is_blockwise_and_row_independent(views, monkeypatch):
    X, Y, Xt, Yt = views
    model = KernelCCA(k=3).fit(X, Y)
    full = model.transform_x(Xt)
    monkeypatch.setattr(cca_estimators, "_BLOCK_ELEMENTS", 7 * X.shape[0])  # blocks of 7 rows
    np.testing.assert_allclose(model.transform_x(Xt), full, atol=1e-12)
    np.testing.assert_allclose(model.transform_x(Xt[5:9]), full[5:9], atol=1e-12)
    # Training points projected out of sample reproduce the fitted (regularised) canonical correlations.
    U, V = model.transform(X, Y)
    cov = ((U - U.mean(0)) * (V - V.mean(0))).sum(0) / (len(X) - 1)
    np.testing.assert_allclose(cov, model.canonical_correlations_, atol=1e-8)
    tU = model.transform_x(torch.tensor(Xt, dtype=torch.float32))
    assert isinstance(tU, torch.Tensor) and tU.dtype == torch.float32


def test_nystrom_memory_is_bounded_by_n_times_m():
    rng = np.random.default_rng(4)
    n, m = 20_000, 100
    X = rng.standard_normal((n, 5))
    Y = X[:, :3] ** 2 + rng.standard_normal((n, 3))
    tracemalloc.start()
    try:
        model = KernelCCA(k=2, nystrom=m).fit(X, Y)
        U = model.transform_x(X)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert U.shape == (n, 2)
    # An n×n kernel would be 3.2 GB; the Nyström path holds a few n×m blocks (16 MB each).
    assert peak < 150e6, f"peak traced memory {peak / 1e6:.0f} MB"


def test_kernel_cca_parameter_errors(views):
    X, Y, _, _ = views
    with pytest.raises(ValueError, match="kernel must be one of"):
        KernelCCA(kernel="sigmoid").fit(X, Y)
    with pytest.raises(ValueError, match="nystrom"):
        KernelCCA(nystrom=0).fit(X, Y)
    with pytest.raises(ValueError, match="k must be an integer"):
        KernelCCA(k=7, kernel="linear").fit(X, Y)  # linear features have rank 6 in view 2


# --- Deep CCA loss ------------------------------------------------------------------------------------


def random_outputs(n, d1, d2, seed=0, dtype=torch.float64):
    """Two encoders' outputs sharing a 2-dimensional signal, view 1 linearly mixed."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    z = randn(n, 2)
    H1 = torch.cat([z, randn(n, d1 - 2)], 1) @ randn(d1, d1)
    H2 = torch.cat([z + 0.5 * randn(n, 2), randn(n, d2 - 2)], 1)
    return H1, H2


@pytest.mark.parametrize("k", [None, 2])
def test_dcca_at_reg_zero_equals_linear_cca_total_correlation(k):
    H1, H2 = random_outputs(200, 5, 4)
    loss = DCCALoss(k=k, reg=0.0)(H1, H2)
    assert loss.ndim == 0
    total = LinearCCA(k=k or 4, reg=0.0).fit(H1, H2).total_correlation_
    assert -loss.item() == pytest.approx(total, abs=1e-9)


def test_dcca_with_reg_matches_reference():
    H1, H2 = random_outputs(100, 5, 4, seed=1)
    D, _, _ = reference_cca(H1.numpy(), H2.numpy(), 3, reg=1e-2)
    assert -DCCALoss(k=3, reg=1e-2)(H1, H2).item() == pytest.approx(D.sum(), abs=1e-9)


def whitened(n, d, seed=0):
    """Centred outputs with covariance exactly I: every eigenvalue equal."""
    A = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    Q, _ = torch.linalg.qr(A - A.mean(0))  # orthonormal columns spanning centred ones stay centred
    return Q * (n - 1) ** 0.5


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dcca_gradient_is_finite_for_whitened_outputs_and_repeated_singular_values(dtype):
    H = whitened(64, 6).to(dtype)
    R, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1), dtype=dtype))
    for H2 in (H.clone(), H @ R):  # T = I or T = R: all singular values equal
        H1 = H.clone().requires_grad_(True)
        H2 = H2.clone().requires_grad_(True)
        reg = 1e-3
        loss = DCCALoss(reg=reg)(H1, H2)
        loss.backward()
        assert torch.isfinite(H1.grad).all() and torch.isfinite(H2.grad).all()
        assert -loss.item() == pytest.approx(6 / (1 + reg), rel=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dcca_batch_smaller_than_output_dimension(dtype):
    torch.manual_seed(0)
    net1, net2 = torch.nn.Linear(20, 32).to(dtype), torch.nn.Linear(20, 24).to(dtype)
    x = torch.randn(8, 20, dtype=dtype)
    loss = DCCALoss()(net1(x), net2(x + 0.1 * torch.randn(8, 20, dtype=dtype)))
    loss.backward()
    assert torch.isfinite(loss)
    assert -loss.item() <= 7 + 1e-4  # rank ≤ B − 1 = 7 after centring, each σ ≤ 1
    for p in (*net1.parameters(), *net2.parameters()):
        assert torch.isfinite(p.grad).all()


def test_dcca_float32_agrees_with_float64():
    H1, H2 = random_outputs(256, 10, 10, seed=2)
    l64 = DCCALoss()(H1, H2)
    h1, h2 = H1.float().requires_grad_(True), H2.float().requires_grad_(True)
    l32 = DCCALoss()(h1, h2)
    l32.backward()
    assert l32.dtype == torch.float32
    assert l32.item() == pytest.approx(l64.item(), rel=1e-4)
    assert torch.isfinite(h1.grad).all() and torch.isfinite(h2.grad).all()
    # Half precision is computed in float32 rather than failing in the factorisation.
    assert torch.isfinite(DCCALoss()(H1.bfloat16(), H2.bfloat16()))


def test_dcca_under_bf16_autocast_is_computed_in_float32():
    H1, H2 = (h.bfloat16().float() for h in random_outputs(1000, 10, 10, seed=4))  # bf16-representable
    expected = DCCALoss()(H1, H2).item()
    for dtype in (torch.float32, torch.bfloat16):
        h1, h2 = (h.to(dtype, copy=True).requires_grad_(True) for h in (H1, H2))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = DCCALoss()(h1, h2)
        loss.backward()
        assert loss.dtype == torch.float32 and loss.item() == pytest.approx(expected, rel=1e-5)
        assert torch.isfinite(h1.grad).all() and torch.isfinite(h2.grad).all()


@pytest.mark.parametrize("k, reg", [(None, 0.0), (2, 1e-2)])
def test_dcca_gradcheck(k, reg):
    H1, H2 = random_outputs(12, 3, 4, seed=3)
    H1.requires_grad_(True)
    H2.requires_grad_(True)
    assert torch.autograd.gradcheck(DCCALoss(k=k, reg=reg), (H1, H2), eps=1e-6, atol=1e-5)


def test_dcca_singular_batch_gives_nan_not_an_exception():
    H = torch.zeros(5, 3, dtype=torch.float64)
    H[:, 0] = torch.arange(5.0)
    loss = DCCALoss(reg=0.0)(H, torch.randn(5, 3, dtype=torch.float64))  # rank 1 covariance, reg 0
    assert torch.isnan(loss) or torch.isfinite(loss)  # never raises
    with pytest.raises(ValueError):
        DCCALoss(k=0)
    with pytest.raises(ValueError, match="same B"):
        DCCALoss()(torch.randn(4, 3), torch.randn(5, 3))


# --- evaluators ---------------------------------------------------------------------------------------


class IdentityModel:
    """The embeddings are the views themselves."""

    def embed_images(self, images):
        return torch.as_tensor(np.asarray(images))

    def embed_texts(self, texts):
        return torch.as_tensor(np.asarray(texts))


def make_context(X, Y, Xt, Yt, labels=None, labels_t=None):
    train = Split("train", X, Y, np.arange(len(X)), extras={} if labels is None else {"labels": labels})
    test = Split("test", Xt, Yt, np.arange(len(Xt)), extras={} if labels_t is None else {"labels": labels_t})
    return EvalContext(model=IdentityModel(), split=test, train_split=train,
                       dataset_info=DatasetInfo(name="toy", text_kind="vector"))


def test_canonical_correlation_evaluator(views):
    X, Y, Xt, Yt = views
    evaluator = CanonicalCorrelationEvaluator(k=3)
    metrics = evaluator.evaluate(make_context(X, Y, Xt, Yt))
    expected = LinearCCA(k=3).fit(X, Y).correlations(Xt, Yt)
    assert metrics["total_corr"] == pytest.approx(expected.sum(), abs=1e-10)
    for i in range(3):
        assert metrics[f"corr_{i + 1}"] == pytest.approx(expected[i], abs=1e-10)
    assert metrics["train_total_corr"] > metrics["total_corr"]
    assert all(evaluator.higher_is_better(m) for m in metrics)
    with pytest.raises(ValueError, match="exceeds"):
        CanonicalCorrelationEvaluator(k=7).evaluate(make_context(X, Y, Xt, Yt))


def test_canonical_correlation_pairs_texts_with_their_images(views):
    X, Y, Xt, Yt = views
    # Two texts per training image (text j describes image j mod n): pairs are (X[j mod n], Y2[j]).
    n = len(X)
    Y2 = np.concatenate([Y, Y + 0.3 * np.random.default_rng(6).standard_normal(Y.shape)])
    context = make_context(X, Y, Xt, Yt)
    context.train_split = Split("train", X, Y2, np.concatenate([np.arange(n)] * 2))
    metrics = CanonicalCorrelationEvaluator(k=2).evaluate(context)
    stacked = LinearCCA(k=2).fit(np.concatenate([X, X]), Y2)
    assert metrics["total_corr"] == pytest.approx(stacked.correlations(Xt, Yt).sum(), abs=1e-10)


@pytest.mark.parametrize("classifier, cca_k", [("logistic", None), ("svm", None), ("logistic", 3)])
def test_linear_probe(classifier, cca_k):
    rng = np.random.default_rng(5)
    centers = 3 * rng.standard_normal((4, 6))
    labels, labels_t = rng.integers(0, 4, 300), rng.integers(0, 4, 200)
    X = centers[labels] + rng.standard_normal((300, 6))
    Xt = centers[labels_t] + rng.standard_normal((200, 6))
    centers2 = 3 * rng.standard_normal((4, 5))  # the class is what the two views share
    Y = centers2[labels] + rng.standard_normal((300, 5))
    Yt = centers2[labels_t] + rng.standard_normal((200, 5))
    evaluator = LinearProbeEvaluator(classifier=classifier, cca_k=cca_k)
    metrics = evaluator.evaluate(make_context(X, Y, Xt, Yt, labels, labels_t))
    assert metrics["accuracy"] > 0.85
    assert metrics["error"] == pytest.approx(1 - metrics["accuracy"])
    assert not evaluator.higher_is_better("error") and evaluator.higher_is_better("accuracy")
    with pytest.raises(ValueError, match="labels"):
        evaluator.evaluate(make_context(X, Y, Xt, Yt))


def test_torch_backend_matches_numpy_backend(views, monkeypatch):
    """The code path CUDA tensors take (torch linear algebra), exercised on the CPU."""
    X, Y, Xt, Yt = views
    cpu_lin = LinearCCA(k=3, reg=0.1).fit(X, Y)
    cpu_ker = KernelCCA(k=2, nystrom=150).fit(X, Y)
    cpu_ker_exact = KernelCCA(k=2, kernel="poly").fit(X, Y)
    torch_everywhere(monkeypatch)
    lin = LinearCCA(k=3, reg=0.1).fit(X, Y)
    assert isinstance(lin.x_weights_, torch.Tensor)
    np.testing.assert_allclose(lin.canonical_correlations_, cpu_lin.canonical_correlations_, atol=1e-10)
    np.testing.assert_allclose(lin.transform_x(Xt), cpu_lin.transform_x(Xt), atol=1e-8)
    np.testing.assert_allclose(lin.correlations(Xt, Yt), cpu_lin.correlations(Xt, Yt), atol=1e-10)
    for model, ref in ((KernelCCA(k=2, nystrom=150).fit(X, Y), cpu_ker),
                       (KernelCCA(k=2, kernel="poly").fit(X, Y), cpu_ker_exact)):
        np.testing.assert_allclose(model.correlations(Xt, Yt), ref.correlations(Xt, Yt), atol=1e-7)
        assert_equal_up_to_sign(model.transform_y(Yt), ref.transform_y(Yt), atol=1e-6)
    with pytest.warns(RuntimeWarning):
        padded = LinearCCA(k=5).fit(X[:5], Y[:5])
    np.testing.assert_allclose(padded.canonical_correlations_[4:], 0.0)
