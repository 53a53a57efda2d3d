"""The CCA family: linear (ridge) CCA, kernel CCA, the Deep CCA and DCCAE losses, CCA-based evaluators.

Notation used throughout (the lecture's and Andrew et al. 2013's): for two views X ∈ ℝ^{n×d₁} and
Y ∈ ℝ^{n×d₂} whose row i is a pair,

    Σ₁₁ = X̄ᵀX̄/(n−1) + r₁I,   Σ₂₂ = ȲᵀȲ/(n−1) + r₂I,   Σ₁₂ = X̄ᵀȲ/(n−1)      (X̄, Ȳ centred)
    T = Σ₁₁^{-1/2} Σ₁₂ Σ₂₂^{-1/2} = U D Vᵀ
    W₁ = Σ₁₁^{-1/2} U_k,   W₂ = Σ₂₂^{-1/2} V_k,   total correlation = Σᵢ₌₁ᵏ Dᵢᵢ

Estimators accept numpy arrays or torch tensors and return the same kind (a CUDA input keeps the
computation and the outputs on its device). They compute in float64 unless every input is a float32
(or half) array, in which case they compute in float32.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from torch import nn

from harness import hookimpl
from harness.components import EvalContext, Evaluator
from harness_plugins.losses import _full_precision

# --- array plumbing -----------------------------------------------------------------------------------
#
# CPU inputs (numpy arrays and CPU tensors) are computed with numpy only, CUDA tensors with torch
# on their device. Mixing the two on the CPU is slow: numpy's OpenBLAS and torch's MKL/OpenMP keep
# separate spinning thread pools that fight over the cores (10× slowdowns were measured on 2 cores),
# and numpy's ``a.T @ a`` calls BLAS syrk, half the work of the general product torch uses.

_LOW_PRECISION = (np.float32, np.float16, torch.float32, torch.float16, torch.bfloat16)


class _NumpyOps:
    @staticmethod
    def gram(A, B=None):
        return A.T @ (A if B is None else B)  # numpy dispatches a.T @ a to syrk

    eigh = staticmethod(np.linalg.eigh)
    sqrt = staticmethod(np.sqrt)
    sign = staticmethod(np.sign)
    where = staticmethod(np.where)

    @staticmethod
    def svd(T):
        return np.linalg.svd(T, full_matrices=False)

    @staticmethod
    def exp_(A):
        return np.exp(A, out=A)

    @staticmethod
    def cat(arrays, axis):
        return np.concatenate(arrays, axis=axis)

    @staticmethod
    def zeros(shape, like):
        return np.zeros(shape, dtype=like.dtype)

    @staticmethod
    def take_along(A, index, axis):
        return np.take_along_axis(A, index, axis)

    @staticmethod
    def eps(A):
        return float(np.finfo(A.dtype).eps)

    @staticmethod
    def argsort_descending(a):
        return np.argsort(-a, kind="stable")  # stable: ties keep the SVD's order


class _TorchOps:
    @staticmethod
    def gram(A, B=None):
        return A.T @ (A if B is None else B)

    eigh = staticmethod(torch.linalg.eigh)
    sqrt = staticmethod(torch.sqrt)
    sign = staticmethod(torch.sign)
    where = staticmethod(torch.where)

    @staticmethod
    def svd(T):
        return torch.linalg.svd(T, full_matrices=False)

    @staticmethod
    def exp_(A):
        return A.exp_()

    @staticmethod
    def cat(arrays, axis):
        return torch.cat(arrays, axis)

    @staticmethod
    def zeros(shape, like):
        return like.new_zeros(shape)

    @staticmethod
    def take_along(A, index, axis):
        return torch.take_along_dim(A, index, axis)

    @staticmethod
    def eps(A):
        return torch.finfo(A.dtype).eps

    @staticmethod
    def argsort_descending(a):
        return torch.argsort(a, descending=True, stable=True)


def _ops(A):
    return _TorchOps if isinstance(A, torch.Tensor) else _NumpyOps


def _compute_dtype(*arrays: Any) -> np.dtype:
    """float32 when every input is a float32/half array, float64 otherwise (integers included)."""
    return np.dtype(np.float32) if all(a.dtype in _LOW_PRECISION for a in arrays) else np.dtype(np.float64)


class _Kind:
    """Where results go back: numpy arrays, or torch tensors on ``device``."""

    def __init__(self, as_torch: bool, device: torch.device | None):
        self.as_torch, self.device = as_torch, device

    def give_back(self, A):
        if not self.as_torch:
            return A if isinstance(A, np.ndarray) else A.cpu().numpy()
        return (A if isinstance(A, torch.Tensor) else torch.from_numpy(A)).to(self.device)


def _as_arrays(*arrays: Any) -> tuple[list[Any], _Kind]:
    """Inputs in the compute backend with one float dtype, and where the results must go back.

    numpy arrays and CPU tensors become numpy arrays (no copy when the dtype already matches); if any
    input is a CUDA tensor, all inputs become tensors on its device. Results go back as tensors on the
    first tensor input's device if any input is a tensor, as numpy arrays otherwise.
    """
    arrays = tuple(a.detach() if isinstance(a, torch.Tensor) else np.asarray(a) for a in arrays)
    dtype = _compute_dtype(*arrays)
    tensors = [a for a in arrays if isinstance(a, torch.Tensor)]
    kind = _Kind(bool(tensors), tensors[0].device if tensors else None)
    cuda = next((t.device for t in tensors if t.device.type != "cpu"), None)
    out = []
    for a in arrays:
        if cuda is not None:
            t = a if isinstance(a, torch.Tensor) else torch.from_numpy(a)
            out.append(t.to(device=cuda, dtype=getattr(torch, dtype.name)))
        else:
            a = a.cpu().numpy() if isinstance(a, torch.Tensor) else a
            out.append(np.ascontiguousarray(a, dtype=dtype))
    return out, kind


def _like(A: Any, ref: Any) -> Any:
    """A (a fitted parameter) in ``ref``'s backend, device and dtype."""
    if isinstance(ref, torch.Tensor):
        A = A if isinstance(A, torch.Tensor) else torch.from_numpy(A)
        return A.to(device=ref.device, dtype=ref.dtype)
    A = A.cpu().numpy() if isinstance(A, torch.Tensor) else A
    return A.astype(ref.dtype, copy=False)


