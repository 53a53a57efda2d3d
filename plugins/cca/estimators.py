"""Closed-form CCA estimators, sklearn style: linear (ridge) CCA and kernel CCA (notation in
:mod:`harness_plugins.cca`)."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch

from harness_plugins.cca.linalg import (_as_arrays, _centred_grams, _check_pair, _like, _ops, _top_svd,
                                        _training_pearson, _TwoViewEstimator, _whitener)

# --- linear CCA ---------------------------------------------------------------------------------------


class LinearCCA(_TwoViewEstimator):
    """Linear CCA with optional ridge regularisation (closed form, CPU or GPU).

    Convention: Σ₁₁ + reg·I and Σ₂₂ + reg_y·I, with Σ the (n−1)-normalised covariance of the centred
    views; T = Σ₁₁^{-1/2} Σ₁₂ Σ₂₂^{-1/2} = U D Vᵀ; W₁ = Σ₁₁^{-1/2} U_k, W₂ = Σ₂₂^{-1/2} V_k; the total
    correlation is Σᵢ₌₁ᵏ Dᵢᵢ. ``transform`` returns (X − x̄)W₁ and (Y − ȳ)W₂ with the training means.
    At reg = 0 the training projections have unit variance and ``correlations`` on the training data
    equals D_k, in descending order. With reg > 0 the Pearson correlations of the projections differ
    from D (each is ≥ Dᵢᵢ, and the ridge shrinks D most for low-variance directions), so the k
    components (the top k of D) are put in descending order of their training Pearson correlation:
    ``correlations`` on the training data is descending either way.

    Mapping to other libraries: scikit-learn's ``CCA`` is the reg = 0 case (its NIPALS iterations converge
    to the same components); cca-zoo's ``RidgeCCA(shrinkage=c)`` constrains wᵀ((1−c)Σ + cI)w = 1 with
    Σ (n−1)-normalised too, which is reg = c/(1−c) (same weights up to scale).

    Rank-deficient covariances (constant pixels, duplicated features, d > n) work at reg = 0: directions
    whose eigenvalue is below λ_max · d · eps(dtype) are left out of the inverse square root. If fewer
    than ``k`` directions remain the surplus components are zero (correlation 0) and a warning says so.

    Parameters
    ----------
    k : number of canonical components.
    reg : ridge added to the view-1 covariance (absolute, in the units of the data's variance).
    reg_y : ridge added to the view-2 covariance; ``None`` means ``reg``.

    Fitted attributes (numpy arrays, or tensors on the GPU for a CUDA fit): ``x_mean_``, ``y_mean_``,
    ``x_weights_`` (d₁×k), ``y_weights_`` (d₂×k); ``canonical_correlations_`` (numpy, [k]: each
    component's Dᵢᵢ, in the components' order — descending at reg = 0, not necessarily with reg > 0) and
    ``total_correlation_`` (their sum). Each component's sign makes the largest-|w| entry of its
    x-weights positive.
    """

    def __init__(self, k: int = 2, reg: float = 0.0, reg_y: float | None = None):
        self.k = k
        self.reg = reg
        self.reg_y = reg_y

    def _check_params(self, d1: int, d2: int) -> tuple[float, float]:
        if not (isinstance(self.k, (int, np.integer)) and self.k >= 1):
            raise ValueError(f"k must be a positive integer, got {self.k!r}")
        if self.k > min(d1, d2):
            raise ValueError(f"k={self.k} exceeds the smaller view's dimension min({d1}, {d2})")
        reg = float(self.reg)
        reg_y = reg if self.reg_y is None else float(self.reg_y)
        if not (reg >= 0 and reg_y >= 0):
            raise ValueError(f"reg and reg_y must be >= 0, got {reg} and {reg_y}")
        return reg, reg_y

    def fit(self, X: Any, Y: Any) -> "LinearCCA":
        (X, Y), _ = _as_arrays(X, Y)
        _check_pair(X, Y)
        xp = _ops(X)
        n, d1 = X.shape
        d2 = Y.shape[1]
        reg, reg_y = self._check_params(d1, d2)
        self.x_mean_, self.y_mean_, Sxx, Syy, Sxy = _centred_grams(X, Y)
        A = _whitener(Sxx, reg)  # d₁×r₁ with Aᵀ Σ₁₁ A = I
        B = _whitener(Syy, reg_y)  # d₂×r₂
        if min(A.shape[1], B.shape[1]) == 0:
            raise ValueError("linear-cca: a view has no variance (every feature is constant)")
        # T in the whitened bases: Aᵀ Σ₁₂ B has the singular values of Σ₁₁^{-1/2} Σ₁₂ Σ₂₂^{-1/2}
        # (whiteners differ by an orthogonal factor), and A U_T, B V_T are the canonical weights.
        T = A.T @ Sxy @ B
        U, D, V = _top_svd(T, min(self.k, *T.shape))
        r = D.shape[0]
        Wx = A @ U
        Wy = B @ V
        if reg > 0 or reg_y > 0:
            # The ridge shrinks D more for low-variance directions, so the training Pearson correlations
            # (≥ Dᵢᵢ) can come out of order; sort by them (reg = 0 needs nothing: there they equal D).
            order = xp.argsort_descending(_training_pearson(Wx, Wy, Sxx, Syy, Sxy))
            Wx, Wy, D = Wx[:, order], Wy[:, order], D[order]
        if r < self.k:
            warnings.warn(f"linear-cca: only {r} of k={self.k} canonical directions have non-zero "
                          "variance in both views; the remaining components are zero", RuntimeWarning,
                          stacklevel=2)
            Wx = xp.cat([Wx, xp.zeros((d1, self.k - r), Wx)], 1)
            Wy = xp.cat([Wy, xp.zeros((d2, self.k - r), Wy)], 1)
            D = xp.cat([D[:r], xp.zeros((self.k - r,), D)], 0)
        # Deterministic signs (an SVD's are arbitrary): largest-|w| entry of each x-weight positive.
        pivot = abs(Wx).argmax(0)[None, :]
        sign = xp.sign(xp.take_along(Wx, pivot, 0))
        sign = xp.where(sign == 0, 1.0, sign)
        self.x_weights_ = Wx * sign
        self.y_weights_ = Wy * sign
        self.canonical_correlations_ = np.asarray(_like(D[: self.k], np.zeros(0)))
        self.total_correlation_ = float(self.canonical_correlations_.sum())
        return self

    def _transform_view(self, Z: Any, view: int) -> Any:
        mean, W = (self.x_mean_, self.x_weights_) if view == 0 else (self.y_mean_, self.y_weights_)
        if Z.ndim != 2 or Z.shape[1] != W.shape[0]:
            raise ValueError(f"expected an array [n, {W.shape[0]}] for view {view + 1}, got shape {tuple(Z.shape)}")
        return (Z - _like(mean, Z)) @ _like(W, Z)


# --- kernel CCA ---------------------------------------------------------------------------------------

_KERNELS = ("rbf", "linear", "poly")
_BLOCK_ELEMENTS = 1 << 22  # kernel rows are evaluated in blocks of about this many entries (32 MiB f64)


def _kernel(A: Any, B: Any, kind: str, gamma: float, degree: int, coef0: float) -> Any:
    """k(aᵢ, bⱼ) for all rows: linear aᵀb; poly (γ aᵀb + coef0)^degree; rbf exp(−γ‖a − b‖²)."""
    G = A @ B.T
    if kind == "linear":
        return G
    # In-place updates (valid for numpy and torch alike) keep a single block-sized buffer.
    if kind == "poly":
        G *= gamma
        G += coef0
        G **= degree
        return G
    G *= -2.0  # ‖a − b‖² = ‖a‖² + ‖b‖² − 2aᵀb
    G += (A * A).sum(1)[:, None]
    G += (B * B).sum(1)[None, :]
    G[G < 0] = 0.0  # rounding can make ‖a − a‖² slightly negative
    G *= -gamma
    return _ops(G).exp_(G)


class _KernelFeatures:
    """An explicit feature map φ with φ(x)·φ(x') = k(x, x') on the span of the training points.

    Exact: eigendecompose the centred training Gram matrix K̃ = QΛQᵀ; φ(x) = (k(x, X) − k̄) Q Λ^{-1/2},
    with k̄ K's column mean; on training points this is QΛ^{1/2}, centred, with covariance Λ/(n−1).
    Nyström: m landmarks Z, K_ZZ = QΛQᵀ, φ(x) = k(x, Z) Q Λ^{-1/2} — memory O(n·m), never n×n.
    Eigenvalues below λ_max · m · eps(dtype) are dropped, as in ``_inverse_sqrt_factor``.
    """

    def __init__(self, X: Any, kind: str, gamma: float, degree: int, coef0: float, landmarks: Any):
        xp = _ops(X)
        self.params = (kind, gamma, degree, coef0)
        exact = landmarks is None
        self.landmarks = X if exact else landmarks
        K = _kernel(self.landmarks, self.landmarks, *self.params)
        self.kbar = None
        if exact:
            self.kbar = K.mean(0)
            K -= self.kbar[None, :]
            K -= self.kbar[:, None]
            K += self.kbar.mean()
        lam, Q = xp.eigh(K)
        del K
        keep = lam > max(float(lam.max()), 0.0) * lam.shape[0] * xp.eps(lam)
        Q, lam = Q[:, keep], lam[keep]
        self.map = Q / xp.sqrt(lam)  # m×r
        self.train_features = Q * xp.sqrt(lam) if exact else self.rows(X, self.map)

    def rows(self, Z: Any, project: Any) -> Any:
        """(k(Z, landmarks) − k̄) @ project, in row blocks so memory stays O(block · m)."""
        xp = _ops(Z)
        step = max(1, _BLOCK_ELEMENTS // max(self.landmarks.shape[0], 1))
        out = []
        for i in range(0, Z.shape[0], step):
            K = _kernel(Z[i:i + step], self.landmarks, *self.params)
            if self.kbar is not None:
                K -= self.kbar
            out.append(K @ project)
        return xp.cat(out, 0) if out else xp.zeros((0, project.shape[1]), project)


class KernelCCA(_TwoViewEstimator):
    """Kernel CCA (rbf, linear, poly), exact or with Nyström landmarks; out-of-sample transform.

    Kernel CCA is linear ridge CCA on an explicit feature map of each view: the exact map spans the
    centred training Gram matrix (time O(n³), memory O(n²): up to a few thousand samples), the Nyström
    map ``nystrom`` = m random landmark pairs (time O(n·m²), memory O(n·m), so it scales further). New
    points are projected by evaluating the kernel against the training points (or the landmarks), in
    row blocks of bounded memory.

    Kernels: ``linear`` xᵀz; ``poly`` (γ xᵀz + coef0)^degree; ``rbf`` exp(−γ‖x − z‖²). ``gamma=None``
    means 1 / (d · Var(X)) per view (scikit-learn's "scale"), so the default adapts to the data's scale.

    Regularisation convention: ``reg`` is relative to each view's total feature-space variance — the
    linear CCA on the features uses Σ_φφ + reg · tr(Σ_φφ) · I (Σ (n−1)-normalised). With the linear
    kernel and the exact map this is exactly ``LinearCCA(reg=reg·tr Σ₁₁, reg_y=reg·tr Σ₂₂)``. Some ridge
    is required: with n features per view any training pairs correlate perfectly. The default 0.1
    shrinks every direction holding much less than a tenth of the variance, which keeps the training
    correlations of independent noise views near 0.4 instead of 1 (n = 600).

    The components are ordered as ``LinearCCA`` orders regularised ones: by descending Pearson
    correlation of the training projections, so ``correlations`` on the training data is descending.

    Fitted attributes: ``gamma_x_``, ``gamma_y_``, ``canonical_correlations_`` (the regularised Dᵢᵢ of the
    feature-space CCA, in the components' order, which need not be descending) and ``total_correlation_``.
    """

    def __init__(self, k: int = 2, kernel: str = "rbf", reg: float = 0.1, gamma: float | None = None,
                 degree: int = 3, coef0: float = 1.0, nystrom: int | None = None, random_state: int = 0):
        self.k = k
        self.kernel = kernel
        self.reg = reg
        self.gamma = gamma
        self.degree = degree
        self.coef0 = coef0
        self.nystrom = nystrom
        self.random_state = random_state

    def _gamma(self, X: Any) -> float:
        if self.gamma is not None:
            return float(self.gamma)
        var = float(((X - X.mean()) ** 2).mean())
        return 1.0 / (X.shape[1] * var) if var > 0 else 1.0

    def fit(self, X: Any, Y: Any) -> "KernelCCA":
        if self.kernel not in _KERNELS:
            raise ValueError(f"kernel must be one of {_KERNELS}, got {self.kernel!r}")
        if not self.reg >= 0:
            raise ValueError(f"reg must be >= 0, got {self.reg}")
        if self.nystrom is not None and not (isinstance(self.nystrom, (int, np.integer)) and self.nystrom >= 1):
            raise ValueError(f"nystrom must be None or a positive number of landmarks, got {self.nystrom!r}")
        (X, Y), _ = _as_arrays(X, Y)
        _check_pair(X, Y)
        n = X.shape[0]
        idx = None
        if self.nystrom is not None and self.nystrom < n:
            idx = np.sort(np.random.default_rng(self.random_state).choice(n, size=self.nystrom, replace=False))
            if isinstance(X, torch.Tensor):
                idx = torch.from_numpy(idx).to(X.device)
        self.gamma_x_ = self._gamma(X)
        self.gamma_y_ = self._gamma(Y)
        # The same landmark rows in both views, so that landmarks stay pairs.
        fx = _KernelFeatures(X, self.kernel, self.gamma_x_, self.degree, self.coef0,
                             None if idx is None else X[idx])
        fy = _KernelFeatures(Y, self.kernel, self.gamma_y_, self.degree, self.coef0,
                             None if idx is None else Y[idx])
        Px, Py = fx.train_features, fy.train_features
        rank = min(Px.shape[1], Py.shape[1])
        if not (isinstance(self.k, (int, np.integer)) and 1 <= self.k <= rank):
            raise ValueError(f"k must be an integer in [1, {rank}] (the smaller view's feature-space "
                             f"rank), got {self.k!r}")
        trace_x = float(((Px - Px.mean(0)) ** 2).sum()) / (n - 1)
        trace_y = float(((Py - Py.mean(0)) ** 2).sum()) / (n - 1)
        cca = LinearCCA(k=self.k, reg=self.reg * trace_x, reg_y=self.reg * trace_y).fit(Px, Py)
        # Fold feature map, centring and CCA weights into one (m × k) matrix and an offset per view.
        self._features = (fx, fy)
        self._proj = (fx.map @ cca.x_weights_, fy.map @ cca.y_weights_)
        self._offset = (cca.x_mean_ @ cca.x_weights_, cca.y_mean_ @ cca.y_weights_)
        self.canonical_correlations_ = cca.canonical_correlations_
        self.total_correlation_ = cca.total_correlation_
        return self

    def _transform_view(self, Z: Any, view: int) -> Any:
        features = self._features[view]
        home = features.landmarks  # kernels are evaluated where the training points live
        if Z.ndim != 2 or Z.shape[1] != home.shape[1]:
            raise ValueError(f"expected an array [n, {home.shape[1]}] for view {view + 1}, got shape {tuple(Z.shape)}")
        out = features.rows(_like(Z, home), self._proj[view]) - self._offset[view]
        return _like(out, Z)
