"""Checks that keep a bad run from producing a checkpoint: solved weights, the structured budget, input lengths.

- `checked_refit` / `check_solution`: after every least-squares solve (structured reconstruction, sparsity solvers),
  the new weights must be finite and of the original's order of magnitude; otherwise `NonFiniteWeightsError` names
  the layer and what to change (`damp`, the dtype). An ill-conditioned system is reported with an
  `IllConditionedWarning` that names the layer.
- `check_budget`: a structured plan that removes clearly less than the requested sparsity (whole units, minimum
  sizes and `round_to` allow only so much) is refused before any weight changes, unless the config allows it.
- `check_row_counts`: the same for unstructured sparsity, whose per-row counts `floor(sparsity x row length)` can
  neither empty a row nor remove a fraction of a weight.
- `check_sequence_length`: `seqlen` longer than the model's position embeddings is refused before loading data.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "EXPLOSION_FACTOR",
    "IllConditionedWarning",
    "NonFiniteWeightsError",
    "SparsityShortfallError",
    "check_budget",
    "check_row_counts",
    "check_sequence_length",
    "check_inputs",
    "check_solution",
    "checked_refit",
    "solve_checked",
]

#: A solved weight larger than this many times the largest weight of the original layer is taken as a blown-up
#: solve. A well-posed refit moves weights by a fraction of their scale; duplicated channels solved with damp=0 give
#: factors above 1e20.
EXPLOSION_FACTOR = 1e4


class NonFiniteWeightsError(FloatingPointError):
    """A solve produced non-finite or exploding weights; nothing of the run may be saved."""


class IllConditionedWarning(UserWarning):
    """A least-squares system was (nearly) singular; the solve fell back to a minimum-norm solution."""


class SparsityShortfallError(ValueError):
    """The plan (structured, or unstructured per-row counts) removes clearly less than the requested sparsity."""


def check_solution(
    name: str, new_weight: torch.Tensor, original: torch.Tensor, damp: float, statistics: Any | None = None
) -> None:
    """Raise `NonFiniteWeightsError` if `new_weight` (the solve's result for layer `name`) may not be kept.

    Args:
        name: The layer, as printed in the error (e.g. "model.layers.3.mlp.down_proj").
        new_weight: The solved weight, in the dtype it will be stored in.
        original: The weight before the solve (any shape; its largest finite magnitude sets the scale).
        damp: The damping used, quoted in the advice.
        statistics: The layer's `InputStatistics`, if any: non-finite inputs are reported as the cause.
    """
    finite = torch.isfinite(new_weight)
    scale = float(original.detach().abs().float().nan_to_num(0.0, 0.0, 0.0).max()) if original.numel() else 0.0
    largest = float(new_weight.detach().abs().float().nan_to_num(0.0, 0.0, 0.0).max()) if new_weight.numel() else 0.0
    if bool(finite.all()) and largest <= EXPLOSION_FACTOR * max(scale, 1e-12):
        return
    if not bool(finite.all()):
        found = f"{int((~finite).sum())} non-finite weights (inf/NaN)"
    else:
        found = f"weights up to {largest:.3g}, {largest / max(scale, 1e-12):.3g} times the original's largest"
    check_inputs(name, statistics, original.dtype)
    cause = ""
    if new_weight.dtype in (torch.float16, torch.bfloat16) and not bool(finite.all()):
        cause = f" The solution may not fit in {_dtype_name(new_weight.dtype)}: load the model in float32 (--dtype)."
    raise NonFiniteWeightsError(
        f"Solving {name} gave {found}: the least-squares system is ill-posed (damp={damp:g}).{cause} Raise damp "
        "(e.g. damp=0.01 or 0.1) and run again; nothing was saved."
    )


def check_inputs(name: str, statistics: Any | None, dtype: torch.dtype) -> None:
    """Raise `NonFiniteWeightsError` if the calibration inputs of layer `name` overflowed (inf/NaN statistics)."""
    if statistics is None or _statistics_finite(statistics):
        return
    raise NonFiniteWeightsError(
        f"The calibration inputs of {name} are not finite: the model's activations overflow in {_dtype_name(dtype)}. "
        "Load it in float32 or bfloat16 (--dtype float32) and run again; nothing was saved."
    )


def solve_checked(
    name: str,
    solver: Any,
    weight: torch.Tensor,
    gram: torch.Tensor,
    pattern: Any,
    damp: float,
    statistics: Any,
    **options: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`solver(weight, gram, pattern, damp=damp, **options)` (a sparsity solver) between `check_inputs` and
    `check_solution`."""
    check_inputs(name, statistics, weight.dtype)
    new_weight, keep = solver(weight, gram, pattern, damp=damp, **options)
    check_solution(name, new_weight, weight, damp, statistics)
    return new_weight, keep


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


@contextlib.contextmanager
def checked_refit(name: str, linear: nn.Linear, damp: float, statistics: Any | None = None) -> Iterator[None]:
    """Around a refit that edits `linear` in place: name the layer in `IllConditionedWarning`s raised inside, then
    check the refit weights and bias with `check_solution`."""
    check_inputs(name, statistics, linear.weight.dtype)
    original_weight = linear.weight.detach().clone()
    original_bias = linear.bias.detach().clone() if linear.bias is not None else None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        message = warning.message
        if isinstance(message, IllConditionedWarning):
            message = IllConditionedWarning(f"{name}: {message}")
        warnings.warn_explicit(message, warning.category, warning.filename, warning.lineno)
    check_solution(name, linear.weight, original_weight, damp, statistics)
    if linear.bias is not None:
        # A bias added by the refit starts at zero: the weights' scale is the reference for both.
        reference = original_weight.flatten()
        if original_bias is not None:
            reference = torch.cat([reference, original_bias.flatten().to(reference.dtype)])
        check_solution(f"{name} (bias)", linear.bias, reference, damp, statistics)


def _statistics_finite(statistics: Any) -> bool:
    tensors = [getattr(statistics, key, None) for key in ("sum", "sum_sq", "gram")]
    return all(bool(torch.isfinite(t).all()) for t in tensors if isinstance(t, torch.Tensor))


def check_budget(
    groups_per_layer: Sequence[Sequence[Any]],
    plans: Sequence[dict[str, int]],
    budget: Any,
) -> None:
    """Raise `SparsityShortfallError` when `plans` remove clearly less than `budget` asks for.

    Args:
        groups_per_layer: For each layer, its `UnitGroup`s of the kinds being pruned (num_units, params_per_unit).
        plans: For each layer, kind -> units kept (allocation's `LayerPlan`s).
        budget: The run's `allocation.Budget` (or a `PruningConfig`): its sparsity, layer_overrides, round_to,
            allocation and allow_sparsity_shortfall are read.

    The requested parameter count is the sparsity (per layer, with overrides) of the prunable parameters; layers
    whose sizes are fixed by an override count as requested. Rounding to whole units is accepted: per layer and kind,
    half a unit (or half of `round_to` channels), plus one of the largest units for the greedy global ranking. What
    is refused is mostly the floor of one kept unit per kind and layer (e.g. sparsity=0.999 with 3 KV groups).
    """
    if budget.allow_sparsity_shortfall:
        return
    total = requested = removed = slack = 0.0
    for index, (groups, plan) in enumerate(zip(groups_per_layer, plans)):
        override = budget.layer_overrides.get(str(index), {})
        layer_total = sum(g.num_units * g.params_per_unit for g in groups)
        layer_removed = sum((g.num_units - plan.get(g.kind, g.num_units)) * g.params_per_unit for g in groups)
        total += layer_total
        removed += layer_removed
        if "num_heads" in override or "ffn_channels" in override:
            requested += layer_removed
        else:
            requested += override.get("sparsity", budget.sparsity) * layer_total
        for group in groups:
            step = budget.round_to if group.kind in ("ffn_channels", "mamba_inner") else 1
            # Some units only go in steps (Mamba2 heads, the same count in every group; MoE channels by 8).
            step = max(step, getattr(group, "keep_multiple", 1))
            slack += 0.5 * min(step, group.num_units) * group.params_per_unit
    if budget.allocation == "global" and groups_per_layer:
        slack += max(g.params_per_unit for groups in groups_per_layer for g in groups)
    if total == 0 or requested - removed <= slack:
        return
    raise SparsityShortfallError(
        f"sparsity={budget.sparsity:g} cannot be met: whole units leave at most {removed / total:.1%} of the prunable "
        f"parameters removable ({int(removed):,} of {int(requested):,} requested; every layer keeps at least one unit "
        "of each kind, and round_to / min_keep_fraction set the steps). Lower sparsity, or set "
        "allow_sparsity_shortfall=True (--allow-sparsity-shortfall) to accept the smaller model."
    )


def check_row_counts(matrices: Sequence[tuple[str, int, int, Any]], allow_shortfall: Any) -> None:
    """Raise `SparsityShortfallError` when unstructured per-row counts cannot come near the requested sparsity.

    Args:
        matrices: `(name, rows, row_length, pattern)` for every matrix to sparsify; `pattern` is its
            `SparsityPattern` (N:M patterns are exact and not checked).
        allow_shortfall: `allow_sparsity_shortfall` (a bool, or a `PruningConfig` to read it from): no check.

    Every row loses `floor(sparsity x row_length)` weights (`mask_scope="layer"` keeps that total), so a row always
    keeps one weight, and loses none while `sparsity x row_length < 1`. Rounding down is accepted, except:

    - where rows are asked to keep under half a weight: they keep one, e.g. sparsity=0.999 on rows of 48 reaches
      47/48 = 97.9% (the unstructured form of structured pruning's one unit kept per layer);
    - where less than half the requested weights would go in all, because short rows lose none (sparsity=0.02 on
      rows of 48). A few short matrices left dense among longer ones (a Mamba dt_proj of 2 inputs) pass.
    """
    if allow_shortfall if isinstance(allow_shortfall, bool) else allow_shortfall.allow_sparsity_shortfall:
        return
    counted = [entry for entry in matrices if not entry[3].is_nm and not entry[3].is_dense]
    total = sum(rows * length for _, rows, length, _ in counted)
    requested = sum(rows * length * pattern.sparsity for _, rows, length, pattern in counted)
    removed = sum(rows * pattern.num_pruned(length) for _, rows, length, pattern in counted)
    achieved = f"{removed / max(total, 1):.1%}"
    # The matrix furthest from its request, the first in model order among equals.
    dense_rows = [entry for entry in counted if (1.0 - entry[3].sparsity) * entry[2] < 0.5 - 1e-9]
    untouched = [entry for entry in counted if entry[3].num_pruned(entry[2]) == 0]
    if dense_rows:
        name, _, length, pattern = min(dense_rows, key=lambda entry: entry[2])
        why = f"; each row keeps at least one weight, so the {length}-weight rows of {name}"
        reach, advice = f"lose at most {(length - 1) / length:.1%}", f"Lower it to at most {(length - 1) / length:.4g}"
        others = len(dense_rows) - 1
    elif untouched and removed < 0.5 * requested:
        name, _, length, pattern = max(untouched, key=lambda entry: entry[2])
        why = f", so the {length}-weight rows of {name}"
        reach, advice = "lose none", f"Raise it to at least {1 / length:.4g} (or 0 for none)"
        others = len(untouched) - 1
    else:
        return
    more = f" (and {others} more matrices)" if others else ""
    raise SparsityShortfallError(
        f"sparsity={pattern.sparsity:g} cannot be met: a row loses floor(sparsity x its length) weights{why}{more} "
        f"{reach}, and the pruned matrices {achieved} in all. {advice}, or set allow_sparsity_shortfall=True "
        f"(--allow-sparsity-shortfall) to accept {achieved}."
    )


def check_sequence_length(seqlen: int, model_config: Any) -> None:
    """Raise ValueError if `seqlen` exceeds the model's `max_position_embeddings` (BERT, LLaMA; not Mamba)."""
    limit = getattr(model_config, "max_position_embeddings", None)
    if isinstance(limit, int) and limit > 0 and seqlen > limit:
        model_type = getattr(model_config, "model_type", "this model")
        raise ValueError(
            f"seqlen={seqlen} is longer than the {limit} positions {model_type} models of this size have "
            f"(max_position_embeddings): use seqlen <= {limit}."
        )
