"""The architecture test matrix: one tiny random model per family, and what the library promises for it.

`tests/test_architectures.py` runs every check on every entry; `benchmarks/architectures.py` turns that run into
the README's supported-architectures table. To add a family, append one `ArchitectureEntry` to `ARCHITECTURES`
(keep it tiny: 2 layers, hidden size 32-64, vocabulary `VOCAB_SIZE`). To declare a structured adapter, add
`STRUCTURED` to its capabilities (and `PLAIN_RELOAD` with a `plain_recipe` when a uniform structured checkpoint's
sizes fit the family's own config class, so it loads in plain transformers); the matrix then requires that it works,
and requires a clear error for structured pruning where the capability is absent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import transformers

VOCAB_SIZE = 128  # the character tokenizer of conftest.py uses ids below 100

#: Capabilities beyond unstructured and N:M sparsity, which every entry must support.
STRUCTURED = "structured"
PLAIN_RELOAD = "plain_reload"

CAUSAL_LM = "causal-lm"
SEQUENCE_CLASSIFICATION = "sequence-classification"

_DECODER = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
)
_ENCODER = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=128,
    num_labels=2,
)
_SPECIAL_TOKENS = dict(pad_token_id=0, bos_token_id=2, eos_token_id=3)
#: Plain-transformers recipes (see `ArchitectureEntry.plain_recipe`).
_NO_REFIT = dict(reconstruction="none")
_FFN_ONLY = dict(structures=["ffn_channels"])  # configs that derive the head size from hidden size / heads
_HALF_NO_REFIT = dict(sparsity=0.5, reconstruction="none")


@dataclass(frozen=True)
class ArchitectureEntry:
    """One family of the matrix.

    Attributes:
        name: the label in test ids and in the README table (the model type, usually).
        config_class / model_class: names of transformers classes, e.g. "LlamaConfig" / "LlamaForCausalLM".
        task: `CAUSAL_LM` or `SEQUENCE_CLASSIFICATION` (which pruner and Auto class load it).
        config: keyword arguments of the tiny config.
        capabilities: `STRUCTURED` and `PLAIN_RELOAD` where supported.
        plain_recipe: `PruningConfig` overrides of the matrix's structured run (25%, activation + LIAR, uniform)
            under which `PLAIN_RELOAD` is promised: the result must be expressible by the family's own config class.
            Empty means the default run itself. A LIAR refit adds output biases that most configs have no flag for
            (hence `reconstruction="none"`); BERT-like configs derive the head size from hidden size / heads (hence
            FFN channels only); Mamba configs need an integer `expand` (hence 50%).
        note: a short remark shown in the table.
    """

    name: str
    config_class: str
    model_class: str
    task: str
    config: dict[str, Any] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ()
    note: str = ""
    plain_recipe: dict[str, Any] = field(default_factory=dict)

    def build(self, seed: int = 0) -> torch.nn.Module:
        """A fresh tiny random model in eval mode (the same weights for the same seed)."""
        torch.manual_seed(seed)
        config = getattr(transformers, self.config_class)(**self.config)
        return getattr(transformers, self.model_class)(config).eval()

    @property
    def is_causal_lm(self) -> bool:
        return self.task == CAUSAL_LM

    @property
    def plain_recipe_text(self) -> str:
        """`plain_recipe` as it reads in the table, e.g. `reconstruction="none"` (or "default recipe")."""
        if not self.plain_recipe:
            return "default recipe"
        return ", ".join(f"{key}={value!r}".replace("'", '"') for key, value in self.plain_recipe.items())


ARCHITECTURES: list[ArchitectureEntry] = [
    # ---- families with structured adapters -------------------------------------------------------------------
    ArchitectureEntry(
        "llama", "LlamaConfig", "LlamaForCausalLM", CAUSAL_LM, dict(_DECODER), (STRUCTURED, PLAIN_RELOAD)
    ),
    ArchitectureEntry(
        "mistral",
        "MistralConfig",
        "MistralForCausalLM",
        CAUSAL_LM,
        dict(_DECODER),
        (STRUCTURED, PLAIN_RELOAD),
        plain_recipe=_NO_REFIT,
    ),
    ArchitectureEntry(
        "qwen2",
        "Qwen2Config",
        "Qwen2ForCausalLM",
        CAUSAL_LM,
        dict(_DECODER),
        (STRUCTURED, PLAIN_RELOAD),
        plain_recipe=_NO_REFIT,
    ),
    ArchitectureEntry(
        "bert",
        "BertConfig",
        "BertForSequenceClassification",
        SEQUENCE_CLASSIFICATION,
        dict(_ENCODER),
        (STRUCTURED, PLAIN_RELOAD),
        plain_recipe=_FFN_ONLY,
    ),
    ArchitectureEntry(
        "mamba",
        "MambaConfig",
        "MambaForCausalLM",
        CAUSAL_LM,
        dict(vocab_size=VOCAB_SIZE, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4),
        (STRUCTURED, PLAIN_RELOAD),
        note="dt_proj (2 inputs) is left dense by 2:4",
        plain_recipe=_HALF_NO_REFIT,
    ),
    # ---- decoders structured through architectures/decoder.py (OPT and GPT-NeoX too); GPT-2 sparsity only ----------
    ArchitectureEntry(
        "qwen3",
        "Qwen3Config",
        "Qwen3ForCausalLM",
        CAUSAL_LM,
        dict(_DECODER, head_dim=8),
        (STRUCTURED, PLAIN_RELOAD),
        plain_recipe=_NO_REFIT,
    ),
    ArchitectureEntry(
        "gemma2",
        "Gemma2Config",
        "Gemma2ForCausalLM",
        CAUSAL_LM,
        dict(_DECODER, head_dim=8),
        (STRUCTURED, PLAIN_RELOAD),
        plain_recipe=_NO_REFIT,
    ),
    ArchitectureEntry(
        "gemma3_text",
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        CAUSAL_LM,
        dict(_DECODER, head_dim=8, layer_types=["sliding_attention", "full_attention"], sliding_window=8),
        (STRUCTURED, PLAIN_RELOAD),
        plain_recipe=_NO_REFIT,
    ),
    ArchitectureEntry(
        "phi3",
        "Phi3Config",
        "Phi3ForCausalLM",
        CAUSAL_LM,
        dict(_DECODER, **_SPECIAL_TOKENS),
        (STRUCTURED, PLAIN_RELOAD),
        plain_recipe=_NO_REFIT,
    ),
    ArchitectureEntry(
        "gpt2",
        "GPT2Config",
        "GPT2LMHeadModel",
        CAUSAL_LM,
        dict(vocab_size=VOCAB_SIZE, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=2, eos_token_id=3),
        note="Conv1D weights",
    ),
    ArchitectureEntry(
        "opt",
        "OPTConfig",
        "OPTForCausalLM",
        CAUSAL_LM,
        dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=32,
            ffn_dim=64,
            word_embed_proj_dim=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=128,
            **_SPECIAL_TOKENS,
        ),
        (STRUCTURED, PLAIN_RELOAD),
        note="multi-head attention, ungated MLP",
        plain_recipe=_FFN_ONLY,
    ),
    ArchitectureEntry(
        "gpt_neox",
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        CAUSAL_LM,
        dict(_DECODER, bos_token_id=2, eos_token_id=3),
        (STRUCTURED, PLAIN_RELOAD),
        note="qkv interleaved per head",
        plain_recipe=_FFN_ONLY,
    ),
    ArchitectureEntry(
        "mixtral",
        "MixtralConfig",
        "MixtralForCausalLM",
        CAUSAL_LM,
        dict(_DECODER, num_local_experts=4, num_experts_per_tok=2),
        (STRUCTURED, PLAIN_RELOAD),
        note="stacked 3-D experts; router dense",
    ),
    ArchitectureEntry(
        "qwen2_moe",
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        CAUSAL_LM,
        dict(
            _DECODER,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=32,
            shared_expert_intermediate_size=32,
        ),
        (STRUCTURED, PLAIN_RELOAD),
        note="stacked 3-D experts and a shared expert; routers dense",
        plain_recipe=_NO_REFIT,
    ),
    ArchitectureEntry(
        "qwen3_moe",
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        CAUSAL_LM,
        dict(_DECODER, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
        (STRUCTURED, PLAIN_RELOAD),
        note="stacked 3-D experts; router dense",
    ),
    # ---- encoders: structured adapters in architectures/bert.py ----------------------------------------------------
    ArchitectureEntry(
        "roberta",
        "RobertaConfig",
        "RobertaForSequenceClassification",
        SEQUENCE_CLASSIFICATION,
        dict(_ENCODER),
        (STRUCTURED, PLAIN_RELOAD),
        plain_recipe=_FFN_ONLY,
    ),
    ArchitectureEntry(
        "xlm-roberta",
        "XLMRobertaConfig",
        "XLMRobertaForSequenceClassification",
        SEQUENCE_CLASSIFICATION,
        dict(_ENCODER),
        (STRUCTURED, PLAIN_RELOAD),
        plain_recipe=_FFN_ONLY,
    ),
    ArchitectureEntry(
        "distilbert",
        "DistilBertConfig",
        "DistilBertForSequenceClassification",
        SEQUENCE_CLASSIFICATION,
        dict(vocab_size=VOCAB_SIZE, dim=32, hidden_dim=64, n_layers=2, n_heads=4, max_position_embeddings=128),
        (STRUCTURED, PLAIN_RELOAD),
        note="no _no_split_modules: blocks from its layer list",
        plain_recipe=_FFN_ONLY,
    ),
    ArchitectureEntry(
        "electra",
        "ElectraConfig",
        "ElectraForSequenceClassification",
        SEQUENCE_CLASSIFICATION,
        dict(_ENCODER, embedding_size=32),
        (STRUCTURED, PLAIN_RELOAD),
        note="no _no_split_modules: blocks from its layer list",
        plain_recipe=_FFN_ONLY,
    ),
    ArchitectureEntry(
        "deberta-v2",
        "DebertaV2Config",
        "DebertaV2ForSequenceClassification",
        SEQUENCE_CLASSIFICATION,
        dict(_ENCODER, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16),
        (STRUCTURED, PLAIN_RELOAD),
        note="no _no_split_modules: blocks from its layer list",
        plain_recipe=_FFN_ONLY,
    ),
    ArchitectureEntry(
        "modernbert",
        "ModernBertConfig",
        "ModernBertForSequenceClassification",
        SEQUENCE_CLASSIFICATION,
        dict(_ENCODER, pad_token_id=0, bos_token_id=2, eos_token_id=3, cls_token_id=2, sep_token_id=3),
        (STRUCTURED, PLAIN_RELOAD),
        plain_recipe=_FFN_ONLY,
    ),
    # ---- state-space and hybrid models (FalconMamba, Mamba2 structured; Jamba sparsity only) -----------------------
    ArchitectureEntry(
        "falcon_mamba",
        "FalconMambaConfig",
        "FalconMambaForCausalLM",
        CAUSAL_LM,
        dict(vocab_size=VOCAB_SIZE, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4),
        (STRUCTURED, PLAIN_RELOAD),
        note="dt_proj input tapped at dt_layernorm",
        plain_recipe=_HALF_NO_REFIT,
    ),
    ArchitectureEntry(
        "mamba2",
        "Mamba2Config",
        "Mamba2ForCausalLM",
        CAUSAL_LM,
        dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=32,
            num_heads=4,
            head_dim=16,
            n_groups=1,
            state_size=8,
            expand=2,
            num_hidden_layers=2,
            chunk_size=16,
        ),
        (STRUCTURED, PLAIN_RELOAD),
        note="structured: whole SSM heads, the same number in every group",
        plain_recipe=dict(sparsity=0.5),  # LIAR's out_proj intercept is expressed by use_bias
    ),
    ArchitectureEntry(
        "jamba",
        "JambaConfig",
        "JambaForCausalLM",
        CAUSAL_LM,
        dict(
            _DECODER,
            num_experts=2,
            num_experts_per_tok=1,
            attn_layer_period=2,
            attn_layer_offset=1,
            expert_layer_period=2,
            expert_layer_offset=1,
            mamba_d_state=8,
            mamba_dt_rank=4,
            **_SPECIAL_TOKENS,
        ),
        note="attention and Mamba blocks, stacked experts",
    ),
]

BY_NAME = {entry.name: entry for entry in ARCHITECTURES}
