"""The per-layer sizes of a pruned model, stored in `config.json` so the checkpoint can be rebuilt."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..architectures import ArchitectureAdapter

#: config.json key of the structured pruning record.
LAYOUT_KEY = "pruning"
#: `quantization_config.quant_method` of checkpoints that only load with the plugin imported.
QUANT_METHOD = "optimum_prune"
LAYOUT_FORMAT = 1


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pruned_heads(
    adapter: ArchitectureAdapter, kept_units: list[dict[str, list[int]]], heads_before: list[int]
) -> dict:
    """Removed attention heads per layer, in transformers' `config.pruned_heads` convention."""
    removed: dict[int, list[int]] = {}
    for index, (layer, kept) in enumerate(zip(adapter.layers(), kept_units)):
        if "query_heads" in kept:  # single query heads (indices of the layer before this run)
            kept_heads = set(kept["query_heads"])
        elif "attention_heads" in kept:
            per_unit = adapter.heads_per_unit(layer)
            kept_heads = {unit * per_unit + r for unit in kept["attention_heads"] for r in range(per_unit)}
        else:
            continue
        gone = sorted(set(range(heads_before[index])) - kept_heads)
        if gone:
            removed[index] = gone
    return removed


def record_layout(
    model: nn.Module, adapter: ArchitectureAdapter, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write the layer sizes into `model.config` and choose how the checkpoint reloads.

    When plain transformers can express the sizes (e.g. uniform LLaMA pruning), the ordinary config fields are
    updated and no plugin is needed to load. Otherwise `quantization_config = {"quant_method": "optimum_prune"}`
    routes `from_pretrained` through the plugin's loader, which resizes each layer before the weights load.
    """
    config = model.config
    descriptions = [adapter.describe_layer(layer) for layer in adapter.layers()]
    update = adapter.vanilla_config_update(descriptions)
    if update is not None:
        for key, value in update.items():
            setattr(config, key, value)
        descriptions = [adapter.describe_layer(layer) for layer in adapter.layers()]
        if _is_ours(getattr(config, "quantization_config", None)):
            del config.quantization_config
    else:
        config.quantization_config = {"quant_method": QUANT_METHOD}
    layout = {
        "format": LAYOUT_FORMAT,
        "requires_plugin": update is None,
        "layers": descriptions,
        **(extra or {}),
    }
    setattr(config, LAYOUT_KEY, layout)
    return layout


def _is_ours(quantization_config: Any) -> bool:
    if quantization_config is None:
        return False
    method = (
        quantization_config.get("quant_method")
        if isinstance(quantization_config, dict)
        else getattr(quantization_config, "quant_method", None)
    )
    return method == QUANT_METHOD


def apply_layout(model: nn.Module) -> None:
    """Resize a freshly built (usually meta-device) model to the sizes stored in its config."""
    from ..architectures import get_adapter

    layout = getattr(model.config, LAYOUT_KEY, None)
    if not layout or "layers" not in layout:
        raise ValueError(
            "This checkpoint's config says it was pruned by optimum_prune but has no per-layer sizes "
            f"(`{LAYOUT_KEY}.layers`); it cannot be rebuilt."
        )
    adapter = get_adapter(model)
    layers = adapter.layers()
    if len(layers) != len(layout["layers"]):
        raise ValueError(f"The checkpoint describes {len(layout['layers'])} layers but the model has {len(layers)}.")
    for layer, description in zip(layers, layout["layers"]):
        adapter.resize_layer(layer, description)
