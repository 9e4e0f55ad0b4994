"""BERT encoders (BertModel, BertForSequenceClassification, BertForQuestionAnswering, ...)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ArchitectureAdapter, UnitGroup, select_columns, select_rows

ATTENTION_CONSUMER = "attention.output.dense"
FFN_CONSUMER = "output.dense"


class BertAdapter(ArchitectureAdapter):
    model_types = ("bert",)
    structure_kinds = ("attention_heads", "ffn_channels")

    def layers(self) -> nn.ModuleList:
        return self.model.base_model.encoder.layer

    def groups(self, layer: nn.Module) -> list[UnitGroup]:
        self_attn = layer.attention.self
        hidden, head_size = self.config.hidden_size, self_attn.attention_head_size
        return [
            UnitGroup(
                kind="attention_heads",
                num_units=self_attn.query.out_features // head_size,
                channels_per_unit=head_size,
                # query, key, value rows with their biases, and the output projection's columns.
                params_per_unit=3 * head_size * (hidden + 1) + head_size * hidden,
                consumers=(ATTENTION_CONSUMER,),
            ),
            UnitGroup(
                kind="ffn_channels",
                num_units=layer.intermediate.dense.out_features,
                channels_per_unit=1,
                params_per_unit=2 * hidden + 1,
                consumers=(FFN_CONSUMER,),
            ),
        ]

    def prune_units(self, layer: nn.Module, group: UnitGroup, keep: torch.Tensor) -> None:
        if group.kind == "attention_heads":
            self_attn = layer.attention.self
            rows = group.unit_channels(keep)
            for linear in (self_attn.query, self_attn.key, self_attn.value):
                select_rows(linear, rows)
            select_columns(layer.attention.output.dense, rows)
            # Attention reshapes with -1 heads; these attributes only keep the module's description honest.
            self_attn.num_attention_heads = int(keep.numel())
            self_attn.all_head_size = int(rows.numel())
        elif group.kind == "ffn_channels":
            select_rows(layer.intermediate.dense, keep)
            select_columns(layer.output.dense, keep)
        else:
            raise ValueError(f"BERT layers have no {group.kind!r} units.")

    def producer_weight(self, layer: nn.Module, group: UnitGroup) -> torch.Tensor:
        if group.kind == "attention_heads":
            return layer.attention.self.query.weight
        if group.kind == "ffn_channels":
            return layer.intermediate.dense.weight
        raise ValueError(f"BERT layers have no {group.kind!r} units.")

    def describe_layer(self, layer: nn.Module) -> dict[str, Any]:
        self_attn = layer.attention.self
        return {
            "num_attention_heads": self_attn.query.out_features // self_attn.attention_head_size,
            "intermediate_size": layer.intermediate.dense.out_features,
            "added_biases": self.added_biases(layer),
        }

    def units_from_description(self, group: UnitGroup, description: dict[str, Any]) -> int:
        key = "num_attention_heads" if group.kind == "attention_heads" else "intermediate_size"
        return int(description[key])

    def default_has_bias(self, consumer: str) -> bool:
        return True

    def vanilla_config_update(self, descriptions: list[dict[str, Any]]) -> dict[str, Any] | None:
        # BertConfig derives the head size from hidden_size / num_attention_heads, so fewer heads cannot be
        # expressed; only an FFN-only prune with equal sizes everywhere can.
        heads = {d["num_attention_heads"] for d in descriptions}
        sizes = {d["intermediate_size"] for d in descriptions}
        if heads != {self.config.num_attention_heads} or len(sizes) != 1:
            return None
        return {"intermediate_size": sizes.pop()}
