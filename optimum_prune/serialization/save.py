"""Saving a pruned checkpoint all at once or not at all."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from ..configuration import CONFIG_NAME, PruningConfig
from .layout import write_loading_guard


def save_pruned_checkpoint(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    tokenizer: Any | None = None,
    pruning_config: PruningConfig | None = None,
    model_card: Any | None = None,
) -> Path:
    """Write the model, tokenizer, `pruning_config.json` and README.md into `save_directory`.

    Files are written to a temporary sibling folder first; only when all of them exist are they moved into
    `save_directory`, so an error (a full disk, a bad tokenizer) leaves the target as it was.
    """
    target = Path(save_directory)
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"Cannot save to {str(target)!r}: it exists and is not a folder.")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        write_loading_guard(staging)
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if pruning_config is not None:
            pruning_config.to_json_file(staging / CONFIG_NAME)
        if model_card is not None:
            model_card.save(staging / "README.md")
        if not target.exists():
            os.replace(staging, target)
        else:
            for entry in staging.iterdir():
                destination = target / entry.name
                if destination.is_dir() and not destination.is_symlink():
                    shutil.rmtree(destination)
                os.replace(entry, destination)
            staging.rmdir()
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
