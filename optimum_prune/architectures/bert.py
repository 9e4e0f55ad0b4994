"""BERT-like encoders: one implementation, one `EncoderLayout` declaration per family.

BERT, RoBERTa, XLM-RoBERTa and ELECTRA share BERT's module names; DistilBERT and DeBERTa-v2 differ in names (and
DeBERTa-v2 in two relative-position projections that share the attention heads); ModernBERT fuses q/k/v into one
`Wqkv` and uses a GLU feed-forward whose `Wi` output is split into an input half and a gate half.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    select_rows,
    unit_positions,
)


@dataclass(frozen=True)
class EncoderLayout:
    """Where one encoder layer keeps its attention heads and FFN channels (module paths relative to the layer).

    Args:
        layers: Path of the `nn.ModuleList` of layers, relative to `model.base_model`.
        attention: Module holding the head size and head count attributes.
        head_projections: Linears whose output rows are `num_heads x head_size` (query, key, value, ...).
        optional_head_projections: Head-shaped Linears that only some configs build (DeBERTa-v2's
            relative-position projections); sliced with the heads when present.
        attention_output: The Linear reading the heads (its columns are removed).
        ffn_input: The Linear producing the FFN channels.
        ffn_output: The Linear reading the FFN channels.
        head_size_attribute: Attribute of `attention` holding the head size.
        head_count_attributes: Attributes of `attention` holding the number of heads (kept honest after pruning;
            DeBERTa-v2 reshapes with it).
        heads_config / ffn_config: Config fields of the head count and the FFN width.
        bias_flags: For consumers without a bias by default: (consumer, config flag, Linears the flag gives a bias).
    """

    layers: str = "encoder.layer"
    attention: str = "attention.self"
    head_projections: tuple[str, ...] = ("attention.self.query", "attention.self.key", "attention.self.value")
    optional_head_projections: tuple[str, ...] = ()
    attention_output: str = "attention.output.dense"
    ffn_input: str = "intermediate.dense"
    ffn_output: str = "output.dense"
    head_size_attribute: str = "attention_head_size"
    head_count_attributes: tuple[str, ...] = ("num_attention_heads",)
    heads_config: str = "num_attention_heads"
    ffn_config: str = "intermediate_size"
    bias_flags: tuple[tuple[str, str, tuple[str, ...]], ...] = ()


class BertAdapter(ArchitectureAdapter):
    """BERT and the families with BERT's module names (RoBERTa, XLM-RoBERTa, ELECTRA); the base for the others."""

    model_types = ("bert", "roberta", "xlm-roberta", "electra")
    structure_kinds = ("attention_heads", "ffn_channels")
    layout = EncoderLayout()

    # ---- layout ---------------------------------------------------------------------------------------------
    def layers(self) -> nn.ModuleList:
        return self.model.base_model.get_submodule(self.layout.layers)

    def _head_size(self, layer: nn.Module) -> int:
        return int(getattr(layer.get_submodule(self.layout.attention), self.layout.head_size_attribute))

    def _head_projections(self, layer: nn.Module) -> list[nn.Linear]:
        optional = [p for p in self.layout.optional_head_projections if _has_submodule(layer, p)]
        return [layer.get_submodule(p) for p in (*self.layout.head_projections, *optional)]

    def _num_heads(self, layer: nn.Module) -> int:
        return layer.get_submodule(self.layout.attention_output).in_features // self._head_size(layer)

    def groups(self, layer: nn.Module) -> list[UnitGroup]:
        layout = self.layout
        head_size, num_heads = self._head_size(layer), self._num_heads(layer)
        attention_output = layer.get_submodule(layout.attention_output)
        ffn_input, ffn_output = layer.get_submodule(layout.ffn_input), layer.get_submodule(layout.ffn_output)
        num_channels = ffn_output.in_features
        return [
            UnitGroup(
                kind="attention_heads",
                num_units=num_heads,
                channels_per_unit=head_size,
                # Every head-shaped projection's rows (with biases) and the output projection's columns.
                params_per_unit=sum(
                    _row_params(p) * (p.out_features // num_heads) for p in self._head_projections(layer)
                )
                + head_size * attention_output.out_features,
                consumers=(layout.attention_output,),
            ),
            UnitGroup(
                kind="ffn_channels",
                num_units=num_channels,
                channels_per_unit=1,
                params_per_unit=_row_params(ffn_input) * (ffn_input.out_features // num_channels)
                + ffn_output.out_features,
                consumers=(layout.ffn_output,),
            ),
        ]

    # ---- slicing --------------------------------------------------------------------------------------------
    def _select_block_rows(self, layer: nn.Module, blocks: list[tuple[str, int]], rows: torch.Tensor) -> None:
        """Keep rows `start + rows` of each row block (`_head_row_blocks`, `_ffn_row_blocks`), one cut per Linear."""
        for path in dict.fromkeys(path for path, _ in blocks):
            select_rows(layer.get_submodule(path), torch.cat([start + rows for p, start in blocks if p == path]))

    def prune_units(self, layer: nn.Module, group: UnitGroup, keep: torch.Tensor) -> None:
        layout = self.layout
        if group.kind == "attention_heads":
            rows = group.unit_channels(keep)
            self._select_block_rows(layer, self._head_row_blocks(layer, group.num_units), rows)
            select_columns(layer.get_submodule(layout.attention_output), rows)
            attention = layer.get_submodule(layout.attention)
            for name in layout.head_count_attributes:
                setattr(attention, name, int(keep.numel()))
            if hasattr(attention, "all_head_size"):
                attention.all_head_size = int(rows.numel())
        elif group.kind == "ffn_channels":
            self._select_block_rows(layer, self._ffn_row_blocks(layer, group.num_units), keep)
            select_columns(layer.get_submodule(layout.ffn_output), keep)
        else:
            raise ValueError(f"{type(self).__name__} layers have no {group.kind!r} units.")

    def _head_row_blocks(self, layer: nn.Module, num_heads: int) -> list[tuple[str, int]]:
        """(path, first row) of each block of `num_heads x head_size` rows, head-major, that the heads own in the
        Linears producing them."""
        optional = [p for p in self.layout.optional_head_projections if _has_submodule(layer, p)]
        return [(path, 0) for path in (*self.layout.head_projections, *optional)]

    def _ffn_row_blocks(self, layer: nn.Module, num_channels: int) -> list[tuple[str, int]]:
        """(path, first row) of each block of `num_channels` rows of the FFN input."""
        return [(self.layout.ffn_input, 0)]

    def unit_parameters(self, layer: nn.Module, group: UnitGroup) -> list[UnitSlice]:
        """The head rows of every head-shaped projection (biases too) and the output projection's columns; an FFN
        channel's input rows and output column."""
        units = group.num_units
        channels = unit_positions(units, group.channels_per_unit)
        if group.kind == "attention_heads":
            consumer, blocks = self.layout.attention_output, self._head_row_blocks(layer, units)
        elif group.kind == "ffn_channels":
            consumer, blocks = self.layout.ffn_output, self._ffn_row_blocks(layer, units)
        else:
            raise ValueError(f"{type(self).__name__} layers have no {group.kind!r} units.")
        slices = [UnitSlice(f"{consumer}.weight", 1, channels)]
        for path, start in blocks:
            slices += row_slices(path, layer.get_submodule(path), start + channels)
        return slices

    def producer_weight(self, layer: nn.Module, group: UnitGroup) -> torch.Tensor:
        if group.kind == "attention_heads":
            return self._head_projections(layer)[0].weight[: group.num_units * group.channels_per_unit]
        if group.kind == "ffn_channels":
            return layer.get_submodule(self.layout.ffn_input).weight[: group.num_units]
        raise ValueError(f"{type(self).__name__} layers have no {group.kind!r} units.")

    # ---- checkpoint layout ----------------------------------------------------------------------------------
    def describe_layer(self, layer: nn.Module) -> dict[str, Any]:
        return {
            "num_attention_heads": self._num_heads(layer),
            "intermediate_size": layer.get_submodule(self.layout.ffn_output).in_features,
            "added_biases": self.added_biases(layer),
        }

    def units_from_description(self, group: UnitGroup, description: dict[str, Any]) -> int:
        key = "num_attention_heads" if group.kind == "attention_heads" else "intermediate_size"
        return int(description[key])

    def default_has_bias(self, consumer: str) -> bool:
        for name, flag, _siblings in self.layout.bias_flags:
            if name == consumer:
                return bool(getattr(self.config, flag, False))
        return True

    def vanilla_config_update(self, descriptions: list[dict[str, Any]]) -> dict[str, Any] | None:
        heads = {d["num_attention_heads"] for d in descriptions}
        sizes = {d["intermediate_size"] for d in descriptions}
        if len(heads) != 1 or len(sizes) != 1:
            return None
        # Every family here derives the head size from hidden_size / heads (DeBERTa-v2 reads an explicit
        # attention_head_size, but its attention output projection stays hidden_size wide), so fewer heads
        # cannot be expressed; only an FFN-only prune with equal sizes everywhere can.
        if heads.pop() != getattr(self.config, self.layout.heads_config):
            return None
        update: dict[str, Any] = {self.layout.ffn_config: sizes.pop()}
        added = {name for d in descriptions for name in d["added_biases"]}
        flags = {name: (flag, siblings) for name, flag, siblings in self.layout.bias_flags}
        if not added <= set(flags):
            return None
        # A config bias flag puts a bias on all the Linears it covers: give the others zero biases so the flag
        # describes the model exactly.
        for consumer in sorted(added):
            flag, siblings = flags[consumer]
            for layer in self.layers():
                for name in siblings:
                    ensure_bias(layer.get_submodule(name))
            update[flag] = True
        return update


class DistilBertAdapter(BertAdapter):
    model_types = ("distilbert",)
    layout = EncoderLayout(
        layers="transformer.layer",
        attention="attention",
        head_projections=("attention.q_lin", "attention.k_lin", "attention.v_lin"),
        attention_output="attention.out_lin",
        ffn_input="ffn.lin1",
        ffn_output="ffn.lin2",
        head_count_attributes=("n_heads",),
        heads_config="n_heads",
        ffn_config="hidden_dim",
    )


class DebertaV2Adapter(BertAdapter):
    """DeBERTa-v2/v3. The relative-position projections (`pos_key_proj`, `pos_query_proj`) are split into the same
    heads as query and key (c2p and p2c scores are added per head), so a removed head loses its rows there too;
    with `share_att_key` they are query/key themselves."""

    model_types = ("deberta-v2",)
    layout = EncoderLayout(
        head_projections=("attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj"),
        optional_head_projections=("attention.self.pos_key_proj", "attention.self.pos_query_proj"),
    )


class ModernBertAdapter(BertAdapter):
    """ModernBERT: `Wqkv` rows are [q heads, k heads, v heads]; `Wi` rows are [input half, gate half]."""

    model_types = ("modernbert",)
    layout = EncoderLayout(
        layers="layers",
        attention="attn",
        head_projections=("attn.Wqkv",),
        attention_output="attn.Wo",
        ffn_input="mlp.Wi",
        ffn_output="mlp.Wo",
        head_size_attribute="head_dim",
        head_count_attributes=(),
        bias_flags=(
            ("attn.Wo", "attention_bias", ("attn.Wqkv", "attn.Wo")),
            ("mlp.Wo", "mlp_bias", ("mlp.Wi", "mlp.Wo")),
        ),
    )

    def _head_row_blocks(self, layer: nn.Module, num_heads: int) -> list[tuple[str, int]]:
        width = num_heads * self._head_size(layer)
        return [("attn.Wqkv", 0), ("attn.Wqkv", width), ("attn.Wqkv", 2 * width)]

    def _ffn_row_blocks(self, layer: nn.Module, num_channels: int) -> list[tuple[str, int]]:
        return [("mlp.Wi", 0), ("mlp.Wi", num_channels)]


def _row_params(linear: nn.Linear) -> int:
    return linear.in_features + (1 if linear.bias is not None else 0)


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True
