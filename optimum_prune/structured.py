"""Structured pruning: rank units with a criterion, refit the consumer layers, slice the block, one block at a time."""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .allocation import Budget, LayerPlan, global_plan, uniform_plan
from .architectures import ArchitectureAdapter
from .architectures.decoder import ATTENTION_HEADS, QUERY_HEADS
from .architectures.experts import ExpertDownProjection
from .checks import check_budget, checked_refit
from .configuration import PruningConfig
from .criteria import CRITERIA, Criterion
from .criteria.obs import OBSCriterion
from .pipeline import Block, BlockMethod, Calibration, Observer, run_blocks
from .pipeline.layerwise import BlockInput, BlockStreamer
from .pipeline.statistics import InputStatistics, observe_statistics
from .planning import PruningResult
from .reconstruction import RECONSTRUCTIONS

logger = logging.getLogger(__name__)


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


def pruned_kinds(adapter: ArchitectureAdapter, config: PruningConfig) -> tuple[str, ...]:
    """The unit kinds a structured run prunes; depth pruning counts the FFN and attention units it removes."""
    if config.structures and "layers" in config.structures:
        return tuple(adapter.default_structure_kinds or adapter.structure_kinds)
    return resolve_kinds(adapter, config)


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


@dataclass(frozen=True)
class _PlannedRun:
    """A structured run up to its plan, its config resolved: what `prune_structured` and every block go on with."""

    plan: StructuredPlan
    streamer: BlockStreamer | None
    criterion: Criterion | None
    reconstruction: Any
    with_gram: bool
    generator: torch.Generator
    calibration: Calibration | None
    damp: float


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
    if streamer is not None and streamer.offloaded:
        CRITERIA[config.criterion].check_offloaded(config)
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
    # Prepared on the unpruned model, before any block changes (the taylor criterion's gradients need it whole).
    criterion = (
        CRITERIA[config.criterion].prepare(
            adapter, config, show_progress=show_progress, samples=samples if read_data else None
        )
        if needed
        else None
    )
    # The "obs" allocation ranks by the error each removal leaves after the refit, whatever the criterion.
    criterion_for_allocation = criterion
    if config.allocation == "obs" and "obs" not in criterion.allocation_modes:
        criterion_for_allocation = OBSCriterion(config.damp)
    if config.allocation in ("flap", "obs") and not use_data:
        raise ValueError(f"allocation={config.allocation!r} reads calibration data; give a dataset.")
    if config.allocation == "flap" and "flap" not in criterion.allocation_modes:
        raise ValueError(f"allocation='flap' standardises channel scores; criterion {config.criterion!r} has none.")
    budget = Budget(*(getattr(config, f.name) for f in dataclasses.fields(Budget)))
    with_gram = reconstruction.needs_gram or (criterion is not None and criterion.needs_gram)
    generator = torch.Generator().manual_seed(config.seed)
    # Blocks of different kinds (sliding-window / global attention) get their own masks and position embeddings.
    calibration = Calibration.capture(streamer, layers, samples) if read_data else None
    if ranked:
        scoring = _AllocationScores(adapter, kinds, criterion_for_allocation, generator, config.allocation)
        scoring_data = calibration.head(config.allocation_samples) if calibration is not None else None
        run_blocks(scoring, streamer, layers, scoring_data, show_progress)
        plans = global_plan(
            adapter, kinds, budget, scoring.scores, mode=config.allocation, layer_scale=scoring.energies
        )
        generator.manual_seed(config.seed)
    else:
        plans = uniform_plan(adapter, kinds, budget)
    check_budget([[g for g in adapter.groups(layer) if g.kind in kinds] for layer in layers], plans, budget)
    return _PlannedRun(
        StructuredPlan(kinds, plans),
        streamer,
        criterion,
        reconstruction,
        with_gram,
        generator,
        calibration,
        config.damp,
    )


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
) -> PruningResult:
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
        return prune_depth(model, adapter, config, samples, streamer, show_progress)
    run = _plan(
        model, adapter, config, samples, show_progress, (execution_device, activations_device, activations_dir)
    )
    notes = []
    if query_heads_fallback(adapter, config):
        logger.warning("%s.", QUERY_HEADS_FALLBACK[0].upper() + QUERY_HEADS_FALLBACK[1:])
        notes.append(QUERY_HEADS_FALLBACK)
    result = PruningResult(plans=run.plan.plans, kinds=run.plan.kinds, notes=notes)
    pruning = _PruneUnits(adapter, run, result)
    run_blocks(pruning, run.streamer, adapter.layers(), run.calibration, show_progress)
    return result


