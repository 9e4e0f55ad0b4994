"""Unstructured and N:M sparsity: every Linear of a block solved on its own input Gram matrix, block by block."""

from __future__ import annotations

import inspect
import logging
import os
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .architectures import ArchitectureAdapter
from .checks import solve_checked
from .configuration import PruningConfig
from .layerwise import BlockStreamer
from .sparsity import SparsityPattern, get_sparsity_method, required_statistics
from .statistics import InputStatistics, attach_shared_statistics

logger = logging.getLogger(__name__)

#: Methods that only look at the weights.
DATA_FREE_METHODS = ("magnitude",)


def prunable_linears(block: nn.Module, modules_to_not_prune: list[str]) -> dict[str, nn.Linear]:
    return {
        name: module
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear) and not any(skip in name for skip in modules_to_not_prune)
    }


def module_pattern(config: PruningConfig, layer_index: int, module_name: str) -> SparsityPattern:
    """Pattern for one Linear: the target, with the sparsity of a matching module or layer override."""
    sparsity = config.layer_overrides.get(str(layer_index), {}).get("sparsity", config.sparsity)
    for key, value in config.module_sparsity.items():
        if key in module_name:
            sparsity = value
    return SparsityPattern.parse(config.target, sparsity)


@torch.no_grad()
def prune_unstructured(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    config: PruningConfig,
    samples: list[dict[str, torch.Tensor]] | None,
    show_progress: bool = True,
    *,
    execution_device: torch.device | str | None = None,
    activations_device: torch.device | str | None = None,
    activations_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Sparsify the Linear layers of every block in place; return the achieved sparsity per module.

    The model may be dispatched by accelerate with offloaded weights; the last three arguments say where blocks
    compute and where activations wait (see `BlockStreamer`).
    """
    layers = adapter.layers()
    config.check_layers(len(layers))
    solver = get_sparsity_method(config.method)
    statistics = required_statistics(solver)
    takes_cache = _check_solver_options(solver, config)
    use_data = config.method not in DATA_FREE_METHODS
    if use_data and not samples:
        raise ValueError(f"method={config.method!r} needs calibration data, and none was given.")
    # Check every shape against its pattern before the first weight changes.
    for index, layer in enumerate(layers):
        for name, linear in prunable_linears(layer, config.modules_to_not_prune).items():
            module_pattern(config, index, name).check_columns(linear.in_features)

    streamer = BlockStreamer(model, execution_device, activations_device, activations_dir)
    inputs = streamer.capture(layers[0], samples) if use_data else None
    per_module: dict[str, float] = {}
    zeros = total = 0
    prefix = _layers_prefix(model, layers)
    for index, layer in enumerate(tqdm(layers, desc="Sparsifying layers", disable=not show_progress)):
        # Offloaded weights are loaded once per block and the sparsified ones written back on exit.
        with streamer.materialized(layer):
            linears = prunable_linears(layer, config.modules_to_not_prune)
            stats = None
            if inputs is not None:
                stats, handles = attach_shared_statistics(layer, linears, with_gram=statistics == "gram")
                try:
                    streamer.run(layer, inputs, keep_outputs=False)
                finally:
                    for handle in handles:
                        handle.remove()
            caches: dict[int, dict] = {}  # one per shared input: its factorisations are computed once
            for name, linear in linears.items():
                pattern = module_pattern(config, index, name)
                if pattern.is_dense:
                    continue
                gram, cache = _module_statistics(stats, name, linear, statistics, caches)
                options: dict[str, Any] = {"mask_scope": config.mask_scope} if config.method == "sparsegpt" else {}
                if takes_cache:
                    options["cache"] = cache
                options.update(config.solver_options)
                new_weight, keep = solve_checked(
                    f"{prefix}{index}.{name}",
                    solver,
                    linear.weight.data,
                    gram,
                    pattern,
                    config.damp,
                    stats and stats[name],
                    **options,
                )
                linear.weight.data.copy_(new_weight)
                removed = int((~keep).sum())
                zeros += removed
                total += keep.numel()
                per_module[f"{prefix}{index}.{name}"] = removed / keep.numel()
            if inputs is not None and index + 1 < len(layers):
                inputs = streamer.run(layer, inputs)

    record = {
        "format": 1,
        "target": config.target,
        "method": config.method,
        "sparsity_achieved": zeros / max(total, 1),
        "modules": per_module,
    }
    # Dense safetensors hold the zeros; the record tells readers (and the model card) what was done.
    model.config.pruning = record
    return {"sparsity_achieved": record["sparsity_achieved"], "modules": per_module}


def _check_solver_options(solver, config: PruningConfig) -> bool:
    """ValueError for an option `solver` does not take; returns whether it takes a factorisation ``cache``."""
    parameters = inspect.signature(solver).parameters
    open_ended = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    reserved = {"weight", "gram", "pattern", "damp", "cache"}
    for name in config.solver_options:
        if name in reserved or not (open_ended or name in parameters):
            known = sorted(set(parameters) - reserved - {"options"})
            raise ValueError(f"method={config.method!r} has no option {name!r}; its options: {known}")
    return open_ended or "cache" in parameters


def _module_statistics(
    stats: dict[str, InputStatistics] | None, name: str, linear: nn.Linear, statistics: str, caches: dict[int, dict]
) -> tuple[torch.Tensor, dict | None]:
    """The ``gram`` argument a solver gets for one module (full Gram matrix or its diagonal, as the solver declared)
    and the factorisation cache of the module's input group."""
    if stats is None:
        return _identity_gram(linear), None
    module_stats = stats.get(name)
    if module_stats is None:  # never called on the calibration data: nothing is known about its input
        module_stats = stats[name] = InputStatistics(linear.in_features, statistics == "gram", linear.weight.device)
    gram = module_stats.gram if statistics == "gram" else module_stats.sum_sq
    return gram, caches.setdefault(id(module_stats), {})


def _identity_gram(linear: nn.Linear) -> torch.Tensor:
    return torch.eye(linear.in_features, dtype=torch.float32, device=linear.weight.device)


def _layers_prefix(model: nn.Module, layers: nn.ModuleList) -> str:
    for name, module in model.named_modules():
        if module is layers:
            return f"{name}."
    return ""
