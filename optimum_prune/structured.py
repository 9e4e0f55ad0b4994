"""Structured pruning: rank units with a criterion, refit the consumer layers, slice the block, one block at a time."""

from __future__ import annotations

import copy
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
from .architectures.decoder import ATTENTION_HEADS, QUERY_HEADS
from .checks import check_budget, checked_refit
from .configuration import PruningConfig
from .criteria import CRITERIA, ChannelCriterion, Criterion
from .criteria.obs import OBSCriterion
from .layerwise import BlockInput, BlockStreamer, own_block_arguments, with_arguments
from .reconstruction import RECONSTRUCTIONS
from .statistics import InputStatistics, attach_statistics

logger = logging.getLogger(__name__)


@dataclass
class StructuredResult:
    """What was removed: the kept unit indices per layer and kind (relative to the model before this run)."""

    kept_units: list[dict[str, list[int]]] = field(default_factory=list)
    plans: list[LayerPlan] = field(default_factory=list)
    #: The unit kinds this run pruned (`resolve_kinds`).
    kinds: tuple[str, ...] = ()
    #: What the run decided that the user did not ask for (e.g. `QUERY_HEADS_FALLBACK`); goes into the summary.
    notes: list[str] = field(default_factory=list)


#: Why the default structures prune query heads on a model whose every layer has a single KV group.
QUERY_HEADS_FALLBACK = (
    "every layer has a single KV group, which cannot be removed: the default structures prune query heads inside "
    "it ('query_heads') instead of whole KV groups ('attention_heads'); pass structures=[...] to choose"
)


def query_heads_fallback(adapter: ArchitectureAdapter, config: PruningConfig) -> bool:
    """Whether the default structures swap whole KV groups for query heads: every layer has one KV group.

    Whole KV groups are the default unit of grouped-query attention, but a layer keeps at least one, so with one
    group per layer (common in small models, such as the Gemma-style checkpoint of issue 23) no attention would go
    and the whole budget would land on the FFN. Query heads inside the one group are the next unit (every group
    keeps the same number of them, which with one group is just fewer heads). Only for `structures=None` and where
    the adapter offers both kinds; models with more than one KV group in some layer keep whole groups. Uniform
    allocation still removes whole heads only as far as `sparsity x heads` rounds down (4 heads: none below 25%).
    """
    if config.structures is not None:
        return False
    kinds = adapter.default_structure_kinds or adapter.structure_kinds
    if ATTENTION_HEADS not in kinds or QUERY_HEADS not in adapter.structure_kinds:
        return False
    groups = [
        g for layer in adapter.layers() for g in adapter.groups(layer) if g.kind in (ATTENTION_HEADS, QUERY_HEADS)
    ]
    kv_groups = [g.num_units for g in groups if g.kind == ATTENTION_HEADS]
    query_heads = [g.num_units for g in groups if g.kind == QUERY_HEADS]
    return bool(kv_groups) and all(n == 1 for n in kv_groups) and any(n > 1 for n in query_heads)


def resolve_kinds(adapter: ArchitectureAdapter, config: PruningConfig) -> tuple[str, ...]:
    """The unit kinds a structured run prunes: `config.structures`, or the adapter's defaults (whole KV groups
    swapped for query heads where every layer has one KV group, see `query_heads_fallback`)."""
    if config.structures is None:
        kinds = adapter.default_structure_kinds or adapter.structure_kinds
        if query_heads_fallback(adapter, config):
            kinds = tuple(QUERY_HEADS if kind == ATTENTION_HEADS else kind for kind in kinds)
        return kinds
    unknown = [k for k in config.structures if k not in adapter.structure_kinds]
    if unknown:
        raise ValueError(
            f"{type(adapter.model).__name__} has no {unknown} to prune; it has {list(adapter.structure_kinds)}."
        )
    return tuple(k for k in adapter.structure_kinds if k in config.structures)


