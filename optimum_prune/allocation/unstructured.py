"""Per-block sparsity of unstructured targets: the budget is the same, the blocks get different shares.

Two allocations besides the uniform one, both measured on the dense model's calibration activations before any
weight changes (`optimum_prune.unstructured.allocate_block_sparsities` runs that pass):

* OWL, outlier-weighted layerwise sparsity (Yin et al., arXiv 2310.05175; reference implementation
  luuyin/OWL, `lib/prune.py`, and llm-compressor's `SparsityModifierBase._infer_owl_layer_sparsity`): a block's
  outlier ratio is the share of its Wanda scores |W_ij| ||X_j|| above `m` times their mean; blocks with more
  outliers keep more weights, the ratios mapped linearly onto [sparsity - lambda, sparsity + lambda].
* OBS error (this library's): each matrix's output error after pruning a fraction s of every row, predicted from
  Optimal Brain Surgeon saliencies w_ij^2 / [H^-1]_jj (Hassibi & Stork 1993; the per-weight error SparseGPT's
  updates are built on) and divided by the matrix's output energy tr(W H W^T); a block's relative error (the sum
  over its matrices) is then weighed by how much the block writes into the residual stream against the stream it
  joins, ||block(x) - x||^2 / ||x||^2 over the calibration tokens: a pre-norm block's error reaches every later
  block through the normalised stream, so the same relative error costs more where the block's update is large
  against the stream (the first blocks). The sparsities minimise the summed weighted error under the parameter
  budget (a Lagrangian search over a grid, each block within `max_deviation` of the target).

  While this was designed (SmolLM2-135M, SparseGPT at 70%, 16 x 512 calibration tokens, 8 evaluation windows, one
  thread on a shared 2-core CPU): uniform 173.8, this allocation 156.9, OWL 148.9 perplexity; without the residual
  weighing (relative errors alone) 301.2, with absolute update energies 357.5: worse than uniform. The re-runnable
  table, 24 windows, is benchmarks/results/sparsity.md (there: uniform 201.9, this allocation 175.1, OWL 157.5). Choosing between blocks
  from layer-wise errors alone ignores how an error travels to the output; the residual weighing is the first-order
  correction, and OWL's outlier signal still does better on this model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class LayerSparsities:
    """Per-block sparsities chosen by an allocation, and the measure each was chosen from."""

    #: "uniform", "owl" or "obs".
    allocation: str
    #: Fraction of each block's prunable weights to remove, block order.
    sparsities: list[float]
    #: What the allocation measured per block: OWL's outlier ratio in percent; for "obs", the predicted relative
    #: output error at the chosen sparsity (summed over the block's matrices). Empty for "uniform".
    measure: list[float] = field(default_factory=list)
    #: Name of `measure`, for summaries.
    measure_name: str = ""


def outlier_ratio(weights: Sequence[torch.Tensor], input_norms: Sequence[torch.Tensor], m: float) -> float:
    """OWL's layerwise outlier distribution of one block, in percent.

    Args:
        weights: the block's prunable matrices, each [out_features, in_features].
        input_norms: for each matrix, the L2 norm of each input feature over the calibration tokens, [in_features].
        m: outlier threshold, as a multiple of the mean score over the whole block (the paper's M).

    Returns:
        100 x the fraction of Wanda scores |W_ij| ||X_j|| (all matrices of the block together) above m x their mean.
    """
    if len(weights) != len(input_norms) or not weights:
        raise ValueError("outlier_ratio needs one input-norm vector per weight matrix, and at least one matrix.")
    # Computed where the weights are (the block's execution device); only the count comes back to the host.
    device = weights[0].device
    scores = torch.cat(
        [
            (w.detach().to(device).abs().float() * n.to(device=device, dtype=torch.float32).unsqueeze(0)).flatten()
            for w, n in zip(weights, input_norms)
        ]
    )
    threshold = scores.mean() * m
    return 100.0 * float((scores > threshold).sum()) / scores.numel()


def owl_sparsities(ratios: Sequence[float], sparsity: float, lam: float) -> list[float]:
    """OWL's per-block sparsities from the blocks' outlier ratios.

    The ratios are scaled linearly onto [0, 2 lam] (the largest ratio maps to 2 lam), centred on their unweighted
    mean and subtracted from the target: block sparsity = sparsity - (scaled - mean(scaled)), so the mean over
    blocks is the target and every block is within lam of it. Equal ratios give the uniform allocation. This is the
    reference implementation's arithmetic, which llm-compressor 0.14 repeats.
    """
    if not ratios:
        return []
    low, high = min(ratios), max(ratios)
    if high == low:
        return [float(sparsity)] * len(ratios)
    scaled = [(r - low) / (high - low) * lam * 2 for r in ratios]
    mean = sum(scaled) / len(scaled)
    return [float(sparsity - (s - mean)) for s in scaled]


@torch.no_grad()
def obs_error_curve(weight: torch.Tensor, gram: torch.Tensor, damp: float, grid: torch.Tensor) -> torch.Tensor:
    """Predicted relative output error of one matrix at each sparsity of `grid`, every row pruned alike.

    Args:
        weight: [out_features, in_features].
        gram: the inputs' Gram matrix X^T X over the calibration tokens, [in_features, in_features] (float64 is best).
        damp: ridge damping, as a fraction of the mean diagonal (the solvers' `damp`).
        grid: sparsities in [0, 1), [G].

    Returns:
        [G] float64, on the CPU (a short curve for `allocate_by_error`, whatever device `weight` is on): for each
        sparsity s, the sum over rows of the floor(s x in_features) smallest OBS saliencies w_ij^2 / [H^-1]_jj
        (H = gram + damping), divided by the output energy tr(W H W^T). Zero at s = 0.
    """
    w = weight.detach().to(torch.float64)
    h = gram.detach().to(device=w.device, dtype=torch.float64).clone()
    in_features = w.shape[1]
    dead = torch.diagonal(h) == 0
    h[dead, dead] = 1.0
    diagonal = torch.diagonal(h)
    diagonal += damp * diagonal.mean()
    energy = float((w @ h * w).sum())
    chol, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:  # not positive definite even after damping: fall back to the diagonal (Wanda's view)
        inverse_diagonal = 1.0 / torch.diagonal(h)
    else:
        inverse_diagonal = torch.diagonal(torch.cholesky_inverse(chol))
    saliency = (w * w) / inverse_diagonal.unsqueeze(0)
    cumulative = saliency.sort(dim=1).values.cumsum(dim=1).sum(dim=0)  # [in]: error of pruning k+1 per row
    counts = torch.floor(grid.to(device=w.device, dtype=torch.float64) * in_features).long().clamp(0, in_features)
    zero = torch.zeros((), dtype=torch.float64, device=w.device)
    errors = torch.where(counts > 0, cumulative[(counts - 1).clamp_min(0)], zero)
    return (errors / max(energy, torch.finfo(torch.float64).tiny)).cpu()


def allocate_by_error(
    errors: torch.Tensor, sizes: Sequence[int], grid: torch.Tensor, sparsity: float, max_deviation: float
) -> list[float]:
    """Per-block sparsities that remove `sparsity` of all weights with the smallest summed predicted error.

    Args:
        errors: [L, G], block l's predicted error at sparsity grid[g] (any non-decreasing measure in g).
        sizes: prunable weights of each block, [L].
        grid: increasing sparsities, [G]; must reach `sparsity - max_deviation` and `sparsity + max_deviation`.
        sparsity: the budget, as the fraction of all L blocks' weights to remove.
        max_deviation: every block's sparsity stays within this of `sparsity`.

    Returns:
        L sparsities whose size-weighted mean is `sparsity` (to float precision).

    A Lagrange multiplier prices removed weights: each block picks the grid point minimising
    error - price x size x s; bisection finds the least price whose plan meets the budget, and the small excess
    that the grid leaves is taken back evenly from every block.
    """
    num_blocks = errors.shape[0]
    # A small problem, bisected with many reads of its totals: solved on the CPU.
    sizes_t = torch.tensor([float(s) for s in sizes], dtype=torch.float64, device="cpu")
    weights = sizes_t / sizes_t.mean()
    grid = grid.to(device="cpu", dtype=torch.float64)
    allowed = (grid >= sparsity - max_deviation - 1e-9) & (grid <= sparsity + max_deviation + 1e-9)
    if not bool(allowed.any()):
        raise ValueError(f"The grid has no sparsity within {max_deviation} of {sparsity}.")
    errors = errors.to(device="cpu", dtype=torch.float64)
    target = sparsity * float(sizes_t.sum())

    def plan(price: float) -> torch.Tensor:
        cost = errors - price * weights.unsqueeze(1) * grid.unsqueeze(0)
        cost = cost.masked_fill(~allowed.unsqueeze(0), float("inf"))
        return grid[cost.argmin(dim=1)]

    def removed(chosen: torch.Tensor) -> float:
        return float((chosen * sizes_t).sum())

    low, high = 0.0, 1.0
    while removed(plan(high)) < target and high < 1e30:
        high *= 4.0
    for _ in range(200):
        middle = (low + high) / 2
        if removed(plan(middle)) >= target:
            high = middle
        else:
            low = middle
    chosen = plan(high)
    excess = (removed(chosen) - target) / float(sizes_t.sum())
    lowest = max(sparsity - max_deviation, 0.0)
    result = (chosen - excess).clamp_min(lowest)
    # Clamping can only happen to blocks already at the lowest allowed value; put what they could not give back
    # onto the others.
    shortfall = target - removed(result)
    if abs(shortfall) > 1e-9 * target and num_blocks > 1:
        free = result > lowest
        if bool(free.any()):
            result[free] += shortfall / float(sizes_t[free].sum())
    return [float(s) for s in result]
