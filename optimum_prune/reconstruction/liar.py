"""LIAR: least-squares interpolation of the pruned channels from the kept ones, folded into the consumer.

On calibration inputs X of the consumer, solve X_P ~ X_K Q + 1 p^T by damped least squares, then since
y = W_K x_K + W_P x_P + b ~ (W_K + W_P Q^T) x_K + (b + W_P p), set W_K += W_P Q^T and b += W_P p.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..statistics import InputStatistics
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
    try:
        solution = torch.linalg.solve(lhs, rhs)
    except RuntimeError:  # singular even with damping (e.g. dead channels and damp=0)
        solution = torch.linalg.lstsq(lhs, rhs).solution
    if intercept:
        return solution[:-1], solution[-1]
    return solution, None


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
