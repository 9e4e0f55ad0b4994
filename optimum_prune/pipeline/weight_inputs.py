"""What each weight matrix of a block sees during calibration: input statistics, however the matrix is called.

A forward pre-hook on a Linear or Conv1D sees its input. Two cases need more:

* Stacked experts (`architectures/weights.py`): the experts module is called once with all tokens and the routing;
  expert `e`'s first matrix sees the tokens routed to `e`, and its down projection sees what the first matrix and
  the gate make of them, recomputed here with the module's own `_apply_gate` (or `act_fn` without a gate), as
  transformers' experts implementations do.
* Matrices whose module is never called: transformers' Mamba, FalconMamba and Jamba mixers multiply by
  `dt_proj.weight` directly, so its hook never fires. Its input is known, though: the first `time_step_rank`
  outputs of `x_proj` (Mamba), normalised by `dt_layernorm` where the mixer has one (FalconMamba, Jamba). Those
  are tapped from the modules that produce them and used only when the direct hook saw nothing.

A matrix that still saw no token (an expert no calibration token was routed to, a layout this file does not know)
is reported as unobserved: callers must not solve it on an empty Gram matrix.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..architectures.weights import WeightMatrix
from .statistics import InputStatistics

__all__ = ["WeightInputs", "attach_inputs", "observe_inputs"]


class WeightInputs:
    """Input statistics per matrix name, with where they came from."""

    def __init__(self) -> None:
        self.direct: dict[str, InputStatistics] = {}
        self.tapped: dict[str, tuple[InputStatistics, str]] = {}

    def get(self, name: str) -> tuple[InputStatistics | None, str | None]:
        """`(statistics, tap description)` for `name`: the direct ones when they saw a live input, else a tap's
        (with its description), else `(None, None)`: the matrix was not observed."""
        direct = self.direct.get(name)
        if direct is not None and _live(direct):
            return direct, None
        tapped = self.tapped.get(name)
        if tapped is not None and _live(tapped[0]):
            return tapped
        return None, None


def _live(stats: InputStatistics) -> bool:
    """Some token reached it and some input was non-zero (an all-zero Gram matrix carries no information)."""
    return stats.count > 0 and bool((stats.sum_sq > 0).any())


def _first_argument(args: tuple, kwargs: dict, name: str) -> torch.Tensor | None:
    if args:
        return args[0]
    return kwargs.get(name)


def attach_inputs(
    block: nn.Module | None, matrices: list[WeightMatrix], with_gram: bool = True
) -> tuple[WeightInputs, list[torch.utils.hooks.RemovableHandle]]:
    """Hook the matrices so every forward adds each matrix's inputs to its statistics: `(inputs, handles)`.

    The one way inputs are observed, for structured pruning's consumers and for sparsity's matrices. With `block`
    (the module whose calls delimit one forward), matrices called with the very same tensor share their statistics
    (`_SharedInputs`) and a Mamba `dt_proj` is tapped as well; with None, each matrix is observed alone and its
    statistics exist from the start, called or not.
    """
    inputs = WeightInputs()
    handles: list[torch.utils.hooks.RemovableHandle] = []
    experts: dict[int, tuple[nn.Module, list[WeightMatrix]]] = {}
    sharing = _SharedInputs(inputs, shared=block is not None)
    try:
        if block is not None:
            handles.append(block.register_forward_pre_hook(sharing.new_call))
        for matrix in matrices:
            if matrix.expert is not None:
                inputs.direct[matrix.name] = _statistics(matrix, with_gram)
                experts.setdefault(id(matrix.module), (matrix.module, []))[1].append(matrix)
                continue
            if block is None:
                sharing.leader[matrix.name] = matrix.name
                inputs.direct[matrix.name] = _statistics(matrix, with_gram)
            # Otherwise created on the first call, once per distinct input (see `_SharedInputs`).
            hook = sharing.hook(matrix, with_gram)
            handles.append(matrix.module.register_forward_pre_hook(hook, with_kwargs=True))
            tap = _dt_proj_tap(block, matrix) if block is not None else None
            if tap is not None:
                handles.append(_register_tap(inputs, matrix, tap, with_gram))
        for module, expert_matrices in experts.values():
            handles.append(_register_experts_hook(module, expert_matrices, inputs))
    except BaseException:
        for handle in handles:
            handle.remove()
        raise
    return inputs, handles


@contextmanager
def observe_inputs(block: nn.Module, matrices: list[WeightMatrix], with_gram: bool = True) -> Iterator[WeightInputs]:
    """`attach_inputs` for the duration of the context: yields the inputs, removes the hooks on exit."""
    inputs, handles = attach_inputs(block, matrices, with_gram)
    try:
        yield inputs
    finally:
        for handle in handles:
            handle.remove()


def _statistics(matrix: WeightMatrix, with_gram: bool) -> InputStatistics:
    device = getattr(matrix.module, matrix.parameter).device
    return InputStatistics(matrix.in_features, with_gram=with_gram, device=device)


class _SharedInputs:
    """Matrices called with the very same input tensor (q/k/v, gate/up) share one `InputStatistics`: one Gram
    matrix, one accumulation and, in the solvers, one factorisation per input.

    A matrix's group is fixed on its first call by tensor identity (the inputs seen are held until the block's next
    call, so a freed tensor's memory cannot pass for a shared input); afterwards only each group's first matrix
    accumulates. A later call that breaks a grouping raises RuntimeError rather than mixing statistics.
    """

    def __init__(self, inputs: WeightInputs, shared: bool = True) -> None:
        self.inputs, self.shared = inputs, shared
        self.seen: list[tuple[str, torch.Tensor]] = []
        self.leader: dict[str, str] = {}

    def new_call(self, _module, _args) -> None:
        self.seen.clear()

    def hook(self, matrix: WeightMatrix, with_gram: bool):
        name = matrix.name

        def observe(_module, args, kwargs):
            x = _first_argument(args, kwargs, "input")
            if x is None:
                return
            first = next((other for other, tensor in self.seen if tensor is x), None)
            if self.shared:
                self.seen.append((name, x))
            if name not in self.leader:  # its first call (an expert's may come late, when a token is routed to it)
                self.leader[name] = self.leader[first] if first is not None else name
                if self.leader[name] == name:
                    self.inputs.direct[name] = _statistics(matrix, with_gram)
                else:
                    self.inputs.direct[name] = self.inputs.direct[self.leader[name]]
            leader = self.leader[name]
            if leader != name:
                if first is None or self.leader.get(first) != leader:
                    raise RuntimeError(f"{name} no longer reads the same input as {leader}")
                return
            self.inputs.direct[name].update(x)

        return observe


def _dt_proj_tap(block: nn.Module, matrix: WeightMatrix) -> tuple[nn.Module, int | None, str] | None:
    """`(module, slice, description)` whose output is `matrix`'s input, for a Mamba-style `dt_proj`."""
    parent_name, _, last = matrix.name.rpartition(".")
    if last != "dt_proj" or not isinstance(matrix.module, nn.Linear):
        return None
    parent = block.get_submodule(parent_name) if parent_name else block
    rank = getattr(parent, "time_step_rank", matrix.in_features)
    norm = getattr(parent, "dt_layernorm", None)
    if isinstance(norm, nn.Module):
        return norm, None, f"{parent_name}.dt_layernorm output (the mixer uses dt_proj.weight directly)"
    x_proj = getattr(parent, "x_proj", None)
    if isinstance(x_proj, nn.Module):
        return (
            x_proj,
            int(rank),
            f"first {rank} outputs of {parent_name}.x_proj (the mixer uses dt_proj.weight directly)",
        )
    return None


