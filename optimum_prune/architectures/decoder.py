"""One implementation for every LLaMA-like decoder: a family is a `DecoderLayout` (module paths and flags).

A LLaMA-like block has an attention module whose query heads share key/value heads in groups (GQA), with q, k, v
projections (separate, or fused in one `qkv_proj` as in Phi-3) and an output projection `o_proj`; and a gated MLP
(`gate_proj` / `up_proj`, or one fused `gate_up_proj`, then `down_proj`), or a mixture of experts whose experts are
such MLPs stored as stacked 3D parameters (transformers 5), possibly next to a shared dense expert. Norms that act on
the hidden size or on one head's dimension (Gemma's extra norms, Qwen3's q_norm / k_norm) are untouched by pruning
heads and channels, so they need no declaration.

Structure kinds:

- `attention_heads`: whole KV groups (a KV head with the query heads that read it), as FLAP and LLM-Pruner do.
- `query_heads`: single query heads inside the KV groups; every group of a layer keeps the same number, so
  `num_key_value_groups` becomes that number and keys / values stay (opt-in: `structures=["query_heads", ...]`;
  the default in place of `attention_heads` where every layer has one KV group: `structured.query_heads_fallback`).
- `ffn_channels`: channels of a dense gated MLP (also the shared expert of Qwen2-MoE).
- `expert_channels`: channels of each routed expert; every expert of a layer keeps the same number (stacked
  storage), each its own channels. The router is untouched.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

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
from .experts import ExpertDownProjection, expert_views, select_expert_channels

ATTENTION_HEADS = "attention_heads"
QUERY_HEADS = "query_heads"
FFN_CHANNELS = "ffn_channels"
EXPERT_CHANNELS = "expert_channels"
#: transformers' default experts kernel (torch grouped_mm) needs 16-byte row strides: 8 channels in half precision.
EXPERT_SIZE_MULTIPLE = 8


@dataclass(frozen=True)
class DecoderLayout:
    """Where one LLaMA-like family keeps its tensors; paths are relative to a decoder layer.

    Attributes:
        attention: The attention module.
        q_proj, k_proj, v_proj: Separate projections, or None when `qkv_proj` is fused.
        qkv_proj: One projection whose output rows are [queries; keys; values] (Phi-3).
        o_proj: The attention output projection (the consumer of head channels).
        mlp: The MLP, or the mixture-of-experts block.
        gate_proj, up_proj: Separate gate and up projections of a dense MLP, or None when `gate_up_proj` is fused.
        gate_up_proj: One projection whose output rows are [gate; up] (Phi-3).
        down_proj: The MLP output projection (the consumer of FFN channels).
        experts: The stacked experts module inside `mlp` (MoE layers), or None.
        shared_expert: A dense MLP inside `mlp` beside the routed experts (Qwen2-MoE), or None.
        attention_bias_flag / mlp_bias_flag: Config flags that put a bias on every attention / MLP projection
            (LlamaConfig's `attention_bias`, `mlp_bias`); None where the config has no such flag.
        intermediate_size_key / expert_size_key / shared_expert_size_key: Config fields of the dense MLP, routed
            expert and shared expert sizes; also the keys of the per-layer description in `config.pruning`.
        heads_from_config: The attention's forward reads the head count from the config (Phi-3's `qkv_proj`
            split), so a layer with fewer heads gets a config view of its own.
        layers: Path of the block list inside the base model (OPT: "decoder.layers").
        qkv_interleaved: `qkv_proj` rows are grouped per head, [q; k; v] of head 0, then of head 1, ... (GPT-NeoX;
            multi-head attention only).
        head_dim_attribute: The attention module's attribute holding the head size (GPT-NeoX: "head_size").
        head_dim_key / kv_heads_key: Config fields of the head size and of the KV head count, or None where the
            config class has none (it derives the head size from hidden_size / heads): checkpoints with fewer
            heads then need the plugin.
        mlp_always_biased: The MLP projections carry biases whatever the config says (GPT-NeoX).

    A dense MLP without `gate_proj` and `gate_up_proj` is ungated (`up_proj`, activation, `down_proj`); `mlp=""`
    when its projections sit in the block itself (OPT's fc1 / fc2).
    """

    attention: str = "self_attn"
    q_proj: str | None = "q_proj"
    k_proj: str | None = "k_proj"
    v_proj: str | None = "v_proj"
    qkv_proj: str | None = None
    o_proj: str = "o_proj"
    mlp: str = "mlp"
    gate_proj: str | None = "gate_proj"
    up_proj: str | None = "up_proj"
    gate_up_proj: str | None = None
    down_proj: str = "down_proj"
    experts: str | None = None
    shared_expert: str | None = None
    attention_bias_flag: str | None = None
    mlp_bias_flag: str | None = None
    intermediate_size_key: str = "intermediate_size"
    expert_size_key: str = "intermediate_size"
    shared_expert_size_key: str | None = None
    heads_from_config: bool = False
    layers: str = "layers"
    qkv_interleaved: bool = False
    head_dim_attribute: str = "head_dim"
    head_dim_key: str | None = "head_dim"
    kv_heads_key: str | None = "num_key_value_heads"
    mlp_always_biased: bool = False


class AttentionConfigView:
    """The model config as one attention module sees it, with this layer's own head counts.

    Reads fall through to the model config (so `_attn_implementation` and the like follow later changes); writes go
    to the model config, except the overridden fields.
    """

    def __init__(self, base: Any, **overrides: Any) -> None:
        object.__setattr__(self, "_base", base)
        object.__setattr__(self, "_overrides", dict(overrides))

    def __getattr__(self, name: str) -> Any:
        try:
            overrides = object.__getattribute__(self, "_overrides")
            base = object.__getattribute__(self, "_base")
        except AttributeError:  # half-built (copy / unpickling)
            raise AttributeError(name) from None
        if name in overrides:
            return overrides[name]
        return getattr(base, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._overrides:
            self._overrides[name] = value
        else:
            setattr(self._base, name, value)

    def __repr__(self) -> str:
        return f"AttentionConfigView({self._overrides}, base={type(self._base).__name__})"


class LlamaLikeAdapter(ArchitectureAdapter):
    """Shared adapter of LLaMA-like decoders; subclasses set `model_types` and `layout`."""

    layout: ClassVar[DecoderLayout] = DecoderLayout()
    structure_kinds = (ATTENTION_HEADS, QUERY_HEADS, FFN_CHANNELS)
    # query heads are a finer alternative to whole KV groups, chosen explicitly.
    default_structure_kinds = (ATTENTION_HEADS, FFN_CHANNELS)

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        # Experts are stored stacked, so an expert's channels are only cut when every expert of the layer is chosen.
        self._pending_experts: dict[int, dict[int, torch.Tensor]] = {}

    # ---- layout helpers -------------------------------------------------------------------------------------
    def layers(self) -> nn.ModuleList:
        return self.model.base_model.get_submodule(self.layout.layers)

    def _attention(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule(self.layout.attention)

    def _path(self, *parts: str | None) -> str:
        return ".".join(p for p in parts if p)

    def _head_dim(self, layer: nn.Module) -> int:
        return int(getattr(self._attention(layer), self.layout.head_dim_attribute))

    def _head_counts(self, layer: nn.Module) -> tuple[int, int]:
        """(query heads, key/value heads) of `layer` at its current size."""
        attn, head_dim, layout = self._attention(layer), self._head_dim(layer), self.layout
        heads = attn.get_submodule(layout.o_proj).in_features // head_dim
        if layout.qkv_proj:
            kv_heads = (attn.get_submodule(layout.qkv_proj).out_features // head_dim - heads) // 2
        else:
            kv_heads = attn.get_submodule(layout.k_proj).out_features // head_dim
        return heads, kv_heads

    def _is_moe(self, layer: nn.Module) -> bool:
        return self.layout.experts is not None and hasattr(layer.get_submodule(self.layout.mlp), self.layout.experts)

    def _dense_mlp_paths(self, layer: nn.Module) -> list[str]:
        """Paths of the dense gated MLPs of `layer`: the MLP itself, or a MoE block's shared expert."""
        if not self._is_moe(layer):
            return [self.layout.mlp]
        if self.layout.shared_expert and hasattr(layer.get_submodule(self.layout.mlp), self.layout.shared_expert):
            return [self._path(self.layout.mlp, self.layout.shared_expert)]
        return []

    def _mlp_size_key(self, consumer: str) -> str:
        if self.layout.shared_expert and consumer.startswith(self._path(self.layout.mlp, self.layout.shared_expert)):
            return self.layout.shared_expert_size_key or "shared_expert_intermediate_size"
        return self.layout.intermediate_size_key

    def _experts(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule(self._path(self.layout.mlp, self.layout.experts))

    def _projection_biases(self, layer: nn.Module) -> tuple[int, int, int]:
        """Whether q, k and v rows carry a bias (0/1 each)."""
        attn, layout = self._attention(layer), self.layout
        if layout.qkv_proj:
            biased = int(attn.get_submodule(layout.qkv_proj).bias is not None)
            return biased, biased, biased
        return tuple(
            int(attn.get_submodule(p).bias is not None) for p in (layout.q_proj, layout.k_proj, layout.v_proj)
        )

    # ---- units ----------------------------------------------------------------------------------------------
    def heads_per_unit(self, layer: nn.Module) -> int:
        # Under grouped-query attention a KV head and the query heads that read it go together, or the remaining
        # query heads would read the wrong keys.
        heads, kv_heads = self._head_counts(layer)
        return heads // kv_heads

    def groups(self, layer: nn.Module) -> list[UnitGroup]:
        hidden, head_dim = self.config.hidden_size, self._head_dim(layer)
        heads, kv_heads = self._head_counts(layer)
        n_rep = heads // kv_heads
        q_bias, k_bias, v_bias = self._projection_biases(layer)
        o_proj = self._path(self.layout.attention, self.layout.o_proj)
        groups = [
            UnitGroup(
                kind=ATTENTION_HEADS,
                num_units=kv_heads,
                channels_per_unit=n_rep * head_dim,
                # q and o: n_rep heads each; k and v: one head each.
                params_per_unit=head_dim * (hidden * (2 * n_rep + 2) + n_rep * q_bias + k_bias + v_bias),
                consumers=(o_proj,),
            ),
            UnitGroup(
                kind=QUERY_HEADS,
                num_units=heads,
                channels_per_unit=head_dim,
                params_per_unit=head_dim * (2 * hidden + q_bias),
                consumers=(o_proj,),
                keep_multiple=kv_heads,
            ),
        ]
        for path in self._dense_mlp_paths(layer):
            mlp = layer.get_submodule(path)
            down = mlp.get_submodule(self.layout.down_proj)
            groups.append(
                UnitGroup(
                    kind=FFN_CHANNELS,
                    num_units=down.in_features,
                    channels_per_unit=1,
                    params_per_unit=(2 + self._is_gated()) * hidden + self._mlp_row_biases(mlp),
                    consumers=(self._path(path, self.layout.down_proj),),
                )
            )
        if self._is_moe(layer):
            experts = self._experts(layer)
            for view in expert_views(experts):
                groups.append(
                    UnitGroup(
                        kind=EXPERT_CHANNELS,
                        num_units=view.in_features,
                        channels_per_unit=1,
                        params_per_unit=3 * hidden,
                        consumers=(self._path(self.layout.mlp, self.layout.experts, view.name),),
                        keep_multiple=EXPERT_SIZE_MULTIPLE,
                    )
                )
        return groups

    def _is_gated(self) -> bool:
        return bool(self.layout.gate_up_proj or self.layout.gate_proj)

    def _mlp_row_biases(self, mlp: nn.Module) -> int:
        layout = self.layout
        if layout.gate_up_proj:
            return 2 * int(mlp.get_submodule(layout.gate_up_proj).bias is not None)
        return sum(int(mlp.get_submodule(p).bias is not None) for p in (layout.gate_proj, layout.up_proj) if p)

    def select_units(self, group: UnitGroup, scores: torch.Tensor, keep_count: int) -> torch.Tensor:
        if group.kind != QUERY_HEADS:
            return super().select_units(group, scores, keep_count)
        kv_heads = group.keep_multiple
        if keep_count % kv_heads:
            raise ValueError(
                f"Cannot keep {keep_count} query heads over {kv_heads} KV groups: every group keeps the same number."
            )
        per_group = scores.reshape(kv_heads, -1)
        best = torch.topk(per_group, keep_count // kv_heads, dim=1).indices.sort(dim=1).values
        offsets = torch.arange(kv_heads, device=best.device)[:, None] * per_group.shape[1]
        return (best + offsets).reshape(-1)

    def prune_units(self, layer: nn.Module, group: UnitGroup, keep: torch.Tensor) -> None:
        if group.kind == ATTENTION_HEADS:
            self._prune_attention(layer, q_rows=group.unit_channels(keep), kv_heads=keep)
        elif group.kind == QUERY_HEADS:
            heads, kv_heads = self._head_counts(layer)
            if keep.numel() % kv_heads:
                raise ValueError(f"Query heads must stay in equal numbers per KV group, got {keep.numel()} heads.")
            self._prune_attention(layer, q_rows=group.unit_channels(keep), kv_heads=None)
        elif group.kind == FFN_CHANNELS:
            mlp_path = group.consumers[0].rpartition(".")[0]
            self._prune_mlp(layer.get_submodule(mlp_path), keep)
        elif group.kind == EXPERT_CHANNELS:
            self._prune_expert(layer, group, keep)
        else:
            raise ValueError(f"{type(self).__name__} layers have no {group.kind!r} units.")

    def _prune_attention(self, layer: nn.Module, q_rows: torch.Tensor, kv_heads: torch.Tensor | None) -> None:
        attn, layout = self._attention(layer), self.layout
        head_dim = self._head_dim(layer)
        heads, num_kv = self._head_counts(layer)
        if kv_heads is None:
            kv_heads = torch.arange(num_kv, device=q_rows.device)
        kv_rows = (kv_heads[:, None] * head_dim + torch.arange(head_dim, device=kv_heads.device)).reshape(-1)
        if layout.qkv_interleaved:
            if heads != num_kv:
                raise ValueError("Interleaved qkv_proj layouts are multi-head attention: one KV head per head.")
            rows = (kv_heads[:, None] * 3 * head_dim + torch.arange(3 * head_dim, device=kv_heads.device)).reshape(-1)
            select_rows(attn.get_submodule(layout.qkv_proj), rows)
        elif layout.qkv_proj:
            q_size, kv_size = heads * head_dim, num_kv * head_dim
            rows = torch.cat([q_rows, q_size + kv_rows, q_size + kv_size + kv_rows])
            select_rows(attn.get_submodule(layout.qkv_proj), rows)
        else:
            select_rows(attn.get_submodule(layout.q_proj), q_rows)
            if kv_heads.numel() < num_kv:
                select_rows(attn.get_submodule(layout.k_proj), kv_rows)
                select_rows(attn.get_submodule(layout.v_proj), kv_rows)
        select_columns(attn.get_submodule(layout.o_proj), q_rows)
        self._set_head_counts(attn, q_rows.numel() // head_dim, kv_heads.numel())

    def _set_head_counts(self, attn: nn.Module, heads: int, kv_heads: int) -> None:
        # The attention functions repeat each KV head `num_key_value_groups` times (eager) or pass it to SDPA.
        attn.num_key_value_groups = heads // kv_heads
        for name, value in (("num_heads", heads), ("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
            if hasattr(attn, name) and not isinstance(getattr(attn, name), nn.Module):
                setattr(attn, name, value)
        if self.layout.heads_from_config:
            base = attn.config._base if isinstance(attn.config, AttentionConfigView) else attn.config
            attn.config = AttentionConfigView(base, num_attention_heads=heads, num_key_value_heads=kv_heads)

    def _prune_mlp(self, mlp: nn.Module, keep: torch.Tensor) -> None:
        layout = self.layout
        if layout.gate_up_proj:
            size = mlp.get_submodule(layout.down_proj).in_features
            select_rows(mlp.get_submodule(layout.gate_up_proj), torch.cat([keep, size + keep]))
        else:
            if layout.gate_proj:
                select_rows(mlp.get_submodule(layout.gate_proj), keep)
            select_rows(mlp.get_submodule(layout.up_proj), keep)
        select_columns(mlp.get_submodule(layout.down_proj), keep)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = int(keep.numel())

    def _prune_expert(self, layer: nn.Module, group: UnitGroup, keep: torch.Tensor) -> None:
        experts = self._experts(layer)
        view = layer.get_submodule(group.consumers[0])
        assert isinstance(view, ExpertDownProjection)
        pending = self._pending_experts.setdefault(id(experts), {})
        pending[view.expert] = keep
        if len(pending) == experts.gate_up_proj.shape[0]:
            del self._pending_experts[id(experts)]
            select_expert_channels(experts, [pending[e] for e in range(len(pending))])
        else:
            # Until every expert is chosen the stack keeps its size: the removed channels are zeroed, which
            # computes the same function, so later experts are calibrated on the right inputs.
            view.mask_channels(keep)

    def producer_weight(self, layer: nn.Module, group: UnitGroup) -> torch.Tensor:
        attn, layout = self._attention(layer), self.layout
        if group.kind in (ATTENTION_HEADS, QUERY_HEADS):
            heads, _ = self._head_counts(layer)
            if layout.qkv_interleaved:
                weight = attn.get_submodule(layout.qkv_proj).weight
                return weight.reshape(heads, 3, -1, weight.shape[1])[:, 0].reshape(-1, weight.shape[1])
            if layout.qkv_proj:
                return attn.get_submodule(layout.qkv_proj).weight[: heads * self._head_dim(layer)]
            return attn.get_submodule(layout.q_proj).weight  # rows in o_proj column order: KV group, its heads
        if group.kind == FFN_CHANNELS:
            mlp = layer.get_submodule(group.consumers[0].rpartition(".")[0])
            if layout.gate_up_proj:
                return mlp.get_submodule(layout.gate_up_proj).weight[: mlp.get_submodule(layout.down_proj).in_features]
            return mlp.get_submodule(layout.gate_proj or layout.up_proj).weight
        if group.kind == EXPERT_CHANNELS:
            return layer.get_submodule(group.consumers[0]).gate_weight
        raise ValueError(f"{type(self).__name__} layers have no {group.kind!r} units.")

    def unit_parameters(self, layer: nn.Module, group: UnitGroup) -> list[UnitSlice]:
        """The rows and columns `_prune_attention`, `_prune_mlp` and `_prune_expert` remove with each unit."""
        layout, units = self.layout, group.num_units
        channels = unit_positions(units, group.channels_per_unit)  # the consumer's columns (q rows for heads)
        if group.kind in (ATTENTION_HEADS, QUERY_HEADS):
            attn = self._attention(layer)
            head_dim = self._head_dim(layer)
            heads, kv_heads = self._head_counts(layer)
            # Whole KV groups take their key and value rows too; single query heads leave them.
            kv_rows = unit_positions(units, head_dim) if group.kind == ATTENTION_HEADS else None
            if layout.qkv_interleaved:
                if kv_rows is None:
                    raise ValueError("Interleaved qkv_proj layouts are multi-head attention: prune attention_heads.")
                rows = [(layout.qkv_proj, unit_positions(units, 3 * head_dim))]
            elif layout.qkv_proj:
                q_size, kv_size = heads * head_dim, kv_heads * head_dim
                rows = [(layout.qkv_proj, channels)]
                if kv_rows is not None:
                    rows += [(layout.qkv_proj, q_size + kv_rows), (layout.qkv_proj, q_size + kv_size + kv_rows)]
            else:
                rows = [(layout.q_proj, channels)]
                if kv_rows is not None:
                    rows += [(layout.k_proj, kv_rows), (layout.v_proj, kv_rows)]
            slices = [UnitSlice(f"{self._path(layout.attention, layout.o_proj)}.weight", 1, channels)]
            for path, index in rows:
                slices += row_slices(self._path(layout.attention, path), attn.get_submodule(path), index)
            return slices
        if group.kind == FFN_CHANNELS:
            mlp_path = group.consumers[0].rpartition(".")[0]
            mlp = layer.get_submodule(mlp_path)
            if layout.gate_up_proj:
                size = mlp.get_submodule(layout.down_proj).in_features
                rows = [(layout.gate_up_proj, channels), (layout.gate_up_proj, size + channels)]
            else:
                rows = [(path, channels) for path in (layout.gate_proj, layout.up_proj) if path]
            slices = [UnitSlice(f"{group.consumers[0]}.weight", 1, channels)]
            for path, index in rows:
                slices += row_slices(self._path(mlp_path, path), mlp.get_submodule(path), index)
            return slices
        if group.kind == EXPERT_CHANNELS:
            view = layer.get_submodule(group.consumers[0])
            assert isinstance(view, ExpertDownProjection)
            experts = self._path(layout.mlp, layout.experts)
            size = view.in_features
            return [
                UnitSlice(f"{experts}.gate_up_proj", 0, channels, view.expert),
                UnitSlice(f"{experts}.gate_up_proj", 0, size + channels, view.expert),
                UnitSlice(f"{experts}.down_proj", 1, channels, view.expert),
            ]
        raise ValueError(f"{type(self).__name__} layers have no {group.kind!r} units.")

    # ---- serialization --------------------------------------------------------------------------------------
    def describe_layer(self, layer: nn.Module) -> dict[str, Any]:
        heads, kv_heads = self._head_counts(layer)
        description: dict[str, Any] = {"num_attention_heads": heads, "num_key_value_heads": kv_heads}
        for group in self.groups(layer):
            if group.kind == FFN_CHANNELS:
                description[self._mlp_size_key(group.consumers[0])] = group.num_units
            elif group.kind == EXPERT_CHANNELS:
                description[self.layout.expert_size_key] = group.num_units
        description["added_biases"] = self.added_biases(layer)
        return description

    def units_from_description(self, group: UnitGroup, description: dict[str, Any]) -> int:
        if group.kind == ATTENTION_HEADS:
            return int(description["num_key_value_heads"])
        if group.kind == QUERY_HEADS:
            return int(description["num_attention_heads"])
        if group.kind == EXPERT_CHANNELS:
            return int(description[self.layout.expert_size_key])
        return int(description[self._mlp_size_key(group.consumers[0])])

    def default_has_bias(self, consumer: str) -> bool:
        o_proj = self._path(self.layout.attention, self.layout.o_proj)
        if consumer != o_proj and self.layout.mlp_always_biased:
            return True
        flag = self.layout.attention_bias_flag if consumer == o_proj else self.layout.mlp_bias_flag
        return bool(flag and getattr(self.config, flag, False))

    def vanilla_config_update(self, descriptions: list[dict[str, Any]]) -> dict[str, Any] | None:
        update: dict[str, Any] = {}
        for key in dict.fromkeys(k for d in descriptions for k in d if k != "added_biases"):
            values = {d[key] for d in descriptions if key in d}
            if len(values) != 1:
                return None  # sizes differ between layers: only the plugin can rebuild them
            update[key] = values.pop()
        if self.config.hidden_size % update["num_attention_heads"]:
            return None  # the config classes validate hidden_size % num_attention_heads == 0, even with head_dim set
        layout = self.layout
        if layout.kv_heads_key is None:
            update.pop("num_key_value_heads", None)
        elif layout.kv_heads_key != "num_key_value_heads":
            update[layout.kv_heads_key] = update.pop("num_key_value_heads")
        if layout.head_dim_key is None:
            if update["num_attention_heads"] != self.config.num_attention_heads:
                return None  # the config derives the head size from hidden_size / heads
        else:
            # head_dim no longer equals hidden_size // num_attention_heads once heads are gone.
            update[layout.head_dim_key] = self._head_dim(self.layers()[0])
        added = {name for d in descriptions for name in d["added_biases"]}
        if not added:
            return update
        # A bias flag puts a bias on all four attention (or all three MLP) projections: add zero biases to the
        # others so the flag describes the model exactly and plain transformers loads it.
        o_proj = self._path(layout.attention, layout.o_proj)
        flags = {o_proj: layout.attention_bias_flag}
        for path in {p for layer in self.layers() for p in self._dense_mlp_paths(layer)}:
            flags[self._path(path, layout.down_proj)] = layout.mlp_bias_flag if path == layout.mlp else None
        if any(flags.get(name) is None for name in added):
            return None  # the config has no flag for a bias on this projection
        for consumer in sorted(added):
            parent_path = consumer.rpartition(".")[0]
            for layer in self.layers():
                parent = layer.get_submodule(parent_path)
                for child in parent.children():
                    if isinstance(child, nn.Linear):
                        ensure_bias(child)
            update[flags[consumer]] = True
        return update


class MoEDecoderAdapter(LlamaLikeAdapter):
    """LLaMA-like decoders whose MLP is a mixture of experts (stacked 3D expert weights)."""

    structure_kinds = (ATTENTION_HEADS, QUERY_HEADS, FFN_CHANNELS, EXPERT_CHANNELS)
    default_structure_kinds = (ATTENTION_HEADS, FFN_CHANNELS, EXPERT_CHANNELS)
