"""Bias compensation (FLAP): the pruned channels are replaced by their calibration mean, folded into the bias."""

from __future__ import annotations

import torch
from torch import nn

from ..pipeline.statistics import InputStatistics
from .base import Reconstruction, write_back


@torch.no_grad()
def compensate_bias(
    linear: nn.Linear, stats: InputStatistics, kept: torch.Tensor, pruned: torch.Tensor, damp: float
) -> None:
    weight = linear.weight.detach().double()
    delta = weight[:, pruned] @ stats.mean[pruned].to(weight)
    write_back(linear, weight, delta)


BIAS = Reconstruction("bias", compensate_bias, needs_calibration=True, needs_gram=False)
