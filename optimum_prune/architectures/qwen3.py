"""Qwen3: LLaMA's layout; q_norm / k_norm act on one head's dimension, which pruning heads leaves unchanged."""

from __future__ import annotations

from .decoder import DecoderLayout, LlamaLikeAdapter


class Qwen3Adapter(LlamaLikeAdapter):
    model_types = ("qwen3",)
    layout = DecoderLayout(attention_bias_flag="attention_bias")
