"""Structured plans a serving engine can run at their pruned size, and checkpoints written in the engine's layout.

Both targets take LLaMA-family models whose layers differ in size in one layout, DeciLM's (`DeciLMForCausalLM`,
`model_type: "nemotron-nas"`): `config.block_configs[i]` gives each layer's `attention.n_heads_in_group`
(KV heads = `num_attention_heads / n_heads_in_group`; the query heads are the same in every layer) and its FFN
width. What each engine reads of it:

**vLLM** (`vllm/model_executor/models/nemotron_nas.py`) reads `ffn.intermediate_size` (or `ffn.ffn_mult`); its
attention and MLP are vLLM's LLaMA modules: biases on all of q / k / v / o (`attention_bias`, or q / k / v alone
with `qkv_bias`) and on all of gate / up / down (`mlp_bias`), no q / k norms.

**llama.cpp** (`convert_hf_to_gguf.py`, class `DeciModel`, architecture `deci`; read in the copy vendored by
llama-cpp-python 0.3.36) reads less, so its plans are narrower:

- FFN widths only as `ffn.ffn_mult`: width = `int(2 * ffn_mult * hidden_size / 3)` rounded up to a multiple of 256
  (`intermediate_size` is not read). Every positive multiple of 256 is reached by `ffn_mult = 1.5 * width /
  hidden_size`, and nothing else is, so the plan keeps FFN widths in multiples of 256 (`round_to=256`).
- A layer whose FFN width is 0 (`ffn_mult` None) is skipped by llama.cpp's graph (`src/models/deci.cpp`) before its
  output becomes the next layer's input, so an FFN removed alone would drop the layer's attention too: widths stay
  positive, and removed blocks are written as a model with fewer layers (as for vLLM).
- Attention: `head_count = num_attention_heads` in every attention layer (query heads are global, as in vLLM);
  `key_length = hidden_size / num_attention_heads` while the rope size is `head_dim`, so the two must agree.
- Biases: the graph loads optional biases on q / k / v, o and gate / up / down, so a refit's `down_proj` intercept
  (LIAR, ADMM, bias) is expressible; it is written as for vLLM (`mlp_bias=True`, zero gate / up biases, which
  llama.cpp adds as zeros). The FFN is SiLU-gated and the norms RMS, with no q / k norms: Qwen3 cannot be expressed.
- RoPE: `rope_theta` becomes the frequency base, and `rope_type: "llama3"` becomes a `rope_freqs` tensor; other
  scalings are not written for `block_configs` models (DeciModel does not call the base class there), so they are
  refused. There is no sliding window.
- Vocabulary: only Llama 3's 128256-token BPE tokenizer (identified by its pre-tokenizer's hash) or a Llama-2-style
  BPE tokenizer with byte fallback (tokenizer.json, `Sequence` decoder). GPT-2-style byte-level BPE tokenizers
  (SmolLM2's, for one) stop the converter, so a plan with one is refused before it runs.
- The converter pins transformers 4.57. It reads config.json itself (4.57 cannot load `nemotron-nas` without remote
  code), so `rope_theta` is written beside `rope_parameters`, which 4.57-era code does not read; and the tokenizer's
  class is written under the 4.x name of the same class (`TokenizersBackend` -> `PreTrainedTokenizerFast`).

So what the targets can express of our structures:

- FFN channels, any width per layer (vLLM) or in multiples of 256 (llama.cpp): yes;
- whole KV groups (which remove their query heads) and query heads: no (the query heads are global);
- whole blocks (`structures=["layers"]` without a linear bridge): yes, as a model with fewer layers;
- LIAR / ADMM / bias refits: yes, as `mlp_bias=True` with zero gate / up biases (`o_proj` only has one when
  attention is pruned, which neither layout can express).

`check_config` / `check_plan` refuse any other plan before a weight changes; `write_checkpoint` writes the layout.
The checkpoint also loads in transformers (remote code shipped in it, `trust_remote_code=True`), as a LLaMA model.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .remote import optimum_prune_layers as shipped

__all__ = [
    "SERVING_TARGETS",
    "ServingPlanError",
    "check_plan",
    "check_target",
    "check_tokenizer",
    "finish_checkpoint",
    "write_checkpoint",
]

logger = logging.getLogger(__name__)

SERVING_TARGETS = ("vllm", "llama.cpp")
#: Families whose blocks are LLaMA attention and MLP (Qwen2 with its q / k / v biases), in both engines' layouts.
SERVING_FAMILIES = ("llama", "mistral", "qwen2")
SERVING_STRUCTURES = ("ffn_channels", "layers")
#: llama.cpp's DeciModel rounds every FFN width from `ffn_mult` up to a multiple of this.
LLAMACPP_FFN_MULTIPLE = 256
#: The vocabulary size for which DeciModel converts the tokenizer as Llama 3's BPE (any other goes to LlamaHfVocab).
LLAMA3_VOCAB_SIZE = 128256
#: RoPE types llama.cpp's `deci` conversion writes (the base frequency; llama3's frequency factors as a tensor).
LLAMACPP_ROPE_TYPES = ("default", "llama3")
_CONFIG_FILE = "configuration_decilm.py"
_MODELING_FILE = "modeling_decilm.py"
_ENGINE = {"vllm": "vLLM's heterogeneous LLaMA layout (DeciLM)", "llama.cpp": "llama.cpp's converter (DeciModel)"}


class ServingPlanError(ValueError):
    """The plan (or the pruned model) cannot be expressed in the serving engine's layout."""