def _pearson(U: Any, V: Any) -> Any:
    """Column-wise Pearson correlation; a constant column correlates 0 (not NaN) with anything."""
    xp = _ops(U)
    U = U - U.mean(0)
    V = V - V.mean(0)
    cov = (U * V).sum(0)
    denom = xp.sqrt((U * U).sum(0) * (V * V).sum(0))
    safe = xp.where(denom > 0, denom, 1.0)
    return xp.where(denom > 0, cov / safe, 0.0)


def _inverse_sqrt_factor(S: Any, reg: float) -> Any:
    """A = Q_r Λ_r^{-1/2} for S + reg·I = QΛQᵀ, so that Aᵀ(S + reg·I)A = I (a reduced whitener).

    Eigen-directions with λ ≤ λ_max · d · eps(dtype) are dropped (a pseudo-inverse square root): at
    reg = 0 a constant pixel or a linearly dependent feature gives a zero eigenvalue that rounding turns
    into ±eps-sized noise, and inverting that noise would manufacture perfect spurious correlations.
    The floor is relative to the spectrum and the dtype so rescaling the data never changes the result.
    """
    xp = _ops(S)
    lam, Q = xp.eigh(S)
    lam = lam + reg
    tol = max(float(lam.max()), 0.0) * S.shape[0] * xp.eps(S)
    keep = lam > tol
    return Q[:, keep] / xp.sqrt(lam[keep])


