"""Multi-weight OBS pruning (APT; Zhao et al., EMNLP 2024, "Pruning Foundation Models for High Accuracy without
Retraining").

Instead of removing one weight at a time, each row removes a whole set ``q`` of weights at once with the closed-form
update ``delta = -w_q [H^-1]_qq^-1 [H^-1]_{q,:}``, which is the exact optimum for the remaining weights. Doing that for
a whole row at once is a per-row least-squares problem of the row's size, so, like SparseGPT, columns are processed
left to right in groups that are frozen once handled, and updates to later blocks are applied lazily.

Working on the group ``S = [j1, j2)`` after columns ``< j1`` are frozen, the inverse Hessian of the live columns is
``R = U[j1:, j1:]^T U[j1:, j1:]`` with ``U^T U = H^-1`` (upper Cholesky factor). Because ``U`` is upper triangular,
``R_qq = U_Sq^T U_Sq`` and ``R_{q,:} = U_Sq^T U[S, j1:]`` for ``q`` inside ``S``, so the update of a row is
``-e U[S, j1:]`` with ``e = U_Sq (U_Sq^T U_Sq)^-1 w_q``: one small solve per row, then one matmul for all rows.
"""

from __future__ import annotations

import torch

from .admm import least_squares_refit
from .base import (
    SparsityPattern,
    check_layer,
    dense_result,
    finalise,
    select_mask,
    select_mask_with_counts,
    shared_inverse_hessian_cholesky,
)

__all__ = ["solve", "obs_group_update"]


def obs_group_update(w_group: torch.Tensor, u_group: torch.Tensor, keep_group: torch.Tensor) -> torch.Tensor:
    """Per-row error vectors ``e`` (``[rows, |S|]``) that prune ``~keep_group`` jointly within the group ``S``.

    ``u_group`` is ``U[S, S]`` (upper triangular); the caller applies ``W[:, j1:] -= e @ U[S, j1:]``. Rows may prune
    different numbers of weights: missing slots are padded with an identity so they solve to zero.
    """
    rows, size = w_group.shape
    prune = ~keep_group
    counts = prune.sum(1)
    kmax = int(counts.max().item()) if rows else 0
    if kmax == 0:
        return torch.zeros_like(w_group)
    order = torch.sort((~prune).to(torch.uint8), dim=1, stable=True).indices[:, :kmax]
    valid = (torch.arange(kmax, device=w_group.device).unsqueeze(0) < counts.unsqueeze(1)).to(w_group.dtype)
    # a[r] = U[S, q_r] as a [size, kmax] matrix, with padded columns zeroed.
    a = u_group.T[order] * valid.unsqueeze(2)  # [rows, kmax, size]
    gram_q = a @ a.transpose(1, 2) + torch.diag_embed(1.0 - valid)
    w_q = torch.gather(w_group, 1, order) * valid
    factor, info = torch.linalg.cholesky_ex(gram_q)
    if bool((info != 0).any()):
        x = torch.linalg.lstsq(gram_q, w_q.unsqueeze(2)).solution
    else:
        x = torch.cholesky_solve(w_q.unsqueeze(2), factor)
    return (a.transpose(1, 2) @ x).squeeze(2)