def default_structures(target: str) -> list[str]:
    """What `structures=None` means under `serving=target`."""
    return ["ffn_channels"]


def default_round_to(target: str, round_to: Any) -> Any:
    """The `round_to` a plan for `target` uses: llama.cpp's widths are multiples of 256, so 1 (the default) -> 256."""
    if target == "llama.cpp" and round_to == 1:
        return LLAMACPP_FFN_MULTIPLE
    return round_to


def check_target(target: str) -> None:
    """Raises ServingPlanError for a name that is not a serving target."""
    if target not in SERVING_TARGETS:
        raise ServingPlanError(f"serving={target!r} is not a serving target; choose one of {list(SERVING_TARGETS)}.")


def check_config(
    target: str,
    structures: list[str] | None,
    reconstruction: str,
    *,
    round_to: Any = 1,
    layer_overrides: dict[str, Any] | None = None,
) -> None:
    """The config-only part of `check_plan` (no model needed): called by `PruningConfig.validate`."""
    check_target(target)
    for kind in structures or default_structures(target):
        if kind not in SERVING_STRUCTURES:
            raise ServingPlanError(
                f"serving={target!r} cannot express structures={structures!r}: {_ENGINE[target]} keeps the same "
                "query heads in every layer, so removing attention heads or KV groups gives a checkpoint it cannot "
                "load. Prune 'ffn_channels' (and 'layers')."
            )
    if "layers" in (structures or []) and reconstruction != "none":
        raise ServingPlanError(
            f"serving={target!r} cannot express depth pruning's linear bridges: use reconstruction='none' with "
            "structures=['layers'] (or prune FFN channels)."
        )
    if target == "llama.cpp":
        step = LLAMACPP_FFN_MULTIPLE
        if isinstance(round_to, int) and round_to > 1 and round_to % step:
            raise ServingPlanError(
                f"serving='llama.cpp' keeps FFN widths in multiples of {step} (the converter's ffn_mult rounds to "
                f"them); round_to={round_to} is not one. Leave round_to at 1 (it becomes {step}) or use a multiple."
            )
        for index, override in (layer_overrides or {}).items():
            width = override.get("ffn_channels") if isinstance(override, dict) else None
            if isinstance(width, int) and width % step:
                raise ServingPlanError(
                    f"serving='llama.cpp': layer_overrides[{index!r}] keeps ffn_channels={width}, which llama.cpp's "
                    f"converter cannot express (its FFN widths are multiples of {step}); use a multiple of {step}."
                )


def _sliding_window(config: Any, family: str | None) -> bool:
    if family == "mistral":
        return getattr(config, "sliding_window", None) is not None
    if family == "qwen2":
        return bool(getattr(config, "use_sliding_window", False))
    return False


def _rope(config: Any) -> dict[str, Any]:
    return dict(getattr(config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0})


