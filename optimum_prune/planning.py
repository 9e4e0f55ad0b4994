"""What a pruning run will do, per layer, computed by the run's own planning code before any weight changes.

`plan_pruning(model, config, samples)` returns a `PruningPlan`: for structured pruning the units every layer keeps
(from `structured.plan_structured`, the function `prune_structured` decides with), for depth pruning the blocks
removed (`depth.plan_depth`, used by `prune_depth`), for unstructured and N:M sparsity each matrix's pattern
(`unstructured.plan_sparsity`, used by `prune_unstructured`); with the parameter totals. `BasePruner.plan` and
`optimum-prune --dry-run` call it. `PruningResult` is what a run did, as every method reports it.

What the plan reads depends on the config (`plan_inputs`): a uniform allocation and sparsity patterns follow from
the layer shapes alone (a model built on the meta device from its config is enough); a global allocation ranks
units by the criterion's scores, so it reads the weights, and the calibration data too when the criterion or the
allocation ("flap", "obs") scores activations; depth pruning ranks blocks on calibration data.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .configuration import PruningConfig

if TYPE_CHECKING:
    from .allocation import LayerPlan

__all__ = [
    "CalibrationNeed",
    "PlanInputs",
    "PlanWork",
    "PruningPlan",
    "PruningResult",
    "calibration_need",
    "plan_inputs",
    "plan_pruning",
    "pruned_kinds",
    "without_refit",
]


@dataclass(frozen=True)
class PlanInputs:
    """What a plan reads beyond the model's config: each field says why, or is None when it is not read."""

    #: Calibration data (and so the weights the data runs through).
    data: str | None = None
    #: The weights' values (the criterion scores them).
    weights: str | None = None

    @property
    def reads(self) -> list[str]:
        """ "config", then "weights" and "data" where the plan reads them."""
        return ["config"] + (["weights"] if self.weights or self.data else []) + (["data"] if self.data else [])


def plan_inputs(config: PruningConfig) -> PlanInputs:
    """What the per-layer plan of `config` depends on besides the layer shapes (see the module docstring)."""
    from .criteria import CRITERIA

    if not config.is_structured:
        if config.allocation == "owl":
            return PlanInputs(
                data="allocation 'owl' sets each block's sparsity from the outliers of its Wanda scores on "
                "calibration data"
            )
        if config.allocation == "obs":
            return PlanInputs(
                data="allocation 'obs' sets each block's sparsity from the OBS errors predicted on calibration data"
            )
        return PlanInputs()
    if config.structures is not None and "layers" in config.structures:
        return PlanInputs(
            data="depth pruning (structures 'layers') removes the blocks with the least influence on calibration "
            "data (ShortGPT)"
        )
    if config.allocation == "flap":
        return PlanInputs(
            data=f"allocation 'flap' ranks units by their criterion {config.criterion!r} scores on calibration "
            "data, standardised per layer"
        )
    if config.allocation == "obs":
        return PlanInputs(data="allocation 'obs' ranks units by the error their removal leaves on calibration data")
    if config.allocation == "global":
        if CRITERIA[config.criterion].needs_calibration:
            return PlanInputs(
                data=f"allocation 'global' ranks units by their criterion {config.criterion!r} scores on "
                "calibration data"
            )
        return PlanInputs(
            weights=f"allocation 'global' ranks units by their criterion {config.criterion!r} scores of the weights"
        )
    return PlanInputs()


@dataclass(frozen=True)
class CalibrationNeed:
    """The part of a recipe that reads calibration data when it runs (see `calibration_need`)."""

    #: The PruningConfig field: "method" or "allocation" (unstructured and N:M targets), "criterion" or
    #: "reconstruction".
    field: str
    value: str
    #: What it does with the data, e.g. "ranks channels on calibration data".
    reads: str
    #: The field's calibration-free values.
    instead: tuple[str, ...]

    @property
    def falls_back(self) -> bool:
        """Only the refit reads data: without data the run prunes without it (`without_refit`) instead of refusing."""
        return self.field == "reconstruction"