class _PruneUnits(BlockMethod):
    """The structured run's work on one block: per pruned kind, a statistics pass of the block as pruned so far,
    the units ranked and cut, the consumers refit.

    Error-correcting refits (`targets_dense`) also run a dense copy of each block on the dense model's own stream,
    which this method carries from block to block.
    """

    description = "Pruning layers"

    def __init__(self, adapter: ArchitectureAdapter, run: _PlannedRun, result: PruningResult):
        self.adapter, self.run, self.result = adapter, run, result
        calibration = run.calibration
        self.dense_inputs = (
            calibration.first_inputs if calibration is not None and run.reconstruction.targets_dense else None
        )

    def step(self, block: Block, observed: None) -> None:
        adapter, damp, index, layer = self.adapter, self.run.damp, block.index, block.module
        kinds, plans, reconstruction = self.run.plan.kinds, self.run.plan.plans, self.run.reconstruction
        dense_inputs = self.dense_inputs = block.bind(self.dense_inputs)
        dense_layer = copy.deepcopy(layer) if dense_inputs is not None else None
        kept_units: dict[str, list[int]] = {}
        for group in adapter.groups(layer):
            if group.kind not in kinds:
                continue
            keep_count = plans[index][group.kind]
            if keep_count >= group.num_units and dense_layer is None:
                kept_units[group.kind] = list(range(group.num_units))
                continue
            modules = {name: layer.get_submodule(name) for name in group.consumers}
            if block.inputs is None:
                stats = None
            elif dense_layer is not None:
                stats = _collect_with_dense(block, dense_layer, group.consumers, dense_inputs)
            else:
                stats = block.observe(observe_statistics(modules, self.run.with_gram), list(modules.values()))
            if keep_count >= group.num_units:
                keep = torch.arange(group.num_units, device="cpu")
            else:
                keep = self.run.criterion.select_units(adapter, layer, group, stats, self.run.generator, keep_count)
            kept_list = keep.tolist()  # the one read of the selection back to the host
            pruned = torch.tensor(sorted(set(range(group.num_units)) - set(kept_list)), dtype=torch.long, device="cpu")
            kept_channels, pruned_channels = group.unit_channels(keep), group.unit_channels(pruned)
            for consumer in group.consumers:
                linear = layer.get_submodule(consumer)
                consumer_stats = stats[consumer] if stats is not None else None
                with checked_refit(f"layers.{index}.{consumer}", linear, damp, consumer_stats):
                    reconstruction.refit(linear, consumer_stats, kept_channels, pruned_channels, damp)
            if pruned.numel():
                adapter.prune_units_calibrated(layer, group, keep, stats)
            kept_units[group.kind] = kept_list
            logger.info("layer %d: %s %d -> %d", index, group.kind, group.num_units, keep_count)
        self.result.kept_units.append(kept_units)
        if dense_layer is not None and not block.is_last:
            self.dense_inputs = block.run(dense_layer, dense_inputs)


