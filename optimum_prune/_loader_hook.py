"""Registers the pruned-checkpoint classes with transformers as soon as the registries they go into are loaded.

`import optimum_prune` must register two things, yet stay free of torch and transformers so that the
`optimum-prune` command starts at once:

- the heterogeneous configs (`serialization.heterogeneous.register_auto_classes`) with `AutoConfig`, whose registry
  is `transformers.models.auto.configuration_auto`, imported by every Auto class before it reads a `config.json`;
- the loader of older checkpoints (`serialization.quantizer.register`) with transformers' quantizer registry,
  `transformers.quantizers.auto`, which every `from_pretrained` imports before it reads a `quantization_config`.

For each: if the registry module is already loaded, register now; otherwise a finder on `sys.meta_path` waits for it
and registers right after it has run, before the code that imported it continues (a post-import hook, as in PEP 369).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from typing import Any


def _register_quantizer() -> None:
    from .serialization.quantizer import register

    register()


def _register_auto_classes() -> None:
    from .serialization.heterogeneous import register_auto_classes

    register_auto_classes()


#: Registry module -> what to register once it has run.
_REGISTRIES = {
    "transformers.quantizers.auto": _register_quantizer,
    "transformers.models.auto.configuration_auto": _register_auto_classes,
}


class _RegisterAfterLoading(importlib.abc.MetaPathFinder):
    """Finds one registry module through the other finders and runs its registration after executing it."""

    def __init__(self, module: str) -> None:
        self.module = module

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != self.module:
            return None
        sys.meta_path.remove(self)  # one use; also keeps find_spec below from finding this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)
            _REGISTRIES[fullname]()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def register_when_transformers_loads() -> None:
    """Idempotent: register now where the registry is loaded, else once it is."""
    waiting = {finder.module for finder in sys.meta_path if isinstance(finder, _RegisterAfterLoading)}
    for module, register in _REGISTRIES.items():
        if module in sys.modules:
            register()
        elif module not in waiting:
            sys.meta_path.insert(0, _RegisterAfterLoading(module))
