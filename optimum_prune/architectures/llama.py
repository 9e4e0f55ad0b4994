"""LLaMA family (LLaMA, Mistral, Qwen2): the reference layout of `decoder.LlamaLikeAdapter`."""

from __future__ import annotations

from .decoder import DecoderLayout, LlamaLikeAdapter


class LlamaAdapter(LlamaLikeAdapter):
    model_types = ("llama",)
    layout = DecoderLayout(attention_bias_flag="attention_bias", mlp_bias_flag="mlp_bias")


class MistralAdapter(LlamaLikeAdapter):
    # LLaMA's layout; the configs have no bias flags (Qwen2's fixed q/k/v biases are simply there).
    model_types = ("mistral", "qwen2")
