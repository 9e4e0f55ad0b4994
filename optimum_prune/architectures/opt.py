"""OPT: multi-head attention with biases and an ungated MLP, declared on the shared decoder code.

Its blocks sit under `decoder.layers`, the MLP projections `fc1` / `fc2` in the block itself. OPTConfig derives the
head size from hidden_size / num_attention_heads, so only checkpoints whose head count is unchanged (FFN channels
pruned) load in plain transformers. With one KV head per query head, single query heads are the same units as
whole heads: `attention_heads` and `ffn_channels` only.
"""

from __future__ import annotations

from .decoder import ATTENTION_HEADS, FFN_CHANNELS, DecoderLayout, LlamaLikeAdapter


class OPTAdapter(LlamaLikeAdapter):
    model_types = ("opt",)
    structure_kinds = (ATTENTION_HEADS, FFN_CHANNELS)
    layout = DecoderLayout(
        layers="decoder.layers",
        o_proj="out_proj",
        mlp="",
        gate_proj=None,
        up_proj="fc1",
        down_proj="fc2",
        attention_bias_flag="enable_bias",
        mlp_bias_flag="enable_bias",
        intermediate_size_key="ffn_dim",
        head_dim_key=None,
        kv_heads_key=None,
    )