def _whitener(S: Any, reg: float) -> Any:
    """A with Aᵀ(S + reg·I)A = I: L⁻ᵀ from a Cholesky factor when S + reg·I is safely full rank,
    else ``_inverse_sqrt_factor``'s pseudo-inverse square root.

    Any whitener gives T the same singular values, and L⁻ᵀ costs ~2 ms at d = 256 against ~4 ms for an
    eigendecomposition. "Safely full rank" uses bounds that hold for any symmetric positive definite
    matrix, λ_min ≥ 1/tr(S⁻¹) and λ_max ≤ tr(S), with tr(S⁻¹) = ‖L⁻¹‖²_F: when 1/tr(S⁻¹) clears the
    eigen-path's floor (λ_max · d · eps) a hundredfold, no direction would have been dropped there.
    """
    if isinstance(S, np.ndarray):
        d = S.shape[0]
        S_reg = S + reg * np.eye(d, dtype=S.dtype)
        try:
            L_inv = np.linalg.inv(np.linalg.cholesky(S_reg))
        except np.linalg.LinAlgError:
            L_inv = None
        if L_inv is not None and np.isfinite(L_inv).all():
            lam_min_bound = 1.0 / float(np.einsum("ij,ij->", L_inv, L_inv))
            lam_max_bound = float(np.trace(S_reg))
            if lam_min_bound > 100.0 * lam_max_bound * d * np.finfo(S.dtype).eps:
                return L_inv.T
    return _inverse_sqrt_factor(S, reg)


def _centred_grams(X: Any, Y: Any) -> tuple[Any, Any, Any, Any, Any]:
    """Means and the (n−1)-normalised covariances (Σ₁₁, Σ₂₂, Σ₁₂) of two views.

    float64 numpy inputs skip the centred copies (20 MB each at n = 10⁴, d = 256, most of the cost being
    page faults) and correct the raw products, XᵀX − n·x̄x̄ᵀ, when that is safe: the cancellation costs
    about log₁₀(1 + x̄ⱼ²/varⱼ) digits, so any feature with x̄ⱼ² > 10³·varⱼ (a constant pixel, a large
    offset) sends the computation through explicitly centred copies, as float32 always does.
    """
    xp = _ops(X)
    n = X.shape[0]
    if isinstance(X, np.ndarray) and X.dtype == np.float64:
        ones = np.full(n, 1.0 / n)
        mx, my = ones @ X, ones @ Y  # BLAS gemv: several times faster than X.mean(0)
        Sxx = X.T @ X
        Syy = Y.T @ Y
        Sxx -= n * np.outer(mx, mx)
        Syy -= n * np.outer(my, my)
        safe = all((m * m <= 1e3 * np.maximum(np.diagonal(S), 0.0) / n).all()
                   for m, S in ((mx, Sxx), (my, Syy)))
        if safe:
            Sxy = X.T @ Y
            Sxy -= n * np.outer(mx, my)
            return mx, my, Sxx / (n - 1), Syy / (n - 1), Sxy / (n - 1)
    mx, my = X.mean(0), Y.mean(0)
    # Centre before forming the covariances: XᵀX − n·x̄x̄ᵀ would cancel catastrophically in float32.
    Xc, Yc = X - mx, Y - my
    return mx, my, xp.gram(Xc) / (n - 1), xp.gram(Yc) / (n - 1), xp.gram(Xc, Yc) / (n - 1)


def _top_svd(T: Any, k: int) -> tuple[Any, Any, Any]:
    """The top k singular triplets (U_k, D_k, V_k) of T, D descending.

    On the CPU through the symmetric eigenproblem of the smaller Gram matrix TᵀT (or TTᵀ), about half
    the cost of an SVD of T. Squaring loses accuracy only for σ ≲ eps^{1/4} · σ₁ (for those the left
    vectors T v / σ would be noisy), so if any of the top k is that small a full SVD is used instead.
    numpy's own LAPACK on purpose: scipy.linalg ships a second OpenBLAS whose thread pool contends with
    numpy's (a 256×256 Cholesky took 100 ms right after a numpy product on 2 busy cores).
    """
    if isinstance(T, np.ndarray) and 0 < k <= min(T.shape):
        wide = T.shape[0] < T.shape[1]
        Tt = T.T if wide else T  # tall: eigen-decompose the r×r Gram matrix of its columns
        lam, V = np.linalg.eigh(Tt.T @ Tt)
        lam, V = lam[::-1][:k], V[:, ::-1][:, :k]
        if lam[0] > 0 and lam[-1] > np.sqrt(np.finfo(T.dtype).eps) * lam[0]:
            D = np.sqrt(lam)
            U = (Tt @ V) / D
            return (V, D, U) if wide else (U, D, V)
    U, D, Vh = _ops(T).svd(T)
    return U[:, :k], D[:k], Vh[:k].T


