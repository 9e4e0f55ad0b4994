"""What every architecture adapter provides: where prunable units live and how to slice every tensor they touch."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class UnitGroup:
    """The prunable units of one kind in one layer (e.g. the KV groups of one attention block).

    A unit owns `channels_per_unit` consecutive input channels of every consumer Linear: the layers that read the
    units' outputs, whose columns are removed and which reconstruction refits. The first consumer is the one whose
    inputs and weights the criteria score.
    """

    kind: str
    num_units: int
    channels_per_unit: int
    params_per_unit: int
    consumers: tuple[str, ...]
    #: The kept number of units must be a multiple of this (query heads: one per KV group, equal in every group).
    keep_multiple: int = 1

    def unit_channels(self, units: torch.Tensor) -> torch.Tensor:
        """Consumer input-channel indices owned by `units`, in unit order."""
        offsets = torch.arange(self.channels_per_unit, device=units.device)
        return (units[:, None] * self.channels_per_unit + offsets[None, :]).reshape(-1)


@dataclass(frozen=True)
class UnitSlice:
    """The entries of one parameter of a layer that belong to the units of a group: what `prune_units` removes with
    them (producer rows, consumer columns, their biases, per-channel vectors).

    Unit `u` owns positions `index[u]` along dimension `dim` of the parameter, with the whole extent of every other
    dimension; for a stacked expert parameter ([num_experts, ...]), of the expert's own slice `parameter[expert]`.
    """

    #: The parameter's name inside the layer, as `layer.named_parameters()` gives it, e.g. "self_attn.q_proj.weight".
    parameter: str
    dim: int
    #: [num_units, positions per unit], int64.
    index: torch.Tensor
    expert: int | None = None

    def tensor(self, layer: nn.Module) -> torch.Tensor:
        """The parameter (the expert's slice of it) in `layer`."""
        param = layer.get_parameter(self.parameter)
        return param[self.expert] if self.expert is not None else param

    def entries_per_unit(self, layer: nn.Module) -> int:
        """How many entries of the parameter each unit owns."""
        shape = self.tensor(layer).shape
        return int(self.index.shape[1]) * math.prod(size for d, size in enumerate(shape) if d != self.dim)


def unit_positions(num_units: int, per_unit: int) -> torch.Tensor:
    """[num_units, per_unit] positions `u * per_unit + i`: unit `u`'s consecutive block of rows or columns."""
    return torch.arange(num_units)[:, None] * per_unit + torch.arange(per_unit)[None, :]


def row_slices(path: str, module: nn.Module, rows: torch.Tensor) -> list[UnitSlice]:
    """Output rows `rows` ([num_units, per_unit]) of `module` at `path` in the layer (a Linear, or a Conv1d whose
    weight's first dimension is its output channels): the weight's rows and the bias entries."""
    slices = [UnitSlice(f"{path}.weight", 0, rows)]
    if getattr(module, "bias", None) is not None:
        slices.append(UnitSlice(f"{path}.bias", 0, rows))
    return slices


def select_rows(linear: nn.Linear, rows: torch.Tensor) -> None:
    """Keep only output features `rows` of `linear`, in place."""
    rows = rows.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.data.index_select(0, rows), linear.weight.requires_grad)
    if linear.bias is not None:
        linear.bias = nn.Parameter(linear.bias.data.index_select(0, rows), linear.bias.requires_grad)
    linear.out_features = int(rows.numel())


def select_columns(linear: nn.Linear, columns: torch.Tensor) -> None:
    """Keep only input features `columns` of `linear`, in place."""
    columns = columns.to(linear.weight.device)
    linear.weight = nn.Parameter(linear.weight.data.index_select(1, columns), linear.weight.requires_grad)
    linear.in_features = int(columns.numel())


def select_parameter(module: nn.Module, name: str, index: torch.Tensor) -> None:
    """Keep only entries `index` along the first dimension of parameter `module.name`, in place."""
    param = getattr(module, name)
    setattr(module, name, nn.Parameter(param.data.index_select(0, index.to(param.device)), param.requires_grad))


def ensure_bias(linear: nn.Linear) -> nn.Parameter:
    """Give `linear` a zero bias if it has none; reconstruction folds its intercept there."""
    if not getattr(linear, "supports_bias", True):
        raise ValueError(
            f"{linear!r} cannot hold a bias (stacked expert weights have none), so a refit that adds one cannot be "
            "stored: use reconstruction='liar' (fitted without intercept there) or 'none'."
        )
    if linear.bias is None:
        weight = linear.weight
        linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=weight.dtype, device=weight.device))
    return linear.bias


