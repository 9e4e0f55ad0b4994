"""Per-layer sizes for transformers models, with nothing but transformers installed.

This file is copied verbatim into every checkpoint whose layers differ in size (a structured-pruned model), beside
two short generated files, `configuration_optimum_prune.py` and `modeling_optimum_prune.py`, that `config.json`'s
`auto_map` names. So `AutoModelFor*.from_pretrained(path, trust_remote_code=True)` rebuilds the model without the
optimum-prune package, and with the package imported the same classes are registered with the Auto classes, so no
`trust_remote_code` is needed. The quantization slot of the config stays free: QuantoConfig, TorchAoConfig or
BitsAndBytesConfig apply to these models as to any other.

Schema (in config.json, beside the family's own fields, which keep the unpruned model's values):

- `per_layer_config`: a sparse map from the layer index (a zero-padded string, as transformers writes it) to the
  config attributes that differ in that layer, e.g. `{"03": {"intermediate_size": 1126, "num_key_value_heads": 2,
  "num_attention_heads": 6}}`. This is transformers' own `per_layer_config` schema (`HeterogeneousConfigMixin`,
  transformers 5.25): each layer is built from the global config with its overrides applied.
- `pruned_added_biases`: a sparse map from the layer index to the projections (paths inside the layer) that carry a
  bias the family's config has no flag for (the intercept a least-squares refit folds into `o_proj` / `down_proj`).
- `pruned_base_model_type`: the family's `model_type` (`model_type` itself names this heterogeneous variant).
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import torch
from torch import nn

PER_LAYER_KEY = "per_layer_config"
ADDED_BIASES_KEY = "pruned_added_biases"
BASE_MODEL_TYPE_KEY = "pruned_base_model_type"
#: Paths of the repeated blocks inside the base model, tried in this order.
LAYER_PATHS = ("layers", "decoder.layers", "encoder.layer", "h")


def _int_keys(mapping: Any) -> dict[int, Any]:
    return {int(key): value for key, value in dict(mapping or {}).items()}


def _padded(mapping: dict[int, Any], num_layers: int) -> dict[str, Any]:
    width = len(str(max(num_layers - 1, 0)))
    return {str(index).zfill(width): mapping[index] for index in sorted(mapping)}


class PrunedConfigMixin:
    """A family's config with per-layer overrides (`per_layer_config`) and added biases (`pruned_added_biases`).

    The overrides are kept out of transformers' own heterogeneous-config handling (which, where it exists, makes the
    global sizes unreadable and is not used by the families' modeling code yet) and applied by `layer_config`.
    """

    def __post_init__(self, **kwargs: Any) -> None:
        overrides = kwargs.pop(PER_LAYER_KEY, None)
        biases = kwargs.pop(ADDED_BIASES_KEY, None)
        super().__post_init__(**kwargs)
        self.__dict__["_layer_overrides"] = {
            index: dict(values) for index, values in _int_keys(overrides).items() if values
        }
        self.__dict__["_added_biases"] = {index: list(names) for index, names in _int_keys(biases).items() if names}

    @property
    def layer_overrides(self) -> dict[int, dict[str, Any]]:
        """Layer index -> the config attributes that differ in that layer."""
        return self.__dict__.setdefault("_layer_overrides", {})

    @property
    def added_biases(self) -> dict[int, list[str]]:
        """Layer index -> projections (paths inside the layer) that carry a bias the config has no flag for."""
        return self.__dict__.setdefault("_added_biases", {})

    def set_layers(self, overrides: dict[int, dict[str, Any]], added_biases: dict[int, list[str]]) -> None:
        self.__dict__["_layer_overrides"] = {int(i): dict(v) for i, v in overrides.items() if v}
        self.__dict__["_added_biases"] = {int(i): list(v) for i, v in added_biases.items() if v}

    def layer_config(self, index: int) -> Any:
        """The config layer `index` is built from: a copy of this config with that layer's overrides applied."""
        layer = copy.copy(self)
        for key, value in self.layer_overrides.get(index, {}).items():
            object.__setattr__(layer, key, value)
        return layer

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        for key in ("_layer_overrides", "_added_biases", PER_LAYER_KEY, ADDED_BIASES_KEY):
            output.pop(key, None)
        layers = int(getattr(self, "num_hidden_layers", 0) or 0)
        output[PER_LAYER_KEY] = _padded(self.layer_overrides, layers)
        output[ADDED_BIASES_KEY] = _padded(self.added_biases, layers)
        return output

    def to_diff_dict(self) -> dict[str, Any]:
        output = super().to_diff_dict()
        for key in ("_layer_overrides", "_added_biases"):
            output.pop(key, None)
        layers = int(getattr(self, "num_hidden_layers", 0) or 0)
        output[PER_LAYER_KEY] = _padded(self.layer_overrides, layers)
        output[ADDED_BIASES_KEY] = _padded(self.added_biases, layers)
        return output

    def validate_architecture(self) -> None:
        # The family's checks (e.g. hidden_size % num_attention_heads == 0) hold for the unpruned global values; a
        # layer with fewer heads keeps the head size, which `head_dim` states explicitly.
        return None


def layer_list(base_model: nn.Module) -> nn.ModuleList:
    for path in LAYER_PATHS:
        try:
            layers = base_model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(layers, nn.ModuleList):
            return layers
    raise ValueError(f"{type(base_model).__name__} has none of the layer lists {LAYER_PATHS}.")


