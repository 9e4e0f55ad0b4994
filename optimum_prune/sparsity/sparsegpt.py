"""SparseGPT (Frantar & Alistarh 2023): column-by-column OBS pruning with lazy block updates.

Columns are visited left to right. A pruned weight's error is spread over the not-yet-visited columns of its row
through the inverse Hessian of the remaining columns, which the upper Cholesky factor of ``H^-1`` provides row by row.
Updates to columns outside the current block are accumulated and applied once per block ("lazy batch updates").
"""

from __future__ import annotations

import torch

from .base import (
    SparsityPattern,
    check_layer,
    dense_result,
    finalise,
    select_mask,
    select_mask_with_counts,
    shared_inverse_hessian_cholesky,
)

__all__ = ["solve"]


def solve(
    weight: torch.Tensor,
    gram: torch.Tensor,
    pattern: SparsityPattern,
    *,
    damp: float = 0.01,
    blocksize: int = 128,
    dtype: torch.dtype = torch.float32,
    cache: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` with SparseGPT; returns ``(new_weight, keep_mask)``.

    ``damp`` adds ``damp * mean(diag(G))`` to the Hessian diagonal. The mask is chosen inside each block of
    ``blocksize`` columns by ``w^2 / [U]_jj^2`` (U the Cholesky factor of ``H^-1``): for unstructured sparsity each
    row loses its share of the block's columns (so every row ends with exactly the same count), for N:M each group of
    ``m`` columns is chosen when the sweep reaches it, after the updates from earlier columns. ``cache``: a dict
    shared by the modules that read the same input, so the inverse Hessian is factorised once per input.
    """
    check_layer(weight, gram, pattern)
    if pattern.is_dense:
        return dense_result(weight)
    if blocksize < 1:
        raise ValueError(f"blocksize must be positive, got {blocksize}")
    device = weight.device
    rows, cols = weight.shape
    if pattern.is_nm:
        # A group of M columns must never straddle two blocks.
        blocksize = max(pattern.m, blocksize - blocksize % pattern.m)

    hinv = shared_inverse_hessian_cholesky(cache, gram.to(device), damp, dtype)
    w = weight.detach().to(dtype=dtype, copy=True)
    w[:, torch.diagonal(gram).to(device) <= 0] = 0
    keep = torch.ones(rows, cols, dtype=torch.bool, device=device)

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        d = torch.diagonal(hinv1)

        if not pattern.is_nm:
            to_prune = pattern.num_pruned(i2) - pattern.num_pruned(i1)
            keep1 = select_mask_with_counts(w1.pow(2) / d.pow(2).unsqueeze(0), to_prune)
        else:
            keep1 = torch.ones(rows, count, dtype=torch.bool, device=device)

        for i in range(count):
            if pattern.is_nm and i % pattern.m == 0:
                group = w1[:, i : i + pattern.m].pow(2) / d[i : i + pattern.m].pow(2).unsqueeze(0)
                keep1[:, i : i + pattern.m] = select_mask(group, pattern)
            col = w1[:, i]
            q = torch.where(keep1[:, i], col, torch.zeros_like(col))
            err = (col - q) / hinv1[i, i]
            w1[:, i:] -= err.unsqueeze(1) * hinv1[i, i:].unsqueeze(0)
            w1[:, i] = q
            err1[:, i] = err

        w[:, i1:i2] = w1
        keep[:, i1:i2] = keep1
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]

    return finalise(w, keep, weight)
