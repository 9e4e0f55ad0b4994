"""Streaming calibration through a model one block at a time.

The inputs of the first block are captured once; afterwards each block is run on the stored inputs of the
previous (already pruned) block, so memory stays near one block plus the calibration activations.

`BlockStreamer` adds what big models need: blocks of a model dispatched by accelerate (offloaded to CPU or disk)
are materialised on the execution device one at a time and written back after pruning (see `offload.py`), and
the activations between blocks can wait on the CPU or in files instead of on the accelerator.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .offload import execution_device, is_dispatched, is_offloaded, materialized

#: Distinct block-argument tensors of one shape an `ActivationStore` compares a new one against.
_DISTINCT_PER_SHAPE = 4


class _StopForward(Exception):
    """Ends a forward early: raised from a hook once everything wanted from that forward has been seen."""


@dataclass
class BlockInput:
    """Everything one block was called with for one calibration sample."""

    hidden_states: torch.Tensor
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def to_device(value: Any, device: torch.device | str | None) -> Any:
    """`value` with every tensor inside (tuples, lists, dicts) on `device`; `None` leaves it as it is.

    A page-locked (pinned) host tensor is copied to an accelerator without blocking the host (`host_copy` pins the
    activations that wait on the CPU); the copy is ordered before the kernels that read it on the same stream.
    """
    if device is None:
        return value
    if isinstance(value, torch.Tensor):
        device = torch.device(device)
        if device.type != "cpu" and value.is_cpu and value.is_pinned():
            return value.to(device, non_blocking=True)
        return value.to(device)
    if isinstance(value, tuple):
        return tuple(to_device(v, device) for v in value)
    if isinstance(value, list):
        return [to_device(v, device) for v in value]
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    return value


#: Pinned host memory comes in power-of-two blocks (torch's caching host allocator), so a tensor is pinned only
#: when that rounding wastes at most this fraction of it; others wait in ordinary (pageable) memory.
_MAX_PINNED_WASTE = 0.25


def pins_well(size: int) -> bool:
    """Whether `size` bytes fit the pinned allocator's power-of-two block with at most `_MAX_PINNED_WASTE` left
    over (512 x 2048 float32 activations: exactly; SmolLM2's 512 x 576: 1.8x, so those stay pageable)."""
    return size > 0 and (1 << (size - 1).bit_length()) <= (1 + _MAX_PINNED_WASTE) * size


def host_copy(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor` on the CPU; a CUDA tensor lands in page-locked memory, which the GPU reads back about twice as fast
    and without blocking the host (see `to_device`), unless the allocator's rounding would waste too much of it."""
    if not tensor.is_cuda or not ActivationStore.pin_memory or not pins_well(tensor.numel() * tensor.element_size()):
        return tensor.to("cpu")
    pinned = torch.empty(tensor.shape, dtype=tensor.dtype, device="cpu", pin_memory=True)
    pinned.copy_(tensor.detach())  # blocking: the values are on the host when this returns, as with .to("cpu")
    return pinned


class ActivationStore(Sequence[BlockInput]):
    """The calibration inputs of one block: a sequence of `BlockInput`, kept on a device or in files.

    Args:
        device: where the tensors wait (e.g. "cpu" to keep GPU memory for the block); `None` keeps them where
            they were produced.
        folder: if given, hidden states are written to a fresh sub-folder of it (one file per sample) and read
            back when iterated; the sub-folder is removed when the store is garbage-collected. The other block
            arguments (masks, rotary embeddings) stay in memory, each distinct value once.
    """

    #: Hidden states that arrive from a CUDA device and wait in CPU memory are kept in pinned memory (`host_copy`).
    pin_memory: bool = True

    def __init__(self, device: torch.device | str | None = None, folder: str | os.PathLike | None = None) -> None:
        self.device = torch.device(device) if device is not None else None
        self._items: list[BlockInput] = []
        # Distinct block-argument tensors seen so far, by (shape, dtype, device): see `_deduplicate`.
        self._distinct: dict[tuple, list[torch.Tensor]] = {}
        self._paths: list[str] | None = None
        self._folder: str | None = None
        if folder is not None:
            os.makedirs(folder, exist_ok=True)
            self._folder = tempfile.mkdtemp(prefix="activations-", dir=folder)
            self._paths = []
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._folder, True)

    def append(self, item: BlockInput) -> None:
        """Store one sample's inputs (moved to this store's device or written to its folder).

        Block arguments equal to one already stored (the attention mask and rotary embeddings are the same for all
        samples of one length) are kept once: the stored tensor is reused instead of a per-sample copy.
        """
        args_device = self.device if self._paths is None else (self.device or torch.device("cpu"))
        args = self._deduplicate(to_device(item.args, args_device))
        kwargs = self._deduplicate(to_device(item.kwargs, args_device))
        if self._paths is None:
            hidden = item.hidden_states
            hidden = host_copy(hidden) if self.device is not None and self.device.type == "cpu" else hidden
            self._items.append(BlockInput(to_device(hidden, self.device), args, kwargs))
            return
        path = os.path.join(self._folder, f"{len(self._paths)}.pt")
        torch.save(item.hidden_states.detach().to("cpu"), path)
        self._paths.append(path)
        self._items.append(BlockInput(None, args, kwargs))  # type: ignore[arg-type]

    def _deduplicate(self, value: Any) -> Any:
        """``value`` with every tensor replaced by an equal one stored earlier, when there is one.

        An eager-attention mask is ``seqlen x seqlen`` floats per sample (17 MiB at 2048 tokens) and identical for
        all samples; keeping one copy is what lets many long samples wait in ``folder``. Only a few distinct tensors
        per shape are compared, so per-sample arguments (e.g. padding masks) cost one comparison each.
        """
        if isinstance(value, torch.Tensor):
            key = (tuple(value.shape), value.dtype, value.device)
            candidates = self._distinct.setdefault(key, [])
            for stored in candidates:
                if stored is value or torch.equal(stored, value):
                    return stored
            if len(candidates) < _DISTINCT_PER_SHAPE:
                candidates.append(value)
            return value
        if isinstance(value, tuple):
            return tuple(self._deduplicate(v) for v in value)
        if isinstance(value, list):
            return [self._deduplicate(v) for v in value]
        if isinstance(value, dict):
            return {k: self._deduplicate(v) for k, v in value.items()}
        return value

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> BlockInput:  # type: ignore[override]
        item = self._items[index]
        if self._paths is None:
            return item
        hidden = torch.load(self._paths[index], map_location=self.device or "cpu", weights_only=True)
        return BlockInput(hidden, item.args, item.kwargs)

    def __iter__(self) -> Iterator[BlockInput]:
        for index in range(len(self)):
            yield self[index]

    def rebind(self, arguments: Sequence[tuple[tuple[Any, ...], dict[str, Any]]]) -> None:
        """Give sample `i` the other block arguments `arguments[i]`, keeping its hidden states.

        For models whose blocks get different masks or position embeddings (sliding-window layers, hybrid
        attention / state-space stacks), see `capture_block_arguments`.
        """
        if len(arguments) != len(self._items):
            raise ValueError(f"{len(arguments)} argument sets for {len(self._items)} stored samples.")
        device = self.device if self._paths is None else (self.device or torch.device("cpu"))
        for index, (args, kwargs) in enumerate(arguments):
            item = self._items[index]
            self._items[index] = BlockInput(item.hidden_states, to_device(args, device), to_device(kwargs, device))

    def close(self) -> None:
        """Drop the stored activations now (and their files)."""
        self._items.clear()
        self._distinct.clear()
        if self._paths is not None:
            self._finalizer()
            self._paths.clear()


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
    model: nn.Module,
    first_block: nn.Module,
    samples: list[dict[str, torch.Tensor]],
    store: ActivationStore | None = None,
) -> list[BlockInput] | ActivationStore:
    """Run the model up to `first_block` for every sample and keep what the block receives (in `store` if given)."""
    captured: list[BlockInput] | ActivationStore = [] if store is None else store
    # A model dispatched by accelerate may have its embeddings on the meta device; its hooks say where it runs.
    device = execution_device(model)

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
def capture_block_arguments(
    model: nn.Module, blocks: Sequence[nn.Module], samples: list[dict[str, torch.Tensor]]
) -> list[list[tuple[tuple[Any, ...], dict[str, Any]]]]:
    """What every block is called with besides its hidden states, per block and sample, from full forwards.

    Blocks of one model may get different masks or position embeddings (Gemma's sliding-window and global layers,
    Jamba's attention and Mamba layers), so the arguments captured at the first block do not fit the others.
    Costs one forward of the (unpruned) model per sample, through every block but not its output head: the forward
    ends as the head (`get_output_embeddings`, the LM head) is entered, once every block has run, whose logits over
    the vocabulary (262k for Gemma 3) are most of a small model's work. Returns
    `arguments[block][sample] = (args, kwargs)`.
    """
    arguments: list[list[tuple[tuple[Any, ...], dict[str, Any]]]] = [[] for _ in blocks]
    device = execution_device(model)
    handles = []
    order: list[int] = []
    for position, block in enumerate(blocks):

        def hook(_module, args, kwargs, _position=position):
            order.append(_position)
            entered[_position] = True
            kwargs = dict(kwargs)
            if args:
                args = tuple(args[1:])
            else:
                kwargs.pop("hidden_states", None)
            arguments[_position].append((args, kwargs))

        handles.append(block.register_forward_pre_hook(hook, with_kwargs=True))
    entered = [False] * len(blocks)
    head = _output_head(model)
    if head is not None:

        def stop_at_head(_module, _args):
            if all(entered):  # only after the blocks, so a head module also used elsewhere never cuts them short
                raise _StopForward

        handles.append(nn.Module.register_forward_pre_hook(head, stop_at_head))
    try:
        with no_cache(model):
            for sample in samples:
                entered[:] = [False] * len(blocks)
                try:
                    model(**{k: v.to(device) for k, v in sample.items()})
                except _StopForward:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    if any(len(per_block) != len(samples) for per_block in arguments):
        counts = [len(per_block) for per_block in arguments]
        raise RuntimeError(
            f"Each block must run once per calibration sample; calls per block: {counts}. Blocks that share weights "
            "or run conditionally cannot be streamed one after the other: choose others with sequential_targets."
        )
    if order[: len(blocks)] != list(range(len(blocks))):
        raise RuntimeError(
            f"The blocks do not run in the order of their module list (they ran as {order[: len(blocks)]}): pass "
            "sequential_targets naming blocks that form one chain."
        )
    return arguments


def _output_head(model: nn.Module) -> nn.Module | None:
    """The module a forward of `model` ends with (the LM head), or None where there is none to skip."""
    get_head = getattr(model, "get_output_embeddings", None)
    try:
        head = get_head() if callable(get_head) else None
    except (AttributeError, NotImplementedError):
        return None
    return head if isinstance(head, nn.Module) else None


@torch.no_grad()
def blocks_need_own_arguments(
    model: nn.Module, blocks: Sequence[nn.Module], samples: list[dict[str, torch.Tensor]], offloaded: bool
) -> bool:
    """Whether the blocks get different masks or position embeddings, so each needs `capture_block_arguments`.

    Known from the block classes and `config.layer_types`; otherwise one forward of the first sample compares what
    every block receives with what the first one does (skipped for offloaded models, where a forward reads every
    weight from the offload store).
    """
    if len({type(block) for block in blocks}) > 1:
        return True
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types and len(set(layer_types)) > 1:
        return True
    if offloaded or len(blocks) < 2:
        return False
    probe = capture_block_arguments(model, blocks, samples[:1])
    return not all(_same_value(probe[0][0], per_block[0]) for per_block in probe[1:])


def own_block_arguments(
    model: nn.Module, blocks: Sequence[nn.Module], samples: list[dict[str, torch.Tensor]], offloaded: bool
) -> list[list[tuple[tuple[Any, ...], dict[str, Any]]]] | None:
    """`capture_block_arguments` where the blocks need their own (`blocks_need_own_arguments`), else None."""
    if blocks_need_own_arguments(model, blocks, samples, offloaded):
        return capture_block_arguments(model, blocks, samples)
    return None


def with_arguments(
    inputs: Sequence[BlockInput] | None,
    own_arguments: list[list[tuple[tuple[Any, ...], dict[str, Any]]]] | None,
    index: int,
) -> Sequence[BlockInput] | None:
    """`inputs` with block `index`'s own arguments from `own_block_arguments` (unchanged when that is None).

    An `ActivationStore` is rebound in place and returned; a list gives a new list with the same hidden states.
    """
    if inputs is None or own_arguments is None:
        return inputs
    if isinstance(inputs, ActivationStore):
        inputs.rebind(own_arguments[index])
        return inputs
    arguments = own_arguments[index]
    if len(arguments) != len(inputs):
        raise ValueError(f"{len(arguments)} argument sets for {len(inputs)} samples.")
    return [BlockInput(item.hidden_states, args, kwargs) for item, (args, kwargs) in zip(inputs, arguments)]


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (
            isinstance(a, torch.Tensor)
            and isinstance(b, torch.Tensor)
            and (a is b or (a.shape == b.shape and a.dtype == b.dtype and bool(torch.equal(a, b))))
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_value(a[k], b[k]) for k in a)
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # objects without a meaningful equality (caches, modules): treat as different
        return False


@contextlib.contextmanager
def stopping_after(block: nn.Module, modules: Sequence[nn.Module]) -> Iterator[None]:
    """Inside this context, a forward of `block` ends as soon as every one of `modules` has been entered once.

    A statistics pass only needs the block up to its last hooked consumer (e.g. ``o_proj`` for attention heads, so
    the MLP is skipped), as llm-compressor's pipelines stop the model at the first block when capturing its inputs.
    The stop is an exception raised from a forward pre-hook of the module entered last, after the hooks registered
    on it earlier (the statistics hooks) have run; `run_block` catches it (``keep_outputs=False`` only: a stopped
    forward has no output). Nothing the stopped part would have computed is read, so the statistics are exactly
    those of full forwards.

    The first forward inside the context runs to the end and counts how often each module is entered. Stopping is
    armed only if every module was entered exactly once; otherwise (a consumer that did not run, e.g. an expert no
    token was routed to, or one called twice per forward) every forward runs to its end, as without this context.
    Once armed, a forward in which some module is not entered (routing that differs per sample) also just runs to
    its end. What it cannot see is a module entered once on the first sample and more often on a later one.
    """
    modules = list(modules)
    calls = [0] * len(modules)
    state = {"armed": False, "probed": False}

    def start(_block, _args):
        calls[:] = [0] * len(modules)

    def finish(_block, _args, _output):
        if not state["probed"]:  # the first forward ran to its end: stopping is safe if each module ran once
            state["probed"] = True
            state["armed"] = all(count == 1 for count in calls)

    def entered(position: int):
        def hook(_module, _args):
            calls[position] += 1
            if state["armed"] and all(calls):
                raise _StopForward

        return hook

    handles = [block.register_forward_pre_hook(start), block.register_forward_hook(finish)]
    # nn.Module's own registration, not an override: a view of one stacked expert (ExpertDownProjection) adds a
    # driver on its experts module per registered hook, which would feed the view (and its statistics) twice.
    handles += [nn.Module.register_forward_pre_hook(module, entered(i)) for i, module in enumerate(modules)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def run_block(
    block: nn.Module,
    inputs: Sequence[BlockInput],
    keep_outputs: bool = True,
    device: torch.device | str | None = None,
    store: ActivationStore | None = None,
) -> list[BlockInput] | ActivationStore:
    """Run `block` on every stored input; return the outputs as the next block's inputs.

    `device`: move each input there first (the block's execution device when activations wait elsewhere).
    `store`: where the outputs go (default: a list, tensors where the block produced them).
    Forwards ended by `stopping_after` count as done when `keep_outputs` is False (RuntimeError otherwise).
    """
    outputs: list[BlockInput] | ActivationStore = [] if store is None else store
    for item in inputs:
        hidden, args, kwargs = to_device((item.hidden_states, item.args, item.kwargs), device)
        try:
            out = block(hidden, *args, **kwargs)
        except _StopForward:
            if keep_outputs:
                raise RuntimeError("A forward whose outputs are kept was stopped early (stopping_after).") from None
            continue
        if keep_outputs:
            hidden = out[0] if isinstance(out, (tuple, list)) else out
            outputs.append(BlockInput(hidden, item.args, item.kwargs))
    return outputs


class BlockStreamer:
    """Runs calibration through the blocks of one model, one block at a time, wherever its weights live.

    Args:
        model: the model being pruned; plain in memory, or dispatched by accelerate (`device_map=...`, with
            offloading to CPU or disk).
        execution_device: where each block computes. Default: the device its accelerate hook names, or where
            its weights are. A block that lives elsewhere is moved (or loaded, when offloaded) there for its turn
            and put back afterwards, so e.g. a CPU-resident model can be pruned block by block on a GPU.
        activations_device: where calibration activations wait between blocks. Default: "cpu" when the model
            is dispatched or an `execution_device` is given (accelerator memory is kept for the block), otherwise
            where they were produced.
        activations_dir: keep the hidden states in files under this folder instead (for many long samples).
    """

    #: Whether `stopping_after` ends statistics passes at their last consumer; False runs every pass to the
    #: block's end (the same statistics, more work: for comparisons and benchmarks).
    stop_early: bool = True

    def __init__(
        self,
        model: nn.Module,
        execution_device: torch.device | str | None = None,
        activations_device: torch.device | str | None = None,
        activations_dir: str | os.PathLike | None = None,
    ) -> None:
        self.model = model
        self.execution_device = torch.device(execution_device) if execution_device is not None else None
        self.offloaded = is_offloaded(model)
        if activations_device is None and (self.execution_device is not None or is_dispatched(model)):
            activations_device = "cpu"
        self.activations_device = activations_device
        self.activations_dir = activations_dir
        self._current_device: torch.device | None = None

    def new_store(self) -> ActivationStore:
        """An empty store with this streamer's placement."""
        return ActivationStore(self.activations_device, self.activations_dir)

    def capture(self, first_block: nn.Module, samples: list[dict[str, torch.Tensor]]) -> ActivationStore:
        """The inputs `first_block` receives for every sample."""
        return capture_block_inputs(self.model, first_block, samples, store=self.new_store())

    @contextlib.contextmanager
    def materialized(self, block: nn.Module, write_back: bool = True) -> Iterator[torch.device]:
        """`block` with real weights on its execution device for the duration (see `offload.materialized`)."""
        with materialized(block, self.execution_device, write_back=write_back) as device:
            previous, self._current_device = self._current_device, device
            try:
                yield device
            finally:
                self._current_device = previous

    def stopping_after(self, block: nn.Module, modules: Sequence[nn.Module]) -> contextlib.AbstractContextManager:
        """`stopping_after(block, modules)` for the passes run inside (a no-op when `stop_early` is False)."""
        return stopping_after(block, modules) if self.stop_early else contextlib.nullcontext()

    def run(self, block: nn.Module, inputs: Sequence[BlockInput], keep_outputs: bool = True) -> ActivationStore | None:
        """Run `block` (inside `materialized`) on `inputs`; its outputs in a new store, or None."""
        store = self.new_store() if keep_outputs else None
        run_block(block, inputs, keep_outputs=keep_outputs, device=self._current_device, store=store)
        return store
