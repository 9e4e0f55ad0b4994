"""How many units each layer keeps: uniform per layer, or one global ranking under the total budget."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..architectures import ArchitectureAdapter, UnitGroup

#: kind -> units kept, for one layer.
LayerPlan = dict[str, int]


@dataclass(frozen=True)
class Budget:
    """The `PruningConfig` fields a structured allocation and `checks.check_budget` read, resolved once by the run's
    planner (`structured._plan`); a `PruningConfig` has them too, so the functions here take either."""

    sparsity: float
    layer_overrides: Mapping[str, dict[str, Any]]
    protect_layers: Sequence[int]
    round_to: int
    min_keep_fraction: float
    allocation: str
    allow_sparsity_shortfall: bool


_CHANNEL_KINDS = ("ffn_channels", "mamba_inner", "expert_channels")


class BudgetError(ValueError):
    """The requested sizes cannot be met (e.g. heads that do not form whole KV groups)."""


def round_kept(kind: str, kept: int, total: int, multiple: int) -> int:
    """Round a kept channel count to the nearest multiple of `multiple`, within [multiple, total]."""
    if kind not in _CHANNEL_KINDS or multiple <= 1 or kept >= total:
        return kept
    rounded = max(multiple, int(round(kept / multiple)) * multiple)
    return min(rounded, total)


def _round_group(group: UnitGroup, kept: int, round_to: int) -> int:
    """`round_kept`, after rounding to the group's own `keep_multiple` (query heads: one per KV group)."""
    multiple = group.keep_multiple
    if multiple > 1 and kept < group.num_units:
        kept = min(max(multiple, int(round(kept / multiple)) * multiple), group.num_units)
    return round_kept(group.kind, kept, group.num_units, round_to)


def _merge_parallel(groups: list[UnitGroup]) -> list[UnitGroup]:
    """One group per kind: parallel groups of one kind (the experts of a MoE layer) keep one count, so a unit of
    the merged group stands for one unit in each of them."""
    merged: dict[str, UnitGroup] = {}
    for group in groups:
        if group.kind in merged:
            first = merged[group.kind]
            merged[group.kind] = dataclasses.replace(
                first, params_per_unit=first.params_per_unit + group.params_per_unit
            )
        else:
            merged[group.kind] = group
    return list(merged.values())


def _override_plan(adapter: ArchitectureAdapter, layer_idx: int, groups: list[UnitGroup], override: dict) -> LayerPlan:
    plan: LayerPlan = {}
    layer = adapter.layers()[layer_idx]
    for group in groups:
        if group.kind == "attention_heads" and "num_heads" in override:
            heads, per_unit = override["num_heads"], adapter.heads_per_unit(layer)
            if heads % per_unit:
                raise BudgetError(
                    f"Layer {layer_idx}: num_heads={heads} cannot be kept, heads go in whole KV groups of {per_unit} "
                    f"query heads (grouped-query attention); use a multiple of {per_unit}."
                )
            plan[group.kind] = heads // per_unit
        elif group.kind == "query_heads" and "num_heads" in override:
            if override["num_heads"] % group.keep_multiple:
                raise BudgetError(
                    f"Layer {layer_idx}: num_heads={override['num_heads']} cannot be kept, every one of the "
                    f"{group.keep_multiple} KV groups keeps the same number of query heads; use a multiple of "
                    f"{group.keep_multiple}."
                )
            plan[group.kind] = override["num_heads"]
        elif group.kind in _CHANNEL_KINDS and "ffn_channels" in override:
            plan[group.kind] = override["ffn_channels"]
        else:
            continue
        multiple = group.keep_multiple
        if multiple > 1 and plan[group.kind] < group.num_units and plan[group.kind] % multiple:
            raise BudgetError(
                f"Layer {layer_idx}: {group.kind} keeps multiples of {multiple}, got {plan[group.kind]}."
            )
        if not 1 <= plan[group.kind] <= group.num_units:
            raise BudgetError(
                f"Layer {layer_idx}: cannot keep {plan[group.kind]} {group.kind} units, it has {group.num_units}."
            )
    return plan


