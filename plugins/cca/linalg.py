"""Array plumbing and linear algebra shared by the CCA estimators, losses and evaluators: numpy or torch
in, the same kind out; whitening, centred covariances, the top singular triplets (notation in
:mod:`harness_plugins.cca`)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator

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