def _collect_with_dense(
    block: Block, dense_layer: nn.Module, consumers: tuple[str, ...], dense_inputs: Sequence[BlockInput]
) -> dict[str, InputStatistics]:
    """Gram and cross-covariance statistics: the block on the pruned stream, its dense copy on the dense stream.

    Pairs each token's consumer input on the pruned stream with the dense copy's input for the same token. A routed
    expert (`ExpertDownProjection`) sees only the tokens its router sends it, and the two copies route differently
    once their streams differ: there the tokens are those the pruned layer routes to the expert (what it will compute
    on), and the dense side is the dense copy of the expert evaluated on the dense stream's hidden states of those
    tokens (`ExpertDownProjection.expert_inputs`), so the refit targets the dense expert's output for them.
    """
    layer = block.module
    routed = {name for name in consumers if isinstance(layer.get_submodule(name), ExpertDownProjection)}
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in consumers}
    pruned_side: dict[str, list[torch.Tensor]] = {name: [] for name in consumers}
    routing: dict[str, list[torch.Tensor]] = {name: [] for name in routed}
    dense_stops: list[nn.Module] = []
    with observe_statistics({name: layer.get_submodule(name) for name in consumers}, with_gram=True) as stats:
        handles = []
        for name in consumers:
            dense_module = dense_layer.get_submodule(name)
            if name in routed:
                # All tokens of the dense copy's experts call (same order as the pruned one's); the pruned copy's
                # routing picks the rows.
                handles.append(
                    dense_module.register_routing_hook(
                        lambda hidden, _mask, _name=name: captured[_name].append(hidden)
                    )
                )
                handles.append(
                    layer.get_submodule(name).register_routing_hook(
                        lambda _hidden, mask, _name=name: routing[_name].append(mask)
                    )
                )
                dense_stops.append(dense_module.experts)
            else:
                handles.append(
                    dense_module.register_forward_pre_hook(
                        lambda _m, args, _name=name: captured[_name].append(args[0].detach())
                    )
                )
                dense_stops.append(dense_module)
        for name in consumers:
            # nn.Module's own registration: a routed expert's view adds a driver per hook registered through it,
            # which would feed it (and its statistics, already driven by `observe_statistics`) twice per forward.
            handles.append(
                nn.Module.register_forward_pre_hook(
                    layer.get_submodule(name),
                    lambda _m, args, _name=name: pruned_side[_name].append(args[0].detach()),
                )
            )
        try:
            with (
                block.stopping_after(layer, [layer.get_submodule(name) for name in consumers]),
                block.stopping_after(dense_layer, dense_stops),
            ):
                for item, dense_item in zip(block.inputs, dense_inputs):
                    block.run(layer, [item], keep_outputs=False)
                    block.run(dense_layer, [dense_item], keep_outputs=False)
                    for name in consumers:
                        dense_side = captured[name].pop()
                        if name in routed:
                            dense_side = dense_layer.get_submodule(name).expert_inputs(dense_side, routing[name].pop())
                        stats[name].update_cross(pruned_side[name].pop(), dense_side)
        finally:
            for handle in handles:
                handle.remove()
    return stats


class _AllocationScores(BlockMethod):
    """The scoring pass of a ranked allocation: what it ranks, for every layer of the unpruned model (one block pass
    per layer: the statistics are gathered while the next block's inputs are computed).

    "global": unit scores; "flap": channel scores [units, channels]; "obs": the error of each greedy OBS step, with
    the median over tokens of the squared norm of each layer's input hidden state (`energies`) to compare layers by.
    """

    changes_weights = False
    description = "Scoring layers"

    def __init__(
        self,
        adapter: ArchitectureAdapter,
        kinds: tuple[str, ...],
        criterion: Criterion,
        generator: torch.Generator,
        mode: str,
    ) -> None:
        self.adapter, self.kinds, self.criterion = adapter, kinds, criterion
        self.generator, self.mode = generator, mode
        self.scores: list[dict[str, Any]] = []
        self.energies: list[float] | None = [] if mode == "obs" else None

    def _groups(self, layer: nn.Module) -> list:
        return [g for g in self.adapter.groups(layer) if g.kind in self.kinds]

    def observer(self, block: Block) -> Observer:
        consumers = dict.fromkeys(g.consumers[0] for g in self._groups(block.module))
        modules = {name: block.module.get_submodule(name) for name in consumers}
        return Observer(observe_statistics(modules, self.criterion.needs_gram), list(modules.values()))

    def step(self, block: Block, stats: dict[str, InputStatistics] | None) -> None:
        layer, mode = block.module, self.mode
        self.scores.append(
            {
                g.kind: self.criterion.allocation_scores(self.adapter, layer, g, stats, self.generator, mode)
                for g in self._groups(layer)
            }
        )
        if self.energies is not None:
            # The median token: a few tokens carry residual norms thousands of times the rest (SmolLM2's
            # grow 50x in one layer from a single token), which would make the mean meaningless.
            norms = torch.cat([item.hidden_states.double().pow(2).sum(-1).reshape(-1) for item in block.inputs])
            self.energies.append(float(norms.median()))