def check_model_config(model_config: Any, target: str) -> None:
    """Refuse a model whose family or attention the target's layout cannot express (plan or save time)."""
    from .heterogeneous import base_model_type

    family = base_model_type(getattr(model_config, "model_type", None))
    if family not in SERVING_FAMILIES:
        modules = "vLLM's LLaMA attention and MLP" if target == "vllm" else "llama.cpp's deci graph"
        raise ServingPlanError(
            f"serving={target!r} supports {', '.join(SERVING_FAMILIES)} ({modules} per layer); {family!r} has other "
            "modules (Qwen3's q / k norms, Gemma's extra norms, experts, ...)."
        )
    if _sliding_window(model_config, family):
        raise ServingPlanError(
            f"serving={target!r}: this {family} model uses a sliding window, which the DeciLM layout does not apply."
        )
    if target != "llama.cpp":
        return
    heads, hidden = model_config.num_attention_heads, model_config.hidden_size
    head_dim = getattr(model_config, "head_dim", None) or hidden // heads
    if hidden % heads or head_dim != hidden // heads:
        raise ServingPlanError(
            f"serving='llama.cpp': head_dim={head_dim} differs from hidden_size / num_attention_heads = "
            f"{hidden}/{heads}; llama.cpp's converter writes the key size as the latter and the rope size as the "
            "former, which llama.cpp refuses."
        )
    if getattr(model_config, "hidden_act", "silu") != "silu":
        raise ServingPlanError(
            f"serving='llama.cpp': hidden_act={model_config.hidden_act!r}; llama.cpp's deci graph builds SiLU-gated "
            "FFNs only."
        )
    rope = _rope(model_config)
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in LLAMACPP_ROPE_TYPES or rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ServingPlanError(
            f"serving='llama.cpp': rope_type={rope_type!r} (partial_rotary_factor="
            f"{rope.get('partial_rotary_factor', 1.0)}); llama.cpp's converter writes only "
            f"{', '.join(LLAMACPP_ROPE_TYPES)} RoPE for DeciLM checkpoints."
        )


def check_tokenizer(tokenizer: Any, vocab_size: int | None) -> None:
    """Refuse a tokenizer llama.cpp's DeciModel cannot write into the GGUF (see the module docstring).

    DeciModel takes Llama 3's BPE path for a 128256-token model (the converter then identifies the pre-tokenizer by
    its hash, which only it can check) and `gguf.LlamaHfVocab` otherwise, which needs tokenizer.json with a BPE
    model with byte fallback and a `Sequence` decoder (Llama 2, Mistral).
    """
    if vocab_size == LLAMA3_VOCAB_SIZE:
        return
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ServingPlanError(
            "serving='llama.cpp': the tokenizer has no tokenizer.json (not a fast tokenizer), which llama.cpp's "
            "converter reads for a DeciLM checkpoint."
        )
    spec = json.loads(backend.to_str())
    model, decoder = spec.get("model") or {}, spec.get("decoder") or {}
    if model.get("type") != "BPE" or not model.get("byte_fallback", False) or decoder.get("type") != "Sequence":
        raise ServingPlanError(
            "serving='llama.cpp': llama.cpp's converter writes a DeciLM checkpoint's vocabulary only for Llama 3's "
            f"{LLAMA3_VOCAB_SIZE}-token tokenizer or a Llama-2-style BPE tokenizer with byte fallback; this one "
            f"({vocab_size} tokens) is a {model.get('type')} model with byte_fallback="
            f"{model.get('byte_fallback', False)} and a {decoder.get('type')} decoder (GPT-2-style byte-level BPE, "
            "SmolLM2's for one, stops the converter)."
        )


def check_plan(
    model_config: Any, target: str, structures: list[str] | None, reconstruction: str, tokenizer: Any = None
) -> None:
    """Refuse, before any weight changes, a plan whose result `target` cannot load at its pruned size.

    Raises:
        ServingPlanError: with the reason (family, structure, reconstruction; for llama.cpp also the unpruned FFN
            width, attention and RoPE shape, and the tokenizer when one is given).
    """
    check_config(target, structures, reconstruction)
    check_model_config(model_config, target)
    if target == "llama.cpp":
        width = model_config.intermediate_size
        if width % LLAMACPP_FFN_MULTIPLE:
            raise ServingPlanError(
                f"serving='llama.cpp': intermediate_size={width} is not a multiple of {LLAMACPP_FFN_MULTIPLE}, so a "
                "layer the plan leaves whole could not be expressed by llama.cpp's ffn_mult."
            )
        if tokenizer is not None:
            check_tokenizer(tokenizer, getattr(model_config, "vocab_size", None))


def _layers(model: nn.Module) -> nn.ModuleList:
    return shipped.layer_list(model.base_model)


