"""Finding the repeated blocks of any model, without an adapter.

The blocks are the classes a model names in `_no_split_modules`, which accelerate uses as the units a device map
never splits and llm-compressor uses as its default sequential targets. Some models leave that list empty
(DistilBERT, ELECTRA, DeBERTa-v2 in transformers 5); for them the blocks are the entries of the `nn.ModuleList` that
holds most of the parameters. `PruningConfig.sequential_targets` overrides both: class names, or module-name
regular expressions written `"re:<regex>"` (llm-compressor's convention), matched against the full module name.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

__all__ = ["BlockDiscoveryError", "find_blocks"]

REGEX_PREFIX = "re:"


class BlockDiscoveryError(ValueError):
    """No repeated blocks could be found, or the ones found do not form one chain."""


def _matches(name: str, module: nn.Module, targets: Iterable[str]) -> bool:
    for target in targets:
        if target.startswith(REGEX_PREFIX):
            if re.fullmatch(target[len(REGEX_PREFIX) :], name):
                return True
        elif type(module).__name__ == target:
            return True
    return False


def _outermost(named: list[tuple[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """Drop matches nested inside another match (FalconMamba names both its block and its mixer)."""
    kept: list[tuple[str, nn.Module]] = []
    for name, module in named:
        if not any(name.startswith(f"{outer}.") for outer, _ in kept):
            kept.append((name, module))
    return kept


def _parent_name(name: str) -> str:
    return name.rpartition(".")[0]


def _largest_module_list(model: nn.Module) -> list[tuple[str, nn.Module]]:
    best: list[tuple[str, nn.Module]] = []
    best_size = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best_size = size
            best = [(f"{name}.{index}" if name else str(index), child) for index, child in enumerate(module)]
    return best


def find_blocks(model: nn.Module, sequential_targets: list[str] | None = None) -> list[tuple[str, nn.Module]]:
    """The repeated blocks of `model` as `(module name, module)` pairs, in execution order.

    Args:
        model: any `PreTrainedModel` (or `nn.Module` with `_no_split_modules`).
        sequential_targets: class names or `"re:<regex>"` module-name patterns that name the blocks; None uses the
            model's `_no_split_modules`, keeping only those that are entries of a module list (embeddings, which
            some models also name there, are not repeated), and falls back to the largest module list.

    The blocks must form one chain (each block's output is the next one's input), as the layers of every decoder,
    encoder and state-space model in transformers do; they are returned in the order of their module list, which is
    the order the model's forward runs them (calibration checks it: `layerwise.capture_block_arguments`). Matches
    nested inside another match are dropped.

    Raises:
        BlockDiscoveryError: nothing matches, or the default matches lie in more than one module list (an
            encoder-decoder model, a vision tower beside a text model): pass `sequential_targets` then.
    """
    named = list(model.named_modules())
    if sequential_targets:
        blocks = _outermost([(n, m) for n, m in named if n and _matches(n, m, sequential_targets)])
        if not blocks:
            raise BlockDiscoveryError(
                f"sequential_targets {sequential_targets} match no module of {type(model).__name__}; use class "
                "names (e.g. 'LlamaDecoderLayer') or 're:<regex>' patterns of module names (e.g. 're:model\\.layers\\.\\d+')."
            )
        return blocks
    classes = set(getattr(model, "_no_split_modules", None) or ())
    lists = {n: m for n, m in named if isinstance(m, (nn.ModuleList, nn.Sequential))}
    blocks = _outermost([(n, m) for n, m in named if type(m).__name__ in classes and _parent_name(n) in lists])
    if not blocks:
        blocks = _largest_module_list(model)
    if not blocks:
        raise BlockDiscoveryError(
            f"Could not find the repeated blocks of {type(model).__name__}: it names none in _no_split_modules and "
            "has no module list. Pass sequential_targets (class names or 're:<regex>' module names)."
        )
    parents = sorted({_parent_name(n) for n, _ in blocks})
    if len(parents) > 1:
        raise BlockDiscoveryError(
            f"{type(model).__name__} has blocks in {len(parents)} module lists ({', '.join(parents)}); they do not "
            "form one chain. Pass sequential_targets to choose, e.g. ['re:" + re.escape(parents[0]) + "\\.\\d+']."
        )
    return blocks
