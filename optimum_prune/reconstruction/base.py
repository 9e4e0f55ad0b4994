"""Reconstruction refits the Linear that reads pruned channels, before its pruned columns are cut away."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..pipeline.statistics import InputStatistics

#: (consumer, input statistics, kept input channels, pruned input channels, damping) -> None; edits in place.
Refit = Callable[[nn.Linear, "InputStatistics | None", torch.Tensor, torch.Tensor, float], None]


@dataclass(frozen=True)
class Reconstruction:
    name: str
    refit: Refit
    needs_calibration: bool
    needs_gram: bool
    #: Fits to the dense model's outputs: needs the cross-covariance with a dense copy of each block's stream.
    targets_dense: bool = False


def write_back(linear: nn.Linear, weight: torch.Tensor, bias_delta: torch.Tensor | None = None) -> None:
    """Store a float64 solution in the layer's own dtype, adding a bias (see `ensure_bias`) only when needed."""
    from ..architectures.base import ensure_bias

    linear.weight.data.copy_(weight.to(linear.weight.dtype))
    if bias_delta is not None:
        bias = ensure_bias(linear)
        bias.data.add_(bias_delta.to(bias.dtype))
