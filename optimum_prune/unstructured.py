"""Unstructured and N:M sparsity for any model: every weight matrix of a block solved on its own inputs, block by block."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .allocation.unstructured import (
    LayerSparsities,
    allocate_by_error,
    obs_error_curve,
    outlier_ratio,
    owl_sparsities,
)
from .architectures.weights import WeightMatrix, find_weight_matrices
from .checks import check_row_counts, solve_checked
from .configuration import PruningConfig, SolverOptions, solver_options
from .pipeline import Block, BlockMethod, Calibration, Observer, block_arguments, run_blocks
from .pipeline.blocks import find_blocks
from .pipeline.layerwise import BlockStreamer
from .pipeline.weight_inputs import WeightInputs, observe_inputs
from .planning import CalibrationNeed, PruningResult
from .serialization.layout import record_sparsity
from .sparsity import SparsityPattern, get_sparsity_method, required_statistics

logger = logging.getLogger(__name__)

#: Methods that only look at the weights.
DATA_FREE_METHODS = ("magnitude",)


def sparsity_calibration_need(config: PruningConfig) -> CalibrationNeed | None:
    """`planning.calibration_need` (the rule the CLI and the dry run use too) of an unstructured / N:M recipe: its
    solver reads calibration data, or its allocation measures activations (OWL and OBS do, whatever the solver)."""
    if config.method not in DATA_FREE_METHODS:
        return CalibrationNeed("method", config.method, "solves each layer on calibration data", DATA_FREE_METHODS)
    if config.allocation != "uniform":
        return CalibrationNeed("allocation", config.allocation, "measures calibration activations", ("uniform",))
    return None


def uses_calibration(config: PruningConfig) -> bool:
    """Whether an unstructured / N:M run of `config` reads calibration data (`sparsity_calibration_need`)."""
    return sparsity_calibration_need(config) is not None


def prunable_linears(block: nn.Module, modules_to_not_prune: list[str]) -> dict[str, nn.Linear]:
    return {
        name: module
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear) and not any(skip in name for skip in modules_to_not_prune)
    }


def module_pattern(
    config: PruningConfig, layer_index: int, module_name: str, layer_sparsity: float | None = None
) -> SparsityPattern:
    """Pattern for one Linear: the target at `layer_sparsity` (the block's share from a non-uniform allocation;
    None: `config.sparsity`), with the sparsity of a matching module or layer override, which win."""
    default = config.sparsity if layer_sparsity is None else layer_sparsity
    sparsity = config.layer_overrides.get(str(layer_index), {}).get("sparsity", default)
    for key, value in config.module_sparsity.items():
        if key in module_name:
            sparsity = value
    return SparsityPattern.parse(config.target, sparsity)


@dataclass
class SparsityPlan:
    """Every matrix's fate, decided before the first weight changes (`plan_sparsity`)."""

    #: (name, block) of the repeated blocks, as `find_blocks` finds them.
    blocks: list[tuple[str, nn.Module]]
    #: Per block, the matrices to sparsify and their patterns.
    matrices: list[list[tuple[WeightMatrix, SparsityPattern]]]
    #: Full name -> why it stays dense (excluded by name, a router, a shape the N:M pattern does not fit).
    dense: dict[str, str]
    #: Full names of the matrices whose pattern asks for nothing (sparsity 0 by a layer or module override).
    unpruned: list[str]

    @property
    def misfits(self) -> dict[str, str]:
        """The dense matrices worth a warning (all but MoE routers)."""
        return {name: why for name, why in self.dense.items() if not why.startswith("MoE router")}


