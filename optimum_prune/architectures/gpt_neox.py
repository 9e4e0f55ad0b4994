"""GPT-NeoX: q, k and v fused in `query_key_value` with rows grouped per head, an ungated MLP with biases.

GPTNeoXConfig derives the head size from hidden_size / num_attention_heads, so only checkpoints whose head count is
unchanged (FFN channels pruned) load in plain transformers. Multi-head attention: `attention_heads` are single
heads, and `ffn_channels`. Partial rotary embeddings act within one head, which pruning heads leaves whole.
"""

from __future__ import annotations

from .decoder import ATTENTION_HEADS, FFN_CHANNELS, DecoderLayout, LlamaLikeAdapter


class GPTNeoXAdapter(LlamaLikeAdapter):
    model_types = ("gpt_neox",)
    structure_kinds = (ATTENTION_HEADS, FFN_CHANNELS)
    layout = DecoderLayout(
        attention="attention",
        q_proj=None,
        k_proj=None,
        v_proj=None,
        qkv_proj="query_key_value",
        qkv_interleaved=True,
        o_proj="dense",
        gate_proj=None,
        up_proj="dense_h_to_4h",
        down_proj="dense_4h_to_h",
        attention_bias_flag="attention_bias",
        head_dim_attribute="head_size",
        head_dim_key=None,
        kv_heads_key=None,
        mlp_always_biased=True,
    )
