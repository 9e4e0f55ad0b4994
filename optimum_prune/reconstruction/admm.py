"""ADMM weight update (Boza 2024) on the support that structured pruning leaves: the kept columns plus a bias.

The consumer's input is augmented with a constant 1 so the bias is refit jointly with the kept columns; the
optimum is the same least-squares problem LIAR solves in closed form, reached here by the ADMM iterations that
the unstructured `admm` method uses, so both paths share one solver.
"""

from __future__ import annotations

import torch
from torch import nn

from ..pipeline.statistics import InputStatistics
from ..sparsity.admm import admm_update
from .base import Reconstruction, write_back

ADMM_ITERATIONS = 40


@torch.no_grad()
def admm_refit(
    linear: nn.Linear, stats: InputStatistics, kept: torch.Tensor, pruned: torch.Tensor, damp: float
) -> None:
    if pruned.numel() == 0:
        return
    if stats.gram is None:
        raise ValueError("ADMM reconstruction needs the input Gram matrix of the consumer layer.")
    features = stats.num_features
    gram = stats.augmented_gram()
    weight = linear.weight.detach().double()
    bias = (
        linear.bias.detach().double()
        if linear.bias is not None
        else torch.zeros(weight.shape[0], dtype=torch.float64, device=weight.device)
    )
    augmented = torch.cat([weight, bias.to(weight)[:, None]], dim=1)
    mask = torch.zeros_like(augmented, dtype=torch.bool)
    mask[:, kept.to(mask.device)] = True
    mask[:, features] = True
    solved = admm_update(
        augmented, gram.to(augmented), mask, iterations=ADMM_ITERATIONS, damp=damp, dtype=torch.float64
    )
    write_back(linear, solved[:, :features], solved[:, features] - bias.to(solved))


ADMM = Reconstruction("admm", admm_refit, needs_calibration=True, needs_gram=True)
