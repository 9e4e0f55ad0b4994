"""optimum_prune: retraining-free pruning for Hugging Face Transformers.

Importing the package registers the loader that lets `AutoModelFor*.from_pretrained` rebuild pruned checkpoints
whose layers have different sizes.

The import itself is light (no torch, no transformers), so that the `optimum-prune` command answers `--help` and
bad arguments at once: the public names below are loaded on first use (PEP 562), and the loader is registered the
moment transformers' quantizer registry exists, which is before any `from_pretrained` can read a checkpoint (at once
if transformers has already loaded it, else right after it does; see `_loader_hook`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._loader_hook import register_when_transformers_loads as _register_when_transformers_loads

__version__ = "0.1.0"

# Public name -> the submodule that defines it.
_LAZY = {
    "ADAPTERS": ".architectures",
    "UnsupportedArchitectureError": ".architectures",
    "get_adapter": ".architectures",
    "PruningConfig": ".configuration",
    "StructuredConfig": ".configuration",
    "DepthConfig": ".configuration",
    "PruneNetConfig": ".configuration",
    "SparsityConfig": ".configuration",
    "HubUnreachableError": ".offline",
    "BasePruner": ".pruners",
    "PrunerForCausalLM": ".pruners",
    "PrunerForQuestionAnswering": ".pruners",
    "PrunerForSequenceClassification": ".pruners",
}

__all__ = [
    "ADAPTERS",
    "BasePruner",
    "DepthConfig",
    "HubUnreachableError",
    "PrunerForCausalLM",
    "PrunerForQuestionAnswering",
    "PrunerForSequenceClassification",
    "PruneNetConfig",
    "PruningConfig",
    "SparsityConfig",
    "StructuredConfig",
    "UnsupportedArchitectureError",
    "get_adapter",
]

if TYPE_CHECKING:
    from .architectures import ADAPTERS, UnsupportedArchitectureError, get_adapter
    from .configuration import DepthConfig, PruneNetConfig, PruningConfig, SparsityConfig, StructuredConfig
    from .offline import HubUnreachableError
    from .pruners import BasePruner, PrunerForCausalLM, PrunerForQuestionAnswering, PrunerForSequenceClassification


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value  # later lookups skip this function
        return value
    try:  # `optimum_prune.sparsity` and the like, as an eager package would have them after `import optimum_prune`
        return importlib.import_module(f".{name}", __name__)
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


_register_when_transformers_loads()
