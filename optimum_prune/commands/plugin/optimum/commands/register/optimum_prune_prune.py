"""Registers `optimum-cli prune` with optimum-cli (installed as `optimum.commands.register.optimum_prune_prune`).

optimum-cli imports every module of the `optimum.commands.register` namespace package when it starts, for every one
of its commands, and registers what their `REGISTER_COMMANDS` lists. This file lives in optimum_prune's source tree;
pyproject.toml maps its folder onto that namespace (see the comment on `[tool.setuptools.packages.find]`).

`import optimum_prune.commands.prune` would first run `optimum_prune/__init__.py`. That is light now (its names load
lazily), but it also installs the hook that registers the pruned-checkpoint loader with transformers, which has no
business in every optimum-cli process. So the command module, which itself imports only the standard library and
optimum's CLI base, is loaded from its file under its own name without running the package `__init__`; the package
is imported for real when `prune` runs. A failure here must not take the other optimum-cli commands down, so
it only drops `prune`, with a warning.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from pathlib import Path

_COMMAND_MODULE = "optimum_prune.commands.prune"


def _prune_command() -> type:
    if _COMMAND_MODULE in sys.modules or "optimum_prune" in sys.modules:
        return importlib.import_module(_COMMAND_MODULE).PruneCommand
    # find_spec locates a top-level package without executing it.
    package = importlib.util.find_spec("optimum_prune")
    if package is None or not package.submodule_search_locations:
        raise ImportError("the optimum_prune package is not installed")
    path = Path(list(package.submodule_search_locations)[0]) / "commands" / "prune.py"
    spec = importlib.util.spec_from_file_location(_COMMAND_MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_COMMAND_MODULE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_COMMAND_MODULE]
        raise
    return module.PruneCommand


try:
    REGISTER_COMMANDS = [_prune_command()]
except Exception as err:  # any failure: keep the other optimum-cli commands usable
    warnings.warn(f"optimum-prune: `optimum-cli prune` is unavailable ({err}).", stacklevel=1)
    REGISTER_COMMANDS = []
