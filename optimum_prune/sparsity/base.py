"""Shared pieces of the layer-wise sparsity solvers: the sparsity pattern, mask selection and Gram-matrix helpers.

Conventions used by every solver in this package:

* ``weight`` is a linear layer's weight, shape ``[out_features, in_features]``; the layer computes ``y = W x``.
* ``gram`` is ``sum_t x_t x_t^T`` over the calibration tokens, shape ``[in_features, in_features]``.
* The layer-wise objective is ``||(W - W_hat) X||_F^2 = trace((W - W_hat) G (W - W_hat)^T)``.
* A mask is a boolean tensor shaped like ``weight`` that is ``True`` for weights that are KEPT.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

__all__ = [
    "SparsityPattern",
    "select_mask",
    "select_mask_with_counts",
    "dead_inputs",
    "damped_hessian",
    "damped_inverse_hessian",
    "inverse_hessian_cholesky",
    "normalise_gram",
    "layer_reconstruction_error",
    "check_layer",
    "cholesky_with_jitter",
    "dense_result",
    "finalise",
    "shared",
    "shared_inverse_hessian_cholesky",
]

# Guards floor(sparsity * columns) against binary round-off, e.g. 0.29 * 100 == 28.999999999999996.
_COUNT_EPS = 1e-6

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


@dataclass(frozen=True)
class SparsityPattern:
    """Which weights a solver has to remove.

    Either unstructured (``n == m == 0``): every output row loses exactly ``floor(sparsity * in_features)`` weights
    (``mask_scope="layer"`` keeps that total for the matrix but lets rows differ);
    or N:M (``n > 0``): every group of ``m`` consecutive input weights of a row has exactly ``n`` zeros, so "2:4"
    keeps 2 of every 4 weights and "4:8" keeps 4 of every 8.
    """

    sparsity: float = 0.0
    n: int = 0
    m: int = 0

    def __post_init__(self) -> None:
        if self.n or self.m:
            if not (isinstance(self.n, int) and isinstance(self.m, int)) or not 0 < self.n < self.m:
                raise ValueError(
                    f"N:M sparsity needs integers 0 < N < M (N zeros in every group of M weights), got {self.n}:{self.m}"
                )
            # The fraction removed is implied by N:M; store it so callers can read a single number.
            object.__setattr__(self, "sparsity", self.n / self.m)
        elif (
            not isinstance(self.sparsity, (int, float))
            or isinstance(self.sparsity, bool)
            or not 0.0 <= float(self.sparsity) < 1.0
        ):
            raise ValueError(f"sparsity must be a number in [0, 1), got {self.sparsity!r}")

    @classmethod
    def parse(cls, target: str, sparsity: float = 0.5) -> SparsityPattern:
        """Build a pattern from a target string: ``"unstructured"`` (uses ``sparsity``) or ``"N:M"`` such as ``"2:4"``.

        For an N:M target the fraction removed is ``N / M``; ``sparsity`` is still range-checked but otherwise unused.
        """
        if not isinstance(sparsity, (int, float)) or isinstance(sparsity, bool) or not 0.0 <= float(sparsity) < 1.0:
            raise ValueError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
        if not isinstance(target, str):
            raise ValueError(f"sparsity target must be a string ('unstructured' or 'N:M'), got {target!r}")
        if target.strip().lower() == "unstructured":
            return cls(sparsity=float(sparsity))
        match = _NM_RE.match(target)
        if match is None:
            raise ValueError(
                f"unknown sparsity target {target!r}: expected 'unstructured' or 'N:M' with integers N < M, e.g. '2:4'"
            )
        n, m = int(match.group(1)), int(match.group(2))
        if not 0 < n < m:
            raise ValueError(f"N:M sparsity needs 0 < N < M (N zeros in every group of M weights), got {target!r}")
        return cls(n=n, m=m)

    @property
    def is_nm(self) -> bool:
        return self.m > 0

    @property
    def is_dense(self) -> bool:
        """True when nothing has to be removed."""
        return not self.is_nm and self.sparsity == 0.0

    @property
    def target(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else "unstructured"

    def num_pruned(self, columns: int) -> int:
        """Weights removed from one row among its first ``columns`` inputs (cumulative, so block counts add up)."""
        if self.is_nm:
            return (columns // self.m) * self.n + min(columns % self.m, self.n)
        return int(math.floor(self.sparsity * columns + _COUNT_EPS))

    def check_columns(self, in_features: int) -> None:
        if self.is_nm and in_features % self.m:
            raise ValueError(f"{self.target} sparsity needs in_features divisible by {self.m}, got {in_features}")

    def __str__(self) -> str:
        return self.target if self.is_nm else f"unstructured({self.sparsity:g})"


def select_mask_with_counts(scores: torch.Tensor, counts: torch.Tensor | int) -> torch.Tensor:
    """Keep mask that removes, in each row, the ``counts[row]`` entries with the lowest score."""
    rows, cols = scores.shape
    keep = torch.ones(rows, cols, dtype=torch.bool, device=scores.device)
    if isinstance(counts, int):
        if counts > 0:
            idx = torch.topk(scores, counts, dim=1, largest=False).indices
            keep.scatter_(1, idx, False)
        return keep
    counts = counts.to(scores.device)
    kmax = int(counts.max().item()) if counts.numel() else 0
    if kmax == 0:
        return keep
    idx = torch.topk(scores, kmax, dim=1, largest=False).indices
    # topk returns ascending scores, so the first counts[row] columns are the ones to drop.
    drop = torch.arange(kmax, device=scores.device).unsqueeze(0) < counts.unsqueeze(1)
    keep.scatter_(1, idx, ~drop)
    return keep


def select_mask(scores: torch.Tensor, pattern: SparsityPattern) -> torch.Tensor:
    """Boolean mask of weights to KEEP: the lowest ``scores`` are pruned, per output row or per N:M group.

    Every row loses exactly ``pattern.num_pruned(in_features)`` weights; ties are broken arbitrarily but never change
    the count. NaN scores are treated as the lowest possible.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be 2-D [out_features, in_features], got shape {tuple(scores.shape)}")
    rows, cols = scores.shape
    scores = torch.nan_to_num(scores.float(), nan=-math.inf)
    if pattern.is_nm:
        pattern.check_columns(cols)
        grouped = scores.reshape(rows, cols // pattern.m, pattern.m)
        idx = torch.topk(grouped, pattern.n, dim=2, largest=False).indices
        keep = torch.ones_like(grouped, dtype=torch.bool)
        keep.scatter_(2, idx, False)
        return keep.reshape(rows, cols)
    return select_mask_with_counts(scores, pattern.num_pruned(cols))


def check_layer(
    weight: torch.Tensor, gram: torch.Tensor, pattern: SparsityPattern | None = None, diagonal_ok: bool = False
) -> None:
    """Raise ValueError unless ``weight`` is ``[out, in]`` and ``gram`` is ``[in, in]`` (and fits the pattern).

    With ``diagonal_ok`` a 1-D ``gram`` of ``in`` entries (the diagonal alone) passes too.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    cols = weight.shape[1]
    if gram.dim() == 1 and diagonal_ok:
        if gram.shape[0] != cols:
            raise ValueError(
                f"gram diagonal must have {cols} entries for a weight of shape {tuple(weight.shape)}, "
                f"got {tuple(gram.shape)}"
            )
    elif tuple(gram.shape) != (cols, cols):
        raise ValueError(
            f"gram must be [{cols}, {cols}] for a weight of shape {tuple(weight.shape)}, got {tuple(gram.shape)}"
        )
    if pattern is not None:
        if not isinstance(pattern, SparsityPattern):
            raise ValueError(f"pattern must be a SparsityPattern, got {type(pattern).__name__}")
        pattern.check_columns(cols)


def dead_inputs(gram: torch.Tensor) -> torch.Tensor:
    """Inputs that never fired on the calibration data (zero diagonal); their weights do not affect the output."""
    return torch.diagonal(gram) <= 0


def damped_hessian(gram: torch.Tensor, damp: float = 0.01, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``G + damp * mean(diag(G)) * I`` with dead inputs given a unit diagonal, so it is invertible (SparseGPT)."""
    hessian = gram.to(dtype=dtype, copy=True)
    dead = dead_inputs(hessian)
    hessian[dead, :] = 0
    hessian[:, dead] = 0
    diag = torch.diagonal(hessian)
    diag[dead] = 1
    live = diag[~dead]
    scale = live.mean() if live.numel() else torch.ones((), dtype=dtype, device=hessian.device)
    diag.add_(damp * scale)
    return hessian


def cholesky_with_jitter(matrix: torch.Tensor, what: str = "matrix") -> torch.Tensor:
    """Lower Cholesky factor of a (batch of) symmetric matrices.

    Round-off can make a PSD Gram matrix look indefinite (e.g. fewer calibration tokens than inputs and no damping),
    so on failure jitter of 1e-8 to 1 times the mean diagonal is added until the factorisation succeeds.
    """
    factor, info = torch.linalg.cholesky_ex(matrix)
    if not bool((info != 0).any()):
        return factor
    scale = torch.diagonal(matrix, dim1=-2, dim2=-1).abs().mean(-1).clamp_min(1e-12)
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    for exponent in range(-8, 1):
        jitter = (10.0**exponent) * scale
        factor, info = torch.linalg.cholesky_ex(matrix + jitter[..., None, None] * eye)
        if not bool((info != 0).any()):
            return factor
    raise ValueError(f"{what} is not positive definite even with jitter; is the Gram matrix finite?")


def damped_inverse_hessian(gram: torch.Tensor, damp: float = 0.01, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Inverse of :func:`damped_hessian`, via a Cholesky factorisation."""
    return torch.cholesky_inverse(cholesky_with_jitter(damped_hessian(gram, damp, dtype), "damped Hessian"))


def inverse_hessian_cholesky(
    gram: torch.Tensor, damp: float = 0.01, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Upper factor ``U`` with ``U^T U = H^-1`` for the damped Hessian ``H``.

    Row ``i`` of ``U`` restricted to columns ``>= i`` carries the inverse of ``H[i:, i:]``: with ``U^T U = H^-1``,
    ``(H[i:, i:])^-1 = U[i:, i:]^T U[i:, i:]``. That is what lets SparseGPT-style solvers freeze columns left to
    right without refactorising.
    """
    inverse = damped_inverse_hessian(gram, damp, dtype)
    return cholesky_with_jitter(inverse, "inverse Hessian").mH


def normalise_gram(
    weight: torch.Tensor, gram: torch.Tensor, damp: float, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rescale inputs to unit energy: ``G_n = D^-1 G D^-1 + damp * I`` and ``W_n = W D`` with ``D = sqrt(diag(G))``.

    The least-squares problem is unchanged by the rescaling, but ``G_n`` is far better conditioned and the damping
    becomes relative to each input's energy (``G + damp * diag(G)`` in the original scale). Dead inputs get
    ``D = 1``, a unit diagonal and zero weight, so they are the first to be pruned and never matter.

    Returns ``(weight_n, gram_n_damped, scale, dead)``.
    """
    g = gram.to(dtype=dtype, copy=True)
    dead = dead_inputs(g)
    g[dead, :] = 0
    g[:, dead] = 0
    scale = torch.sqrt(torch.diagonal(g).clamp_min(0))
    scale[dead] = 1
    g.div_(scale.unsqueeze(0)).div_(scale.unsqueeze(1))
    diag = torch.diagonal(g)
    diag[dead] = 1
    diag.add_(damp)
    w = weight.to(dtype=dtype) * scale.unsqueeze(0)
    w[:, dead] = 0
    return w, g, scale, dead


def layer_reconstruction_error(weight: torch.Tensor, new_weight: torch.Tensor, gram: torch.Tensor) -> float:
    """``||(W - W_hat) X||_F^2 = trace((W - W_hat) G (W - W_hat)^T)``, computed in float64 from the Gram matrix."""
    delta = weight.double() - new_weight.to(device=weight.device, dtype=torch.float64)
    g = gram.to(device=weight.device, dtype=torch.float64)
    return float(((delta @ g) * delta).sum())


def finalise(new_weight: torch.Tensor, keep: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero pruned entries exactly and return ``(new_weight, keep)`` in ``like``'s dtype and device."""
    keep = keep.to(device=like.device, dtype=torch.bool)
    out = torch.where(
        keep, new_weight.to(device=like.device), torch.zeros((), dtype=new_weight.dtype, device=like.device)
    )
    return out.to(dtype=like.dtype), keep


def dense_result(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What every solver returns for a pattern that removes nothing: the weight itself, all kept."""
    return weight.clone(), torch.ones(weight.shape, dtype=torch.bool, device=weight.device)


_T = TypeVar("_T")


def shared(cache: dict | None, key: tuple, compute: Callable[[], _T]) -> _T:
    """``compute()``, or its earlier result stored in ``cache`` under ``key``.

    Modules that read the same input (q/k/v, gate/up) share one Gram matrix; a caller that passes one dict to the
    solver calls of such a group lets the Gram-only work (damping, factorisations, inverses) run once. Solvers put
    the Gram matrix's storage address in ``key``, so a dict reused with another Gram matrix cannot return a stale
    factor while both are alive.
    """
    if cache is None:
        return compute()
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def shared_inverse_hessian_cholesky(
    cache: dict | None, gram: torch.Tensor, damp: float, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """:func:`inverse_hessian_cholesky`, computed once per Gram matrix and options when ``cache`` is shared."""
    key = ("inverse_hessian_cholesky", gram.data_ptr(), damp, dtype, gram.device)
    return shared(cache, key, lambda: inverse_hessian_cholesky(gram, damp, dtype))