def _register_tap(
    inputs: WeightInputs, matrix: WeightMatrix, tap: tuple[nn.Module, int | None, str], with_gram: bool
) -> torch.utils.hooks.RemovableHandle:
    module, width, description = tap
    stats = _statistics(matrix, with_gram)
    inputs.tapped[matrix.name] = (stats, description)

    def hook(_module, _args, output):
        out = output[0] if isinstance(output, (tuple, list)) else output
        if width is not None:
            out = out[..., :width]
        if out.shape[-1] == stats.num_features:
            stats.update(out)

    return module.register_forward_hook(hook)


def _register_experts_hook(
    module: nn.Module, matrices: list[WeightMatrix], inputs: WeightInputs
) -> torch.utils.hooks.RemovableHandle:
    by_key = {(m.parameter, m.expert): inputs.direct[m.name] for m in matrices}
    first = "gate_up_proj" if getattr(module, "has_gate", True) and hasattr(module, "gate_up_proj") else "up_proj"
    if not isinstance(getattr(module, first, None), nn.Parameter):
        first = "gate_up_proj" if hasattr(module, "gate_up_proj") else "up_proj"
    transposed = bool(getattr(module, "is_transposed", False))
    num_experts = getattr(module, first).shape[0]

    def hook(_module, args, kwargs):
        hidden = _first_argument(args, kwargs, "hidden_states")
        index = args[1] if len(args) > 1 else kwargs.get("top_k_index")
        if hidden is None or index is None:
            return
        hidden = hidden.reshape(-1, hidden.shape[-1])
        index = index.reshape(hidden.shape[0], -1)
        for expert in range(num_experts):
            rows = (index == expert).any(-1)
            if not bool(rows.any()):
                continue
            x = hidden[rows]
            if (first, expert) in by_key:
                by_key[(first, expert)].update(x)
            if ("down_proj", expert) in by_key:
                weight = getattr(module, first)[expert]
                projected = x @ weight if transposed else x @ weight.T
                bias = getattr(module, f"{first}_bias", None) if getattr(module, "has_bias", False) else None
                if bias is not None:
                    projected = projected + bias[expert]
                if getattr(module, "has_gate", True) and first == "gate_up_proj":
                    projected = module._apply_gate(projected)
                else:
                    projected = module.act_fn(projected)
                by_key[("down_proj", expert)].update(projected)

    return module.register_forward_pre_hook(hook, with_kwargs=True)
