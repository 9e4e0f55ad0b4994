"""Pruning models that do not fit in memory: accelerate's big-model dispatch, one block at a time.

A model loaded with `from_pretrained(..., device_map="auto", max_memory=..., offload_folder=...)` carries
accelerate `AlignDevicesHook`s. Modules offloaded to the CPU (when a GPU computes) or to disk keep their parameters
on the meta device; the hook loads them from its `weights_map` for each forward and drops them afterwards.

Pruning needs a block's real weights for several forwards and then changes their shapes, so for each block
`materialized` loads every offloaded tensor of the block onto the execution device once, turns the hooks'
offloading off while the block is processed, and on exit writes the (pruned) tensors back where they came from:

* CPU-offloaded tensors (held in the loader's in-memory `state_dict`) are replaced in that dict;
* disk-offloaded tensors are written as new safetensors files under `<offload_folder>/optimum_prune/` (or a
  temporary folder when the index points into the original checkpoint and no folder was given) and the loader's
  index is pointed at them. The original checkpoint is never written to.

The parameters go back to the meta device with their new shapes, so `save_pretrained` (which reads meta tensors
through the hooks' weights maps) writes a correct, pruned checkpoint, and later forwards load the pruned weights.
Modules that are not offloaded (their weights live on a device) are moved to the execution device for the block
if needed and moved back afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator, MutableMapping
from typing import Any

import torch
from torch import nn

try:  # accelerate is a dependency, but keep plain in-memory pruning importable without it
    from accelerate.hooks import AlignDevicesHook, SequentialHook
    from accelerate.utils import OffloadedWeightsLoader, PrefixedDataset
    from accelerate.utils.modeling import named_module_tensors
except ImportError:  # pragma: no cover
    AlignDevicesHook = SequentialHook = OffloadedWeightsLoader = PrefixedDataset = None  # type: ignore[misc]
    named_module_tensors = None  # type: ignore[assignment]

#: Sub-folder of the offload folder that receives pruned weights of disk-offloaded modules.
PRUNED_OFFLOAD_SUBFOLDER = "optimum_prune"


def align_hooks(module: nn.Module) -> list[Any]:
    """The accelerate `AlignDevicesHook`s attached to `module` (unwrapping a `SequentialHook`)."""
    hook = getattr(module, "_hf_hook", None)
    if hook is None or AlignDevicesHook is None:
        return []
    hooks = list(hook.hooks) if isinstance(hook, SequentialHook) else [hook]
    return [h for h in hooks if isinstance(h, AlignDevicesHook)]


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate hooks manage where any part of `model` lives and computes."""
    return any(align_hooks(m) for m in model.modules())


def is_offloaded(model: nn.Module) -> bool:
    """Whether some weights of `model` are offloaded (on the meta device, loaded by a hook for each forward)."""
    return any(h.offload for m in model.modules() for h in align_hooks(m))


def execution_device(module: nn.Module) -> torch.device:
    """Where `module` computes: its (or its first hooked submodule's) hook device, else where its weights are."""
    for sub in module.modules():
        for hook in align_hooks(sub):
            if hook.execution_device is not None:
                return _as_device(hook.execution_device)
    for tensor in list(module.parameters()) + list(module.buffers()):
        if not tensor.is_meta:
            return tensor.device
    return torch.device("cpu")


def count_materialized_parameters(model: nn.Module) -> int:
    """Parameter elements of `model` that hold real memory (not on the meta device)."""
    return sum(p.numel() for p in model.parameters() if not p.is_meta)


def _as_device(device: Any) -> torch.device:
    if isinstance(device, int):
        return torch.device("cuda", device)
    return torch.device(device)


def _hook_tensors(module: nn.Module, hook: Any) -> list[tuple[str, torch.Tensor]]:
    """The tensors `hook` offloads, named relative to `module` (the names its `weights_map` uses)."""
    return list(
        named_module_tensors(
            module, include_buffers=hook.offload_buffers, recurse=hook.place_submodules, remove_non_persistent=True
        )
    )


