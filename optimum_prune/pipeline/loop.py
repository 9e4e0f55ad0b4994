"""One block-sequential calibration loop for every method, as llm-compressor's sequential pipeline streams blocks for
all of its modifiers.

A method says what it does with one block (a `BlockMethod`); `run_blocks` streams the calibration data through the
blocks for it, one block at a time:

1. the first block's inputs are captured once (`first_inputs`: a read-only pass earlier in the run, e.g. the scoring
   pass of a global allocation, may have captured them already) with each block's own call arguments where blocks
   differ (`block_arguments`);
2. per block, offloaded weights are materialised on the execution device (`BlockStreamer.materialized`; written back
   afterwards only for a method that changes weights) and the stored inputs get the block's own arguments;
3. an observation pass with the method's hooks (`BlockMethod.observer`), ending at the last hooked module when its
   outputs are not needed (`BlockStreamer.stopping_after`);
4. the method's step (`BlockMethod.step`), which may change the block's weights and run passes of its own
   (`Block.observe`, `Block.run`: structured pruning gathers each unit kind's statistics after the kinds before it
   were pruned; the dense stream of an error-correcting refit);
5. the next block's inputs: the observation pass's outputs when the method changes no weights, else one more pass of
   the changed block (none after the last block).

Without calibration inputs (a data-free method) every block is still materialised and handed to the step, with no
pass at all.

Inside `block_timings(listener)`, `listener` receives a `BlockTiming` (wall and CPU seconds of steps 2-5) after every
block of every `run_blocks` call: `prune()`'s time-left message and benchmarks/scale.py's per-block table use it.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from .layerwise import BlockInput, BlockStreamer, own_block_arguments, with_arguments

#: Per block, per sample: the (args, kwargs) a block is called with besides its hidden states.
BlockArguments = list[list[tuple[tuple[Any, ...], dict[str, Any]]]]


@dataclass
class Observer:
    """The hooks of an observation pass.

    `hooks`, a context manager, is entered around the pass and yields what the method's step receives (input
    statistics). `stop_at` are the modules whose entry ends a forward whose outputs are not kept
    (`layerwise.stopping_after`: the statistics are still those of full forwards).
    """

    hooks: contextlib.AbstractContextManager[Any]
    stop_at: Sequence[nn.Module] = ()


class BlockMethod:
    """What a method does with each block; `run_blocks` streams the blocks for it."""

    #: The step may change the block's weights: offloaded weights are written back, the observation pass may stop
    #: early, and the next block's inputs come from a pass of the changed block. False: one pass per block gives the
    #: observation and the next block's inputs.
    changes_weights: bool = True
    #: The step reads the block's outputs (`Block.outputs`), the last block's included (only without weight changes).
    reads_outputs: bool = False
    #: The progress bar's label.
    description: str = "Calibrating blocks"

    def observer(self, block: Block) -> Observer | None:
        """The hooks of the block's observation pass, or None for no such pass (called only with inputs)."""
        return None

    def step(self, block: Block, observed: Any) -> None:
        """The work on one block; `observed` is what the observer's hooks yielded (None without a pass)."""
        raise NotImplementedError


@dataclass
class Block:
    """One block during its turn in `run_blocks`: materialised, with its inputs given its own arguments."""

    index: int
    name: str
    module: nn.Module
    #: The calibration inputs of this block (None for a data-free run).
    inputs: Sequence[BlockInput] | None
    #: Whether this is the last block (whose outputs feed no block).
    is_last: bool
    streamer: BlockStreamer
    own_arguments: BlockArguments | None = None
    #: The block's outputs on `inputs` when the observation pass kept them (see `BlockMethod.reads_outputs`).
    outputs: Sequence[BlockInput] | None = None

    def bind(self, inputs: Sequence[BlockInput] | None) -> Sequence[BlockInput] | None:
        """Another stream of inputs (a dense copy's, a pruned one's) with this block's own arguments."""
        return with_arguments(inputs, self.own_arguments, self.index)

    def run(
        self,
        module: nn.Module | None = None,
        inputs: Sequence[BlockInput] | None = None,
        keep_outputs: bool = True,
    ) -> Sequence[BlockInput] | None:
        """Run `module` (default: the block; a copy of it) on `inputs` (default: the block's) where it computes."""
        module = self.module if module is None else module
        return self.streamer.run(module, self.inputs if inputs is None else inputs, keep_outputs=keep_outputs)

    def stopping_after(
        self, module: nn.Module, modules: Sequence[nn.Module]
    ) -> contextlib.AbstractContextManager[None]:
        """Forwards of `module` inside end once every one of `modules` was entered (`BlockStreamer.stopping_after`)."""
        return self.streamer.stopping_after(module, modules)

    def observe(self, hooks: contextlib.AbstractContextManager[Any], stop_at: Sequence[nn.Module] = ()) -> Any:
        """One pass of the block over its inputs inside `hooks`, ending at `stop_at`; what the hooks yielded.

        The hooks are registered before the stop, so they have run on the module whose entry ends the forward.
        """
        with hooks as observed, self.stopping_after(self.module, stop_at):
            self.run(keep_outputs=False)
        return observed


