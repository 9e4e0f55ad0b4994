"""Checkpoints whose layers differ in size, loaded through transformers' Auto classes and remote code.

A structured-pruned model whose layers keep different numbers of heads or channels cannot be described by its
family's config. Such a checkpoint is written as a heterogeneous variant of the family (`model_type`
`"pruned_<family>"`, e.g. `"pruned_llama"`) whose `config.json` holds the family's own fields (the unpruned sizes)
plus `per_layer_config`, transformers' schema of per-layer overrides (see `remote/optimum_prune_layers.py`).

Two documented extension points load it, and neither takes the `quantization_config` slot:

- **remote code**: the checkpoint ships `configuration_optimum_prune.py`, `modeling_optimum_prune.py` and
  `optimum_prune_layers.py`, named by `config.json`'s `auto_map`, so
  `AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)` works with transformers alone;
- **Auto registration**: `import optimum_prune` registers the same classes with `AutoConfig` and the
  `AutoModelFor*` classes, so with the plugin imported no `trust_remote_code` is needed.

So quantizers apply at load (`quantization_config=QuantoConfig(...)`, `TorchAoConfig(...)`), and a model quantized in
memory saves with `save_pretrained` and reloads at its pruned sizes.

Families whose layers cannot be rebuilt from per-layer config values (BERT derives the head size from
`hidden_size / num_attention_heads`, OPT and GPT-NeoX too) keep the older format: `config.pruning` read by the
plugin's loader through `quantization_config = {"quant_method": "optimum_prune"}`. `convert_to_heterogeneous` checks
every parameter shape of a rebuilt model before choosing the new format.
"""

from __future__ import annotations

import functools
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .remote import optimum_prune_layers as shipped
from .remote.optimum_prune_layers import ADDED_BIASES_KEY, BASE_MODEL_TYPE_KEY, PrunedConfigMixin, PrunedModelMixin

__all__ = [
    "PRUNED_PREFIX",
    "QuantizedInMemoryError",
    "check_serializable",
    "base_model_type",
    "convert_to_heterogeneous",
    "is_heterogeneous",
    "register_auto_classes",
    "write_remote_code",
]

PRUNED_PREFIX = "pruned_"
REMOTE_LAYERS_FILE = "optimum_prune_layers.py"
REMOTE_CONFIG_FILE = "configuration_optimum_prune.py"
REMOTE_MODELING_FILE = "modeling_optimum_prune.py"
#: The transformers Auto classes a heterogeneous checkpoint is registered with (where the family has a class).
AUTO_CLASSES = (
    "AutoModel",
    "AutoModelForCausalLM",
    "AutoModelForSequenceClassification",
    "AutoModelForQuestionAnswering",
    "AutoModelForTokenClassification",
    "AutoModelForMaskedLM",
)
#: Families whose layers are rebuilt from per-layer config values (every other family keeps the older format).
HETEROGENEOUS_FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
    "mixtral",
    "qwen2_moe",
    "qwen3_moe",
    "mamba",
    "falcon_mamba",
)


def base_model_type(model_type: str | None) -> str | None:
    """The family of a (possibly heterogeneous) `model_type`: "pruned_llama" -> "llama"."""
    if (
        model_type
        and model_type.startswith(PRUNED_PREFIX)
        and model_type[len(PRUNED_PREFIX) :] in HETEROGENEOUS_FAMILIES
    ):
        return model_type[len(PRUNED_PREFIX) :]
    return model_type


def is_heterogeneous(config: Any) -> bool:
    return isinstance(config, PrunedConfigMixin)


def _config_stem(name: str) -> str:
    """ "LlamaConfig" -> "Llama": the stem the heterogeneous classes are named after."""
    return name.removesuffix("Config")


@functools.cache
def _family_config_class(family: str) -> type:
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    return CONFIG_MAPPING[family]


def _family_model_class_names(family: str) -> dict[str, str]:
    """Auto class name -> the family's transformers class name, for the Auto classes the family has."""
    from transformers.models.auto import modeling_auto

    tables = {
        "AutoModel": modeling_auto.MODEL_MAPPING_NAMES,
        "AutoModelForCausalLM": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        "AutoModelForSequenceClassification": modeling_auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
        "AutoModelForQuestionAnswering": modeling_auto.MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES,
        "AutoModelForTokenClassification": modeling_auto.MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
        "AutoModelForMaskedLM": modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    }
    names = {}
    for auto_name in AUTO_CLASSES:
        name = tables[auto_name].get(family)
        if isinstance(name, (tuple, list)):
            name = name[0]
        if name:
            names[auto_name] = name
    return names


class QuantizedInMemoryError(ValueError):
    """The model holds weights quantized in memory that `save_pretrained` would not store."""


