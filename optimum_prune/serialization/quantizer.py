"""Loading hook: `AutoModelFor*.from_pretrained` rebuilds per-layer sizes once `optimum_prune` is imported.

transformers' quantizer registry is the one documented place where a plugin may change modules between model
construction and weight loading, so a non-uniform pruned checkpoint carries
`quantization_config = {"quant_method": "optimum_prune"}` and this "quantizer" only resizes layers. After
loading it steps aside, so the model behaves as an ordinary, unquantized model (`.half()`, training, saving).
"""

from __future__ import annotations

from typing import Any

from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from .layout import QUANT_METHOD, apply_layout, remove_loading_guard


class PrunedLayoutConfig(QuantizationConfigMixin):
    """Marks a checkpoint whose layers have per-layer sizes recorded in `config.pruning`."""

    def __init__(self, **kwargs: Any) -> None:
        self.quant_method = QUANT_METHOD

    def to_dict(self) -> dict[str, Any]:
        return {"quant_method": QUANT_METHOD}


class PrunedLayoutLoader(HfQuantizer):
    """Resizes each layer to its stored size before the weights are loaded; nothing is quantized."""

    requires_calibration = False

    # transformers hands the model config to the quantizer after choosing it and before looking up the weights
    # file, through a hook whose name changed within 5.x (update_tp_plan / update_ep_plan in 5.0, then
    # update_attn_implementation); each removes the loading guard that stops plain-transformers loads.
    def update_attn_implementation(self, config: Any) -> Any:
        return self._without_loading_guard("update_attn_implementation", config)

    def update_tp_plan(self, config: Any) -> Any:
        return self._without_loading_guard("update_tp_plan", config)

    def update_ep_plan(self, config: Any) -> Any:
        return self._without_loading_guard("update_ep_plan", config)

    def _without_loading_guard(self, hook: str, config: Any) -> Any:
        remove_loading_guard(config)
        parent = getattr(super(), hook, None)
        return parent(config) if parent is not None else config

    def _process_model_before_weight_loading(self, model: Any, **kwargs: Any) -> None:
        apply_layout(model)

    def _process_model_after_weight_loading(self, model: Any, **kwargs: Any) -> Any:
        # Loaded tensors sit at their offsets in the safetensors file; pruned sizes (say 70 channels) leave some off
        # 64-byte alignment, where CPU matmul kernels take another path and round differently (measured: logits off
        # by up to 2e-9 on a tiny pruned BERT). A copy in freshly allocated memory computes exactly what was saved.
        for param in model.parameters():
            if param.device.type == "cpu" and param.data_ptr() % 64:
                param.data = param.data.clone()
        for module in model.modules():
            if hasattr(module, "config") and hasattr(module.config, "_is_quantized"):
                module.config._is_quantized = False
        model.hf_quantizer = None
        model.config.quantization_config = {"quant_method": QUANT_METHOD}
        return model

    def is_serializable(self) -> bool:
        return True

    @property
    def is_trainable(self) -> bool:
        return True


def register() -> None:
    """Idempotent: importing the package twice (or reloading it) must not fail."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(PrunedLayoutConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(PrunedLayoutLoader)
