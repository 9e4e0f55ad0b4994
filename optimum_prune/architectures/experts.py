"""Routed experts stored as stacked 3D parameters (transformers 5 MoE: Mixtral, Qwen2-MoE, Qwen3-MoE, ...).

Such an experts module holds `gate_up_proj` [num_experts, 2 * intermediate, hidden] (rows: gate, then up) and
`down_proj` [num_experts, hidden, intermediate] and computes, for the tokens routed to expert e,
`down_proj[e] @ (act(gate_e x) * (up_e x))`. There is no Linear module per expert, so the structured pipeline sees
each expert's down projection through an `ExpertDownProjection` view: a Linear-like object whose `weight` is that
expert's slice, and whose forward pre-hooks receive exactly the expert's inputs (recomputed from the experts module's
own inputs while a hook is attached, since the experts forward never calls the view).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

_VIEWS_ATTRIBUTE = "_optimum_prune_expert_views"


class _Handles:
    """Removes several hooks at once (the view's own and the driver on the experts module)."""

    def __init__(self, *handles: Any) -> None:
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class ExpertDownProjection(nn.Module):
    """Expert `expert`'s down projection inside a stacked experts module, seen as a Linear layer.

    `weight` is a view of `experts.down_proj[expert]` ([hidden, intermediate]): writing into it writes the stack.
    Stacked experts have no bias, so `supports_bias` is False and refits are solved without an intercept.
    """

    supports_bias = False

    def __init__(self, experts: nn.Module, expert: int) -> None:
        super().__init__()
        # Plain attributes, not submodules: the view must not enter the model's module tree or state dict.
        object.__setattr__(self, "_experts", experts)
        self.expert = expert
        self.name = f"down_proj_expert_{expert}"

    @property
    def weight(self) -> torch.Tensor:
        return self._experts.down_proj[self.expert]

    @property
    def bias(self) -> None:
        return None

    @property
    def in_features(self) -> int:
        return int(self._experts.down_proj.shape[2])

    @property
    def out_features(self) -> int:
        return int(self._experts.down_proj.shape[1])

    @property
    def gate_weight(self) -> torch.Tensor:
        """Rows of the gate projection, one per channel: [intermediate, hidden]."""
        return self._experts.gate_up_proj[self.expert, : self.in_features]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs  # only called so that forward pre-hooks see the expert's inputs

    def register_forward_pre_hook(self, hook: Any, **kwargs: Any) -> _Handles:  # type: ignore[override]
        own = super().register_forward_pre_hook(hook, **kwargs)
        driver = self._experts.register_forward_pre_hook(self._drive, with_kwargs=True)
        return _Handles(own, driver)

    @torch.no_grad()
    def _drive(self, experts: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden, routed = self._routing(args, kwargs)
        self(self.expert_inputs(hidden, routed))

    def _routing(self, args: tuple, kwargs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states [tokens, hidden], mask [tokens] of the tokens routed to this expert) of an experts call."""
        hidden = args[0] if args else kwargs["hidden_states"]
        top_k_index = args[1] if len(args) > 1 else kwargs["top_k_index"]
        return hidden, (top_k_index == self.expert).any(dim=-1)

    @torch.no_grad()
    def expert_inputs(self, hidden: torch.Tensor, routed: torch.Tensor) -> torch.Tensor:
        """This expert's down-projection inputs, act(gate x) * (up x), for the tokens `hidden[routed]`.

        The routing may come from another copy of the layer: an error-correcting refit ("liar_dense") evaluates the
        dense copy's expert on the dense stream for the tokens the pruned model routes here.
        """
        experts = self._experts
        gate_up = F.linear(hidden[routed.to(hidden.device)], experts.gate_up_proj[self.expert])
        gate, up = gate_up.chunk(2, dim=-1)
        return experts.act_fn(gate) * up

    @property
    def experts(self) -> nn.Module:
        """The stacked experts module whose forward carries the routing (entered once per forward of the layer)."""
        return self._experts

    def register_routing_hook(self, hook: Any) -> torch.utils.hooks.RemovableHandle:
        """Call `hook(hidden, routed)` at every forward of the experts module, before it runs: all the tokens of
        the call ([tokens, hidden]) and the mask of those routed to this expert. Does not feed the view.

        Runs before the drivers of hooks registered through the views, whose forward may end the block's
        (`layerwise.stopping_after`)."""

        def pre_hook(_experts: nn.Module, args: tuple, kwargs: dict) -> None:
            hook(*self._routing(args, kwargs))

        return self._experts.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=True)

    @torch.no_grad()
    def mask_channels(self, keep: torch.Tensor) -> None:
        """Zero this expert's channels outside `keep`: the function of removing them, at the stack's size."""
        size = self.in_features
        dropped = torch.ones(size, dtype=torch.bool, device=keep.device)
        dropped[keep] = False
        dropped = dropped.to(self._experts.down_proj.device)
        self._experts.gate_up_proj.data[self.expert, :size][dropped] = 0
        self._experts.gate_up_proj.data[self.expert, size:][dropped] = 0
        self._experts.down_proj.data[self.expert][:, dropped] = 0


def _check_layout(experts: nn.Module) -> None:
    if getattr(experts, "is_transposed", False) or getattr(experts, "has_bias", False):
        raise NotImplementedError(
            f"{type(experts).__name__} stores transposed or biased experts, which optimum_prune does not slice yet."
        )
    if not getattr(experts, "is_concatenated", True):
        raise NotImplementedError(f"{type(experts).__name__} interleaves gate and up rows; not supported yet.")


def expert_views(experts: nn.Module) -> list[ExpertDownProjection]:
    """One `ExpertDownProjection` per expert, created once and reachable as `experts.down_proj_expert_<e>`."""
    views = experts.__dict__.get(_VIEWS_ATTRIBUTE)
    num_experts = int(experts.down_proj.shape[0])
    if views is None or len(views) != num_experts:
        _check_layout(experts)
        views = [ExpertDownProjection(experts, e) for e in range(num_experts)]
        object.__setattr__(experts, _VIEWS_ATTRIBUTE, views)
        for view in views:
            object.__setattr__(experts, view.name, view)
    return views


@torch.no_grad()
def select_expert_channels(experts: nn.Module, keeps: list[torch.Tensor]) -> None:
    """Keep channels `keeps[e]` of every expert e (all of one length), slicing the stacked parameters in place."""
    sizes = {int(k.numel()) for k in keeps}
    if len(sizes) != 1:
        raise ValueError(f"Stacked experts keep one size for all experts, got sizes {sorted(sizes)}.")
    size = experts.down_proj.shape[2]
    gate_up, down = experts.gate_up_proj, experts.down_proj
    rows = torch.stack([torch.cat([k, size + k]) for k in keeps]).to(gate_up.device)
    columns = torch.stack(list(keeps)).to(down.device)
    new_gate_up = torch.gather(gate_up.data, 1, rows[:, :, None].expand(-1, -1, gate_up.shape[2]))
    new_down = torch.gather(down.data, 2, columns[:, None, :].expand(-1, down.shape[1], -1))
    experts.gate_up_proj = nn.Parameter(new_gate_up, requires_grad=gate_up.requires_grad)
    experts.down_proj = nn.Parameter(new_down, requires_grad=down.requires_grad)
    if hasattr(experts, "intermediate_dim"):
        experts.intermediate_dim = int(sizes.pop())