def check_serializable(model: nn.Module) -> None:
    """Refuse to save a model quantized in memory with optimum-quanto (`quantize` + `freeze`).

    transformers writes such a model without error, but its weights under names (`weight._data`, `weight._scale`)
    that no reload reads, so every quantized weight would come back randomly initialised. Quantizing at load
    (`quantization_config=QuantoConfig(...)`) goes through transformers' quantizer, which refuses the save itself.

    Raises:
        QuantizedInMemoryError: naming the first quantized module.
    """
    if getattr(model, "hf_quantizer", None) is not None:
        return  # transformers' own quantizer decides whether it can save
    for name, module in model.named_modules():
        if type(module).__module__.startswith("optimum.quanto"):
            raise QuantizedInMemoryError(
                f"{name or type(model).__name__} was quantized in memory with optimum-quanto, which save_pretrained "
                "cannot store (the reload would initialise those weights at random): save the pruned model before "
                "quantizing, then quantize at load with `quantization_config=QuantoConfig(...)`."
            )


class _SavesRemoteCode:
    """Plugin-side: a plain `save_pretrained` of a heterogeneous model also writes its remote code, and refuses a
    model quantized in memory (`check_serializable`)."""

    def save_pretrained(self, save_directory: Any, *args: Any, **kwargs: Any) -> Any:
        check_serializable(self)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            write_remote_code(save_directory, self.config)
        return result


@functools.cache
def pruned_config_class(family: str) -> type:
    base = _family_config_class(family)
    name = f"Pruned{_config_stem(base.__name__)}Config"

    def __post_init__(self: Any, **kwargs: Any) -> None:
        PrunedConfigMixin.__post_init__(self, **kwargs)
        # Model classes are made on first use, so importing the plugin imports no family's modeling code.
        _register_model_classes(family)

    return type(
        name, (PrunedConfigMixin, base), {"model_type": PRUNED_PREFIX + family, "__post_init__": __post_init__}
    )


@functools.cache
def pruned_model_class(family: str, class_name: str) -> type:
    import transformers

    base = getattr(transformers, class_name)
    return type(
        f"Pruned{class_name}",
        (_SavesRemoteCode, PrunedModelMixin, base),
        {"config_class": pruned_config_class(family), "__module__": __name__},
    )


@functools.cache
def _register_model_classes(family: str) -> None:
    import transformers

    config_class = pruned_config_class(family)
    for auto_name, class_name in _family_model_class_names(family).items():
        getattr(transformers, auto_name).register(config_class, pruned_model_class(family, class_name), exist_ok=True)


class _LazyConfigClasses(dict):
    """`AutoConfig`'s table of registered configs, with the heterogeneous families' entries made on first lookup.

    Registration runs while transformers is still importing its Auto machinery, where importing a family's config
    module is not yet possible; so the classes are made when a checkpoint first names them.
    """

    def __init__(self, existing: dict, families: tuple[str, ...]) -> None:
        super().__init__(existing)
        self._pending: dict[str, str] = {}
        self._pending = {PRUNED_PREFIX + family: family for family in families if PRUNED_PREFIX + family not in self}

    def _resolve(self, key: str) -> None:
        family = self._pending.pop(key, None)
        if family is not None:
            try:
                super().__setitem__(key, pruned_config_class(family))
            except (KeyError, AttributeError):
                pass  # a transformers release without this family

    def _resolve_all(self) -> None:
        for key in list(self._pending):
            self._resolve(key)

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key) or key in self._pending

    def __getitem__(self, key: str) -> Any:
        self._resolve(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        return self[key] if key in self else default

    def keys(self) -> Any:
        self._resolve_all()
        return super().keys()

    def values(self) -> Any:
        self._resolve_all()
        return super().values()

    def items(self) -> Any:
        self._resolve_all()
        return super().items()

    def __iter__(self) -> Any:
        self._resolve_all()
        return super().__iter__()

    def __len__(self) -> int:
        return super().__len__() + len(self._pending)


def register_auto_classes() -> None:
    """Register every heterogeneous family's config with `AutoConfig` (made on first lookup; model classes follow
    when a config is first built), so `AutoModelFor*.from_pretrained` needs no `trust_remote_code`."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if not isinstance(CONFIG_MAPPING._extra_content, _LazyConfigClasses):
        CONFIG_MAPPING._extra_content = _LazyConfigClasses(CONFIG_MAPPING._extra_content, HETEROGENEOUS_FAMILIES)


# ---- writing --------------------------------------------------------------------------------------------------
def _remote_sources(family: str, class_names: dict[str, str]) -> tuple[str, str]:
    config_base = _family_config_class(family).__name__
    config_name = f"Pruned{_config_stem(config_base)}Config"
    configuration = (
        '"""Generated by optimum-prune: the config of a heterogeneous (structured-pruned) '
        f'{family} checkpoint; see optimum_prune_layers.py."""\n\n'
        f"from transformers import {config_base}\n\n"
        "from .optimum_prune_layers import PrunedConfigMixin\n\n\n"
        f"class {config_name}(PrunedConfigMixin, {config_base}):\n"
        f'    model_type = "{PRUNED_PREFIX}{family}"\n'
    )
    imports = ", ".join(sorted(set(class_names.values())))
    classes = "".join(
        f"\n\nclass Pruned{name}(PrunedModelMixin, {name}):\n    config_class = {config_name}\n"
        for name in sorted(set(class_names.values()))
    )
    modeling = (
        '"""Generated by optimum-prune: model classes of a heterogeneous (structured-pruned) '
        f'{family} checkpoint; see optimum_prune_layers.py."""\n\n'
        f"from transformers import {imports}\n\n"
        f"from .configuration_optimum_prune import {config_name}\n"
        "from .optimum_prune_layers import PrunedModelMixin\n" + classes
    )
    return configuration, modeling