def uniform_layer_plan(groups: list[UnitGroup], sparsity: float, round_to: int, fixed: LayerPlan) -> LayerPlan:
    """Remove `sparsity` of the layer's prunable parameters.

    Coarse units (whole KV groups) are rounded DOWN, so no kind loses more than `sparsity` of its units through
    rounding (SmolLM2 has 3 KV groups: rounding 0.2 * 3 to 1 would strip a third of every layer's attention); the
    finest kind then absorbs what rounding left over, so the layer's total lands on the budget.
    """
    plan = dict(fixed)
    budget = sparsity * sum(g.num_units * g.params_per_unit for g in groups)
    removed = sum((g.num_units - plan[g.kind]) * g.params_per_unit for g in groups if g.kind in plan)
    free = sorted((g for g in groups if g.kind not in plan), key=lambda g: -g.params_per_unit)
    for position, group in enumerate(free):
        if position == len(free) - 1:
            remove = round(max(budget - removed, 0.0) / group.params_per_unit)
        else:
            remove = math.floor(sparsity * group.num_units + 1e-9)
        kept = min(max(group.num_units - remove, 1), group.num_units)
        kept = _round_group(group, kept, round_to)
        plan[group.kind] = kept
        removed += (group.num_units - kept) * group.params_per_unit
    return plan


def protected_layers(budget: Budget, num_layers: int) -> set[int]:
    """Indices of the layers `budget.protect_layers` leaves dense (negative indices count from the end)."""
    return {index % num_layers for index in budget.protect_layers if -num_layers <= index < num_layers}


def uniform_plan(adapter: ArchitectureAdapter, kinds: tuple[str, ...], budget: Budget) -> list[LayerPlan]:
    layers = adapter.layers()
    protected = protected_layers(budget, len(layers))
    # Protected layers stay dense; the others remove more so the model still meets the total budget.
    free = [i for i in range(len(layers)) if i not in protected and str(i) not in budget.layer_overrides]
    sparsity = budget.sparsity
    if protected and free:
        sparsity = min(budget.sparsity * (len(free) + len(protected)) / len(free), 0.95)
    plans = []
    for index, layer in enumerate(layers):
        groups = _merge_parallel([g for g in adapter.groups(layer) if g.kind in kinds])
        override = budget.layer_overrides.get(str(index), {"sparsity": 0.0} if index in protected else {})
        fixed = _override_plan(adapter, index, groups, override)
        plans.append(uniform_layer_plan(groups, override.get("sparsity", sparsity), budget.round_to, fixed))
    return plans


