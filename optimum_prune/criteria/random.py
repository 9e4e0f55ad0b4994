"""Random scores: the baseline every criterion must beat. Seeded through `PruningConfig.seed`."""

import torch

from .base import ChannelCriterion

RANDOM = ChannelCriterion(
    "random",
    lambda weight, stats, generator: torch.rand(weight.shape[1], generator=generator, dtype=torch.float64),
    needs_calibration=False,
)