def _training_pearson(Wx: Any, Wy: Any, Sxx: Any, Syy: Any, Sxy: Any) -> Any:
    """Per-column Pearson correlation of the training projections XWx, YWy, from the covariances.

    wₓᵀΣ₁₂w_y / √(wₓᵀΣ₁₁wₓ · w_yᵀΣ₂₂w_y): O(d²k) instead of projecting all n rows, and free of the
    cancellation that centring the projections of offset data would cost.
    """
    xp = _ops(Wx)
    cov = ((Sxy @ Wy) * Wx).sum(0)
    denom = xp.sqrt(((Sxx @ Wx) * Wx).sum(0) * ((Syy @ Wy) * Wy).sum(0))
    safe = xp.where(denom > 0, denom, 1.0)
    return xp.where(denom > 0, cov / safe, 0.0)


def _check_pair(X: Any, Y: Any) -> None:
    if X.ndim != 2 or Y.ndim != 2:
        raise ValueError(f"expected two 2-D arrays [n, d]; got shapes {tuple(X.shape)} and {tuple(Y.shape)}")
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X and Y must have the same number of rows (pairs); got {X.shape[0]} and {Y.shape[0]}")
    if X.shape[0] < 2:
        raise ValueError("CCA needs at least 2 samples")


class _TwoViewEstimator(BaseEstimator):
    """Shared transform/correlations plumbing: subclasses implement ``_transform_view(Z, view)``."""

    def _transform_view(self, Z: Any, view: int) -> Any:
        raise NotImplementedError

    def _apply(self, Z: Any, view: int) -> Any:
        (Z,), kind = _as_arrays(Z)
        return kind.give_back(self._transform_view(Z, view))

    def transform_x(self, X: Any) -> Any:
        """View-1 projections [n, k]."""
        return self._apply(X, 0)

    def transform_y(self, Y: Any) -> Any:
        """View-2 projections [n, k]."""
        return self._apply(Y, 1)

    def transform(self, X: Any, Y: Any) -> tuple[Any, Any]:
        """(U, V): both views projected with the training means and fitted weights."""
        return self.transform_x(X), self.transform_y(Y)

    def fit_transform(self, X: Any, Y: Any) -> tuple[Any, Any]:
        return self.fit(X, Y).transform(X, Y)

    def correlations(self, X: Any, Y: Any) -> Any:
        """Per-component Pearson correlation of the projections of (X, Y), array [k]."""
        (X, Y), kind = _as_arrays(X, Y)
        _check_pair(X, Y)
        return kind.give_back(_pearson(self._transform_view(X, 0), self._transform_view(Y, 1)))

    def score(self, X: Any, Y: Any) -> float:
        """Total correlation (sum of ``correlations``) on (X, Y); higher is better."""
        return float(self.correlations(X, Y).sum())


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


# --- Deep CCA loss ------------------------------------------------------------------------------------