class ArchitectureAdapter(ABC):
    """Knows one model family's layout. Subclasses are registered in `architectures/__init__.py`."""

    #: `config.model_type` values this adapter handles.
    model_types: tuple[str, ...] = ()
    #: Structure kinds this family has, in the order they are pruned inside a layer.
    structure_kinds: tuple[str, ...] = ()
    #: Kinds pruned when `PruningConfig.structures` is None (None: all of `structure_kinds`).
    default_structure_kinds: tuple[str, ...] | None = None

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config

    # ---- layout ---------------------------------------------------------------------------------------------
    @abstractmethod
    def layers(self) -> nn.ModuleList:
        """The repeated blocks, in execution order."""

    @abstractmethod
    def groups(self, layer: nn.Module) -> list[UnitGroup]:
        """The unit groups of `layer` at its current (possibly already pruned) size."""

    @abstractmethod
    def prune_units(self, layer: nn.Module, group: UnitGroup, keep: torch.Tensor) -> None:
        """Slice every tensor of `layer` that touches `group` so only units `keep` (sorted) remain."""

    def prune_units_calibrated(
        self, layer: nn.Module, group: UnitGroup, keep: torch.Tensor, stats: dict[str, Any] | None
    ) -> None:
        """`prune_units` during a pruning run, with the consumers' input statistics of the unpruned layer
        (`InputStatistics` by consumer name; None without calibration data).

        Families where removing units changes the kept units' outputs (Mamba2's gated RMSNorm normalises over all
        heads of a group) override this to compensate.
        """
        self.prune_units(layer, group, keep)

    @abstractmethod
    def describe_layer(self, layer: nn.Module) -> dict[str, Any]:
        """Sizes of `layer` as stored in `config.pruning["layers"]` (enough to rebuild it)."""

    @abstractmethod
    def units_from_description(self, group: UnitGroup, description: dict[str, Any]) -> int:
        """How many units of `group` a stored layer description keeps."""

    def default_has_bias(self, consumer: str) -> bool:
        """Whether the unpruned model has a bias on consumer `consumer` (so one added by reconstruction is extra)."""
        return False

    def vanilla_config_update(self, descriptions: list[dict[str, Any]]) -> dict[str, Any] | None:
        """Config fields that express these layer sizes in plain transformers, or None when only the plugin can.

        May add zero biases so that a bias flag in the config describes the model exactly.
        """
        return None

    def heads_per_unit(self, layer: nn.Module) -> int:
        """Attention heads removed with one attention unit (a whole KV group under GQA)."""
        return 1

    def producer_weight(self, layer: nn.Module, group: UnitGroup) -> torch.Tensor:
        """Rows of the first matrix that produces `group`'s channels: [num_units * channels_per_unit, in_features].

        Row `i` writes the consumers' input channel `i`. Weight-only criteria (PruneNet) score units from it.
        """
        raise NotImplementedError(f"{type(self).__name__} does not expose the producer of {group.kind!r} units.")

    def unit_parameters(self, layer: nn.Module, group: UnitGroup) -> list[UnitSlice]:
        """Every parameter entry of `layer` that a unit of `group` owns: exactly what `prune_units` removes with the
        unit, `group.params_per_unit` entries per unit. Gradient criteria (`taylor`) sum over them."""
        raise NotImplementedError(f"{type(self).__name__} does not list the parameters of {group.kind!r} units.")

    def select_units(self, group: UnitGroup, scores: torch.Tensor, keep_count: int) -> torch.Tensor:
        """The sorted units of `group` to keep, given one score per unit (higher is kept first)."""
        return torch.topk(scores, keep_count).indices.sort().values

    # ---- shared behaviour -----------------------------------------------------------------------------------
    def added_biases(self, layer: nn.Module) -> list[str]:
        names = {name for group in self.groups(layer) for name in group.consumers}
        return sorted(n for n in names if layer.get_submodule(n).bias is not None and not self.default_has_bias(n))

    def resize_layer(self, layer: nn.Module, description: dict[str, Any]) -> None:
        """Give `layer` the sizes of a stored description (weights are loaded afterwards, e.g. on meta)."""
        # Groups are read again after each cut: one kind's size can depend on another's (query heads per KV group).
        for position in range(len(self.groups(layer))):
            group = self.groups(layer)[position]
            kept = self.units_from_description(group, description)
            if kept > group.num_units:
                raise ValueError(f"Stored layer keeps {kept} {group.kind} but the base model has {group.num_units}.")
            if kept < group.num_units:
                device = layer.get_submodule(group.consumers[0]).weight.device
                # The saved units come first in their order; descending scores keep exactly those.
                order = torch.arange(group.num_units, 0, -1, dtype=torch.float32, device=device)
                self.prune_units(layer, group, self.select_units(group, order, kept))
        for name in description.get("added_biases", []):
            ensure_bias(layer.get_submodule(name))

    def count_prunable_parameters(self, kinds: tuple[str, ...] | None = None) -> int:
        """Parameters in the units of `kinds` (default: the kinds pruned by default). Alternative views of the same
        weights (whole KV groups and the query heads inside them) are never counted twice."""
        kinds = kinds or self.default_structure_kinds or self.structure_kinds
        return sum(
            g.num_units * g.params_per_unit for layer in self.layers() for g in self.groups(layer) if g.kind in kinds
        )
