"""Structured plans a serving engine can run at their pruned size, and checkpoints written in the engine's layout.

vLLM serves LLaMA-family models whose layers differ in size as `DeciLMForCausalLM` (`model_type: "nemotron-nas"`,
`vllm/model_executor/models/nemotron_nas.py`): `config.block_configs[i]` gives each layer's
`attention.n_heads_in_group` (KV heads = `num_attention_heads / n_heads_in_group`) and `ffn.intermediate_size`.
The query heads are the same in every layer and the attention and MLP are vLLM's LLaMA modules: biases on all of
q / k / v / o (`attention_bias`, or q / k / v alone with `qkv_bias`) and on all of gate / up / down (`mlp_bias`),
no q / k norms. So what vLLM can express of our structures:

- FFN channels, any width per layer: yes;
- whole KV groups (which remove their query heads) and query heads: no (the query heads are global);
- whole blocks (`structures=["layers"]` without a linear bridge): yes, as a model with fewer layers;
- LIAR / ADMM / bias refits: yes, as `mlp_bias=True` with zero gate / up biases (`o_proj` only has one when
  attention is pruned, which vLLM's layout cannot express).

`check_plan` refuses any other plan before a weight changes; `write_vllm_checkpoint` writes the layout. The
checkpoint also loads in transformers (remote code shipped in it, `trust_remote_code=True`), as a LLaMA model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from .remote import optimum_prune_layers as shipped

__all__ = ["SERVING_TARGETS", "ServingPlanError", "check_plan", "check_target", "write_vllm_checkpoint"]

SERVING_TARGETS = ("vllm",)
#: Families whose blocks are vLLM's LLaMA attention and MLP (Qwen2 with its q / k / v biases).
VLLM_FAMILIES = ("llama", "mistral", "qwen2")
VLLM_STRUCTURES = ("ffn_channels", "layers")
_CONFIG_FILE = "configuration_decilm.py"
_MODELING_FILE = "modeling_decilm.py"


class ServingPlanError(ValueError):
    """The plan (or the pruned model) cannot be expressed in the serving engine's layout."""


def default_structures(target: str) -> list[str]:
    """What `structures=None` means under `serving=target`."""
    return ["ffn_channels"]


def check_target(target: str) -> None:
    """Raises ServingPlanError for a name that is not a serving target."""
    if target not in SERVING_TARGETS:
        raise ServingPlanError(f"serving={target!r} is not a serving target; choose one of {list(SERVING_TARGETS)}.")


def check_config(target: str, structures: list[str] | None, reconstruction: str) -> None:
    """The config-only part of `check_plan` (no model needed): called by `PruningConfig.validate`."""
    check_target(target)
    for kind in structures or default_structures(target):
        if kind not in VLLM_STRUCTURES:
            raise ServingPlanError(
                f"serving='vllm' cannot express structures={structures!r}: vLLM's heterogeneous LLaMA layout "
                "(DeciLM) keeps the same query heads in every layer, so removing attention heads or KV groups "
                "gives a checkpoint vLLM cannot load. Prune 'ffn_channels' (and 'layers')."
            )
    if "layers" in (structures or []) and reconstruction != "none":
        raise ServingPlanError(
            "serving='vllm' cannot express depth pruning's linear bridges: use reconstruction='none' with "
            "structures=['layers'] (or prune FFN channels)."
        )


def check_plan(model_config: Any, target: str, structures: list[str] | None, reconstruction: str) -> None:
    """Refuse, before any weight changes, a plan whose result `target` cannot load at its pruned size.

    Raises:
        ServingPlanError: with the reason (family, structure or reconstruction).
    """
    from .heterogeneous import base_model_type

    check_config(target, structures, reconstruction)
    family = base_model_type(getattr(model_config, "model_type", None))
    if family not in VLLM_FAMILIES:
        raise ServingPlanError(
            f"serving='vllm' supports {', '.join(VLLM_FAMILIES)} (vLLM's LLaMA attention and MLP per layer); "
            f"{family!r} has other modules (Qwen3's q / k norms, Gemma's extra norms, experts, ...)."
        )
    if getattr(model_config, "sliding_window", None) is not None and family == "mistral":
        raise ServingPlanError(
            "serving='vllm': this Mistral model uses a sliding window, which vLLM's DeciLM layout does not apply."
        )


def _layers(model: nn.Module) -> nn.ModuleList:
    return shipped.layer_list(model.base_model)


def _decilm_config(model: nn.Module) -> tuple[dict[str, Any], dict[str, bool]]:
    """The DeciLM config.json of `model`, and which bias flags it sets."""
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
                f"layer {index} has {layer_heads} query heads and {kv_heads} KV heads; vLLM's DeciLM layout needs "
                f"all {heads} query heads in every layer. Prune with serving='vllm' to keep them."
            )
        mlp_bias |= mlp.down_proj.bias is not None or mlp.gate_proj.bias is not None
        o_bias |= attn.o_proj.bias is not None
        blocks.append(
            {
                "attention": {"no_op": False, "replace_with_linear": False, "n_heads_in_group": heads // kv_heads},
                "ffn": {"no_op": False, "replace_with_linear": False, "intermediate_size": mlp.down_proj.in_features},
            }
        )
    qkv_bias = layers[0].self_attn.q_proj.bias is not None
    attention_bias = o_bias or qkv_bias
    rope = getattr(config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0}
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
        "rope_parameters": dict(rope),
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
        values["pruning"] = {**pruning, "loader": "vllm"}
    # Qwen2's q / k / v biases: `attention_bias` puts one on o_proj too (a zero one), in vLLM and in transformers.
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


def write_vllm_checkpoint(model: nn.Module, folder: str | Path) -> None:
    """Write `model` into `folder` in vLLM's DeciLM layout (config.json, model.safetensors, remote code).

    `vllm.LLM(folder, trust_remote_code=True)` serves it with vLLM's own `DeciLMForCausalLM`;
    `AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` loads it in transformers.

    Raises:
        ServingPlanError: the model is not of a family vLLM's layout covers, or a layer lost query heads.
    """
    from .heterogeneous import base_model_type

    family = base_model_type(model.config.model_type)
    if family not in VLLM_FAMILIES:
        raise ServingPlanError(f"serving='vllm' supports {', '.join(VLLM_FAMILIES)}, not {family!r}.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    values, flags = _decilm_config(model)
    save_file(_tensors(model, flags), str(folder / "model.safetensors"), metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(values, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(folder)
    configuration, modeling = _remote_sources()
    shutil.copyfile(shipped.__file__, folder / "optimum_prune_layers.py")
    (folder / _CONFIG_FILE).write_text(configuration, encoding="utf-8")
    (folder / _MODELING_FILE).write_text(modeling, encoding="utf-8")
