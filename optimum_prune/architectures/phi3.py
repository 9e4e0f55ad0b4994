"""Phi-3: fused `qkv_proj` (rows: queries, keys, values) and `gate_up_proj` (rows: gate, up).

Its attention splits `qkv_proj`'s output at `config.num_attention_heads * head_dim`, so a layer with fewer heads
gets a config view of its own (`decoder.AttentionConfigView`).
"""

from __future__ import annotations

from .decoder import DecoderLayout, LlamaLikeAdapter


class Phi3Adapter(LlamaLikeAdapter):
    model_types = ("phi3",)
    layout = DecoderLayout(
        q_proj=None,
        k_proj=None,
        v_proj=None,
        qkv_proj="qkv_proj",
        gate_proj=None,
        up_proj=None,
        gate_up_proj="gate_up_proj",
        heads_from_config=True,
    )
