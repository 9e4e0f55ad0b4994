"""The per-layer sizes of a pruned model, stored in `config.json` so the checkpoint can be rebuilt."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..architectures import ArchitectureAdapter

#: config.json key of the pruning record (structured: `record_layout`; sparsity: `record_sparsity`).
LAYOUT_KEY = "pruning"
#: `quantization_config.quant_method` of checkpoints that only load with the plugin imported.
QUANT_METHOD = "optimum_prune"
LAYOUT_FORMAT = 1
#: What a process without the plugin is told when it loads a checkpoint only the plugin can rebuild.
PLUGIN_REQUIRED_MESSAGE = (
    "this checkpoint was pruned by optimum-prune to layer sizes or biases that plain transformers cannot build from "
    "config.json. Install the plugin (`pip install optimum-prune`) and run `import optimum_prune` before "
    "`from_pretrained`."
)
#: config.json key that carries `PLUGIN_REQUIRED_MESSAGE` (see `write_loading_guard`).
LOADING_GUARD_KEY = "transformers_weights"


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

    Three ways, first that fits (`layout["loader"]` says which):

    - "transformers": the family's own config fields express the sizes (e.g. uniform LLaMA pruning); they are
      updated, and plain transformers loads the checkpoint.
    - "per_layer_config": the model becomes its family's heterogeneous variant (`serialization.heterogeneous`):
      per-layer overrides in `config.json`, loaded through remote code shipped in the checkpoint or the Auto classes
      the plugin registers; `quantization_config` stays free for quantizers.
    - "optimum_prune" (families whose layers cannot be rebuilt from config values, and depth pruning's linear
      bridges): `quantization_config = {"quant_method": "optimum_prune"}` routes `from_pretrained` through the
      plugin's loader, which resizes each layer before the weights load.
    """
    from .heterogeneous import convert_to_heterogeneous, is_heterogeneous

    descriptions = _describe(adapter)
    # Depth pruning's linear bridges are not decoder blocks: only the plugin's loader can rebuild them.
    bridged = any(BRIDGE_KEY in d for d in descriptions)
    update = None if bridged or is_heterogeneous(model.config) else adapter.vanilla_config_update(descriptions)
    if update is not None:
        for key, value in update.items():
            setattr(model.config, key, value)
        descriptions = _describe(adapter)
        loader = "transformers"
    elif not bridged and convert_to_heterogeneous(model, descriptions):
        loader = "per_layer_config"
    else:
        model.config.quantization_config = {"quant_method": QUANT_METHOD}
        loader = "optimum_prune"
    config = model.config
    if loader != "optimum_prune" and _is_ours(getattr(config, "quantization_config", None)):
        del config.quantization_config
    layout = {
        "format": LAYOUT_FORMAT,
        "requires_plugin": loader == "optimum_prune",
        "loader": loader,
        "layers": descriptions,
        **(extra or {}),
    }
    setattr(config, LAYOUT_KEY, layout)
    return layout


def record_sparsity(model: nn.Module, fields: dict[str, Any]) -> dict[str, Any]:
    """Write the record of an unstructured / N:M run (`fields`, see `unstructured.prune_unstructured`) into
    `model.config` and return it.

    Dense safetensors hold the zeros; the record tells readers (and the model card) what was done. A structured run
    before this one left the per-layer sizes its checkpoint is rebuilt from: they stay, and the rest of that earlier
    record moves under `"structured"`.
    """
    record = {"format": LAYOUT_FORMAT, **fields}
    earlier = getattr(model.config, LAYOUT_KEY, None)
    if isinstance(earlier, dict) and "layers" in earlier:
        record = {**record, **{key: earlier[key] for key in ("layers", "requires_plugin", "loader") if key in earlier}}
        record["structured"] = {key: value for key, value in earlier.items() if key != "layers"}
    setattr(model.config, LAYOUT_KEY, record)
    return record


#: Layer-description key of a `depth.LinearBridge` (the original blocks it replaces).
BRIDGE_KEY = "linear_bridge"


def _describe(adapter: ArchitectureAdapter) -> list[dict[str, Any]]:
    from ..depth import LinearBridge

    return [
        {BRIDGE_KEY: layer.replaced} if isinstance(layer, LinearBridge) else adapter.describe_layer(layer)
        for layer in adapter.layers()
    ]


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
    for index, (layer, description) in enumerate(zip(layers, layout["layers"])):
        if BRIDGE_KEY in description:
            from ..depth import LinearBridge

            reference = next(p for p in layer.parameters())
            bridge = LinearBridge(model.config.hidden_size, replaced=description[BRIDGE_KEY])
            layers[index] = bridge.to(device=reference.device, dtype=reference.dtype)
            continue
        _check_description(index, description)
        try:
            adapter.resize_layer(layer, description)
        except KeyError as err:
            raise ValueError(
                f"config.json `{LAYOUT_KEY}.layers[{index}]` has no {err.args[0]!r}, which this layer's size needs: "
                "the checkpoint's config was edited or damaged."
            ) from err


def _check_description(index: int, description: Any) -> None:
    """One line naming the layer and the key for a damaged (hand-edited, truncated) layer description."""
    where = f"config.json `{LAYOUT_KEY}.layers[{index}]`"
    if not isinstance(description, dict) or not description:
        raise ValueError(f"{where} is empty ({description!r}): the checkpoint's config was edited or damaged.")
    for key, value in description.items():
        if key in ("added_biases", BRIDGE_KEY):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{where}.{key} is {value!r}; a layer size must be a non-negative integer.")


def write_loading_guard(folder: str | os.PathLike) -> bool:
    """Make a plain-transformers load of a plugin-only checkpoint fail early, with an error that names the plugin.

    Without the plugin, transformers skips the unknown `quant_method` with a warning, builds the unpruned model and
    fails later on a table of size mismatches that never mentions `optimum_prune`. Nothing in a checkpoint can run
    code there, so the guard uses the one `config.json` field that transformers validates, with its value in the
    error, after the quantizer is chosen and before anything is built: `transformers_weights` (the name of the
    weights file) must end in `.safetensors`. It holds `PLUGIN_REQUIRED_MESSAGE` instead, and
    `from_pretrained` raises `ValueError("The transformers file in the config seems to be incorrect: ...: <message>")`
    (the same check in transformers 5.0 and 5.24). With the plugin imported, `PrunedLayoutLoader` removes the field before the weights are
    looked up, so the weights load from `model.safetensors` as usual; `config.save_pretrained` drops the field
    itself, so it is written here, after the model is saved. Returns whether the guard was written.
    """
    path = Path(folder) / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if not _is_ours(config.get("quantization_config")):
        return False
    config[LOADING_GUARD_KEY] = PLUGIN_REQUIRED_MESSAGE
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return True


def remove_loading_guard(config: Any) -> None:
    """Undo `write_loading_guard` on a loaded config (plugin side), leaving any real weights file name alone."""
    if getattr(config, LOADING_GUARD_KEY, None) == PLUGIN_REQUIRED_MESSAGE:
        delattr(config, LOADING_GUARD_KEY)