def solve(
    weight: torch.Tensor,
    gram: torch.Tensor,
    pattern: SparsityPattern,
    *,
    damp: float = 0.01,
    blocksize: int = 128,
    groupsize: int | None = None,
    dtype: torch.dtype = torch.float32,
    allocation: str = "row",
    refit: str = "cg",
    cg_tol: float = 1e-3,
    cache: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` with blocked multi-weight OBS; returns ``(new_weight, keep_mask)``.

    ``damp`` adds ``damp * mean(diag(G))`` to the Hessian diagonal (as SparseGPT). Columns are handled in groups of
    ``groupsize`` (default ``blocksize``; larger groups measured better than SparseGPT-like small ones); inside a group each row chooses the weights
    with the lowest OBS saliency ``w_j^2 / R_jj`` (per row, or per N:M group of ``m`` columns) and removes them jointly.
    Updates to columns beyond the current block of ``blocksize`` columns are deferred and applied once per block.

    ``allocation`` (unstructured only): ``"row"`` ranks each whole row by ``w_j^2 / [H^-1]_jj`` up front to decide how
    many weights each group removes, so rows keep exactly the target count while blocks may differ; ``"uniform"``
    removes the same share from every group.

    The blocked sweep is an approximation: a group's update only reaches columns to its right, and earlier groups
    are frozen, so a row does not end at the least-squares optimum of its own mask (on SmolLM2 layers the optimum
    of the same mask has a lower layer error). ``refit`` replaces the weights by that optimum:
    ``"cg"`` (default) warm-started conjugate gradients to relative residual ``cg_tol``, ``"exact"`` the direct
    per-row solve, ``"none"`` keeps the sweep's weights (APT's method alone). On SmolLM2's layer 12 the CG refit
    lowered the held-out layer error from 0.93 to 0.86 of SparseGPT's at 50% and from 0.99 to 0.91 at 2:4
    (``benchmarks/solvers.py``), for about a fifth more solver time. The refit minimises the layer error with the damping
    ``damp`` taken relative to each input's energy (as ADMM's, see :func:`admm.least_squares_refit`).
    ``cache``: a dict shared by the modules that read the same input, so the Hessian work runs once per input.
    """
    if refit not in ("none", "cg", "exact"):
        raise ValueError(f"refit must be 'none', 'cg' or 'exact', got {refit!r}")
    if allocation not in ("row", "uniform"):
        raise ValueError(f"allocation must be 'row' or 'uniform', got {allocation!r}")
    check_layer(weight, gram, pattern)
    if pattern.is_dense:
        return dense_result(weight)
    if blocksize < 1:
        raise ValueError(f"blocksize must be positive, got {blocksize}")
    if groupsize is None:
        groupsize = blocksize
    if groupsize < 1:
        raise ValueError(f"groupsize must be positive, got {groupsize}")
    if pattern.is_nm:
        # Neither a mask group nor an N:M group may straddle a block boundary.
        groupsize = max(pattern.m, groupsize - groupsize % pattern.m)
    blocksize = max(groupsize, blocksize - blocksize % groupsize)
    device = weight.device
    rows, cols = weight.shape

    u = shared_inverse_hessian_cholesky(cache, gram.to(device), damp, dtype)
    w = weight.detach().to(dtype=dtype, copy=True)
    w[:, torch.diagonal(gram).to(device) <= 0] = 0
    keep = torch.ones(rows, cols, dtype=torch.bool, device=device)
    cumulative = None
    if allocation == "row" and not pattern.is_nm:
        # A per-row ranking by OBS saliency over the whole row (diag(H^-1) = column norms of U) decides how many
        # weights each block gives up; which ones is decided later, on the updated weights.
        row_keep = select_mask(w.pow(2) / u.pow(2).sum(0).unsqueeze(0), pattern)
        cumulative = (~row_keep).to(torch.int64).cumsum(1)

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        err = torch.zeros(rows, i2 - i1, dtype=dtype, device=device)
        for j1 in range(i1, i2, groupsize):
            j2 = min(j1 + groupsize, i2)
            u_s = u[j1:j2, j1:j2]
            w_s = w[:, j1:j2]
            saliency = w_s.pow(2) / u_s.pow(2).sum(0).unsqueeze(0)
            if pattern.is_nm:
                keep_s = select_mask(saliency, pattern)
            else:
                if cumulative is None:
                    count = pattern.num_pruned(j2) - pattern.num_pruned(j1)
                else:
                    count = cumulative[:, j2 - 1] - (cumulative[:, j1 - 1] if j1 else 0)
                keep_s = select_mask_with_counts(saliency, count)
            e = obs_group_update(w_s, u_s, keep_s)
            w[:, j1:i2] -= e @ u[j1:j2, j1:i2]
            # The update zeroes the pruned weights analytically; make it exact.
            w[:, j1:j2].masked_fill_(~keep_s, 0)
            keep[:, j1:j2] = keep_s
            err[:, j1 - i1 : j2 - i1] = e
        w[:, i2:] -= err @ u[i1:i2, i2:]

    if refit != "none":
        method = "cg" if refit == "cg" else "auto"
        w = least_squares_refit(
            weight, gram, keep, damp, dtype=dtype, method=method, initial=w, cg_tol=cg_tol, cache=cache
        )
    return finalise(w, keep, weight)
