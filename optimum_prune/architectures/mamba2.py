"""Mamba2 (Mamba2ForCausalLM): whole SSM heads, sliced through in_proj, conv1d, A_log, D, dt_bias, the gated norm
and out_proj.

`in_proj` writes [z (gate), xBC (convolved), dt]: z and x are `num_heads * head_dim` wide, B and C are
`n_groups * state_size` each and dt has one row per head. A head owns its `head_dim` rows of z and of x (and those
channels of the convolution), its dt row, its A_log / D / dt_bias entries, its channels of the gated RMSNorm and
its columns of out_proj. B and C belong to the groups, which stay.

Heads read the B / C of group `head // (num_heads / n_groups)`, and the gated RMSNorm normalises each group's
channels together, so every group keeps the same number of heads (`keep_multiple = n_groups`), each group its own
best ones (`select_units`); otherwise heads would read another group's B / C.
"""

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


class Mamba2Adapter(ArchitectureAdapter):
    model_types = ("mamba2",)
    structure_kinds = ("ssm_heads",)

    def layers(self) -> nn.ModuleList:
        return self.model.base_model.layers

    def groups(self, layer: nn.Module) -> list[UnitGroup]:
        mixer = layer.mixer
        hidden, head_dim, num_groups = self.config.hidden_size, mixer.head_dim, mixer.n_groups
        in_row = hidden + (1 if mixer.in_proj.bias is not None else 0)
        conv_channel = mixer.conv1d.kernel_size[0] + (1 if mixer.conv1d.bias is not None else 0)
        per_head = (
            (2 * head_dim + 1) * in_row  # z and x rows, dt row
            + head_dim * conv_channel
            + 3  # A_log, D, dt_bias
            + head_dim  # gated RMSNorm weight
            + head_dim * hidden  # out_proj columns
        )
        return [
            UnitGroup(
                kind="ssm_heads",
                num_units=mixer.num_heads,
                channels_per_unit=head_dim,
                params_per_unit=per_head,
                consumers=(OUT_CONSUMER,),
                keep_multiple=num_groups,
            )
        ]

    def select_units(self, group: UnitGroup, scores: torch.Tensor, keep_count: int) -> torch.Tensor:
        groups = group.keep_multiple
        if keep_count % groups:
            raise ValueError(f"Cannot keep {keep_count} SSM heads over {groups} groups: every group keeps as many.")
        per_group = scores.reshape(groups, -1)
        best = torch.topk(per_group, keep_count // groups, dim=1).indices.sort(dim=1).values
        return (best + torch.arange(groups, device=best.device)[:, None] * per_group.shape[1]).reshape(-1)

    def prune_units(self, layer: nn.Module, group: UnitGroup, keep: torch.Tensor) -> None:
        if group.kind != "ssm_heads":
            raise ValueError(f"Mamba2 layers have no {group.kind!r} units.")
        mixer = layer.mixer
        per_group = mixer.num_heads // mixer.n_groups
        counts = torch.bincount(keep.cpu() // per_group, minlength=mixer.n_groups) if not keep.is_meta else None
        if counts is not None and bool((counts != keep.numel() // mixer.n_groups).any()):
            raise ValueError(f"Every one of the {mixer.n_groups} groups must keep the same number of heads.")
        width, bc_width = mixer.intermediate_size, 2 * mixer.n_groups * mixer.ssm_state_size
        # Sorted, so group-major: head h stays in group h // heads_per_group and reads that group's B / C.
        heads = keep.sort().values
        channels = group.unit_channels(heads)
        bc = torch.arange(bc_width, device=heads.device)
        select_rows(
            mixer.in_proj, torch.cat([channels, width + channels, 2 * width + bc, 2 * width + bc_width + heads])
        )
        conv = mixer.conv1d
        conv_channels = torch.cat([channels, width + bc])
        select_parameter(conv, "weight", conv_channels)
        if conv.bias is not None:
            select_parameter(conv, "bias", conv_channels)
        conv.in_channels = conv.out_channels = conv.groups = int(conv_channels.numel())
        for name in ("A_log", "D", "dt_bias"):
            select_parameter(mixer, name, heads)
        select_parameter(mixer.norm, "weight", channels)
        select_columns(mixer.out_proj, channels)
        mixer.num_heads = int(heads.numel())
        mixer.intermediate_size = int(channels.numel())
        mixer.conv_dim = int(conv_channels.numel())
        mixer.norm.group_size = mixer.intermediate_size // mixer.n_groups

    def prune_units_calibrated(
        self, layer: nn.Module, group: UnitGroup, keep: torch.Tensor, stats: dict[str, Any] | None
    ) -> None:
        """Prune, then rescale each group's gated-RMSNorm weight so the kept heads keep their output scale.

        The norm divides each group's channels by their joint RMS, so once low-energy heads are gone the RMS of the
        rest is larger and every kept channel shrinks by the factor r = RMS(kept) / RMS(all), a per-token number.
        Reconstruction and criteria assume the kept inputs of out_proj unchanged, so the kept weights are multiplied
        by sqrt(E[r^2]), estimated per group from out_proj's input statistics as the mean second moment of the
        normalised (weight-free) kept channels over that of all channels. Measured on tiny random Mamba2 models
        whose heads differ in scale (layer-0 mixer output error relative to the dense one, 30% of heads removed by
        activation; tests/test_encoder_ssm_adapters.py): one group of 16 heads 0.252 without, 0.203 with, 0.202
        for a removal that would leave the RMS alone; two groups of 8 heads 0.242, 0.213 and 0.211.
        """
        mixer = layer.mixer
        weight = mixer.norm.weight.detach().double().clone()
        self.prune_units(layer, group, keep)
        statistics = stats.get(OUT_CONSUMER) if stats else None
        if statistics is None or statistics.count == 0:
            return
        groups = mixer.n_groups
        kept = torch.zeros_like(weight, dtype=torch.bool)
        kept[group.unit_channels(keep)] = True
        known = weight != 0  # a zero weight hides its channel's normalised value
        energy = torch.where(known, statistics.sum_sq.to(weight) / torch.where(known, weight, 1.0).square(), 0.0)
        energy, kept, known = (t.view(groups, -1) for t in (energy, kept, known))
        mean_kept = (energy * kept).sum(1) / (kept & known).sum(1).clamp_min(1)
        mean_all = energy.sum(1) / known.sum(1).clamp_min(1)
        scale = torch.where(mean_all > 0, (mean_kept / mean_all.clamp_min(1e-30)).sqrt(), 1.0)
        scale = torch.where(scale > 0, scale, 1.0)
        norm = mixer.norm.weight
        norm.data.mul_(scale.repeat_interleave(norm.numel() // groups).to(norm))

    def unit_parameters(self, layer: nn.Module, group: UnitGroup) -> list[UnitSlice]:
        """A head's z, x and dt rows of in_proj, its convolution channels, A_log / D / dt_bias entries, gated-norm
        weights and out_proj columns (`prune_units`); B and C belong to the groups."""
        if group.kind != "ssm_heads":
            raise ValueError(f"Mamba2 layers have no {group.kind!r} units.")
        mixer = layer.mixer
        width, bc_width = mixer.intermediate_size, 2 * mixer.n_groups * mixer.ssm_state_size
        channels = unit_positions(group.num_units, group.channels_per_unit)
        heads = unit_positions(group.num_units, 1)
        slices = []
        for rows in (channels, width + channels, 2 * width + bc_width + heads):
            slices += row_slices("mixer.in_proj", mixer.in_proj, rows)
        slices += row_slices("mixer.conv1d", mixer.conv1d, channels)  # the x channels come first in the conv
        slices += [UnitSlice(f"mixer.{name}", 0, heads) for name in ("A_log", "D", "dt_bias")]
        slices += [UnitSlice("mixer.norm.weight", 0, channels), UnitSlice("mixer.out_proj.weight", 1, channels)]
        return slices

    def producer_weight(self, layer: nn.Module, group: UnitGroup) -> torch.Tensor:
        if group.kind != "ssm_heads":
            raise ValueError(f"Mamba2 layers have no {group.kind!r} units.")
        width = layer.mixer.intermediate_size
        return layer.mixer.in_proj.weight[width : 2 * width]  # the x rows, which feed the convolution and the scan

    def describe_layer(self, layer: nn.Module) -> dict[str, Any]:
        return {"num_heads": layer.mixer.num_heads, "added_biases": self.added_biases(layer)}

    def units_from_description(self, group: UnitGroup, description: dict[str, Any]) -> int:
        return int(description["num_heads"])

    def default_has_bias(self, consumer: str) -> bool:
        return consumer == OUT_CONSUMER and bool(self.config.use_bias)

    def vanilla_config_update(self, descriptions: list[dict[str, Any]]) -> dict[str, Any] | None:
        heads = {d["num_heads"] for d in descriptions}
        if len(heads) != 1:
            return None
        num_heads = heads.pop()
        width = num_heads * self.config.head_dim
        # Mamba2Config checks hidden_size * expand == num_heads * head_dim with an integer expand.
        if width % self.config.hidden_size:
            return None
        update: dict[str, Any] = {"num_heads": num_heads, "expand": width // self.config.hidden_size}
        if any(OUT_CONSUMER in d["added_biases"] for d in descriptions):
            # `use_bias` gives in_proj a bias too: a zero one keeps the function.
            for layer in self.layers():
                ensure_bias(layer.mixer.in_proj)
            update["use_bias"] = True
        return update
