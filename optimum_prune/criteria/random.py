"""Random scores: the baseline every criterion must beat. Seeded through `PruningConfig.seed`."""

import torch

from .base import ChannelCriterion

RANDOM = ChannelCriterion(
    "random",
    # Drawn on the host from the seeded CPU generator, so a seed gives the same units on every execution device.
    lambda weight, stats, generator: torch.rand(
        weight.shape[1], generator=generator, dtype=torch.float64, device="cpu"
    ),
    needs_calibration=False,
)