def auto_map(family: str) -> dict[str, str]:
    config_name = f"Pruned{_config_stem(_family_config_class(family).__name__)}Config"
    mapping = {"AutoConfig": f"{REMOTE_CONFIG_FILE[:-3]}.{config_name}"}
    for auto_name, class_name in _family_model_class_names(family).items():
        mapping[auto_name] = f"{REMOTE_MODELING_FILE[:-3]}.Pruned{class_name}"
    return mapping


def write_remote_code(folder: str | Path, config: Any) -> bool:
    """Write the remote-code files a heterogeneous checkpoint's `auto_map` names; False for other configs."""
    if not is_heterogeneous(config):
        return False
    family = base_model_type(config.model_type)
    folder = Path(folder)
    configuration, modeling = _remote_sources(family, _family_model_class_names(family))
    shutil.copyfile(shipped.__file__, folder / REMOTE_LAYERS_FILE)
    (folder / REMOTE_CONFIG_FILE).write_text(configuration, encoding="utf-8")
    (folder / REMOTE_MODELING_FILE).write_text(modeling, encoding="utf-8")
    return True


# ---- converting an in-memory pruned model ---------------------------------------------------------------------
def _overrides(config: Any, descriptions: list[dict[str, Any]]) -> tuple[dict[int, dict], dict[int, list[str]]]:
    overrides: dict[int, dict[str, Any]] = {}
    biases: dict[int, list[str]] = {}
    for index, description in enumerate(descriptions):
        changed = {
            key: value
            for key, value in description.items()
            if key != "added_biases" and getattr(config, key, None) != value
        }
        if changed:
            overrides[index] = changed
        if description.get("added_biases"):
            biases[index] = list(description["added_biases"])
    return overrides, biases


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in model.state_dict().items()}


def convert_to_heterogeneous(model: nn.Module, descriptions: list[dict[str, Any]]) -> bool:
    """Give `model` the heterogeneous config and class of its family, recording `descriptions` (one per layer,
    `ArchitectureAdapter.describe_layer`) as per-layer overrides; False (model unchanged) when the family cannot be
    rebuilt that way.

    The check is exact: the model is rebuilt from the new config on the meta device and every parameter and buffer
    shape must equal the pruned model's.
    """
    config = model.config
    family = base_model_type(config.model_type)
    if family not in HETEROGENEOUS_FAMILIES or not _family_model_class_names(family):
        return False
    class_name = type(model).__name__.removeprefix("Pruned")
    if class_name not in _family_model_class_names(family).values():
        return False
    config_class = pruned_config_class(family)
    values = config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map", "quantization_config"):
        values.pop(key, None)
    if is_heterogeneous(config):  # pruned again: the overrides are recomputed from the global values
        values.pop("per_layer_config", None)
        values.pop(ADDED_BIASES_KEY, None)
    new_config = config_class(**values)
    if getattr(new_config, "head_dim", None) is None and getattr(new_config, "num_attention_heads", None):
        # Families without a head_dim field (Qwen2, Mistral's older configs) derive it from hidden_size / heads,
        # which a layer with fewer heads would get wrong: state the unpruned head size once, for every layer.
        new_config.head_dim = new_config.hidden_size // new_config.num_attention_heads
    overrides, biases = _overrides(new_config, descriptions)
    new_config.set_layers(overrides, biases)
    setattr(new_config, BASE_MODEL_TYPE_KEY, family)
    new_config.architectures = [f"Pruned{class_name}"]
    new_config.auto_map = auto_map(family)
    for attribute in ("_attn_implementation_internal", "_experts_implementation_internal"):
        if attribute in config.__dict__:
            new_config.__dict__[attribute] = config.__dict__[attribute]
    new_class = pruned_model_class(family, class_name)
    with torch.device("meta"):
        try:
            rebuilt = new_class(new_config)
        except Exception:  # noqa: BLE001 - any failure to build means this family cannot use the format
            return False
    if _shapes(rebuilt) != _shapes(model):
        return False
    old_config = config
    for module in model.modules():
        if getattr(module, "config", None) is old_config:
            module.config = new_config
    model.__class__ = new_class
    return True
