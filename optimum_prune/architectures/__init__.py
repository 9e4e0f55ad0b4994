"""Architecture adapters: one file per model family, one registry line each."""

from __future__ import annotations

from torch import nn

from .base import ArchitectureAdapter, UnitGroup, UnitSlice
from .bert import BertAdapter, DebertaV2Adapter, DistilBertAdapter, ModernBertAdapter
from .gemma import GemmaAdapter
from .gpt_neox import GPTNeoXAdapter
from .llama import LlamaAdapter, MistralAdapter
from .mamba import FalconMambaAdapter, MambaAdapter
from .mamba2 import Mamba2Adapter
from .moe import MixtralAdapter, Qwen2MoeAdapter, Qwen3MoeAdapter
from .opt import OPTAdapter
from .phi3 import Phi3Adapter
from .qwen3 import Qwen3Adapter

ADAPTERS: dict[str, type[ArchitectureAdapter]] = {}
for _adapter in (
    BertAdapter,
    LlamaAdapter,
    MambaAdapter,
    DistilBertAdapter,
    DebertaV2Adapter,
    ModernBertAdapter,
    FalconMambaAdapter,
    Mamba2Adapter,
):
    for _model_type in _adapter.model_types:
        ADAPTERS[_model_type] = _adapter
# LLaMA-like decoders: declarations on top of decoder.LlamaLikeAdapter.
for _adapter in (
    MistralAdapter,
    Qwen3Adapter,
    GemmaAdapter,
    Phi3Adapter,
    MixtralAdapter,
    Qwen2MoeAdapter,
    Qwen3MoeAdapter,
    OPTAdapter,
    GPTNeoXAdapter,
):
    for _model_type in _adapter.model_types:
        ADAPTERS[_model_type] = _adapter


class UnsupportedArchitectureError(ValueError):
    """The model's family has no adapter."""


def get_adapter(model: nn.Module) -> ArchitectureAdapter:
    """The adapter for `model`, chosen by `model.config.model_type`."""
    from ..serialization.heterogeneous import base_model_type

    model_type = base_model_type(getattr(getattr(model, "config", None), "model_type", None))
    if model_type not in ADAPTERS:
        raise UnsupportedArchitectureError(
            f"optimum_prune does not support model_type {model_type!r} ({type(model).__name__}). "
            f"Supported model types: {', '.join(sorted(ADAPTERS))}."
        )
    return ADAPTERS[model_type](model)


__all__ = ["ADAPTERS", "ArchitectureAdapter", "UnitGroup", "UnitSlice", "UnsupportedArchitectureError", "get_adapter"]
