"""Mixture-of-experts decoders with LLaMA's attention: Mixtral, Qwen2-MoE (with a shared expert), Qwen3-MoE.

Each routed expert keeps its own FFN channels (all experts of a layer keep the same number, as stacked storage
needs); the router is untouched. Layers listed in `mlp_only_layers` have a dense MLP, pruned as `ffn_channels`.
"""

from __future__ import annotations

from .decoder import DecoderLayout, MoEDecoderAdapter


class MixtralAdapter(MoEDecoderAdapter):
    model_types = ("mixtral",)
    layout = DecoderLayout(experts="experts")


class Qwen2MoeAdapter(MoEDecoderAdapter):
    model_types = ("qwen2_moe",)
    layout = DecoderLayout(
        experts="experts",
        shared_expert="shared_expert",
        expert_size_key="moe_intermediate_size",
        shared_expert_size_key="shared_expert_intermediate_size",
    )


class Qwen3MoeAdapter(MoEDecoderAdapter):
    model_types = ("qwen3_moe",)
    layout = DecoderLayout(
        experts="experts", expert_size_key="moe_intermediate_size", attention_bias_flag="attention_bias"
    )