class DCCALoss(nn.Module):
    """Deep CCA objective (Andrew et al. 2013): minus the sum of the top k singular values of T.

    L = −Σᵢ₌₁ᵏ σᵢ(T) on the batch, Σ₁₁, Σ₂₂ the (n−1)-normalised covariances of the centred outputs
    plus reg·I. T is formed with Cholesky factors, T' = L₁⁻¹ Σ₁₂ L₂⁻ᵀ (Σ = LLᵀ), which has the singular
    values of Σ₁₁^{-1/2} Σ₁₂ Σ₂₂^{-1/2} (L⁻¹Σ^{1/2} is orthogonal). This keeps the gradient finite
    where the eigendecomposition route is not: the Cholesky backward has no 1/(λᵢ − λⱼ) terms (already
    whitened outputs have all-equal eigenvalues), and the singular values' gradient U diag(1ₖ) Vᵀ has
    none either (perfectly correlated views have all-equal σ). With reg > 0 it is also finite when the
    batch is smaller than the output dimension. At reg = 0 on a well-conditioned batch −L equals the
    ``linear-cca`` total correlation of that batch.

    A tiny floor eps(dtype)·tr(Σ) is added with reg so Cholesky never sees an exactly singular matrix;
    if a factorisation still fails the loss is NaN (the runner marks the run diverged) rather than
    raising mid-epoch. Half-precision inputs are computed in float32, with autocast switched off: a
    bf16 autocast would otherwise run the covariance products in bf16 (−7.63 instead of −8.63 measured on
    1000 × 10 outputs).

    Note the minibatch bias: the batch estimate of the total correlation is biased upwards — for two
    independent d-dimensional views and batch B it is about 0.85·d·√(d/B) while d ≪ B (2.7 for d = 10,
    B = 100) and tends to d as B approaches d — so use large batches or full-batch L-BFGS.
    """

    def __init__(self, k: int | None = None, reg: float = 1e-3):
        super().__init__()
        if k is not None and not (isinstance(k, int) and k >= 1):
            raise ValueError(f"k must be None (all components) or a positive integer, got {k!r}")
        if not reg >= 0:
            raise ValueError(f"reg must be >= 0, got {reg}")
        self.k = k
        self.reg = reg

    def _factor(self, H: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        S = H.T @ H / (n - 1)
        floor = torch.finfo(S.dtype).eps * torch.diagonal(S).sum().detach()
        S = S + (self.reg + floor) * torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
        L, info = torch.linalg.cholesky_ex(S)
        return L, info

    @_full_precision
    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(torch.promote_types(image_emb.dtype, text_emb.dtype), torch.float32)
        H1, H2 = image_emb.to(dtype), text_emb.to(dtype)
        if H1.ndim != 2 or H2.ndim != 2 or H1.shape[0] != H2.shape[0]:
            raise ValueError(f"dcca expects two [B, D] tensors with the same B, got "
                             f"{tuple(H1.shape)} and {tuple(H2.shape)}")
        n = H1.shape[0]
        if n < 2:
            raise ValueError("dcca needs a batch of at least 2 pairs")
        H1 = H1 - H1.mean(0)
        H2 = H2 - H2.mean(0)
        L1, info1 = self._factor(H1, n)
        L2, info2 = self._factor(H2, n)
        S12 = H1.T @ H2 / (n - 1)
        T = torch.linalg.solve_triangular(L1, S12, upper=False)  # L₁⁻¹ Σ₁₂
        T = torch.linalg.solve_triangular(L2, T.T, upper=False).T  # (L₁⁻¹ Σ₁₂) L₂⁻ᵀ
        sigma = torch.linalg.svdvals(T)
        k = sigma.shape[0] if self.k is None else min(self.k, sigma.shape[0])
        loss = -sigma[:k].sum()
        # No host sync: a failed factorisation turns the loss into NaN instead of raising.
        ok = (info1 == 0) & (info2 == 0)
        return torch.where(ok, loss, torch.full_like(loss, math.nan))


class DCCAELoss(nn.Module):
    """Deep CCA autoencoders (DCCAE, Wang et al. 2015): Deep CCA plus a decoder reconstructing each view.

    L = −Σᵢ₌₁ᵏ σᵢ(T(f(X), g(Y))) + λ · (1/n) Σⱼ (‖xⱼ − p(f(xⱼ))‖² + ‖yⱼ − q(g(yⱼ))‖²)

    The first term is the ``dcca`` loss (same ``k`` and ``reg``); ‖·‖² sums over the input features and
    the mean is over the n pairs of the batch, so λ = ``lambda_recon`` weighs a per-sample squared error
    in the units of the prepared inputs (``images``/``texts``, flattened to [n, d]). The decoders p and q
    belong to the loss (their weights are trained with the encoders): MLPs from the embedding
    (``embed_dim``) through ``hidden`` to the view's input size — ``image_dim`` and ``text_dim``, by
    default prod(``image_shape``) and ``text_dim`` of a dataset whose two views are feature vectors —
    with ``activation`` between layers and a linear output (``output: sigmoid`` for inputs in [0, 1]).
    λ = 0 is Deep CCA with idle decoders; large λ makes the embeddings autoencoder codes.
    """

    def __init__(self, lambda_recon: float = 1e-3, hidden: list[int] | tuple[int, ...] = (256,),
                 activation: str = "relu", output: str = "linear", k: int | None = None,
                 reg: float = 1e-3, image_dim: int | None = None, text_dim: int | None = None,
                 embed_dim: int = 64, dataset_info: Any = None):
        super().__init__()
        if not lambda_recon >= 0:
            raise ValueError(f"lambda_recon must be >= 0, got {lambda_recon}")
        acts = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}
        if activation not in acts:
            raise ValueError(f"activation must be one of {', '.join(acts)}, got {activation!r}")
        if output not in ("linear", "sigmoid"):
            raise ValueError(f"output must be 'linear' or 'sigmoid', got {output!r}")
        if image_dim is None and dataset_info is not None and dataset_info.image_shape:
            image_dim = int(np.prod(dataset_info.image_shape))
        if text_dim is None and dataset_info is not None and dataset_info.text_kind == "vector":
            text_dim = dataset_info.text_dim
        if not image_dim or not text_dim:
            raise ValueError("dccae reconstructs both views, so it needs their sizes: a dataset whose "
                             "views are feature vectors (image_shape, text_dim) or image_dim and text_dim")
        self.dcca = DCCALoss(k=k, reg=reg)
        self.lambda_recon = float(lambda_recon)
        self.input_dims = (int(image_dim), int(text_dim))

        def decoder(d_out: int) -> nn.Sequential:
            layers, d_in = [], int(embed_dim)
            for width in hidden:
                layers += [nn.Linear(d_in, int(width)), acts[activation]()]
                d_in = int(width)
            layers.append(nn.Linear(d_in, d_out))
            if output == "sigmoid":
                layers.append(nn.Sigmoid())
            return nn.Sequential(*layers)

        self.decoder_image = decoder(self.input_dims[0])
        self.decoder_text = decoder(self.input_dims[1])

    @staticmethod
    def _squared_error(decoder: nn.Module, emb: torch.Tensor, target: torch.Tensor, d: int,
                       view: str) -> torch.Tensor:
        target = torch.as_tensor(target).flatten(1)
        if target.shape[1] != d:
            raise ValueError(f"dccae: the {view} decoder outputs {d} features but the prepared {view} "
                             f"inputs have {target.shape[1]}")
        recon = decoder(emb.to(decoder[0].weight.dtype))  # e.g. bf16 outputs into a float32 decoder
        # The error summed over d features in float32 at least, whatever the decoder's dtype.
        dtype = torch.promote_types(recon.dtype, torch.float32)
        return (target.to(dtype) - recon.to(dtype)).pow(2).sum(1).mean()

    @_full_precision  # the decoders too: the term is a sum of d squared errors, imprecise in bf16
    def reconstruction(self, image_emb: torch.Tensor, text_emb: torch.Tensor, images: torch.Tensor,
                       texts: torch.Tensor) -> torch.Tensor:
        """(1/n) Σⱼ ‖xⱼ − p(f(xⱼ))‖² + ‖yⱼ − q(g(yⱼ))‖² (the term λ multiplies)."""
        return (self._squared_error(self.decoder_image, image_emb, images, self.input_dims[0], "image")
                + self._squared_error(self.decoder_text, text_emb, texts, self.input_dims[1], "text"))

    @_full_precision
    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor, images: torch.Tensor,
                texts: torch.Tensor) -> torch.Tensor:
        corr = self.dcca(image_emb, text_emb)
        if self.lambda_recon == 0:
            return corr
        return corr + self.lambda_recon * self.reconstruction(image_emb, text_emb, images, texts)