def calibration_need(config: PruningConfig) -> CalibrationNeed | None:
    """What in `config` reads calibration data when it runs, or None for a calibration-free recipe.

    The one rule of a run without data, for `prune()` and the command line: a calibration-free criterion with a
    data-driven reconstruction (a need that `falls_back`) prunes without refitting, saying so; raising instead would
    make the default reconstruction ('liar') unusable with calibration-free criteria. Any other need has no fallback.
    """
    from .criteria import CRITERIA
    from .reconstruction import RECONSTRUCTIONS

    if not config.is_structured:
        from .unstructured import sparsity_calibration_need

        return sparsity_calibration_need(config)
    if CRITERIA[config.criterion].needs_calibration:
        free = tuple(sorted(name for name, criterion in CRITERIA.items() if not criterion.needs_calibration))
        return CalibrationNeed("criterion", config.criterion, "ranks channels on calibration data", free)
    if RECONSTRUCTIONS[config.reconstruction].needs_calibration:
        return CalibrationNeed("reconstruction", config.reconstruction, "refits layers on calibration data", ("none",))
    return None


def without_refit(config: PruningConfig) -> PruningConfig:
    """A copy of `config` with reconstruction 'none': what a run without data executes when its need `falls_back`."""
    config = copy.copy(config)
    config.reconstruction = "none"
    return config


@dataclass
class PruningResult:
    """What one run did, as every method reports it to `BasePruner.prune`, which builds `BasePruner.summary` from it:
    `structured.prune_structured` (width), `depth.prune_depth`, `unstructured.prune_unstructured` (sparsity)."""

    #: Width: the kept unit indices per layer and kind (relative to the model before this run); depth: one empty
    #: dict per layer left; sparsity: empty.
    kept_units: list[dict[str, list[int]]] = field(default_factory=list)
    #: Width: each layer's plan, the units kept per kind.
    plans: list[LayerPlan] = field(default_factory=list)
    #: Width: the unit kinds this run pruned (`structured.resolve_kinds`).
    kinds: tuple[str, ...] = ()
    #: What the run decided that the user did not ask for (e.g. `structured.QUERY_HEADS_FALLBACK`); goes into the
    #: summary.
    notes: list[str] = field(default_factory=list)
    #: Sparsity: the pruning record written to `config.pruning` (`serialization.layout.record_sparsity`): what was
    #: achieved, per block and per matrix, counted from the weights. None for structured runs, whose record
    #: (`serialization.layout.record_layout`) is written once the run is done.
    record: dict[str, Any] | None = None
    #: Sparsity: the parameters of the matrices the run sparsified (structured runs count theirs beforehand).
    prunable_parameters: int = 0


@dataclass(frozen=True)
class PlanWork:
    """What a run computes per block besides its shapes, read from the config by `plan_pruning`, for `cost.plan_cost`:
    the solver (structured reconstruction or sparsity method), whether data streams through the blocks, whether Gram
    matrices are kept, whether a dense copy runs beside each block (`targets_dense`), the calibration asked for."""

    solver: str
    reads_data: bool
    gram: bool
    dense_copy: bool
    num_samples: int
    seqlen: int


def _work(config: PruningConfig) -> PlanWork:
    from .criteria import CRITERIA
    from .reconstruction import RECONSTRUCTIONS
    from .sparsity import get_sparsity_method, required_statistics
    from .unstructured import DATA_FREE_METHODS

    calibration = (config.num_samples, config.seqlen)
    if not config.is_structured:
        data = config.method not in DATA_FREE_METHODS
        gram = data and required_statistics(get_sparsity_method(config.method)) == "gram"
        return PlanWork(config.method, data, gram, False, *calibration)
    criterion, reconstruction = CRITERIA[config.criterion], RECONSTRUCTIONS[config.reconstruction]
    data = criterion.needs_calibration or reconstruction.needs_calibration
    gram = reconstruction.needs_gram or bool(getattr(criterion, "needs_gram", False))
    return PlanWork(config.reconstruction, data, gram, reconstruction.targets_dense, *calibration)