def _set_tensor(module: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter or buffer `name` (dotted, relative to `module`) by `value`, keeping its kind."""
    owner_name, _, attribute = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if attribute in owner._parameters:
        old = owner._parameters[attribute]
        owner._parameters[attribute] = nn.Parameter(
            value, requires_grad=old.requires_grad if old is not None else False
        )
    else:
        owner._buffers[attribute] = value


def _resolve(weights_map: Any, name: str) -> tuple[Any, str]:
    """The innermost mapping behind `weights_map` and the key `name` has there (accelerate prefixes per module)."""
    key = name
    while PrefixedDataset is not None and isinstance(weights_map, PrefixedDataset):
        key = f"{weights_map.prefix}{key}"
        weights_map = weights_map.dataset
    return weights_map, key


def _scratch_folder(loader: Any) -> str:
    """Where pruned disk-offloaded weights go: the offload folder, or a temporary folder tied to the loader."""
    if loader.save_folder is not None:
        folder = os.path.join(loader.save_folder, PRUNED_OFFLOAD_SUBFOLDER)
        os.makedirs(folder, exist_ok=True)
        return folder
    folder = getattr(loader, "_optimum_prune_scratch", None)
    if folder is None:
        # transformers maps disk-offloaded weights straight into the checkpoint's safetensors and may have no
        # offload folder; the checkpoint must not be overwritten, so the pruned tensors live in a folder that is
        # removed with the model.
        folder = tempfile.mkdtemp(prefix="optimum-prune-offload-")
        loader._optimum_prune_scratch = folder
        weakref.finalize(loader, shutil.rmtree, folder, True)
    return folder


def _write_to_disk(loader: Any, key: str, tensor: torch.Tensor) -> None:
    from safetensors.torch import save_file

    folder = _scratch_folder(loader)
    path = os.path.join(folder, f"{key}.safetensors")
    # Write then rename: a reader that still maps the previous file keeps a valid view of it.
    partial = f"{path}.partial"
    save_file({key: tensor.detach().to("cpu").contiguous()}, partial)
    os.replace(partial, path)
    loader.index[key] = {"safetensors_file": path, "weight_name": key, "dtype": str(tensor.dtype).split(".")[-1]}


def store_offloaded_tensor(weights_map: Any, name: str, tensor: torch.Tensor, on_disk: bool) -> None:
    """Make `weights_map[name]` return `tensor` from now on, on disk if `on_disk` else in CPU memory."""
    mapping, key = _resolve(weights_map, name)
    if OffloadedWeightsLoader is not None and isinstance(mapping, OffloadedWeightsLoader):
        if on_disk:
            mapping.state_dict.pop(key, None)
            _write_to_disk(mapping, key, tensor)
        else:
            mapping.state_dict[key] = tensor.detach().to("cpu").contiguous()
        if key not in mapping.all_keys:
            mapping.all_keys.append(key)
    elif isinstance(mapping, MutableMapping):
        mapping[key] = tensor.detach().to("cpu").contiguous()
    else:
        raise TypeError(
            f"Cannot write the pruned tensor {key!r} back into an accelerate weights map of type "
            f"{type(mapping).__name__}; load the model with from_pretrained(device_map=..., offload_folder=...)."
        )


def _module_on_disk(weights_map: Any, names: list[str]) -> bool:
    """Whether the existing tensors of a module are read from disk (so new ones should be written there too)."""
    for name in names:
        mapping, key = _resolve(weights_map, name)
        if OffloadedWeightsLoader is not None and isinstance(mapping, OffloadedWeightsLoader):
            if key in mapping.state_dict:
                return False
            if key in mapping.index:
                return True
    return False


@contextlib.contextmanager
def materialized(
    block: nn.Module, device: torch.device | str | None = None, *, write_back: bool = True
) -> Iterator[torch.device]:
    """Give every tensor of `block` real memory on `device` for the duration; yields the device.

    `device` defaults to the device the block's accelerate hook computes on (or where its weights are). With
    `write_back`, offloaded tensors are stored back into their hooks' weights maps on exit, with whatever shape
    they have then (pruning changes shapes); without it (read-only passes) they are just dropped again. A plain
    in-memory block already on `device` is left untouched, so the context costs nothing in the ordinary case.
    """
    device = _as_device(device) if device is not None else execution_device(block)
    offloaded: list[tuple[nn.Module, Any, list[str]]] = []
    hook_states: list[tuple[Any, bool, Any]] = []
    homes: list[tuple[nn.Module, torch.device]] = []
    try:
        for module in block.modules():
            for hook in align_hooks(module):
                hook_states.append((hook, hook.offload, hook.execution_device))
                if hook.offload:
                    names = [name for name, _ in _hook_tensors(module, hook)]
                    for name in names:
                        _set_tensor(module, name, hook.weights_map[name].to(device))
                    offloaded.append((module, hook, names))
                # While the block is processed its weights stay put and every forward runs on `device`.
                hook.offload = False
                hook.execution_device = device
        for module in block.modules():
            direct = list(module.parameters(recurse=False)) + list(module.buffers(recurse=False))
            home = next((t.device for t in direct if not t.is_meta), None)
            if home is not None and home != device:
                homes.append((module, home))
                _move_direct_tensors(module, device)
        yield device
    finally:
        for module, home in homes:
            _move_direct_tensors(module, home)
        for module, hook, original_names in offloaded:
            on_disk = _module_on_disk(hook.weights_map, original_names) if write_back else False
            for name, tensor in _hook_tensors(module, hook):
                if tensor.is_meta:
                    continue
                if write_back:
                    store_offloaded_tensor(hook.weights_map, name, tensor, on_disk)
                _set_tensor(module, name, tensor.to("meta"))
        for hook, offload, hook_device in hook_states:
            hook.offload = offload
            hook.execution_device = hook_device


def _move_direct_tensors(module: nn.Module, device: torch.device) -> None:
    for name, tensor in list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False)):
        if not tensor.is_meta and tensor.device != device:
            _set_tensor(module, name, tensor.data.to(device))


@contextlib.contextmanager
def new_offloaded_zero_biases(model: nn.Module) -> Iterator[None]:
    """Persist biases that code adds to offloaded modules outside `materialized` (they are created on meta).

    `ensure_bias` gives a Linear a zero bias on its weight's device; for an offloaded Linear that is the meta
    device, which holds no values and has no entry in the hook's weights map, so neither a forward nor
    `save_pretrained` could load it. A meta tensor carries no data, and the only tensors the pruner creates this
    way are zero biases, so zeros are written for them. Anything else new and empty is an error.
    """
    before = {
        (id(module), name)
        for module in model.modules()
        for hook in align_hooks(module)
        if hook.offload
        for name, _ in _hook_tensors(module, hook)
    }
    yield
    for module in model.modules():
        for hook in align_hooks(module):
            if not hook.offload:
                continue
            names = [name for name, _ in _hook_tensors(module, hook)]
            old_names = [name for name in names if (id(module), name) in before]
            for name, tensor in _hook_tensors(module, hook):
                if (id(module), name) in before or not tensor.is_meta:
                    continue
                if name.rpartition(".")[2] != "bias":
                    raise RuntimeError(f"A new offloaded tensor {name!r} has no values to persist.")
                zeros = torch.zeros(tensor.shape, dtype=tensor.dtype, device="cpu")
                store_offloaded_tensor(hook.weights_map, name, zeros, _module_on_disk(hook.weights_map, old_names))
