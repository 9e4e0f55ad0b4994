"""Wanda (Sun et al. 2023): score |W_ij| * ||X_j||_2 per output row, no weight update."""

from __future__ import annotations

import torch

from .base import SparsityPattern, check_layer, dense_result, finalise, select_mask

__all__ = ["solve", "wanda_scores"]


def wanda_scores(weight: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """``|W_ij| * ||X_j||_2`` where ``||X_j||_2^2 = gram[j, j]`` (float32, on the weight's device).

    ``gram`` is the ``[in, in]`` Gram matrix or just its diagonal ``[in]`` (all Wanda needs).
    """
    norms = (
        (gram if gram.dim() == 1 else torch.diagonal(gram))
        .to(device=weight.device, dtype=torch.float32)
        .clamp_min(0)
        .sqrt()
    )
    return weight.detach().float().abs() * norms.unsqueeze(0)


def solve(
    weight: torch.Tensor, gram: torch.Tensor, pattern: SparsityPattern, **options: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune the lowest Wanda scores of each output row (the paper's comparison group) or N:M group.

    ``gram``: the ``[in, in]`` input Gram matrix or its diagonal ``[in]`` (the sums of squares of each input over
    the calibration tokens). Returns ``(new_weight, keep_mask)``; options are accepted for a uniform solver signature
    and ignored.
    """
    check_layer(weight, gram, pattern, diagonal_ok=True)
    if pattern.is_dense:
        return dense_result(weight)
    keep = select_mask(wanda_scores(weight, gram), pattern)
    return finalise(weight.detach(), keep, weight)


#: The calibration statistics this solver reads (see `sparsity.required_statistics`): the Gram diagonal only.
solve.statistics = "diagonal"  # type: ignore[attr-defined]