def global_plan(
    adapter: ArchitectureAdapter,
    kinds: tuple[str, ...],
    budget: Budget,
    unit_scores: list[dict[str, torch.Tensor]],
    mode: str = "global",
    layer_scale: list[float] | None = None,
) -> list[LayerPlan]:
    """One ranking of all units across layers and kinds, greedy (lowest first) to the total parameter budget.

    `mode` says what the numbers in `unit_scores` are and how they are made comparable:

    - "global": unit scores (higher = keep), standardised per kind over all layers pooled.
    - "flap": channel scores [num_units, channels_per_unit] (higher = keep), standardised per kind within each
      layer, a unit scoring the mean of its channels' standardised scores, as FLAP's reference implementation does
      (An et al., AAAI 2024, structure "AL-AM"); the parameter budget weighs each unit by its size.
    - "obs": the error each greedy OBS step adds, per unit in removal order (see `criteria.obs`), divided by the
      unit's parameters and by `layer_scale[i]` (the median token's squared norm of the residual stream entering
      layer i, so errors
      compare relative to the signal they perturb); a layer's steps are made non-decreasing so each layer gives
      up a prefix of its greedy order.

    Every layer keeps at least `min_keep_fraction` of each kind; `protect_layers` and `layer_overrides` are
    applied first and spend their part of the budget.
    """
    layers = adapter.layers()
    protected = protected_layers(budget, len(layers))
    groups_per_layer = [_merge_parallel([g for g in adapter.groups(layer) if g.kind in kinds]) for layer in layers]
    plans: list[LayerPlan] = [{g.kind: g.num_units for g in groups} for groups in groups_per_layer]
    total = sum(g.num_units * g.params_per_unit for groups in groups_per_layer for g in groups)
    allowed = budget.sparsity * total
    ranked_layers = []
    for index, groups in enumerate(groups_per_layer):
        override = budget.layer_overrides.get(str(index)) or ({"sparsity": 0.0} if index in protected else None)
        if override:
            fixed = _override_plan(adapter, index, groups, override)
            plans[index] = uniform_layer_plan(groups, override.get("sparsity", 0.0), budget.round_to, fixed)
            allowed -= sum((g.num_units - plans[index][g.kind]) * g.params_per_unit for g in groups)
        else:
            ranked_layers.append(index)
    # (priority, layer, group, position): lower priority goes first.
    entries: list[tuple[float, int, UnitGroup, int]] = []
    for kind in kinds:
        if mode == "obs":
            for index in ranked_layers:
                for group in groups_per_layer[index]:
                    if group.kind != kind or kind not in unit_scores[index]:
                        continue
                    steps = torch.as_tensor(unit_scores[index][kind], dtype=torch.float64, device="cpu")
                    steps = torch.cummax(steps, 0).values.tolist()  # one read, not one per unit
                    scale = group.params_per_unit * (layer_scale[index] if layer_scale else 1.0)
                    entries.extend((cost / scale, index, group, pos) for pos, cost in enumerate(steps))
            continue
        if mode == "flap":
            for index in ranked_layers:
                for group in groups_per_layer[index]:
                    if group.kind != kind or kind not in unit_scores[index]:
                        continue
                    channels = unit_scores[index][kind].double()
                    std = channels.std().clamp_min(1e-12) if channels.numel() > 1 else 1.0
                    z = ((channels - channels.mean()) / std).reshape(group.num_units, -1).mean(1).tolist()
                    entries.extend((score, index, group, unit) for unit, score in enumerate(z))
            continue
        # Scores of different kinds live on different scales; standardising each kind over all layers keeps the
        # differences between layers, which is the point of a global ranking.
        # Pooled on the host: blocks dispatched over several GPUs score their units on different devices.
        pooled = [unit_scores[i][kind].to("cpu") for i in ranked_layers if kind in unit_scores[i]]
        if not pooled:
            continue
        flat = torch.cat(pooled)
        mean, std = flat.mean(), flat.std().clamp_min(1e-12) if flat.numel() > 1 else 1.0
        for index in ranked_layers:
            for group in groups_per_layer[index]:
                if group.kind == kind:
                    z = ((unit_scores[index][kind].to("cpu") - mean) / std).tolist()
                    entries.extend((score, index, group, unit) for unit, score in enumerate(z))
    entries.sort(key=lambda entry: entry[0])
    removed = 0.0
    taken = [False] * len(entries)
    for position, (_score, index, group, _unit) in enumerate(entries):
        if removed + group.params_per_unit / 2 > allowed:
            continue  # a smaller unit further down may still fit
        if plans[index][group.kind] > _floor(group, budget):
            plans[index][group.kind] -= 1
            removed += group.params_per_unit
            taken[position] = True
    for index in ranked_layers:
        for group in groups_per_layer[index]:
            plans[index][group.kind] = _round_group(group, plans[index][group.kind], budget.round_to)
    _fill_rounding_shortfall(plans, groups_per_layer, ranked_layers, entries, taken, allowed, budget)
    return plans


def _floor(group: UnitGroup, budget: Budget) -> int:
    """The fewest units of `group` a layer keeps (`min_keep_fraction`, at least one)."""
    return max(1, math.ceil(budget.min_keep_fraction * group.num_units))


def _fill_rounding_shortfall(
    plans: list[LayerPlan],
    groups_per_layer: list[list[UnitGroup]],
    ranked_layers: list[int],
    entries: list[tuple[float, int, UnitGroup, int]],
    taken: list[bool],
    allowed: float,
    budget: Budget,
) -> None:
    """Rounding coarse counts (query heads to one per KV group) can miss the ranked budget by up to half a coarse
    unit per layer either way (4% too few parameters at 20% on SmolLM2); units of kinds that keep single units (FFN
    channels, with `round_to=1`) settle the difference: the next ones in the ranking go, or the last ones taken
    come back, so allocations compare at the parameters they were asked for."""
    if budget.round_to != 1:
        return
    removed = sum(
        (g.num_units - plans[i][g.kind]) * g.params_per_unit for i in ranked_layers for g in groups_per_layer[i]
    )
    for position in reversed(range(len(entries))):
        _score, index, group, _unit = entries[position]
        if not taken[position] or group.keep_multiple > 1 or plans[index][group.kind] >= group.num_units:
            continue
        if removed - group.params_per_unit / 2 < allowed:
            break
        plans[index][group.kind] += 1
        removed -= group.params_per_unit
    for position, (_score, index, group, _unit) in enumerate(entries):
        if taken[position] or group.keep_multiple > 1:
            continue
        if removed + group.params_per_unit / 2 > allowed:
            continue
        if plans[index][group.kind] > _floor(group, budget):
            plans[index][group.kind] -= 1
            removed += group.params_per_unit