# --- evaluators ---------------------------------------------------------------------------------------


def _paired_embeddings(context: EvalContext, split) -> tuple[torch.Tensor, torch.Tensor]:
    """Image and text embeddings of a split, rows paired through ``text_to_image``, in float64."""
    img, txt = context.embed(split)
    img = torch.as_tensor(img)
    txt = torch.as_tensor(txt)
    index = torch.as_tensor(split.text_to_image, device=img.device)
    return img[index].to(torch.float64), txt.to(device=img.device, dtype=torch.float64)


class CanonicalCorrelationEvaluator(Evaluator):
    """Test canonical correlations of the embeddings after linear CCA fitted on the train split.

    The evaluation of Wang et al. (2015): fit ``linear-cca`` with ``k`` components on the training
    split's (image, text) embedding pairs, project the evaluated split with it and report the total
    correlation ``total_corr`` (Σ of the k per-component Pearson correlations ``corr_1`` … ``corr_k``)
    plus the training total ``train_total_corr`` (its gap to the test value shows overfitting).
    """

    def __init__(self, k: int = 10, reg: float = 0.0):
        self.k = k
        self.reg = reg

    def metric_names(self) -> list[str]:
        return ["total_corr", "train_total_corr", *(f"corr_{i + 1}" for i in range(self.k))]

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        train_x, train_y = _paired_embeddings(context, context.train_split)
        test_x, test_y = _paired_embeddings(context, context.split)
        if self.k > min(train_x.shape[1], train_y.shape[1]):
            raise ValueError(f"canonical-correlation: k={self.k} exceeds the embedding dimensions "
                             f"({train_x.shape[1]}, {train_y.shape[1]})")
        cca = LinearCCA(k=self.k, reg=self.reg).fit(train_x, train_y)
        corr = cca.correlations(test_x, test_y).cpu().numpy()
        metrics = {"total_corr": float(corr.sum()),
                   "train_total_corr": float(cca.correlations(train_x, train_y).sum())}
        metrics.update({f"corr_{i + 1}": float(c) for i, c in enumerate(corr)})
        return metrics


