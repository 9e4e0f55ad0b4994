"""Structured criteria score the input channels of a consumer Linear; a unit's score is the sum over its channels."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..statistics import InputStatistics

ChannelScorer = Callable[[torch.Tensor, "InputStatistics | None", torch.Generator], torch.Tensor]


@dataclass(frozen=True)
class Criterion:
    """A named channel scorer. Higher scores are kept."""

    name: str
    score_channels: ChannelScorer
    needs_calibration: bool

    def score_units(
        self,
        weight: torch.Tensor,
        stats: InputStatistics | None,
        num_units: int,
        channels_per_unit: int,
        generator: torch.Generator,
    ) -> torch.Tensor:
        if self.needs_calibration and stats is None:
            raise ValueError(f"Criterion {self.name!r} needs calibration data.")
        scores = self.score_channels(weight.detach().double(), stats, generator)
        return scores.reshape(num_units, channels_per_unit).sum(1)


def column_sq_norms(weight: torch.Tensor) -> torch.Tensor:
    return weight.pow(2).sum(0)
