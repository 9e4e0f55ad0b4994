"""Gemma 2 and Gemma 3 (text): LLaMA's layout with extra norms around attention and MLP.

The norms act on the hidden size (and Gemma 3's q_norm / k_norm on one head's dimension), so they stay. The
attention scale comes from `query_pre_attn_scalar`, an explicit config value that removing heads does not touch;
logit softcapping and sliding-window layers act per head and per position, not on the number of heads.
"""

from __future__ import annotations

from .decoder import DecoderLayout, LlamaLikeAdapter


class GemmaAdapter(LlamaLikeAdapter):
    model_types = ("gemma2", "gemma3_text")
    layout = DecoderLayout(attention_bias_flag="attention_bias")
