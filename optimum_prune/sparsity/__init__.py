"""Layer-wise sparsity solvers: pure tensor functions that prune one linear layer given its input Gram matrix.

Every solver has the signature ``solve(weight [out, in], gram [in, in], pattern, **options) -> (new_weight,
keep_mask)``; ``new_weight`` is zero wherever ``keep_mask`` is False and has ``weight``'s dtype and device. Options
are method-specific keyword arguments with defaults (``damp`` everywhere except magnitude and Wanda, which accept and
ignore any option). A solver's ``statistics`` attribute says what it reads (:func:`required_statistics`): Wanda
takes the Gram diagonal alone as a 1-D ``gram``, so callers need not accumulate the full matrix. The Gram-based
solvers take ``cache``, a dict shared by the calls for modules that read the same input, so factorisations of that
input's Gram matrix run once.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from . import admm, magnitude, obs_multi, sparsegpt, wanda
from .admm import admm_update, least_squares_refit
from .base import (
    SparsityPattern,
    damped_hessian,
    damped_inverse_hessian,
    inverse_hessian_cholesky,
    layer_reconstruction_error,
    select_mask,
)
from .export import SemiStructuredUnsupportedError, check_model_nm_pattern, check_nm_pattern, export_semi_structured

SparsitySolver = Callable[..., tuple[torch.Tensor, torch.Tensor]]

SPARSITY_METHODS: dict[str, SparsitySolver] = {
    "magnitude": magnitude.solve,
    "wanda": wanda.solve,
    "sparsegpt": sparsegpt.solve,
    "admm": admm.solve,
    "obs_multi": obs_multi.solve,
}


#: What a solver may declare in its ``statistics`` attribute: the calibration statistics it reads.
STATISTICS_KINDS = ("none", "diagonal", "gram")


def required_statistics(solver: SparsitySolver | str) -> str:
    """Which input statistics ``solver`` (or the method of that name) reads: ``"none"`` (weights only),
    ``"diagonal"`` (``diag(G)``, the per-input sums of squares; passed as a 1-D ``gram``) or ``"gram"`` (the full
    ``[in, in]`` Gram matrix, the default for solvers that declare nothing). Callers accumulate only that."""
    if isinstance(solver, str):
        solver = get_sparsity_method(solver)
    kind = getattr(solver, "statistics", "gram")
    if kind not in STATISTICS_KINDS:
        raise ValueError(f"solver statistics must be one of {STATISTICS_KINDS}, got {kind!r}")
    return kind


def get_sparsity_method(name: str) -> SparsitySolver:
    """The solver registered under ``name``; ValueError naming the known methods otherwise."""
    try:
        return SPARSITY_METHODS[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(SPARSITY_METHODS))
        raise ValueError(f"unknown sparsity method {name!r}; known methods: {known}") from None


__all__ = [
    "SPARSITY_METHODS",
    "STATISTICS_KINDS",
    "SemiStructuredUnsupportedError",
    "SparsityPattern",
    "SparsitySolver",
    "admm_update",
    "check_model_nm_pattern",
    "check_nm_pattern",
    "damped_hessian",
    "damped_inverse_hessian",
    "export_semi_structured",
    "get_sparsity_method",
    "inverse_hessian_cholesky",
    "layer_reconstruction_error",
    "least_squares_refit",
    "required_statistics",
    "select_mask",
]