def _ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    # llama.cpp's DeciModel._ffn_mult_to_intermediate_size (and vLLM's), verbatim in effect.
    size = int(2 * ffn_mult * hidden_size / 3)
    step = LLAMACPP_FFN_MULTIPLE
    return size if size % step == 0 else size + step - size % step


def ffn_mult(width: int, hidden_size: int, index: int = 0) -> float:
    """The `ffn_mult` that llama.cpp's converter turns back into `width` (a positive multiple of 256)."""
    multiple = 1.5 * width / hidden_size
    if width <= 0 or _ffn_mult_to_intermediate_size(multiple, hidden_size) != width:
        raise ServingPlanError(
            f"layer {index} keeps {width} FFN channels; llama.cpp's converter reads FFN widths as ffn_mult, which "
            f"gives positive multiples of {LLAMACPP_FFN_MULTIPLE} only. Prune with serving='llama.cpp'."
        )
    return float(multiple)


def _decilm_config(model: nn.Module, target: str = "vllm") -> tuple[dict[str, Any], dict[str, bool]]:
    """The DeciLM config.json of `model` for `target`, and which bias flags it sets."""
    from .heterogeneous import base_model_type

    config = model.config
    family = base_model_type(config.model_type)
    layers = _layers(model)
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    blocks, mlp_bias, o_bias = [], False, False
    for index, layer in enumerate(layers):
        attn, mlp = layer.self_attn, layer.mlp
        layer_heads = attn.o_proj.in_features // head_dim
        kv_heads = attn.k_proj.out_features // head_dim
        if layer_heads != heads or heads % kv_heads:
            raise ServingPlanError(
                f"layer {index} has {layer_heads} query heads and {kv_heads} KV heads; {_ENGINE[target]} needs "
                f"all {heads} query heads in every layer. Prune with serving={target!r} to keep them."
            )
        mlp_bias |= mlp.down_proj.bias is not None or mlp.gate_proj.bias is not None
        o_bias |= attn.o_proj.bias is not None
        width = mlp.down_proj.in_features
        ffn: dict[str, Any] = {"no_op": False, "replace_with_linear": False, "intermediate_size": width}
        if target == "llama.cpp":
            ffn["ffn_mult"] = ffn_mult(width, config.hidden_size, index)
        blocks.append(
            {
                "attention": {"no_op": False, "replace_with_linear": False, "n_heads_in_group": heads // kv_heads},
                "ffn": ffn,
            }
        )
    qkv_bias = layers[0].self_attn.q_proj.bias is not None
    attention_bias = o_bias or qkv_bias
    rope = _rope(config)
    values = {
        "model_type": "nemotron-nas",
        "architectures": ["DeciLMForCausalLM"],
        "auto_map": {
            "AutoConfig": f"{_CONFIG_FILE[:-3]}.DeciLMConfig",
            "AutoModelForCausalLM": f"{_MODELING_FILE[:-3]}.DeciLMForCausalLM",
        },
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden_size,
        "intermediate_size": max(b["ffn"]["intermediate_size"] for b in blocks),
        "num_hidden_layers": len(layers),
        "num_attention_heads": heads,
        "num_key_value_heads": heads // blocks[0]["attention"]["n_heads_in_group"],
        "head_dim": head_dim,
        "hidden_act": config.hidden_act,
        "max_position_embeddings": config.max_position_embeddings,
        "rms_norm_eps": config.rms_norm_eps,
        "rope_parameters": rope,
        # Read by code of the transformers 4.x era (llama.cpp's converter pins 4.57), which ignores rope_parameters.
        "rope_theta": rope.get("rope_theta", 10000.0),
        "tie_word_embeddings": bool(getattr(config, "tie_word_embeddings", False)),
        "attention_bias": attention_bias,
        "mlp_bias": mlp_bias,
        "bos_token_id": getattr(config, "bos_token_id", None),
        "eos_token_id": getattr(config, "eos_token_id", None),
        "pad_token_id": getattr(config, "pad_token_id", None),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "block_configs": blocks,
        "pruned_base_model_type": family,
    }
    pruning = getattr(config, "pruning", None)
    if isinstance(pruning, dict):
        values["pruning"] = {**pruning, "loader": target}
    # Qwen2's q / k / v biases: `attention_bias` puts one on o_proj too (a zero one), in vLLM and in transformers
    # (llama.cpp loads each of them, and adds the zero one).
    return values, {"attention": attention_bias, "mlp": mlp_bias}


def _tensors(model: nn.Module, flags: dict[str, bool]) -> dict[str, torch.Tensor]:
    """The state dict in LLaMA names, with the zero biases the flags imply, and no tied copy of the embeddings."""
    state = {name: tensor.detach().contiguous() for name, tensor in model.state_dict().items()}
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    prefix = "model.layers"
    for index, layer in enumerate(_layers(model)):
        wanted = []
        if flags["mlp"]:
            wanted += ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]
        if flags["attention"]:
            wanted += ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"]
        for name in wanted:
            key = f"{prefix}.{index}.{name}.bias"
            if key not in state:
                weight = layer.get_submodule(name).weight
                state[key] = torch.zeros(weight.shape[0], dtype=weight.dtype)
    return {name: tensor.cpu() for name, tensor in state.items()}