def needs_calibration(config: PruningConfig) -> bool:
    return CRITERIA[config.criterion].needs_calibration or RECONSTRUCTIONS[config.reconstruction].needs_calibration


def _is_depth(config: PruningConfig) -> bool:
    return config.structures is not None and "layers" in config.structures


@dataclass
class StructuredPlan:
    """How many units of each pruned kind every layer keeps, decided before any weight changes."""

    kinds: tuple[str, ...]
    #: Per layer, kind -> units kept (a merged count for parallel groups of one kind, such as MoE experts).
    plans: list[LayerPlan]


@dataclass
class _PlannedRun:
    """A structured run up to its plan: what `prune_structured` goes on with."""

    plan: StructuredPlan
    streamer: BlockStreamer | None
    criterion: Criterion | None
    reconstruction: Any
    with_gram: bool
    generator: torch.Generator
    first_inputs: Sequence[BlockInput] | None
    own_arguments: Any


@torch.no_grad()
def plan_structured(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    config: PruningConfig,
    samples: list[dict[str, torch.Tensor]] | None = None,
    show_progress: bool = False,
    *,
    execution_device: torch.device | str | None = None,
    activations_device: torch.device | str | None = None,
    activations_dir: str | os.PathLike | None = None,
) -> StructuredPlan:
    """The units every layer keeps in a `prune_structured` run of `config` with `samples`; nothing is changed.

    The same code decides for the run. A uniform allocation reads only the layer shapes (`model` may be on the
    meta device, `samples` None); a global one scores every unit of the unpruned model with the criterion, which
    reads the weights, and reads `samples` where the criterion or the allocation ("flap", "obs") needs data.
    Depth pruning (`structures=["layers"]`) has its own planner, `depth.plan_depth`.
    """
    if _is_depth(config):
        raise ValueError("structures=['layers'] removes whole blocks: plan it with depth.plan_depth.")
    config.check_layers(len(adapter.layers()))
    placement = (execution_device, activations_device, activations_dir)
    return _plan(model, adapter, config, samples, show_progress, placement, plan_only=True).plan


