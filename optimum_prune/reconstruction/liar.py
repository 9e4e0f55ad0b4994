"""LIAR: least-squares interpolation of the pruned channels from the kept ones, folded into the consumer.

On calibration inputs X of the consumer, solve X_P ~ X_K Q + 1 p^T by damped least squares, then since
y = W_K x_K + W_P x_P + b ~ (W_K + W_P Q^T) x_K + (b + W_P p), set W_K += W_P Q^T and b += W_P p.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..pipeline.statistics import InputStatistics
from .base import Reconstruction, write_back

#: Fewer calibration tokens than this many per kept channel and the interpolation fits noise (measured on
#: SmolLM2-135M: 2,048 tokens for 1,229 kept FFN channels made perplexity worse than no reconstruction at all).
MIN_TOKENS_PER_KEPT_CHANNEL = 4


def solve_interpolation(
    stats: InputStatistics, kept: torch.Tensor, pruned: torch.Tensor, damp: float, intercept: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Return (Q [kept, pruned], p [pruned] or None) minimising ||X_P - X_K Q - 1 p^T||^2 + lambda ||Q||^2."""
    if stats.gram is None:
        raise ValueError("LIAR needs the input Gram matrix of the consumer layer.")
    gram = stats.gram
    g_kk = gram[kept][:, kept]
    g_kp = gram[kept][:, pruned]
    # Damping relative to the mean input energy makes `damp` scale-free; the intercept is not regularised.
    ridge = damp * torch.diagonal(g_kk).mean().clamp_min(1e-12)
    if intercept:
        k = kept.numel()
        lhs = torch.empty(k + 1, k + 1, dtype=gram.dtype, device=gram.device)
        lhs[:k, :k] = g_kk
        lhs[:k, k] = lhs[k, :k] = stats.sum[kept]
        lhs[k, k] = float(stats.count)
        rhs = torch.cat([g_kp, stats.sum[pruned][None, :]], dim=0)
        lhs[:k, :k] += ridge * torch.eye(k, dtype=gram.dtype, device=gram.device)
    else:
        lhs = g_kk + ridge * torch.eye(kept.numel(), dtype=gram.dtype, device=gram.device)
        rhs = g_kp
    solution = _solve_or_report(lhs, rhs, damp)
    if intercept:
        return solution[:-1], solution[-1]
    return solution, None


#: A Jacobi-scaled system whose Cholesky pivots spread by more than this (squared: a lower bound of its condition
#: number) is treated as singular. Damping 0.01 keeps real systems near 1e5; exactly duplicated or dead channels
#: with damp=0 reach 1e16 and more.
MAX_CONDITION_ESTIMATE = 1e12


def _solve_or_report(lhs: torch.Tensor, rhs: torch.Tensor, damp: float) -> torch.Tensor:
    """Solve lhs @ x = rhs (lhs symmetric positive semi-definite); a (nearly) singular lhs gets the minimum-norm
    solution and an `IllConditionedWarning` (the caller, `checks.checked_refit`, adds the layer's name)."""
    from ..checks import IllConditionedWarning

    if not bool(torch.isfinite(lhs).all() and torch.isfinite(rhs).all()):
        # Overflowed calibration inputs: no solution exists; the NaN result is reported, with its cause, by
        # checks.check_solution.
        return torch.full((lhs.shape[1], rhs.shape[1]), float("nan"), dtype=lhs.dtype, device=lhs.device)
    scale = torch.diagonal(lhs).abs().clamp_min(torch.finfo(lhs.dtype).tiny).rsqrt()
    factor, info = torch.linalg.cholesky_ex(lhs * scale[:, None] * scale[None, :])
    pivots = torch.diagonal(factor).abs()
    estimate = float((pivots.max() / pivots.min().clamp_min(1e-300)) ** 2) if int(info) == 0 else float("inf")
    if estimate <= MAX_CONDITION_ESTIMATE:
        return torch.linalg.solve(lhs, rhs)
    warnings.warn(
        IllConditionedWarning(
            f"the LIAR least-squares system of {lhs.shape[0]} kept channels is singular or nearly so (condition "
            f"estimate {estimate:.2g}, damp={damp:g}), e.g. duplicated or dead channels: used the minimum-norm "
            "solution. A larger damp (e.g. 0.01) makes the system well-posed."
        ),
        stacklevel=3,
    )
    return torch.linalg.pinv(lhs, hermitian=True, rtol=1e-10) @ rhs