def plan_sparsity(
    model: nn.Module,
    config: PruningConfig,
    blocks: list[tuple[str, nn.Module]] | None = None,
    layer_sparsities: list[float] | None = None,
) -> SparsityPlan:
    """Which matrices of which blocks a `prune_unstructured` run of `config` sparsifies, and with which pattern.

    `layer_sparsities` gives each block's sparsity when an allocation other than uniform chose them
    (`allocate_block_sparsities`); None: `config.sparsity` everywhere. Overrides win either way.
    Reads only shapes (a meta-device model will do). A shape that does not fit the pattern is left dense, not a
    refusal of the whole model; raises ValueError when no matrix fits, or when the per-row counts cannot come near
    the requested sparsity (`checks.check_row_counts`).
    """
    if blocks is None:
        blocks = find_blocks(model, config.sequential_targets)
        config.check_layers(len(blocks))
    plans: list[list[tuple[WeightMatrix, SparsityPattern]]] = []
    skipped: dict[str, str] = {}
    unpruned: list[str] = []
    for index, (block_name, block) in enumerate(blocks):
        matrices, left_dense = find_weight_matrices(block, config.modules_to_not_prune)
        skipped.update({f"{block_name}.{name}": why for name, why in left_dense.items()})
        plan = []
        for matrix in matrices:
            pattern = module_pattern(
                config, index, matrix.name, None if layer_sparsities is None else layer_sparsities[index]
            )
            if pattern.is_nm and matrix.in_features % pattern.m:
                skipped[f"{block_name}.{matrix.name}"] = (
                    f"{pattern.target} needs in_features divisible by {pattern.m}, got {matrix.in_features}"
                )
                continue
            if pattern.is_dense:
                unpruned.append(f"{block_name}.{matrix.name}")
            else:
                plan.append((matrix, pattern))
        plans.append(plan)
    result = SparsityPlan(blocks, plans, skipped, unpruned)
    if result.misfits and not any(plans):
        raise ValueError(
            f"No weight matrix of {type(model).__name__} fits the pattern: {next(iter(result.misfits.values()))}."
        )
    check_row_counts(
        [
            (f"{block_name}.{matrix.name}", matrix.numel // matrix.in_features, matrix.in_features, pattern)
            for (block_name, _), plan in zip(blocks, plans)
            for matrix, pattern in plan
        ],
        config.allow_sparsity_shortfall,
    )
    return result


def check_solver_config(config: PruningConfig) -> None:
    """ValueError for an unknown method or an option it does not take (what `prune_unstructured` checks first)."""
    _check_solver_options(get_sparsity_method(config.method), config)


@torch.no_grad()
def prune_unstructured(
    model: nn.Module,
    config: PruningConfig,
    samples: list[dict[str, torch.Tensor]] | None,
    show_progress: bool = True,
    *,
    execution_device: torch.device | str | None = None,
    activations_device: torch.device | str | None = None,
    activations_dir: str | os.PathLike | None = None,
) -> PruningResult:
    """Sparsify every weight matrix inside the repeated blocks of any model, in place; return what was done.

    Blocks come from `find_blocks` (`_no_split_modules`, or `config.sequential_targets`); their matrices from
    `find_weight_matrices` (Linear, Conv1D, stacked experts; routers and everything outside the blocks, such as
    embeddings, lm_head and task heads, stay dense). Each block is run on the outputs of the already sparsified
    blocks before it and every matrix is solved on its own input Gram matrix.

    The result's `record` (written to `config.pruning`) has `sparsity_achieved` and per-module `modules` counted
    from the weights after pruning,
    `skipped` (matrices left dense, with the reason), `data_free` (matrices no calibration input reached, pruned
    by magnitude instead of on an empty Gram matrix) and `input_taps` (matrices whose input was observed at
    another module because the model never calls them). The model may be dispatched by accelerate with offloaded
    weights; the last three arguments say where blocks compute and where activations wait (see `BlockStreamer`).
    """
    blocks = find_blocks(model, config.sequential_targets)
    config.check_layers(len(blocks))
    solver = get_sparsity_method(config.method)
    statistics = required_statistics(solver)
    options, takes_cache = _check_solver_options(solver, config)
    use_data = config.method not in DATA_FREE_METHODS
    if uses_calibration(config) and not samples:
        needs = f"method={config.method!r}" if use_data else f"allocation={config.allocation!r}"
        raise ValueError(f"{needs} needs calibration data, and none was given.")

    sparsity_plan = plan_sparsity(model, config, blocks)
    streamer = BlockStreamer(model, execution_device, activations_device, activations_dir)
    own_arguments = block_arguments(streamer, [block for _, block in blocks], samples) if samples else None
    allocation = LayerSparsities("uniform", [config.sparsity] * len(blocks))
    if config.allocation != "uniform":
        allocation = allocate_block_sparsities(
            config, blocks, sparsity_plan, samples, streamer, own_arguments, show_progress
        )
        sparsity_plan = plan_sparsity(model, config, blocks, allocation.sparsities)
    plans, skipped = sparsity_plan.matrices, sparsity_plan.dense
    for name, why in sparsity_plan.misfits.items():
        logger.warning("Left %s dense: %s.", name, why)

    calibration = Calibration(streamer.capture(blocks[0][1], samples), own_arguments) if use_data else None
    settings = SolveSettings(solver, statistics, config.mask_scope, options, takes_cache, config.damp)
    sparsify = _Sparsify(settings, plans)
    run_blocks(sparsify, streamer, blocks, calibration, show_progress)
    per_module = sparsify.per_module
    data_free, input_taps = sparsify.data_free, sparsify.input_taps

    sizes = {f"{bn}.{m.name}": m.numel for (bn, _), plan in zip(blocks, plans) for m, _ in plan}
    total = sum(sizes.values())
    zeros = sum(per_module[name] * size for name, size in sizes.items())
    layer_sparsity = []
    for (block_name, _), plan in zip(blocks, plans):
        block_size = sum(m.numel for m, _ in plan)
        block_zeros = sum(per_module[f"{block_name}.{m.name}"] * m.numel for m, _ in plan)
        layer_sparsity.append(block_zeros / block_size if block_size else 0.0)
    record = record_sparsity(
        model,
        {
            "target": config.target,
            "method": config.method,
            "sparsity_achieved": zeros / max(total, 1),
            "allocation": config.allocation,
            # Counted from the weights, per block (of the matrices pruned there).
            "layer_sparsity": layer_sparsity,
            **({"planned_layer_sparsity": allocation.sparsities} if config.allocation != "uniform" else {}),
            **({allocation.measure_name: allocation.measure} if allocation.measure else {}),
            "modules": per_module,
            "skipped": skipped,
            "data_free": data_free,
            "input_taps": input_taps,
        },
    )
    return PruningResult(record=record, prunable_parameters=total)


@dataclass(frozen=True)
class SolveSettings:
    """What every block of a sparsity run reads of its config, resolved once by `prune_unstructured`: the method's
    solve function, the input statistics it reads (`required_statistics`), its options, whether it takes a
    factorisation ``cache``."""

    solver: Any
    statistics: str
    mask_scope: str | None
    options: SolverOptions
    takes_cache: bool
    damp: float


class _Sparsify(BlockMethod):
    """The sparsity run's work on one block: every planned matrix solved on its own inputs' statistics."""

    description = "Sparsifying blocks"

    def __init__(self, settings: SolveSettings, plans: list[list[tuple[WeightMatrix, SparsityPattern]]]) -> None:
        self.settings, self.plans = settings, plans
        #: Per module, the fraction of zeros counted from the weights after pruning.
        self.per_module: dict[str, float] = {}
        #: Matrices no calibration input reached (pruned by magnitude), and matrices whose input was tapped.
        self.data_free: dict[str, str] = {}
        self.input_taps: dict[str, str] = {}

    def observer(self, block: Block) -> Observer:
        matrices = [matrix for matrix, _ in self.plans[block.index]]
        return Observer(
            observe_inputs(block.module, matrices, with_gram=self.settings.statistics == "gram"),
            _stop_modules(matrices),
        )

    def step(self, block: Block, observed: Any) -> None:
        settings = self.settings
        solver, statistics, damp = settings.solver, settings.statistics, settings.damp
        plan = self.plans[block.index]
        caches: dict[int, dict] = {}  # one per shared input: its factorisations are computed once
        for matrix, pattern in plan:
            full_name = f"{block.name}.{matrix.name}"
            weight = matrix.get()
            method, stats = solver, None
            options: dict[str, Any] = {}
            if observed is None:
                gram = _identity_gram(weight)
            else:
                stats, tap = observed.get(matrix.name)
                if tap is not None:
                    self.input_taps[full_name] = tap
                if stats is None:
                    # Never solve on an empty Gram matrix: every input would look dead and the optimal-update
                    # solvers would zero the whole matrix.
                    self.data_free[full_name] = "no calibration input reached it; pruned by magnitude"
                    logger.warning("No calibration input reached %s: pruning it by magnitude.", full_name)
                    method, gram = get_sparsity_method("magnitude"), _identity_gram(weight)
                else:
                    gram = stats.gram if statistics == "gram" else stats.sum_sq
            if method is solver:
                options = {"mask_scope": settings.mask_scope} if settings.mask_scope is not None else {}
                if settings.takes_cache and stats is not None:
                    options["cache"] = caches.setdefault(id(stats), {})
                options.update(settings.options)
            new_weight, _keep = solve_checked(full_name, method, weight, gram, pattern, damp, stats, **options)
            matrix.set(new_weight)
        # Counted from the weights as they now are (in the block's execution place, before any write-back).
        for matrix, _ in plan:
            weight = matrix.get()
            self.per_module[f"{block.name}.{matrix.name}"] = float((weight == 0).sum()) / weight.numel()


@torch.no_grad()
def allocate_block_sparsities(
    config: PruningConfig,
    blocks: list[tuple[str, nn.Module]],
    plan: SparsityPlan,
    samples: list[dict[str, torch.Tensor]] | None,
    streamer: BlockStreamer,
    own_arguments: list | None,
    show_progress: bool = True,
) -> LayerSparsities:
    """Each block's sparsity under `config.allocation` ('owl' or 'obs'), from one pass of the calibration samples
    through the dense blocks (no weight changes).

    'owl' keeps each matrix's per-feature input norms and computes the block's outlier ratio
    (`allocation.outlier_ratio`); 'obs' keeps each input's Gram matrix just long enough to predict the matrix's error
    curve (`allocation.obs_error_curve`), then `allocation.allocate_by_error` picks the sparsities. Blocks with no
    matrix to prune keep `config.sparsity` and take no part. Raises ValueError without calibration samples, and when
    OWL's range (sparsity +- owl_lambda) leaves [0, 1); the 'obs' range is clipped to [0, 0.999].
    """
    if not samples:
        raise ValueError(
            f"allocation={config.allocation!r} measures the calibration activations; give calibration data."
        )
    deviation = config.owl_lambda if config.allocation == "owl" else config.max_layer_deviation
    if config.allocation == "owl" and not (0.0 <= config.sparsity - deviation and config.sparsity + deviation < 1.0):
        raise ValueError(
            f"allocation={config.allocation!r} spreads block sparsities over sparsity +- {deviation:g}, which leaves "
            f"[0, 1) at sparsity={config.sparsity:g}; lower owl_lambda."
        )
    grid = torch.arange(0, 1000, dtype=torch.float64, device="cpu") / 1000
    measuring = _MeasureBlocks(plan, grid, config.allocation, config.damp, config.owl_m)
    calibration = Calibration(streamer.capture(blocks[0][1], samples), own_arguments)
    run_blocks(measuring, streamer, blocks, calibration, show_progress)
    measures, sizes = measuring.measures, measuring.sizes
    sparsities = [config.sparsity] * len(blocks)
    order = sorted(measures)
    if config.allocation == "owl":
        chosen = owl_sparsities([measures[i] for i in order], config.sparsity, config.owl_lambda)
        measure = [measures.get(i, float("nan")) for i in range(len(blocks))]
        name = "owl_outlier_ratio"
    else:
        curves = torch.stack([measures[i] for i in order])
        chosen = allocate_by_error(curves, [sizes[i] for i in order], grid, config.sparsity, deviation)
        # The error at the chosen sparsity, read off the curve at the grid point below it.
        predicted = {i: float(measures[i][int(s * 1000 + 1e-6)]) for i, s in zip(order, chosen)}
        measure = [predicted.get(i, float("nan")) for i in range(len(blocks))]
        name = "obs_predicted_error"
    for index, value in zip(order, chosen):
        sparsities[index] = value
    logger.info("%s allocation: block sparsities %s", config.allocation, ", ".join(f"{s:.3f}" for s in sparsities))
    return LayerSparsities(config.allocation, sparsities, measure, name)


class _ResidualEnergy:
    """Sums over tokens of ||x||^2 (the block's input, the residual stream) and ||y - x||^2 (what the block adds to
    it), from a hook on the block while it runs.

    The sums stay where the block computes (float64, the same additions as Python floats) and are read back once per
    block, by `residual` and `update`, not once per calibration sample.
    """

    def __init__(self, block: nn.Module) -> None:
        self.block = block
        self._residual: torch.Tensor | float = 0.0
        self._update: torch.Tensor | float = 0.0
        self._handle = None

    @property
    def residual(self) -> float:
        return float(self._residual)

    @property
    def update(self) -> float:
        return float(self._update)

    def _hook(self, _module, args, kwargs, output) -> None:
        x = args[0] if args else kwargs.get("hidden_states")
        y = output[0] if isinstance(output, (tuple, list)) else output
        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape:
            x64, y64 = x.detach().double(), y.detach().double()
            self._residual = self._residual + (x64 * x64).sum()
            self._update = self._update + ((y64 - x64) ** 2).sum()

    def __enter__(self) -> _ResidualEnergy:
        self._handle = self.block.register_forward_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self._handle.remove()


class _MeasureBlocks(BlockMethod):
    """The measuring pass of a non-uniform allocation, through the dense blocks: per block with a matrix to prune,
    OWL's outlier ratio or the summed OBS error curve of the matrices some calibration input reached."""

    changes_weights = False

    def __init__(self, plan: SparsityPlan, grid: torch.Tensor, allocation: str, damp: float, owl_m: float) -> None:
        self.plan, self.grid, self.damp, self.owl_m = plan, grid, damp, owl_m
        self.with_gram = allocation == "obs"
        self.description = f"Measuring blocks ({allocation} allocation)"
        self.measures: dict[int, Any] = {}
        self.sizes: dict[int, int] = {}

    def _matrices(self, block: Block) -> list[WeightMatrix]:
        return [matrix for matrix, _ in self.plan.matrices[block.index]]

    def observer(self, block: Block) -> Observer:
        # Full forwards, the last block's too: the residual energy reads the block's output.
        return Observer(self._hooks(block))

    @contextlib.contextmanager
    def _hooks(self, block: Block) -> Iterator[tuple[WeightInputs, _ResidualEnergy]]:
        energy = _ResidualEnergy(block.module)
        with observe_inputs(block.module, self._matrices(block), with_gram=self.with_gram) as observed, energy:
            yield observed, energy

    def step(self, block: Block, hooked: tuple[WeightInputs, _ResidualEnergy]) -> None:
        index = block.index
        observed, energy = hooked
        reached = [(m, observed.get(m.name)[0]) for m in self._matrices(block)]
        reached = [(m, stats) for m, stats in reached if stats is not None]
        if not reached:  # no matrix to prune in this block (it keeps the run's sparsity), or none reached
            return
        self.sizes[index] = sum(m.numel for m, _ in reached)
        if self.with_gram:
            relative = sum(obs_error_curve(m.get(), st.gram, self.damp, self.grid) for m, st in reached)
            # A block's relative error, carried into the residual stream: scaled by what the block adds to the
            # stream against the stream it joins (see allocation.unstructured).
            self.measures[index] = relative * energy.update / max(energy.residual, torch.finfo(torch.float64).tiny)
        else:
            self.measures[index] = outlier_ratio(
                [m.get() for m, _ in reached], [st.norm for _, st in reached], self.owl_m
            )


def _stop_modules(matrices: list[WeightMatrix]) -> list[nn.Module]:
    """The modules whose entry ends a statistics pass: the matrices' own modules, each entered once per forward.

    The pass needs the block only up to the last matrix's input (in a LLaMA block, `down_proj` and everything after
    it are skipped). None for stacked experts, whose statistics come from inside the experts' call, so those passes
    run to the end. A tapped input (Mamba's `dt_proj`) is read from a module that runs before the matrix's own, and
    a matrix whose module is never entered leaves the stop disarmed (see `layerwise.stopping_after`).
    """
    if any(m.expert is not None for m in matrices):
        return []
    return list({id(m.module): m.module for m in matrices}.values())


def _check_solver_options(solver, config: PruningConfig) -> tuple[SolverOptions, bool]:
    """`config.solver_options` as the method's typed options (ValueError for one it does not have, `mask_scope`
    included), and whether the solver takes a factorisation ``cache``."""
    options = solver_options(config.method, config.solver_options)
    if config.mask_scope is not None and not options.has_mask_scope:
        raise ValueError(f"method={config.method!r} has no mask_scope; 'sparsegpt' and 'admm' have one.")
    parameters = inspect.signature(solver).parameters
    return options, "cache" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


def _identity_gram(weight: torch.Tensor) -> torch.Tensor:
    return torch.eye(weight.shape[1], dtype=torch.float32, device=weight.device)