class LinearProbeEvaluator(Evaluator):
    """Linear classifier on view-1 (image) embeddings: test ``error`` and ``accuracy``.

    Trains logistic regression (``classifier: logistic``) or a linear SVM (``svm``, as Wang et al. 2015)
    with inverse regularisation ``C`` on the training split's image embeddings and
    ``split.extras["labels"]``, on standardised features. With ``cca_k`` set, the features are first
    projected onto the top ``cca_k`` view-1 canonical directions of a ``linear-cca`` fitted on the
    training pairs (Wang et al.'s protocol); otherwise the raw embeddings are used.
    """

    lower_is_better = frozenset({"error"})

    def __init__(self, classifier: str = "logistic", C: float = 1.0, cca_k: int | None = None,
                 max_iter: int = 2000):
        if classifier not in ("logistic", "svm"):
            raise ValueError(f"classifier must be 'logistic' or 'svm', got {classifier!r}")
        self.classifier = classifier
        self.C = C
        self.cca_k = cca_k
        self.max_iter = max_iter

    def metric_names(self) -> list[str]:
        return ["accuracy", "error"]

    def chance(self, context: EvalContext) -> dict[str, float]:
        """A constant guess of the most frequent training class."""
        labels = context.train_split.extras.get("labels")
        if labels is None or len(labels) == 0:
            return {}
        top = float(np.bincount(np.asarray(labels)[np.asarray(labels) >= 0]).max() / len(labels))
        return {"accuracy": top, "error": 1.0 - top}

    def _model(self, seed: int):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC

        if self.classifier == "svm":
            clf = LinearSVC(C=self.C, max_iter=self.max_iter, random_state=seed)
        else:
            clf = LogisticRegression(C=self.C, max_iter=self.max_iter)
        return make_pipeline(StandardScaler(), clf)

    def evaluate(self, context: EvalContext) -> dict[str, float]:
        train, test = context.train_split, context.split
        for s in (train, test):
            if s.extras.get("labels") is None:
                raise ValueError(f"linear-probe needs split.extras['labels'] (split {s.name!r} has none)")
        train_img, _ = context.embed(train)
        test_img, _ = context.embed(test)
        train_img = torch.as_tensor(train_img).to(torch.float64)
        test_img = torch.as_tensor(test_img).to(torch.float64)
        if self.cca_k is not None:
            px, py = _paired_embeddings(context, train)
            cca = LinearCCA(k=self.cca_k).fit(px, py)
            train_img, test_img = cca.transform_x(train_img), cca.transform_x(test_img)
        model = self._model(context.seed).fit(train_img.cpu().numpy(), np.asarray(train.extras["labels"]))
        accuracy = float(model.score(test_img.cpu().numpy(), np.asarray(test.extras["labels"])))
        return {"accuracy": accuracy, "error": 1.0 - accuracy}


# --- registration -------------------------------------------------------------------------------------


@hookimpl
def register_estimators(register):
    register("linear-cca", LinearCCA)
    register("kernel-cca", KernelCCA)


@hookimpl
def register_losses(register):
    register("dcca", DCCALoss)
    register("dccae", DCCAELoss)


@hookimpl
def register_evaluators(register):
    register("canonical-correlation", CanonicalCorrelationEvaluator)
    register("linear-probe", LinearProbeEvaluator)
