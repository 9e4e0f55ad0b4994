"""Structured criteria: score the units of a group; the highest-scoring units are kept."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..pipeline.statistics import InputStatistics

if TYPE_CHECKING:
    from ..architectures import ArchitectureAdapter, UnitGroup
    from ..configuration import PruningConfig

ChannelScorer = Callable[[torch.Tensor, "InputStatistics | None", torch.Generator], torch.Tensor]


class Criterion:
    """Base class. `prepare` runs once per pruning run (e.g. to learn a policy); `score_units` once per group."""

    name: str
    needs_calibration: bool
    #: Whether `score_units` reads the consumers' input Gram matrices (`InputStatistics.gram`).
    needs_gram: bool = False
    #: The ranked allocations (`PruningConfig.allocation`) this criterion gives scores for (`allocation_scores`).
    allocation_modes: tuple[str, ...] = ("global",)

    def check_offloaded(self, config: PruningConfig) -> None:
        """Raise ValueError where `prepare` cannot run on an offloaded model, which holds one block at a time."""

    def prepare(
        self,
        adapter: ArchitectureAdapter,
        config: PruningConfig,
        show_progress: bool = True,
        samples: list[dict[str, torch.Tensor]] | None = None,
    ) -> Criterion:
        """Return the criterion to use for this run (stateless criteria return themselves).

        Runs on the unpruned model before any block is pruned; `samples` are the run's calibration sequences (None
        for a run without data), for criteria that learn from the whole model (`taylor`'s gradients).
        """
        return self

    def allocation_scores(
        self,
        adapter: ArchitectureAdapter,
        layer: nn.Module,
        group: UnitGroup,
        stats: dict[str, InputStatistics] | None,
        generator: torch.Generator,
        mode: str,
    ) -> torch.Tensor:
        """What the ranked allocation `mode` ranks the group's units by, on the unpruned model: the unit scores
        for "global" (and the mode's own scores in the criteria that list it in `allocation_modes`)."""
        if mode != "global":
            raise ValueError(f"Criterion {self.name!r} gives no scores for allocation={mode!r}.")
        return self.score_units(adapter, layer, group, stats, generator)

    def score_units(
        self,
        adapter: ArchitectureAdapter,
        layer: nn.Module,
        group: UnitGroup,
        stats: dict[str, InputStatistics] | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        raise NotImplementedError

    def select_units(
        self,
        adapter: ArchitectureAdapter,
        layer: nn.Module,
        group: UnitGroup,
        stats: dict[str, InputStatistics] | None,
        generator: torch.Generator,
        keep_count: int,
    ) -> torch.Tensor:
        """The sorted units of `group` to keep: `adapter.select_units` of the `score_units` scores. Criteria that
        can decide a known keep count with less work than a full ranking override it (`obs`)."""
        return adapter.select_units(group, self.score_units(adapter, layer, group, stats, generator), keep_count)


@dataclass(frozen=True)
class ChannelCriterion(Criterion):
    """Scores each input channel of the group's first consumer Linear; a unit's score sums its channels."""

    name: str
    score_channels: ChannelScorer
    needs_calibration: bool
    # FLAP's allocation standardises the channel scores within each layer.
    allocation_modes = ("global", "flap")

    def score_units(
        self,
        adapter: Any,
        layer: nn.Module,
        group: Any,
        stats: dict[str, InputStatistics] | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        return self.channel_scores(layer, group, stats, generator).sum(1)

    def allocation_scores(
        self,
        adapter: Any,
        layer: nn.Module,
        group: Any,
        stats: dict[str, InputStatistics] | None,
        generator: torch.Generator,
        mode: str,
    ) -> torch.Tensor:
        """Unit scores for "global"; for "flap", the channel scores [num_units, channels_per_unit]."""
        if mode == "flap":
            return self.channel_scores(layer, group, stats, generator)
        return super().allocation_scores(adapter, layer, group, stats, generator, mode)

    def channel_scores(
        self,
        layer: nn.Module,
        group: Any,
        stats: dict[str, InputStatistics] | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Scores of every consumer input channel, [num_units, channels_per_unit] (FLAP's allocation reads them)."""
        primary = group.consumers[0]
        if self.needs_calibration and stats is None:
            raise ValueError(f"Criterion {self.name!r} needs calibration data.")
        weight = layer.get_submodule(primary).weight.detach().double()
        scores = self.score_channels(weight, stats[primary] if stats is not None else None, generator)
        # unit_channels, not a reshape: a unit's channels need not be consecutive (Mamba2 head slots).
        channels = group.unit_channels(torch.arange(group.num_units, device=scores.device))
        return scores[channels].reshape(group.num_units, group.channels_per_unit)


def column_sq_norms(weight: torch.Tensor) -> torch.Tensor:
    return weight.pow(2).sum(0)