def _plan(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    config: PruningConfig,
    samples: list[dict[str, torch.Tensor]] | None,
    show_progress: bool,
    placement: tuple[Any, Any, Any],
    plan_only: bool = False,
) -> _PlannedRun:
    """Check the recipe, prepare the criterion and the calibration inputs, and allocate the units.

    With `plan_only`, only what the allocation reads is prepared: a uniform plan prepares no criterion and
    captures no data (so it runs on a meta-device model), a global one with a calibration-free criterion
    captures no data.
    """
    layers = adapter.layers()
    kinds = resolve_kinds(adapter, config)
    ranked = config.allocation != "uniform"
    needed = ranked or not plan_only
    streamer = BlockStreamer(model, *placement) if needed else None
    if (
        streamer is not None
        and streamer.offloaded
        and config.criterion in ("prunenet", "prunenet_invariant")
        and not config.prunenet_policy_path
    ):
        # Training the policy reads every layer's weights at once, which an offloaded model does not hold.
        raise ValueError(
            f"criterion={config.criterion!r} trains its policy on all layers' weights at once, which an offloaded "
            "model does not hold in memory: train it on a model that fits (prunenet_save_policy=...) and pass "
            "prunenet_policy_path=..., or load the model without offloading."
        )
    criterion = CRITERIA[config.criterion].prepare(adapter, config, show_progress=show_progress) if needed else None
    reconstruction = RECONSTRUCTIONS[config.reconstruction]
    use_data = needs_calibration(config)
    # What the run reads; a plan alone reads data only where the scores that rank units do.
    read_data = (
        use_data
        if not plan_only
        else ranked and (config.allocation in ("flap", "obs") or CRITERIA[config.criterion].needs_calibration)
    )
    if read_data and not samples:
        raise ValueError(
            f"criterion={config.criterion!r} with reconstruction={config.reconstruction!r} needs calibration data, "
            "and none was given."
            if not plan_only
            else f"allocation={config.allocation!r} with criterion={config.criterion!r} ranks units on calibration "
            "data, and none was given."
        )
    if config.allocation == "obs" and not isinstance(criterion, OBSCriterion):
        criterion_for_allocation: Criterion | None = OBSCriterion(config.damp)
    else:
        criterion_for_allocation = criterion
    if config.allocation in ("flap", "obs") and not use_data:
        raise ValueError(f"allocation={config.allocation!r} reads calibration data; give a dataset.")
    if config.allocation == "flap" and not isinstance(criterion, ChannelCriterion):
        raise ValueError(f"allocation='flap' standardises channel scores; criterion {config.criterion!r} has none.")
    with_gram = reconstruction.needs_gram or (criterion is not None and criterion.needs_gram)
    generator = torch.Generator().manual_seed(config.seed)
    first_inputs = streamer.capture(layers[0], samples) if read_data else None
    # Blocks of different kinds (sliding-window / global attention) get their own masks and position embeddings.
    own_arguments = own_block_arguments(model, layers, samples, streamer.offloaded) if read_data else None
    if ranked:
        unit_scores, layer_scale = _score_all_layers(
            streamer,
            adapter,
            kinds,
            criterion_for_allocation,
            first_inputs,
            generator,
            show_progress,
            config.allocation,
            own_arguments,
        )
        plans = global_plan(adapter, kinds, config, unit_scores, mode=config.allocation, layer_scale=layer_scale)
        generator.manual_seed(config.seed)
    else:
        plans = uniform_plan(adapter, kinds, config)
    check_budget([[g for g in adapter.groups(layer) if g.kind in kinds] for layer in layers], plans, config)
    return _PlannedRun(
        StructuredPlan(kinds, plans),
        streamer,
        criterion,
        reconstruction,
        with_gram,
        generator,
        first_inputs,
        own_arguments,
    )


