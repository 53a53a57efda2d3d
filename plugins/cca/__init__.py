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

from harness import hookimpl
from harness_plugins.cca.estimators import KernelCCA, LinearCCA
from harness_plugins.cca.evaluators import CanonicalCorrelationEvaluator, LinearProbeEvaluator
from harness_plugins.cca.losses import DCCAELoss, DCCALoss

__all__ = ["LinearCCA", "KernelCCA", "DCCALoss", "DCCAELoss", "CanonicalCorrelationEvaluator",
           "LinearProbeEvaluator"]


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
