"""Streaming calibration through a model one block at a time.

The inputs of the first block are captured once; afterwards each block is run on the stored inputs of the
previous (already pruned) block, so memory stays near one block plus the calibration activations.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


class _StopForward(Exception):
    pass


@dataclass
class BlockInput:
    """Everything one block was called with for one calibration sample."""

    hidden_states: torch.Tensor
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def no_cache(model: nn.Module) -> Iterator[None]:
    """Calibration forwards must not build KV or SSM caches."""
    config = model.config
    previous = getattr(config, "use_cache", None)
    config.use_cache = False
    try:
        yield
    finally:
        config.use_cache = previous


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, samples: list[dict[str, torch.Tensor]]
) -> list[BlockInput]:
    """Run the model up to `first_block` for every sample and keep what the block receives."""
    captured: list[BlockInput] = []
    device = next(model.parameters()).device

    def hook(_module, args, kwargs):
        kwargs = dict(kwargs)
        if args:
            hidden, args = args[0], tuple(args[1:])
        else:
            hidden = kwargs.pop("hidden_states")
        captured.append(BlockInput(hidden, args, kwargs))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with no_cache(model):
            for sample in samples:
                try:
                    model(**{k: v.to(device) for k, v in sample.items()})
                except _StopForward:
                    pass
    finally:
        handle.remove()
    if len(captured) != len(samples):
        raise RuntimeError("Calibration did not reach the first block for every sample.")
    return captured


@torch.no_grad()
def run_block(block: nn.Module, inputs: list[BlockInput], keep_outputs: bool = True) -> list[BlockInput]:
    """Run `block` on every stored input; return the outputs as the next block's inputs."""
    outputs = []
    for item in inputs:
        out = block(item.hidden_states, *item.args, **item.kwargs)
        if keep_outputs:
            hidden = out[0] if isinstance(out, (tuple, list)) else out
            outputs.append(BlockInput(hidden, item.args, item.kwargs))
    return outputs
