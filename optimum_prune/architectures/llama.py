"""LLaMA family (LLaMA, Mistral, Qwen2): attention pruned as whole KV groups, SwiGLU FFN pruned by channel."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import ArchitectureAdapter, UnitGroup, ensure_bias, select_columns, select_rows

ATTENTION_CONSUMER = "self_attn.o_proj"
MLP_CONSUMER = "mlp.down_proj"


class LlamaAdapter(ArchitectureAdapter):
    model_types = ("llama", "mistral", "qwen2")
    structure_kinds = ("attention_heads", "ffn_channels")

    def layers(self) -> nn.ModuleList:
        return self.model.base_model.layers

    def _head_dim(self, layer: nn.Module) -> int:
        return layer.self_attn.head_dim

    def heads_per_unit(self, layer: nn.Module) -> int:
        # Under grouped-query attention a KV head and the query heads that read it go together, or the remaining
        # query heads would read the wrong keys.
        return layer.self_attn.num_key_value_groups

    def groups(self, layer: nn.Module) -> list[UnitGroup]:
        attn, mlp = layer.self_attn, layer.mlp
        hidden, head_dim, n_rep = self.config.hidden_size, self._head_dim(layer), attn.num_key_value_groups
        num_kv = attn.k_proj.out_features // head_dim
        attn_bias = sum(int(m.bias is not None) for m in (attn.q_proj, attn.k_proj, attn.v_proj))
        mlp_bias = sum(int(m.bias is not None) for m in (mlp.gate_proj, mlp.up_proj))
        return [
            UnitGroup(
                kind="attention_heads",
                num_units=num_kv,
                channels_per_unit=n_rep * head_dim,
                # q and o: n_rep heads each; k and v: one head each.
                params_per_unit=head_dim * (hidden * (2 * n_rep + 2) + (attn_bias and (n_rep + 2))),
                consumers=(ATTENTION_CONSUMER,),
            ),
            UnitGroup(
                kind="ffn_channels",
                num_units=mlp.down_proj.in_features,
                channels_per_unit=1,
                params_per_unit=3 * hidden + mlp_bias,
                consumers=(MLP_CONSUMER,),
            ),
        ]

    def prune_units(self, layer: nn.Module, group: UnitGroup, keep: torch.Tensor) -> None:
        if group.kind == "attention_heads":
            attn = layer.self_attn
            head_dim = self._head_dim(layer)
            kv_rows = (keep[:, None] * head_dim + torch.arange(head_dim, device=keep.device)).reshape(-1)
            q_rows = group.unit_channels(keep)
            select_rows(attn.q_proj, q_rows)
            select_rows(attn.k_proj, kv_rows)
            select_rows(attn.v_proj, kv_rows)
            select_columns(attn.o_proj, q_rows)
        elif group.kind == "ffn_channels":
            mlp = layer.mlp
            select_rows(mlp.gate_proj, keep)
            select_rows(mlp.up_proj, keep)
            select_columns(mlp.down_proj, keep)
            mlp.intermediate_size = int(keep.numel())
        else:
            raise ValueError(f"LLaMA layers have no {group.kind!r} units.")

    def producer_weight(self, layer: nn.Module, group: UnitGroup) -> torch.Tensor:
        if group.kind == "attention_heads":
            return layer.self_attn.q_proj.weight  # rows in o_proj column order: KV group, then its query heads
        if group.kind == "ffn_channels":
            return layer.mlp.gate_proj.weight
        raise ValueError(f"LLaMA layers have no {group.kind!r} units.")

    def describe_layer(self, layer: nn.Module) -> dict[str, Any]:
        attn = layer.self_attn
        head_dim = self._head_dim(layer)
        return {
            "num_attention_heads": attn.q_proj.out_features // head_dim,
            "num_key_value_heads": attn.k_proj.out_features // head_dim,
            "intermediate_size": layer.mlp.down_proj.in_features,
            "added_biases": self.added_biases(layer),
        }

    def units_from_description(self, group: UnitGroup, description: dict[str, Any]) -> int:
        key = "num_key_value_heads" if group.kind == "attention_heads" else "intermediate_size"
        return int(description[key])

    def default_has_bias(self, consumer: str) -> bool:
        flag = "attention_bias" if consumer == ATTENTION_CONSUMER else "mlp_bias"
        return bool(getattr(self.config, flag, False))

    def vanilla_config_update(self, descriptions: list[dict[str, Any]]) -> dict[str, Any] | None:
        shapes = {(d["num_attention_heads"], d["num_key_value_heads"], d["intermediate_size"]) for d in descriptions}
        if len(shapes) != 1:
            return None
        num_heads, num_kv, intermediate = shapes.pop()
        if self.config.hidden_size % num_heads:
            return None  # the config classes validate hidden_size % num_attention_heads == 0, even with head_dim set
        update: dict[str, Any] = {
            "num_attention_heads": num_heads,
            "num_key_value_heads": num_kv,
            "intermediate_size": intermediate,
            # head_dim no longer equals hidden_size // num_attention_heads once heads are gone.
            "head_dim": self._head_dim(self.layers()[0]),
        }
        added = {name for d in descriptions for name in d["added_biases"]}
        if added and self.config.model_type != "llama":
            return None  # only LlamaConfig has bias flags (attention_bias, mlp_bias) for these projections
        # LlamaConfig's flags put a bias on all four attention (or all three MLP) projections: add zero biases
        # to the others so the flag describes the model exactly and plain transformers loads it.
        for flag, consumer, siblings in (
            ("attention_bias", ATTENTION_CONSUMER, ("q_proj", "k_proj", "v_proj", "o_proj")),
            ("mlp_bias", MLP_CONSUMER, ("gate_proj", "up_proj", "down_proj")),
        ):
            if consumer in added:
                for layer in self.layers():
                    parent = layer.get_submodule(consumer.split(".")[0])
                    for name in siblings:
                        ensure_bias(getattr(parent, name))
                update[flag] = True
        return update
