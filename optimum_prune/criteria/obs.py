"""Structured OBS cost: rank units by the output error that remains after the least-squares refit.

Removing the set S of a consumer's input channels and refitting the kept columns (and the bias) by least squares
on the calibration inputs leaves the error

    cost(S) = tr(W_S ((H^-1)_SS)^-1 W_S^T),    H = [X 1]^T [X 1] (+ ridge on the X block),

the structured Optimal Brain Surgeon cost (Hassibi & Stork 1993; ZipLM, Kurtic et al. 2023; SlimGPT, Ling et al.
2024). The constant input 1 is never removed, so the bias absorbs the pruned channels' mean exactly as LIAR's
intercept does: with `damp=0` the cost of a set equals the squared error of the consumer's output after LIAR's refit.

Units are chosen greedily, as in ZipLM: the cheapest units are removed, W and H^-1 are updated as if they were
gone (W -= W_S (H^-1_SS)^-1 H^-1_S:, H^-1 -= H^-1_:S (H^-1_SS)^-1 H^-1_S:), and the costs are recomputed. The
order of removal is the ranking, so one greedy run serves any keep count. For speed several units go per step
(1/`STEPS` of the units; a single unit at a time for groups of at most `STEPS` units, e.g. attention heads).

A run prunes each layer with two greedy runs: the "obs" allocation's on the unpruned model (its step costs, to 90%
of the units), then the ranking's on the statistics of the model as pruned so far (the block's inputs come from the
pruned earlier blocks, the FFN's from the pruned attention), so the second cannot reuse the first's order without
changing what is pruned. What it can skip: the ranking needs only the units that go, so it stops there
(`OBSCriterion.select_units`), and both runs drop the removed channels from H^-1 as they go (`COMPACT_FRACTION`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..pipeline.statistics import InputStatistics
from .base import Criterion

if TYPE_CHECKING:
    from ..architectures import UnitGroup

#: Greedy steps over a whole group (units removed per step = ceil(units / STEPS)).
STEPS = 128
#: The greedy stops once this fraction of the units is gone; the rest are ranked by their last single costs.
MAX_REMOVED_FRACTION = 0.9


def augmented_inverse_gram(stats: InputStatistics, damp: float) -> torch.Tensor:
    """(H + ridge)^-1 for H = [X 1]^T [X 1], float64, [n + 1, n + 1]; the ridge (relative, as LIAR's) skips the 1."""
    if stats.gram is None:
        raise ValueError("The OBS cost needs the input Gram matrix of the consumer layer.")
    n = stats.num_features
    h = stats.augmented_gram()
    ridge = damp * torch.diagonal(stats.gram).mean().clamp_min(1e-12)
    h.diagonal()[:n] += ridge  # in place: `ridge * eye(n)` was two more [n, n] temporaries (and adds only zeros)
    try:
        return torch.cholesky_inverse(torch.linalg.cholesky(h))
    except RuntimeError:  # not positive definite (dead channels with damp=0): the pseudo-inverse still ranks
        return torch.linalg.pinv(h, hermitian=True)


def solve_blocks(blocks: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """`torch.linalg.solve(blocks, rhs)` for a batch [u, c, c] of systems, [u, c, k] -> [u, c, k].

    On CPU with more than one thread, torch's batched LU (MKL getrf inside a parallel loop over the batch) hangs or
    fails with "Parameter 6 was incorrect on entry to DLASWP" once c exceeds 128 (pytorch/pytorch#142815; seen with
    torch 2.13 on SmolLM2's 192-channel KV groups), so there each system is solved on its own: the same LAPACK calls,
    bitwise the same result as the batched call on one thread.
    """
    if blocks.device.type != "cpu" or torch.get_num_threads() == 1 or blocks.shape[0] < 2:
        return torch.linalg.solve(blocks, rhs)
    return torch.stack([torch.linalg.solve(block, right) for block, right in zip(blocks, rhs)])


def set_cost(weight: torch.Tensor, inverse_gram: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """tr(W_S ((H^-1)_SS)^-1 W_S^T): the refit error of removing input `channels` of `weight` [out, n]."""
    w_s = weight[:, channels].double()
    block = inverse_gram[channels][:, channels]
    return (w_s * torch.linalg.solve(block, w_s.T).T).sum()


@dataclass
class GreedyOBS:
    """The result of a greedy run: units in removal order and the error each step added."""

    order: list[int]
    step_costs: list[float]
    #: The units never removed, cheapest first; in index order (unranked) for a run cut short by `stop_after`.
    remaining: list[int]


#: Drop the removed channels from the greedy's working matrices once they are this fraction of what is held:
#: every step updates all of H^-1 (and W), so keeping the removed rows and columns in it would cost the full size to
#: the end; copying the matrix smaller at every step costs about as much as the update it saves.
COMPACT_FRACTION = 0.125


def greedy_obs(
    weight: torch.Tensor,
    stats: InputStatistics,
    channels_per_unit: int,
    damp: float,
    max_removed_fraction: float = MAX_REMOVED_FRACTION,
    steps: int = STEPS,
    stop_after: int | None = None,
) -> GreedyOBS:
    """Remove units of `channels_per_unit` consecutive input channels of `weight` [out, units * c] greedily.

    Returns the removal order, the joint OBS cost of each step, spread evenly over its units (so `step_costs[i]`
    is the cost of removing `order[i]` given `order[:i]`), and the units never removed (cheapest first).

    With `stop_after`, the run stops at the first step that brings the removed units to at least that many (a
    ranking for a known keep count needs no more); the steps it takes are those of the full run, bit for bit, so
    `order[:stop_after]` is the full run's, and `remaining` is left unranked.

    The removed channels' rows and columns of H^-1 and W are never read again (a step reads and updates only the
    units still there), so they are dropped from the working matrices as the run goes (`COMPACT_FRACTION`): the
    same arithmetic on the entries that are read, on smaller matrices.
    """
    c = channels_per_unit
    num_units = weight.shape[1] // c
    hinv = augmented_inverse_gram(stats, damp)
    n = weight.shape[1]
    device = hinv.device
    w = torch.zeros(weight.shape[0], n + 1, dtype=torch.float64, device=device)
    w[:, :n] = weight.detach().to(device, torch.float64)
    # Which units are left is bookkeeping on the host; the costs and updates run where the Gram matrix is.
    alive = torch.ones(num_units, dtype=torch.bool, device="cpu")
    per_step = max(1, -(-num_units // steps))
    limit = min(num_units - 1, int(max_removed_fraction * num_units))
    # Cut short only where the full run's order alone decides (beyond `limit` the rest is ranked by cost).
    cut = stop_after is not None and stop_after <= limit
    stop = stop_after if cut else limit
    order: list[int] = []
    takes: list[int] = []
    joints: list[torch.Tensor] = []  # read back once at the end: one host synchronisation per step, not two
    offsets = torch.arange(c, device=device)
    # Channel -> its row / column in the working `hinv` and `w` (which hold the channels still there, the constant
    # input last, and the channels removed since the last compaction).
    position = torch.arange(n + 1, device=device)
    held = torch.ones(n + 1, dtype=torch.bool, device=device)  # channels in the working matrices
    removed_held = 0  # removed channels still in them

    def unit_costs(units: torch.Tensor) -> torch.Tensor:
        idx = position[units.to(device)[:, None] * c + offsets[None, :]]  # [u, c]
        blocks = hinv[idx[:, :, None], idx[:, None, :]]  # [u, c, c]
        # index_select, not w[:, idx]: the same copy, [out, u, c] contiguous, without advanced indexing's overhead.
        w_u = w.index_select(1, idx.reshape(-1)).view(w.shape[0], *idx.shape).permute(1, 0, 2)  # [u, out, c]
        if c == 1:
            return w_u.pow(2).sum((1, 2)) / blocks[:, 0, 0].clamp_min(1e-30)
        solved = solve_blocks(blocks, w_u.transpose(1, 2))  # [u, c, out]
        return (w_u.transpose(1, 2) * solved).sum((1, 2))

    while len(order) < stop:
        units = alive.nonzero().squeeze(1)
        costs = unit_costs(units)
        take = min(per_step, limit - len(order))
        chosen = units[torch.topk(costs, take, largest=False).indices.cpu()]
        removed = (chosen.to(device)[:, None] * c + offsets[None, :]).reshape(-1)
        channels = position[removed]
        block = hinv[channels][:, channels]
        w_s = w[:, channels]
        joints.append((w_s * torch.linalg.solve(block, w_s.T).T).sum())
        alive[chosen] = False
        order.extend(chosen.tolist())
        takes.append(take)
        if cut and len(order) >= stop:
            break  # the update would only serve steps that are not taken
        coupling = torch.linalg.solve(block, hinv[channels])  # (H^-1_SS)^-1 H^-1_S:
        _subtract_product(w, w_s, coupling)
        _subtract_product(hinv, hinv[:, channels], coupling)
        w[:, channels] = 0.0
        held[removed] = False
        removed_held += removed.numel()
        if removed_held >= COMPACT_FRACTION * hinv.shape[0]:
            keep = held.nonzero().squeeze(1)
            rows = position[keep]
            hinv = hinv.index_select(0, rows).index_select(1, rows)
            w = w.index_select(1, rows)
            position[keep] = torch.arange(keep.numel(), device=device)
            removed_held = 0
    step_costs: list[float] = []
    for joint, take in zip(torch.stack(joints).tolist() if joints else [], takes):
        step_costs.extend([max(joint, 0.0) / take] * take)
    units = alive.nonzero().squeeze(1)
    if cut:
        return GreedyOBS(order, step_costs, units.tolist())
    remaining = units[torch.argsort(unit_costs(units).cpu())].tolist() if units.numel() else []
    return GreedyOBS(order, step_costs, remaining)


def _subtract_product(target: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """target -= left @ right, in place.

    Fused (`addmm_`) where the inner size is above one: the product of a large H^-1 is a fresh temporary of its
    whole size every step, whose new pages cost several times the arithmetic on a CPU (67 ms against 4 ms for a
    rank-16 update of a 2049^2 matrix). BLAS computes the product and then adds it, so the entries are those of the
    subtraction (alpha = -1 negates exactly); with an inner size of one MKL fuses the multiply into the addition,
    which rounds differently; rank-1 updates come from groups of at most `STEPS` single channels, or a last step
    of one unit, and are small anyway.
    """
    if left.shape[1] == 1:
        return target.sub_(left @ right)
    return target.addmm_(left, right, alpha=-1)


class OBSCriterion(Criterion):
    """criterion="obs": keep the units whose removal would leave the most error after the refit."""

    name = "obs"
    needs_calibration = True
    needs_gram = True
    allocation_modes = ("global", "obs")

    def __init__(self, damp: float = 0.01) -> None:
        self.damp = damp

    def prepare(self, adapter: Any, config: Any, show_progress: bool = True, samples: Any = None) -> OBSCriterion:
        return OBSCriterion(config.damp)

    def greedy(
        self,
        layer: nn.Module,
        group: UnitGroup,
        stats: dict[str, InputStatistics] | None,
        stop_after: int | None = None,
    ) -> GreedyOBS:
        if stats is None:
            raise ValueError("Criterion 'obs' needs calibration data.")
        primary = group.consumers[0]
        weight = layer.get_submodule(primary).weight
        return greedy_obs(weight, stats[primary], group.channels_per_unit, self.damp, stop_after=stop_after)

    def allocation_scores(
        self,
        adapter: Any,
        layer: nn.Module,
        group: UnitGroup,
        stats: dict[str, InputStatistics] | None,
        generator: torch.Generator,
        mode: str,
    ) -> torch.Tensor:
        """Unit scores for "global"; for "obs", the error each greedy removal step leaves (`GreedyOBS.step_costs`)."""
        if mode == "obs":
            return torch.tensor(self.greedy(layer, group, stats).step_costs, dtype=torch.float64, device="cpu")
        return super().allocation_scores(adapter, layer, group, stats, generator, mode)

    def score_units(
        self,
        adapter: Any,
        layer: nn.Module,
        group: UnitGroup,
        stats: dict[str, InputStatistics] | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        return _ranks(self.greedy(layer, group, stats), group.num_units)

    def select_units(
        self,
        adapter: Any,
        layer: nn.Module,
        group: UnitGroup,
        stats: dict[str, InputStatistics] | None,
        generator: torch.Generator,
        keep_count: int,
    ) -> torch.Tensor:
        """The units to keep. Where the adapter keeps the top `keep_count` scores of the group as a whole
        (`keep_multiple` 1), the units that go are the greedy's first `num_units - keep_count`, so the greedy stops
        there (`greedy_obs(stop_after=...)`: the same steps, none after): at 20% sparsity a fifth of the steps
        instead of the 90% a full ranking takes. Groups kept in equal numbers per KV group / SSM group read the
        whole ranking."""
        if group.keep_multiple != 1 or keep_count >= group.num_units:
            return super().select_units(adapter, layer, group, stats, generator, keep_count)
        result = self.greedy(layer, group, stats, stop_after=group.num_units - keep_count)
        # The units removed past the count (the last step's surplus) rank among the kept ones: only the set of the
        # first `num_units - keep_count` ranks lowest, as in the full ranking.
        cut = group.num_units - keep_count
        ranked = result.order[:cut] + result.remaining + result.order[cut:]
        return adapter.select_units(group, _ranks(GreedyOBS(ranked, [], []), group.num_units), keep_count)


def _ranks(result: GreedyOBS, num_units: int) -> torch.Tensor:
    """Scores (higher = kept) from a greedy run: the unit removed first scores 0, and so on."""
    scores = torch.empty(num_units, dtype=torch.float64, device="cpu")  # ranks: host bookkeeping
    ranked = result.order + result.remaining  # first removed first
    scores[torch.tensor(ranked, dtype=torch.long, device="cpu")] = torch.arange(
        len(ranked), dtype=torch.float64, device="cpu"
    )
    return scores


OBS = OBSCriterion()
