"""Registers the pruned-checkpoint loader with transformers as soon as transformers' quantizer registry is loaded.

`import optimum_prune` must register the loader (`serialization.quantizer.register`), yet stay free of torch and
transformers so that the `optimum-prune` command starts at once. The registry lives in `transformers.quantizers.auto`,
which every `from_pretrained` imports before it reads a checkpoint's `quantization_config`. So: if that module is
already loaded, register now; otherwise a finder on `sys.meta_path` waits for it and registers right after it has
run, before the code that imported it continues (a post-import hook, as in PEP 369).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from typing import Any

_REGISTRY_MODULE = "transformers.quantizers.auto"


def _register() -> None:
    from .serialization.quantizer import register

    register()


class _RegisterAfterLoading(importlib.abc.MetaPathFinder):
    """Finds `transformers.quantizers.auto` through the other finders and runs `_register` after executing it."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != _REGISTRY_MODULE:
            return None
        sys.meta_path.remove(self)  # one use; also keeps find_spec below from finding this finder again
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        original = loader.exec_module

        def exec_module(module: Any) -> None:
            original(module)
            _register()

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def register_when_transformers_loads() -> None:
    """Idempotent: register now if the registry is loaded, else once it is."""
    if _REGISTRY_MODULE in sys.modules:
        _register()
        return
    if not any(isinstance(finder, _RegisterAfterLoading) for finder in sys.meta_path):
        sys.meta_path.insert(0, _RegisterAfterLoading())