@dataclass
class PruningPlan:
    """The per-layer plan of one run, and its totals.

    `layers` has one entry per block, with numbers:

    - structured: ``{"layer": i, KIND: {"before": units, "after": units}}`` for each pruned kind; attention
      units are counted in heads (a whole KV group removes its query heads);
    - depth: ``{"layer": i, "kept": bool}``, and ``"bridge": [i, ...]`` on the first block of a removed run that
      one linear map replaces;
    - sparsity: ``{"layer": i, "block": NAME, "modules": {MODULE: fraction zeroed}, "patterns": {MODULE:
      "unstructured" or "N:M"}, "dense": {MODULE: why it stays dense}}``.

    `parameters_removed` counts what the run removes (structured: whole units, or whole blocks less the bridges) or
    zeroes (sparsity, whose checkpoints keep every shape); `sparsity` is that over `prunable_parameters`, what the
    run reports as the sparsity achieved. A structured refit (any reconstruction but "none") may add a bias to a
    refit layer, which the run counts and this plan does not. `work` is what each block computes (`PlanWork`).
    """

    target: str
    allocation: str | None
    layers: list[dict[str, Any]]
    parameters_before: int
    prunable_parameters: int
    parameters_removed: int
    reads: list[str] = field(default_factory=lambda: ["config"])
    work: PlanWork | None = None

    @property
    def structured(self) -> bool:
        return self.target == "structured"

    @property
    def parameters_after(self) -> int:
        return self.parameters_before - self.parameters_removed if self.structured else self.parameters_before

    @property
    def sparsity(self) -> float:
        return self.parameters_removed / max(self.prunable_parameters, 1)

    def totals(self) -> dict[str, Any]:
        return {
            "parameters_before": self.parameters_before,
            "parameters_after": self.parameters_after,
            "prunable_parameters": self.prunable_parameters,
            ("parameters_removed" if self.structured else "parameters_zeroed"): self.parameters_removed,
            "sparsity": self.sparsity,
        }

    def rows(self) -> list[dict[str, Any]]:
        """One readable row per layer, e.g. ``{"layer": 0, "attention_heads": "6 -> 4", "ffn_channels": "96 -> 40"}``."""
        rows = []
        for entry in self.layers:
            row: dict[str, Any] = {"layer": entry["layer"]}
            if "kept" in entry:  # depth
                if entry["kept"]:
                    row["block"] = "kept"
                elif "bridge" in entry:
                    replaced = entry["bridge"]
                    span = f"blocks {replaced[0]}-{replaced[-1]}" if len(replaced) > 1 else f"block {replaced[0]}"
                    row["block"] = f"removed (one linear bridge replaces {span})"
                else:
                    row["block"] = "removed"
            elif "modules" in entry:  # sparsity
                for name, fraction in entry["modules"].items():
                    row[name] = (
                        entry["patterns"][name] if entry["patterns"][name] != "unstructured" else f"{fraction:.1%}"
                    )
                row.update({name: f"dense ({why})" for name, why in entry["dense"].items()})
            else:
                for kind, sizes in entry.items():
                    if kind != "layer":
                        row[kind] = f"{sizes['before']} -> {sizes['after']}"
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "allocation": self.allocation,
            "reads": list(self.reads),
            "plan": self.layers,
            "totals": self.totals(),
        }


