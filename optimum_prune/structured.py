"""Structured pruning: rank units with a criterion, refit the consumer layers, slice the block, one block at a time."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .allocation import LayerPlan, global_plan, uniform_plan
from .architectures import ArchitectureAdapter
from .configuration import PruningConfig
from .criteria import CRITERIA, Criterion
from .layerwise import BlockInput, BlockStreamer
from .reconstruction import RECONSTRUCTIONS
from .statistics import InputStatistics, attach_statistics

logger = logging.getLogger(__name__)


@dataclass
class StructuredResult:
    """What was removed: the kept unit indices per layer and kind (relative to the model before this run)."""

    kept_units: list[dict[str, list[int]]] = field(default_factory=list)
    plans: list[LayerPlan] = field(default_factory=list)


def resolve_kinds(adapter: ArchitectureAdapter, config: PruningConfig) -> tuple[str, ...]:
    if config.structures is None:
        return adapter.default_structure_kinds or adapter.structure_kinds
    unknown = [k for k in config.structures if k not in adapter.structure_kinds]
    if unknown:
        raise ValueError(
            f"{type(adapter.model).__name__} has no {unknown} to prune; it has {list(adapter.structure_kinds)}."
        )
    return tuple(k for k in adapter.structure_kinds if k in config.structures)


def needs_calibration(config: PruningConfig) -> bool:
    return CRITERIA[config.criterion].needs_calibration or RECONSTRUCTIONS[config.reconstruction].needs_calibration


def _collect(
    streamer: BlockStreamer,
    layer: nn.Module,
    consumers: tuple[str, ...],
    inputs: Sequence[BlockInput] | None,
    with_gram: bool,
) -> dict[str, InputStatistics] | None:
    if inputs is None:
        return None
    stats, handles = attach_statistics({name: layer.get_submodule(name) for name in consumers}, with_gram)
    try:
        streamer.run(layer, inputs, keep_outputs=False)
    finally:
        for handle in handles:
            handle.remove()
    return stats


@torch.no_grad()
def prune_structured(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    config: PruningConfig,
    samples: list[dict[str, torch.Tensor]] | None,
    show_progress: bool = True,
    *,
    execution_device: torch.device | str | None = None,
    activations_device: torch.device | str | None = None,
    activations_dir: str | os.PathLike | None = None,
) -> StructuredResult:
    """Prune `model` in place according to `config`; `samples` are tokenized calibration sequences.

    The model may be dispatched by accelerate with offloaded weights; the last three arguments say where blocks
    compute and where activations wait (see `BlockStreamer`).
    """
    layers = adapter.layers()
    config.check_layers(len(layers))
    kinds = resolve_kinds(adapter, config)
    streamer = BlockStreamer(model, execution_device, activations_device, activations_dir)
    if streamer.offloaded and config.criterion == "prunenet" and not config.prunenet_policy_path:
        # Training the policy reads every layer's weights at once, which an offloaded model does not hold.
        raise ValueError(
            "criterion='prunenet' trains its policy on all layers' weights at once, which an offloaded model does "
            "not hold in memory: train it on a model that fits (prunenet_save_policy=...) and pass "
            "prunenet_policy_path=..., or load the model without offloading."
        )
    criterion = CRITERIA[config.criterion].prepare(adapter, config, show_progress=show_progress)
    reconstruction = RECONSTRUCTIONS[config.reconstruction]
    use_data = needs_calibration(config)
    if use_data and not samples:
        raise ValueError(
            f"criterion={config.criterion!r} with reconstruction={config.reconstruction!r} needs calibration data, "
            "and none was given."
        )
    generator = torch.Generator().manual_seed(config.seed)
    first_inputs = streamer.capture(layers[0], samples) if use_data else None

    if config.allocation == "global":
        unit_scores = _score_all_layers(streamer, adapter, kinds, criterion, first_inputs, generator, show_progress)
        plans = global_plan(adapter, kinds, config, unit_scores)
        generator.manual_seed(config.seed)
    else:
        plans = uniform_plan(adapter, kinds, config)

    result = StructuredResult(plans=plans)
    inputs = first_inputs
    for index, layer in enumerate(tqdm(layers, desc="Pruning layers", disable=not show_progress)):
        # Offloaded weights are loaded once per block and the pruned ones written back on exit.
        with streamer.materialized(layer):
            kept_units: dict[str, list[int]] = {}
            for group in adapter.groups(layer):
                if group.kind not in kinds:
                    continue
                keep_count = plans[index][group.kind]
                if keep_count >= group.num_units:
                    kept_units[group.kind] = list(range(group.num_units))
                    continue
                stats = _collect(streamer, layer, group.consumers, inputs, reconstruction.needs_gram)
                scores = criterion.score_units(adapter, layer, group, stats, generator)
                keep = adapter.select_units(group, scores, keep_count)
                pruned = torch.tensor(sorted(set(range(group.num_units)) - set(keep.tolist())), dtype=torch.long)
                kept_channels, pruned_channels = group.unit_channels(keep), group.unit_channels(pruned)
                for consumer in group.consumers:
                    reconstruction.refit(
                        layer.get_submodule(consumer),
                        stats[consumer] if stats is not None else None,
                        kept_channels,
                        pruned_channels,
                        config.damp,
                    )
                adapter.prune_units_calibrated(layer, group, keep, stats)
                kept_units[group.kind] = keep.tolist()
                logger.info("layer %d: %s %d -> %d", index, group.kind, group.num_units, keep_count)
            result.kept_units.append(kept_units)
            if inputs is not None and index + 1 < len(layers):
                inputs = streamer.run(layer, inputs)
    return result


def _score_all_layers(
    streamer: BlockStreamer,
    adapter: ArchitectureAdapter,
    kinds: tuple[str, ...],
    criterion: Criterion,
    inputs: Sequence[BlockInput] | None,
    generator: torch.Generator,
    show_progress: bool,
) -> list[dict[str, Any]]:
    """Unit scores of every layer of the unpruned model (one streaming pass), for the global ranking."""
    scores = []
    layers = adapter.layers()
    for index, layer in enumerate(tqdm(layers, desc="Scoring layers", disable=not show_progress)):
        groups = [g for g in adapter.groups(layer) if g.kind in kinds]
        consumers = tuple(dict.fromkeys(g.consumers[0] for g in groups))
        with streamer.materialized(layer, write_back=False):  # read-only pass: nothing to write back
            stats = _collect(streamer, layer, consumers, inputs, with_gram=False)
            scores.append({g.kind: criterion.score_units(adapter, layer, g, stats, generator) for g in groups})
            if inputs is not None and index + 1 < len(layers):
                inputs = streamer.run(layer, inputs)
    return scores