def _remote_sources() -> tuple[str, str]:
    configuration = (
        '"""Generated by optimum-prune: the config of a structured-pruned LLaMA-family model in vLLM\'s '
        'heterogeneous layout (DeciLM, nemotron-nas); see optimum_prune_layers.py."""\n\n'
        "from transformers import LlamaConfig\n\n"
        "from .optimum_prune_layers import DeciLMConfigMixin\n\n\n"
        "class DeciLMConfig(DeciLMConfigMixin, LlamaConfig):\n"
        '    model_type = "nemotron-nas"\n'
    )
    modeling = (
        '"""Generated by optimum-prune: the transformers model of a checkpoint in vLLM\'s heterogeneous LLaMA layout '
        '(DeciLM); its layers take their sizes from block_configs."""\n\n'
        "from transformers import LlamaForCausalLM\n\n"
        "from .configuration_decilm import DeciLMConfig\n"
        "from .optimum_prune_layers import PrunedModelMixin\n\n\n"
        "class DeciLMForCausalLM(PrunedModelMixin, LlamaForCausalLM):\n"
        "    config_class = DeciLMConfig\n"
    )
    return configuration, modeling


def write_checkpoint(model: nn.Module, folder: str | Path, target: str = "vllm") -> None:
    """Write `model` into `folder` in the DeciLM layout for `target` (config.json, model.safetensors, remote code).

    "vllm": `vllm.LLM(folder, trust_remote_code=True)` serves it with vLLM's own `DeciLMForCausalLM`. "llama.cpp":
    the same layout with each block's `ffn_mult`, which llama.cpp's `convert_hf_to_gguf.py` converts (architecture
    `deci`). Either way `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` loads it in transformers.

    Raises:
        ServingPlanError: the model is not of a family (or attention / RoPE shape) the target's layout covers, a
            layer lost query heads, or (llama.cpp) an FFN width is no positive multiple of 256.
    """
    check_target(target)
    check_model_config(model.config, target)
    folder = Path(folder)
    values, flags = _decilm_config(model, target)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(_tensors(model, flags), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(folder)
    configuration, modeling = _remote_sources()
    shutil.copyfile(shipped.__file__, folder / "optimum_prune_layers.py")
    (folder / _CONFIG_FILE).write_text(configuration, encoding="utf-8")
    (folder / _MODELING_FILE).write_text(modeling, encoding="utf-8")


#: tokenizer_config.json class names transformers 5 writes that transformers 4.57 (llama.cpp's converter) cannot
#: resolve, and the 4.x name of the same class.
_TOKENIZER_CLASS_4X = {"TokenizersBackend": "PreTrainedTokenizerFast"}


def finish_checkpoint(folder: str | Path, target: str) -> None:
    """After the tokenizer is written: for llama.cpp, name its class so transformers 4.57 loads it (the converter
    reads the vocabulary through 4.57's AutoTokenizer); a missing tokenizer is logged, since the converter needs it."""
    if target != "llama.cpp":
        return
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        logger.warning(
            "serving='llama.cpp': no tokenizer was saved; llama.cpp's converter needs the tokenizer files beside "
            "the weights (pass a tokenizer to the pruner, or copy them into the folder)."
        )
        return
    values = json.loads(path.read_text(encoding="utf-8"))
    name = values.get("tokenizer_class")
    if name in _TOKENIZER_CLASS_4X:
        values["tokenizer_class"] = _TOKENIZER_CLASS_4X[name]
        path.write_text(json.dumps(values, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