def _build_layer(layer_class: type, config: Any, index: int) -> nn.Module:
    parameters = inspect.signature(layer_class.__init__).parameters
    if "layer_idx" in parameters:
        return layer_class(config, layer_idx=index)
    if "layer_id" in parameters:
        return layer_class(config, layer_id=index)
    return layer_class(config)


def add_zero_bias(linear: nn.Module) -> None:
    if getattr(linear, "bias", None) is None:
        weight = linear.weight
        linear.bias = nn.Parameter(torch.zeros(weight.shape[0], dtype=weight.dtype, device=weight.device))


def _check_overrides(index: int, overrides: Any, num_layers: int) -> None:
    """One line naming the layer and the key for a damaged (hand-edited, truncated) `per_layer_config` entry."""
    where = f"config.json `{PER_LAYER_KEY}` layer {index}"
    if not 0 <= index < num_layers:
        raise ValueError(f"{where}: the model has {num_layers} layers.")
    for key, value in overrides.items():
        if isinstance(value, int) and not isinstance(value, bool) and value <= 0:
            raise ValueError(f"{where}: {key} is {value}; a layer size must be a positive integer.")


def rebuild_layers(model: nn.Module, config: Any) -> None:
    """Replace each layer that has overrides by one built from its own config; add the recorded biases."""
    if not config.layer_overrides and not config.added_biases:
        return
    layers = layer_list(model.base_model)
    for index, overrides in config.layer_overrides.items():
        _check_overrides(index, overrides, len(layers))
        old = layers[index]
        reference = next(old.parameters(), None)
        new = _build_layer(type(old), config.layer_config(index), index)
        if reference is not None:
            new.to(dtype=reference.dtype)
            if reference.device.type != "meta":
                new.to(device=reference.device)
        init = getattr(model, "_init_weights", None)
        if init is not None and (reference is None or reference.device.type != "meta"):
            new.apply(init)
        layers[index] = new
    for index, names in config.added_biases.items():
        for name in names:
            add_zero_bias(layers[index].get_submodule(name))


class PrunedModelMixin:
    """A family's model class whose layers take their sizes from `PrunedConfigMixin`'s per-layer overrides."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        rebuild_layers(self, config)


# ---- vLLM's heterogeneous LLaMA layout (DeciLM, `model_type: "nemotron-nas"`) ------------------------------------
class _Fields:
    """A block config entry read by attribute (`block.attention.n_heads_in_group`), as vLLM reads it."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)

    def to_dict(self) -> dict[str, Any]:
        return {key: value.to_dict() if isinstance(value, _Fields) else value for key, value in vars(self).items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({vars(self)})"


def _fields(entry: Any) -> _Fields:
    if isinstance(entry, _Fields):
        return entry
    return _Fields(**{key: _fields(value) if isinstance(value, dict) else value for key, value in dict(entry).items()})


def _ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    # The DeciLM convention (vLLM's nemotron_nas.py, llama.cpp's DeciModel): 2/3 of the multiple, rounded up to 256.
    size = int(2 * ffn_mult * hidden_size / 3)
    return size if size % 256 == 0 else size + 256 - size % 256


class DeciLMConfigMixin(PrunedConfigMixin):
    """A LLaMA config whose layers are described by DeciLM's `block_configs`, the heterogeneous layout vLLM serves
    (`DeciLMForCausalLM`): per layer, `attention.n_heads_in_group` (KV heads = num_attention_heads / it; the query
    heads are the same in every layer) and `ffn.intermediate_size` (or `ffn.ffn_mult`). The per-layer overrides that
    build the transformers model are derived from the blocks; sub-blocks removed as `no_op` are not supported here.
    """

    def __post_init__(self, **kwargs: Any) -> None:
        blocks = kwargs.pop("block_configs", None) or []
        kwargs.pop(PER_LAYER_KEY, None)
        super().__post_init__(**kwargs)
        self.__dict__["block_configs"] = [_fields(block) for block in blocks]
        overrides: dict[int, dict[str, Any]] = {}
        for index, block in enumerate(self.block_configs):
            if getattr(block.attention, "no_op", False) or getattr(block.ffn, "no_op", False):
                raise ValueError(f"block_configs[{index}] removes a sub-block (no_op), which this code cannot build.")
            layer: dict[str, Any] = {}
            kv_heads = self.num_attention_heads // block.attention.n_heads_in_group
            if kv_heads != self.num_key_value_heads:
                layer["num_key_value_heads"] = kv_heads
            if hasattr(block.ffn, "intermediate_size"):
                width = block.ffn.intermediate_size
            else:
                width = _ffn_mult_to_intermediate_size(block.ffn.ffn_mult, self.hidden_size)
            if width != self.intermediate_size:
                layer["intermediate_size"] = width
            if layer:
                overrides[index] = layer
        self.set_layers(overrides, self.added_biases)

    def to_dict(self) -> dict[str, Any]:
        output = super().to_dict()
        output.pop(PER_LAYER_KEY, None)
        output["block_configs"] = [block.to_dict() for block in self.block_configs]
        return output

    def to_diff_dict(self) -> dict[str, Any]:
        output = super().to_diff_dict()
        output.pop(PER_LAYER_KEY, None)
        output["block_configs"] = [block.to_dict() for block in self.block_configs]
        return output