def _collect(
    streamer: BlockStreamer,
    layer: nn.Module,
    consumers: tuple[str, ...],
    inputs: Sequence[BlockInput] | None,
    with_gram: bool,
) -> dict[str, InputStatistics] | None:
    """The input statistics of `consumers` over `inputs`, each forward of `layer` ending at the last of them."""
    if inputs is None:
        return None
    modules = {name: layer.get_submodule(name) for name in consumers}
    stats, handles = attach_statistics(modules, with_gram)
    try:
        with streamer.stopping_after(layer, list(modules.values())):
            streamer.run(layer, inputs, keep_outputs=False)
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _collect_and_run(
    streamer: BlockStreamer,
    layer: nn.Module,
    consumers: tuple[str, ...],
    inputs: Sequence[BlockInput],
    with_gram: bool,
) -> tuple[dict[str, InputStatistics], Sequence[BlockInput]]:
    """`_collect` and `layer`'s outputs in one full pass, for a layer that is not changed in between."""
    stats, handles = attach_statistics({name: layer.get_submodule(name) for name in consumers}, with_gram)
    try:
        outputs = streamer.run(layer, inputs)
    finally:
        for handle in handles:
            handle.remove()
    return stats, outputs


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

    Calibration work per block: one statistics pass per pruned kind, each ending at the kind's last consumer
    (`layerwise.stopping_after`: the attention-head pass of a LLaMA block stops before ``o_proj`` runs and skips
    the MLP), then one full pass for the next block's inputs. The passes cannot merge: each kind's statistics are
    those of the block with the kinds before it already pruned and refit (the FFN reads the pruned attention's
    output), and the next block's inputs are the outputs of the block with every kind pruned, known only after the
    last kind's statistics were used. The global allocations' scoring pass reads the unpruned model, so there one
    pass per block gives both the statistics and the next block's inputs.
    """
    config.check_layers(len(adapter.layers()))
    if _is_depth(config):
        from .depth import prune_depth

        streamer = BlockStreamer(model, execution_device, activations_device, activations_dir)
        prune_depth(model, adapter, config, samples, streamer, show_progress)
        return StructuredResult(kept_units=[{} for _ in adapter.layers()])
    run = _plan(
        model, adapter, config, samples, show_progress, (execution_device, activations_device, activations_dir)
    )
    layers, kinds, plans = adapter.layers(), run.plan.kinds, run.plan.plans
    streamer, criterion, reconstruction, generator = run.streamer, run.criterion, run.reconstruction, run.generator
    with_gram, first_inputs, own_arguments = run.with_gram, run.first_inputs, run.own_arguments
    notes = []
    if query_heads_fallback(adapter, config):
        logger.warning("%s.", QUERY_HEADS_FALLBACK[0].upper() + QUERY_HEADS_FALLBACK[1:])
        notes.append(QUERY_HEADS_FALLBACK)
    result = StructuredResult(plans=plans, kinds=kinds, notes=notes)
    inputs = first_inputs
    # Error-correcting refits also run the dense copy of each block on the dense model's own stream.
    dense_inputs = first_inputs if reconstruction.targets_dense else None
    for index, layer in enumerate(tqdm(layers, desc="Pruning layers", disable=not show_progress)):
        # Offloaded weights are loaded once per block and the pruned ones written back on exit.
        with streamer.materialized(layer):
            inputs = with_arguments(inputs, own_arguments, index)
            dense_inputs = with_arguments(dense_inputs, own_arguments, index)
            dense_layer = copy.deepcopy(layer) if dense_inputs is not None else None
            kept_units: dict[str, list[int]] = {}
            for group in adapter.groups(layer):
                if group.kind not in kinds:
                    continue
                keep_count = plans[index][group.kind]
                if keep_count >= group.num_units and dense_layer is None:
                    kept_units[group.kind] = list(range(group.num_units))
                    continue
                if dense_layer is not None:
                    stats = _collect_with_dense(streamer, layer, dense_layer, group.consumers, inputs, dense_inputs)
                else:
                    stats = _collect(streamer, layer, group.consumers, inputs, with_gram)
                if keep_count >= group.num_units:
                    keep = torch.arange(group.num_units)
                else:
                    scores = criterion.score_units(adapter, layer, group, stats, generator)
                    keep = adapter.select_units(group, scores, keep_count)
                pruned = torch.tensor(sorted(set(range(group.num_units)) - set(keep.tolist())), dtype=torch.long)
                kept_channels, pruned_channels = group.unit_channels(keep), group.unit_channels(pruned)
                for consumer in group.consumers:
                    linear = layer.get_submodule(consumer)
                    consumer_stats = stats[consumer] if stats is not None else None
                    with checked_refit(f"layers.{index}.{consumer}", linear, config.damp, consumer_stats):
                        reconstruction.refit(linear, consumer_stats, kept_channels, pruned_channels, config.damp)
                if pruned.numel():
                    adapter.prune_units_calibrated(layer, group, keep, stats)
                kept_units[group.kind] = keep.tolist()
                logger.info("layer %d: %s %d -> %d", index, group.kind, group.num_units, keep_count)
            result.kept_units.append(kept_units)
            if inputs is not None and index + 1 < len(layers):
                inputs = streamer.run(layer, inputs)
                if dense_layer is not None:
                    dense_inputs = streamer.run(dense_layer, dense_inputs)
            del dense_layer
    return result


def _collect_with_dense(
    streamer: BlockStreamer,
    layer: nn.Module,
    dense_layer: nn.Module,
    consumers: tuple[str, ...],
    inputs: Sequence[BlockInput],
    dense_inputs: Sequence[BlockInput],
) -> dict[str, InputStatistics]:
    """Gram and cross-covariance statistics: `layer` on the pruned stream, its dense copy on the dense stream."""
    stats, handles = attach_statistics({name: layer.get_submodule(name) for name in consumers}, with_gram=True)
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in consumers}
    for name in consumers:
        handles.append(
            dense_layer.get_submodule(name).register_forward_pre_hook(
                lambda _m, args, _name=name: captured[_name].append(args[0].detach())
            )
        )
    pruned_side: dict[str, list[torch.Tensor]] = {name: [] for name in consumers}
    for name in consumers:
        handles.append(
            layer.get_submodule(name).register_forward_pre_hook(
                lambda _m, args, _name=name: pruned_side[_name].append(args[0].detach())
            )
        )
    try:
        with (
            streamer.stopping_after(layer, [layer.get_submodule(name) for name in consumers]),
            streamer.stopping_after(dense_layer, [dense_layer.get_submodule(name) for name in consumers]),
        ):
            for item, dense_item in zip(inputs, dense_inputs):
                streamer.run(layer, [item], keep_outputs=False)
                streamer.run(dense_layer, [dense_item], keep_outputs=False)
                for name in consumers:
                    stats[name].update_cross(pruned_side[name].pop(), captured[name].pop())
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _score_all_layers(
    streamer: BlockStreamer,
    adapter: ArchitectureAdapter,
    kinds: tuple[str, ...],
    criterion: Criterion,
    inputs: Sequence[BlockInput] | None,
    generator: torch.Generator,
    show_progress: bool,
    mode: str = "global",
    own_arguments: list[list[tuple[tuple[Any, ...], dict[str, Any]]]] | None = None,
) -> tuple[list[dict[str, Any]], list[float] | None]:
    """What the global allocation ranks, for every layer of the unpruned model (one streaming pass, one block pass
    per layer: the statistics are gathered while the next block's inputs are computed).

    "global": unit scores; "flap": channel scores [units, channels]; "obs": the error of each greedy OBS step, with
    the median over tokens of the squared norm of each layer's input hidden state (the second return value) to
    compare layers by. `own_arguments`: per-block arguments from `own_block_arguments`, if the blocks differ.
    """
    scores = []
    energies: list[float] | None = [] if mode == "obs" else None
    layers = adapter.layers()
    with_gram = criterion.needs_gram
    for index, layer in enumerate(tqdm(layers, desc="Scoring layers", disable=not show_progress)):
        groups = [g for g in adapter.groups(layer) if g.kind in kinds]
        consumers = tuple(dict.fromkeys(g.consumers[0] for g in groups))
        with streamer.materialized(layer, write_back=False):  # read-only pass: nothing to write back
            inputs = with_arguments(inputs, own_arguments, index)
            next_inputs = None
            if inputs is not None and index + 1 < len(layers):
                stats, next_inputs = _collect_and_run(streamer, layer, consumers, inputs, with_gram)
            else:
                stats = _collect(streamer, layer, consumers, inputs, with_gram=with_gram)
            if mode == "obs":
                assert isinstance(criterion, OBSCriterion) and inputs is not None and energies is not None
                layer_scores = {}
                for g in groups:
                    greedy = criterion.greedy(layer, g, stats)
                    layer_scores[g.kind] = torch.tensor(greedy.step_costs, dtype=torch.float64)
                scores.append(layer_scores)
                # The median token: a few tokens carry residual norms thousands of times the rest (SmolLM2's
                # grow 50x in one layer from a single token), which would make the mean meaningless.
                norms = torch.cat([item.hidden_states.double().pow(2).sum(-1).reshape(-1) for item in inputs])
                energies.append(float(norms.median()))
            elif mode == "flap":
                assert isinstance(criterion, ChannelCriterion)
                scores.append({g.kind: criterion.channel_scores(layer, g, stats, generator) for g in groups})
            else:
                scores.append({g.kind: criterion.score_units(adapter, layer, g, stats, generator) for g in groups})
            if next_inputs is not None:
                inputs = next_inputs
    return scores, energies
