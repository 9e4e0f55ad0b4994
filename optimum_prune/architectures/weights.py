"""Every weight matrix inside a block, whatever its storage, seen as `[out_features, in_features]` for the solvers.

Three storages are known:

* `nn.Linear`: `weight` is `[out, in]`.
* transformers' `Conv1D` (GPT-2 and its relatives): `weight` is `[in, out]`; the solvers see its transpose.
* stacked experts, transformers 5's `@use_experts_implementation` classes (Mixtral, Qwen2-MoE, Jamba, ...):
  parameters `gate_up_proj` (or `up_proj` without a gate) and `down_proj` of shape `[num_experts, out, in]`, or
  `[num_experts, in, out]` when the class sets `is_transposed`. Each expert's slice is one matrix; its inputs are
  the tokens routed to that expert (see `weight_inputs.py`).

Routers are left dense by default: a router's weight decides which expert runs, and zeroing half of it reroutes
tokens (llm-compressor's MoE recipes ignore `mlp.gate` for the same reason). transformers 5's routers are
`*TopKRouter` modules without a Linear, so they are never matrices here; a router kept as an `nn.Linear` is known by
its name (`gate`, `router`, `shared_expert_gate`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

__all__ = ["ROUTER_NAMES", "WeightMatrix", "find_weight_matrices", "is_experts_module"]

#: Last name components of Linear layers that route tokens to experts.
ROUTER_NAMES = ("gate", "router", "shared_expert_gate")
_EXPERT_PARAMETERS = ("gate_up_proj", "up_proj", "down_proj")


def is_experts_module(module: nn.Module) -> bool:
    """Whether `module` stores its experts as stacked 3-D parameters (transformers 5's experts interface)."""
    return hasattr(module, "is_transposed") and any(
        isinstance(getattr(module, name, None), nn.Parameter) and getattr(module, name).dim() == 3
        for name in _EXPERT_PARAMETERS
    )


@dataclass
class WeightMatrix:
    """One prunable matrix: `module.<parameter>`, or expert `expert` of a stacked parameter.

    Attributes:
        name: the module name inside the block, with `[expert]` for one expert, e.g. `mlp.experts.down_proj[3]`.
        module: the owning module (the Linear, Conv1D, or experts module).
        parameter: the parameter's attribute name on `module`.
        expert: the expert index for stacked experts, else None.
        transposed: whether the stored matrix is `[in, out]`.
    """

    name: str
    module: nn.Module
    parameter: str = "weight"
    expert: int | None = None
    transposed: bool = False

    def _stored(self) -> torch.Tensor:
        data = getattr(self.module, self.parameter).data
        return data[self.expert] if self.expert is not None else data

    def get(self) -> torch.Tensor:
        """The matrix as `[out_features, in_features]` (a view of the stored tensor)."""
        stored = self._stored()
        return stored.T if self.transposed else stored

    def set(self, weight: torch.Tensor) -> None:
        """Write a `[out_features, in_features]` matrix back in place."""
        self.get().copy_(weight)

    @property
    def in_features(self) -> int:
        return int(self.get().shape[1])

    @property
    def numel(self) -> int:
        return int(self._stored().numel())


def _excluded(name: str, modules_to_not_prune: list[str]) -> bool:
    return any(skip in name for skip in modules_to_not_prune)


def find_weight_matrices(
    block: nn.Module, modules_to_not_prune: list[str], skip_routers: bool = True
) -> tuple[list[WeightMatrix], dict[str, str]]:
    """The matrices of `block` to sparsify, and the ones left dense on purpose with the reason.

    Args:
        block: one repeated block.
        modules_to_not_prune: module-name substrings to leave dense.
        skip_routers: leave MoE routers (Linear layers named in `ROUTER_NAMES`) dense.

    Returns:
        `(matrices, left_dense)`: matrices in module order; `left_dense` maps a name to why it was left (only
        routers are reported; names excluded by `modules_to_not_prune` are what the user asked for).
    """
    matrices: list[WeightMatrix] = []
    left_dense: dict[str, str] = {}
    for name, module in block.named_modules():
        if not name or _excluded(name, modules_to_not_prune):
            continue
        if isinstance(module, nn.Linear):
            if skip_routers and name.rpartition(".")[2] in ROUTER_NAMES:
                left_dense[name] = "MoE router: left dense"
                continue
            matrices.append(WeightMatrix(name, module))
        elif Conv1D and isinstance(module, Conv1D):
            matrices.append(WeightMatrix(name, module, transposed=True))
        elif is_experts_module(module):
            transposed = bool(getattr(module, "is_transposed", False))
            for parameter in _EXPERT_PARAMETERS:
                stacked = getattr(module, parameter, None)
                if not isinstance(stacked, nn.Parameter) or stacked.dim() != 3:
                    continue
                for expert in range(stacked.shape[0]):
                    matrices.append(
                        WeightMatrix(f"{name}.{parameter}[{expert}]", module, parameter, expert, transposed)
                    )
    return matrices, left_dense