@torch.no_grad()
def interpolate(
    linear: nn.Linear, stats: InputStatistics, kept: torch.Tensor, pruned: torch.Tensor, damp: float
) -> None:
    if pruned.numel() == 0:
        return
    if stats.count < MIN_TOKENS_PER_KEPT_CHANNEL * kept.numel():
        warnings.warn(
            f"LIAR fits each pruned channel from {kept.numel()} kept ones using only {stats.count} calibration "
            f"tokens (fewer than {MIN_TOKENS_PER_KEPT_CHANNEL} per kept channel): the interpolation may fit noise "
            "and hurt more than it helps. Use more calibration data (num_samples x seqlen) or a larger damp.",
            UserWarning,
            stacklevel=2,
        )
    # A consumer that cannot hold a bias (a stacked MoE expert) is fitted without the intercept.
    q, p = solve_interpolation(stats, kept, pruned, damp, intercept=getattr(linear, "supports_bias", True))
    weight = linear.weight.detach().double()
    w_pruned = weight[:, pruned]
    weight[:, kept] += w_pruned @ q.T.to(weight)
    write_back(linear, weight, w_pruned @ p.to(weight) if p is not None else None)


LIAR = Reconstruction("liar", interpolate, needs_calibration=True, needs_gram=True)


@torch.no_grad()
def interpolate_to_dense(
    linear: nn.Linear, stats: InputStatistics, kept: torch.Tensor, pruned: torch.Tensor, damp: float
) -> None:
    """Refit the kept columns and the bias so the consumer reproduces the DENSE model's output.

    With x the pruned model's input to this consumer and x_d the dense model's input for the same token, solve
    min ||[X_K 1] [W'; b']^T - X_d W^T||^2 + lambda ||W' - W_K||^2 from the cross-covariance X^T X_d
    (`InputStatistics.cross`). When x = x_d this is exactly LIAR's refit (same ridge); otherwise it also corrects
    what earlier layers' pruning changed in x. Runs even when no channel of this consumer is pruned. A consumer
    that cannot hold a bias (a stacked MoE expert) is fitted without the intercept, as LIAR fits it.
    """
    if stats.gram is None or stats.cross is None or stats.dense_sum is None:
        raise ValueError(
            "reconstruction='liar_dense' needs the Gram matrix and the cross-covariance with the dense stream."
        )
    weight = linear.weight.detach().double()
    w = weight.to(stats.gram)
    k = kept.numel()
    gram = stats.gram
    intercept = getattr(linear, "supports_bias", True)
    ridge = damp * torch.diagonal(gram[kept][:, kept]).mean().clamp_min(1e-12)
    size = k + 1 if intercept else k
    lhs = torch.empty(size, size, dtype=gram.dtype, device=gram.device)
    lhs[:k, :k] = gram[kept][:, kept] + ridge * torch.eye(k, dtype=gram.dtype, device=gram.device)
    rhs = stats.cross[kept] @ w.T + ridge * w[:, kept].T
    if intercept:
        lhs[:k, k] = lhs[k, :k] = stats.sum[kept]
        lhs[k, k] = float(stats.count)
        rhs = torch.cat([rhs, (stats.dense_sum @ w.T)[None, :]], dim=0)
    try:
        solution = torch.linalg.solve(lhs, rhs)
    except RuntimeError:
        solution = torch.linalg.lstsq(lhs, rhs).solution
    weight[:, kept] = solution[:k].T.to(weight)
    write_back(linear, weight, solution[k].to(weight) if intercept else None)


LIAR_DENSE = Reconstruction(
    "liar_dense", interpolate_to_dense, needs_calibration=True, needs_gram=True, targets_dense=True
)
