"""Mamba and FalconMamba: inner channels of the mixer, sliced through every tensor of the selective scan."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import (
    ArchitectureAdapter,
    UnitGroup,
    UnitSlice,
    ensure_bias,
    row_slices,
    select_columns,
    select_parameter,
    select_rows,
    unit_positions,
)

OUT_CONSUMER = "mixer.out_proj"
# x_proj reads the same inner channels (after the convolution) to compute dt, B and C, so removing channels
# changes the kept channels' dynamics too: it is refit like out_proj.
X_CONSUMER = "mixer.x_proj"


class MambaAdapter(ArchitectureAdapter):
    model_types = ("mamba",)
    structure_kinds = ("mamba_inner",)

    def layers(self) -> nn.ModuleList:
        return self.model.base_model.layers

    def groups(self, layer: nn.Module) -> list[UnitGroup]:
        mixer = layer.mixer
        hidden = self.config.hidden_size
        in_bias = 2 if mixer.in_proj.bias is not None else 0
        conv_params = mixer.conv1d.kernel_size[0] + (1 if mixer.conv1d.bias is not None else 0)
        per_channel = (
            2 * hidden
            + in_bias  # in_proj rows of the x and z halves
            + conv_params
            + mixer.x_proj.out_features  # x_proj column
            + mixer.dt_proj.in_features
            + 1  # dt_proj row and bias
            + mixer.A_log.shape[1]
            + 1  # A_log row and D
            + hidden  # out_proj column
        )
        return [
            UnitGroup(
                kind="mamba_inner",
                num_units=mixer.out_proj.in_features,
                channels_per_unit=1,
                params_per_unit=per_channel,
                consumers=(OUT_CONSUMER, X_CONSUMER),
            )
        ]

    def prune_units(self, layer: nn.Module, group: UnitGroup, keep: torch.Tensor) -> None:
        if group.kind != "mamba_inner":
            raise ValueError(f"Mamba layers have no {group.kind!r} units.")
        mixer = layer.mixer
        inner = mixer.out_proj.in_features
        # in_proj stacks the x half and the gate (z) half: a channel lives in both.
        select_rows(mixer.in_proj, torch.cat([keep, keep + inner]))
        conv = mixer.conv1d
        select_parameter(conv, "weight", keep)
        if conv.bias is not None:
            select_parameter(conv, "bias", keep)
        conv.in_channels = conv.out_channels = conv.groups = int(keep.numel())
        select_columns(mixer.x_proj, keep)
        select_rows(mixer.dt_proj, keep)
        select_parameter(mixer, "A_log", keep)
        select_parameter(mixer, "D", keep)
        select_columns(mixer.out_proj, keep)
        mixer.intermediate_size = int(keep.numel())

    def unit_parameters(self, layer: nn.Module, group: UnitGroup) -> list[UnitSlice]:
        """A channel's x and z rows of in_proj, its convolution filter, x_proj column, dt_proj row, A_log row, D
        entry and out_proj column (`prune_units`)."""
        if group.kind != "mamba_inner":
            raise ValueError(f"Mamba layers have no {group.kind!r} units.")
        mixer = layer.mixer
        inner = mixer.out_proj.in_features
        channels = unit_positions(group.num_units, 1)
        slices = row_slices("mixer.in_proj", mixer.in_proj, channels)
        slices += row_slices("mixer.in_proj", mixer.in_proj, inner + channels)
        slices += row_slices("mixer.conv1d", mixer.conv1d, channels)
        slices += row_slices("mixer.dt_proj", mixer.dt_proj, channels)
        slices += [
            UnitSlice("mixer.x_proj.weight", 1, channels),
            UnitSlice("mixer.A_log", 0, channels),
            UnitSlice("mixer.D", 0, channels),
            UnitSlice("mixer.out_proj.weight", 1, channels),
        ]
        return slices

    def producer_weight(self, layer: nn.Module, group: UnitGroup) -> torch.Tensor:
        if group.kind != "mamba_inner":
            raise ValueError(f"Mamba layers have no {group.kind!r} units.")
        # The x half of in_proj (the gate half z follows it) feeds the convolution and the selective scan.
        return layer.mixer.in_proj.weight[: layer.mixer.out_proj.in_features]

    def describe_layer(self, layer: nn.Module) -> dict[str, Any]:
        return {"intermediate_size": layer.mixer.out_proj.in_features, "added_biases": self.added_biases(layer)}

    def units_from_description(self, group: UnitGroup, description: dict[str, Any]) -> int:
        return int(description["intermediate_size"])

    def default_has_bias(self, consumer: str) -> bool:
        return consumer == OUT_CONSUMER and bool(self.config.use_bias)

    def vanilla_config_update(self, descriptions: list[dict[str, Any]]) -> dict[str, Any] | None:
        # The config derives the inner width as expand * hidden_size with an integer expand, and x_proj never has
        # a bias, so only equal widths that are multiples of hidden_size, refit without an intercept in x_proj
        # (reconstruction='none'), can be expressed.
        sizes = {d["intermediate_size"] for d in descriptions}
        added = {name for d in descriptions for name in d["added_biases"]}
        if len(sizes) != 1 or X_CONSUMER in added:
            return None
        width = sizes.pop()
        if width % self.config.hidden_size:
            return None
        update: dict[str, Any] = {"expand": width // self.config.hidden_size, "intermediate_size": width}
        if OUT_CONSUMER in added:
            for layer in self.layers():  # `use_bias` gives in_proj a bias too: a zero one keeps the function
                ensure_bias(layer.mixer.in_proj)
            update["use_bias"] = True
        return update


class FalconMambaAdapter(MambaAdapter):
    """FalconMamba: Mamba's layout plus weightless RMS norms on dt, B and C.

    Those norms act on x_proj's outputs (dt_rank and state_size wide), which pruning inner channels leaves whole.
    `dt_layernorm` still carries a non-persistent, all-ones `weight` buffer of the inner width (read only by the
    fused kernels), sliced with the channels so the module stays consistent.
    """

    model_types = ("falcon_mamba",)

    def prune_units(self, layer: nn.Module, group: UnitGroup, keep: torch.Tensor) -> None:
        super().prune_units(layer, group, keep)
        norm = layer.mixer.dt_layernorm
        norm.weight = norm.weight.index_select(0, keep.to(norm.weight.device))
