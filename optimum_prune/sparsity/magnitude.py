"""Magnitude pruning: drop the smallest |W_ij| in each output row (or N:M group), no weight update."""

from __future__ import annotations

import torch

from .base import SparsityPattern, check_layer, dense_result, finalise, select_mask

__all__ = ["solve"]


def solve(
    weight: torch.Tensor, gram: torch.Tensor, pattern: SparsityPattern, **options: object
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the largest-magnitude weights of each row; ``gram`` (``[in, in]`` or its diagonal ``[in]``) is only
    shape-checked (the baseline ignores data).

    Returns ``(new_weight, keep_mask)``; options are accepted for a uniform solver signature and ignored.
    """
    check_layer(weight, gram, pattern, diagonal_ok=True)
    if pattern.is_dense:
        return dense_result(weight)
    keep = select_mask(weight.detach().abs(), pattern)
    return finalise(weight.detach(), keep, weight)


#: The calibration statistics this solver reads (see `sparsity.required_statistics`): none.
solve.statistics = "none"  # type: ignore[attr-defined]