def block_arguments(
    streamer: BlockStreamer, blocks: Sequence[nn.Module], samples: list[dict[str, torch.Tensor]]
) -> BlockArguments | None:
    """Each block's own call arguments where blocks of different kinds (sliding-window / global attention, attention /
    Mamba) need their own masks and position embeddings, captured once from full forwards of the dense model; None
    where the first block's arguments serve every block (`layerwise.own_block_arguments`)."""
    return own_block_arguments(streamer.model, blocks, samples, streamer.offloaded)


@dataclass
class Calibration:
    """What `run_blocks` streams: the first block's inputs and the blocks' own arguments."""

    first_inputs: Sequence[BlockInput] | None
    own_arguments: BlockArguments | None

    @classmethod
    def capture(
        cls, streamer: BlockStreamer, blocks: Sequence[nn.Module], samples: list[dict[str, torch.Tensor]]
    ) -> Calibration:
        """Run the model up to the first block for every sample; find the blocks' own arguments."""
        first_inputs = streamer.capture(blocks[0], samples)
        return cls(first_inputs, block_arguments(streamer, blocks, samples))

    def head(self, count: int | None) -> Calibration:
        """The first `count` samples (all for None or more): a cheaper pass where fewer tokens serve, such as a
        ranked allocation's scoring pass."""
        inputs = self.first_inputs
        if count is None or inputs is None or count >= len(inputs):
            return self
        arguments = self.own_arguments
        return Calibration(
            [inputs[i] for i in range(count)],
            None if arguments is None else [per_block[:count] for per_block in arguments],
        )


@dataclass(frozen=True)
class BlockTiming:
    """One block's turn in `run_blocks`: materialising it, its passes, its step, the next block's inputs."""

    #: The method's `description` ("Pruning layers", "Sparsifying blocks", "Scoring layers", ...).
    method: str
    changes_weights: bool
    index: int
    count: int
    name: str
    wall_seconds: float
    #: CPU seconds of the whole process (every thread) during the block.
    cpu_seconds: float


_TIMING_LISTENERS: list[Callable[[BlockTiming], None]] = []


@contextlib.contextmanager
def block_timings(listener: Callable[[BlockTiming], None]) -> Iterator[None]:
    """Call `listener` with a `BlockTiming` after every block of every `run_blocks` inside the context."""
    _TIMING_LISTENERS.append(listener)
    try:
        yield
    finally:
        _TIMING_LISTENERS.remove(listener)


def _named(blocks: Sequence[nn.Module] | Sequence[tuple[str, nn.Module]]) -> Iterator[tuple[str, nn.Module]]:
    for position, block in enumerate(blocks):
        yield (block if isinstance(block, tuple) else (str(position), block))


@torch.no_grad()
def run_blocks(
    method: BlockMethod,
    streamer: BlockStreamer,
    blocks: Sequence[nn.Module] | Sequence[tuple[str, nn.Module]],
    calibration: Calibration | None,
    show_progress: bool = False,
) -> None:
    """Stream `calibration` through `blocks` (modules, or (name, module) pairs) for `method` (module docstring).

    `calibration` None (or without inputs) runs the method's step on every block without any pass.
    """
    inputs = calibration.first_inputs if calibration is not None else None
    own_arguments = calibration.own_arguments if calibration is not None else None
    count = len(blocks)
    named = list(_named(blocks))
    for index, (name, module) in enumerate(tqdm(named, desc=method.description, disable=not show_progress)):
        last = index + 1 == count
        wall, cpu = time.perf_counter(), time.process_time()
        # Offloaded weights are loaded once per block (and the changed ones written back on exit).
        with streamer.materialized(module, write_back=method.changes_weights):
            inputs = with_arguments(inputs, own_arguments, index)
            block = Block(index, name, module, inputs, last, streamer, own_arguments)
            observed = None
            if inputs is not None:
                observer = method.observer(block)
                # One pass gives the next block's inputs too when nothing changes before they are needed.
                keep = not method.changes_weights and (not last or method.reads_outputs)
                if keep:
                    with observer.hooks if observer is not None else contextlib.nullcontext() as observed:
                        block.outputs = block.run()
                elif observer is not None:
                    observed = block.observe(observer.hooks, observer.stop_at)
            method.step(block, observed)
            if inputs is not None and not last:
                inputs = block.outputs if block.outputs is not None else block.run()
        if _TIMING_LISTENERS:
            timing = BlockTiming(
                method.description,
                method.changes_weights,
                index,
                count,
                name,
                time.perf_counter() - wall,
                time.process_time() - cpu,
            )
            for listener in list(_TIMING_LISTENERS):
                listener(timing)