def pruned_kinds(adapter: Any, config: PruningConfig) -> tuple[str, ...]:
    """The unit kinds a structured run prunes (`structured.pruned_kinds`)."""
    from . import structured

    return structured.pruned_kinds(adapter, config)


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def plan_pruning(
    model: nn.Module,
    config: PruningConfig,
    samples: list[dict[str, torch.Tensor]] | None = None,
    *,
    adapter: Any = None,
    show_progress: bool = False,
    execution_device: torch.device | str | None = None,
    activations_device: torch.device | str | None = None,
    activations_dir: Any = None,
) -> PruningPlan:
    """The plan a run of `config` on `model` with calibration `samples` executes; the model is not changed.

    `model` may be built on the meta device when `plan_inputs(config)` reads nothing but the config; otherwise it
    needs its weights, and `samples` where the plan reads data (ValueError if they are missing). `adapter` (default:
    `get_adapter(model)`) is needed for structured targets. The placement arguments are `prune`'s.
    """
    from .serialization.layout import count_parameters

    inputs, work = plan_inputs(config), _work(config)
    placement = {
        "execution_device": execution_device,
        "activations_device": activations_device,
        "activations_dir": activations_dir,
    }
    before = count_parameters(model)
    if not config.is_structured:
        from .unstructured import check_solver_config, plan_sparsity

        check_solver_config(config)
        sparsity_plan = plan_sparsity(model, config)
        if inputs.data:
            from .pipeline import block_arguments
            from .pipeline.layerwise import BlockStreamer
            from .unstructured import allocate_block_sparsities

            if not samples:
                raise ValueError(
                    f"The plan of allocation={config.allocation!r} reads calibration data: {inputs.data}."
                )
            streamer = BlockStreamer(model, **placement)
            allocation = allocate_block_sparsities(
                config,
                sparsity_plan.blocks,
                sparsity_plan,
                samples,
                streamer,
                block_arguments(streamer, [block for _, block in sparsity_plan.blocks], samples),
                show_progress,
            )
            sparsity_plan = plan_sparsity(model, config, sparsity_plan.blocks, allocation.sparsities)
        layers, prunable, zeroed = [], 0, 0
        for index, ((block_name, _block), matrices) in enumerate(zip(sparsity_plan.blocks, sparsity_plan.matrices)):
            entry: dict[str, Any] = {"layer": index, "block": block_name, "modules": {}, "patterns": {}, "dense": {}}
            for matrix, pattern in matrices:
                rows = matrix.numel // matrix.in_features
                zeros = rows * pattern.num_pruned(matrix.in_features)
                entry["modules"][matrix.name] = zeros / matrix.numel
                entry["patterns"][matrix.name] = pattern.target
                prunable += matrix.numel
                zeroed += zeros
            prefix = f"{block_name}."
            dense = {**{name: "sparsity 0" for name in sparsity_plan.unpruned}, **sparsity_plan.dense}
            for name, why in dense.items():
                if name.startswith(prefix):
                    entry["dense"][name[len(prefix) :]] = why
            layers.append(entry)
        return PruningPlan(config.target, config.allocation, layers, before, prunable, zeroed, inputs.reads, work)

    if adapter is None:
        from .architectures import get_adapter

        adapter = get_adapter(model)
    from . import structured

    prunable = adapter.count_prunable_parameters(structured.pruned_kinds(adapter, config))
    if config.structures is not None and "layers" in config.structures:
        from .depth import consecutive_runs, plan_depth

        removed = plan_depth(model, adapter, config, samples, show_progress=show_progress, **placement)
        runs = consecutive_runs(removed)
        bridged = config.reconstruction != "none"
        hidden = int(model.config.hidden_size)
        layers = []
        for index in range(len(adapter.layers())):
            entry = {"layer": index, "kept": index not in removed}
            for run in runs if bridged else []:
                if run[0] == index:
                    entry["bridge"] = run
            layers.append(entry)
        gone = sum(_count(adapter.layers()[index]) for index in removed)
        gone -= (hidden * hidden + hidden) * len(runs) if bridged else 0
        return PruningPlan(config.target, None, layers, before, prunable, gone, inputs.reads, work)

    structured_plan = structured.plan_structured(
        model, adapter, config, samples, show_progress=show_progress, **placement
    )
    layers, removed_parameters = [], 0
    for index, (layer, kept) in enumerate(zip(adapter.layers(), structured_plan.plans)):
        entry = {"layer": index}
        for group in adapter.groups(layer):
            if group.kind not in structured_plan.kinds:
                continue
            removed_parameters += (group.num_units - kept[group.kind]) * group.params_per_unit
            if group.kind in entry:  # parallel groups of one kind (MoE experts) keep one count
                continue
            per_unit = adapter.heads_per_unit(layer) if group.kind == "attention_heads" else 1
            entry[group.kind] = {"before": group.num_units * per_unit, "after": kept[group.kind] * per_unit}
        layers.append(entry)
    return PruningPlan(
        config.target, config.allocation, layers, before, prunable, removed_parameters, inputs.reads, work
    )
