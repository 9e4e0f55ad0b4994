"""Export 2:4-sparse Linear layers to PyTorch's semi-structured sparse tensors, so Ampere+ GPUs run them faster.

Pruning with ``target="2:4"`` leaves dense weights full of zeros: they take the same memory and time as before.
:func:`export_semi_structured` swaps each Linear weight that follows the 2:4 pattern for a
``torch.sparse.to_sparse_semi_structured`` tensor (half the values plus metadata), whose matmuls use the sparse
tensor cores of NVIDIA GPUs with compute capability 8.0 or newer (A100, RTX 30xx, L4, H100, ...) in float16 or
bfloat16. PyTorch has no such kernels on CPU, so there the export refuses with :class:`SemiStructuredUnsupportedError`
instead of silently producing a slower model.

The hardware format keeps *at most 2 non-zeros in every 4 consecutive weights of a row* (along ``in_features``),
which is what this package's ``"2:4"`` target (2 zeros in every group of 4) produces. The compression does not
check the pattern itself (cuSPARSELt would drop extra non-zeros silently), so every layer is checked first with
:func:`check_nm_pattern`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .base import SparsityPattern

logger = logging.getLogger(__name__)

__all__ = [
    "SEMI_STRUCTURED_DTYPES",
    "NMPatternCheck",
    "SemiStructuredExport",
    "SemiStructuredUnsupportedError",
    "check_model_nm_pattern",
    "check_nm_pattern",
    "check_semi_structured_support",
    "export_semi_structured",
]

#: Weight dtypes that PyTorch's 2:4 kernels accept for floating-point models.
SEMI_STRUCTURED_DTYPES = (torch.float16, torch.bfloat16)
#: Sparse tensor cores arrived with Ampere (sm_80).
MIN_COMPUTE_CAPABILITY = (8, 0)
_SEMI_STRUCTURED = SparsityPattern(n=2, m=4)
_BACKENDS = ("auto", "cusparselt", "cutlass")


class SemiStructuredUnsupportedError(RuntimeError):
    """The model's device, dtype or PyTorch build cannot run 2:4 semi-structured sparse kernels."""


@dataclass(frozen=True)
class NMPatternCheck:
    """How one weight matrix relates to an N:M pattern (``n`` zeros in every group of ``m`` inputs of a row).

    Attributes:
        shape: the weight's shape ``(out_features, in_features)``.
        groups: number of groups of ``m`` consecutive inputs (0 when ``in_features`` is not a multiple of ``m``).
        violations: groups with fewer than ``n`` zeros (i.e. more than ``m - n`` non-zeros).
        divisible: whether ``in_features`` is a multiple of ``m``; the pattern cannot hold otherwise.
    """

    shape: tuple[int, ...]
    groups: int
    violations: int
    divisible: bool

    @property
    def ok(self) -> bool:
        """True when every group has at least ``n`` zeros."""
        return self.divisible and self.violations == 0

    def describe(self, pattern: SparsityPattern) -> str:
        """One line for error messages and reports."""
        if not self.divisible:
            return f"in_features={self.shape[-1]} is not a multiple of {pattern.m}"
        if self.ok:
            return f"follows {pattern.target}"
        return f"{self.violations} of {self.groups} groups of {pattern.m} have fewer than {pattern.n} zeros"


@dataclass
class SemiStructuredExport:
    """Result of :func:`export_semi_structured`.

    Attributes:
        converted: qualified names of the Linear layers whose weight is now semi-structured sparse, in model order.
        skipped: qualified name -> why that Linear was left dense (pattern broken, shape unsupported, excluded).
    """

    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


def _as_pattern(pattern: SparsityPattern | str) -> SparsityPattern:
    if isinstance(pattern, str):
        pattern = SparsityPattern.parse(pattern)
    if not isinstance(pattern, SparsityPattern) or not pattern.is_nm:
        raise ValueError(f"an N:M pattern such as '2:4' is needed, got {pattern!r}")
    return pattern


@torch.no_grad()
def check_nm_pattern(weight: torch.Tensor, pattern: SparsityPattern | str = "2:4") -> NMPatternCheck:
    """Check that every group of ``m`` consecutive inputs of every row of ``weight`` has at least ``n`` zeros.

    Args:
        weight: a 2-D Linear weight ``[out_features, in_features]`` (any dtype and device).
        pattern: ``"N:M"`` or a :class:`SparsityPattern` with ``n`` zeros per group of ``m``.

    Returns:
        An :class:`NMPatternCheck`; ``.ok`` tells whether the pattern holds.
    """
    pattern = _as_pattern(pattern)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D [out_features, in_features], got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if cols % pattern.m:
        return NMPatternCheck(tuple(weight.shape), 0, 0, False)
    zeros = (weight == 0).reshape(rows, cols // pattern.m, pattern.m).sum(dim=2)
    violations = int((zeros < pattern.n).sum())
    return NMPatternCheck(tuple(weight.shape), rows * (cols // pattern.m), violations, True)


def check_model_nm_pattern(
    model: nn.Module, pattern: SparsityPattern | str = "2:4", modules_to_skip: Sequence[str] = ()
) -> dict[str, NMPatternCheck]:
    """:func:`check_nm_pattern` for every ``nn.Linear`` of ``model`` whose name contains none of ``modules_to_skip``.

    Returns:
        Qualified module name -> check, in model order. Layers left dense on purpose (``lm_head``) show up as
        violations, so filter by name or pass ``modules_to_skip`` when asserting on a whole model.
    """
    pattern = _as_pattern(pattern)
    return {
        name: check_nm_pattern(module.weight, pattern)
        for name, module in _linears(model, modules_to_skip)
        if module.weight is not None
    }


def _linears(model: nn.Module, modules_to_skip: Sequence[str]) -> list[tuple[str, nn.Linear]]:
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not any(skip in name for skip in modules_to_skip)
    ]


def _sparse_class(backend: str, device: torch.device) -> type:
    """The PyTorch subclass that compresses weights for ``backend`` ('auto' prefers cuSPARSELt when it is built)."""
    cusparselt = getattr(torch.backends, "cusparselt", None)
    has_cusparselt = bool(cusparselt is not None and cusparselt.is_available())
    if backend == "cusparselt" and not has_cusparselt:
        raise SemiStructuredUnsupportedError(
            "backend='cusparselt' was requested but this PyTorch build has no cuSPARSELt; use backend='cutlass' "
            "(compute capability 8.x only) or install a CUDA build of PyTorch that bundles cuSPARSELt."
        )
    if backend == "cusparselt" or (backend == "auto" and has_cusparselt):
        return torch.sparse.SparseSemiStructuredTensorCUSPARSELT
    # PyTorch's CUTLASS 2:4 kernels are compiled for sm_8x only; Hopper and newer need cuSPARSELt.
    capability = torch.cuda.get_device_capability(device)
    if capability[0] != 8:
        raise SemiStructuredUnsupportedError(
            f"the CUTLASS 2:4 kernels of PyTorch run on compute capability 8.x only, this GPU has "
            f"{capability[0]}.{capability[1]}; use a PyTorch build with cuSPARSELt "
            "(torch.backends.cusparselt.is_available()) and backend='auto' or 'cusparselt'."
        )
    return torch.sparse.SparseSemiStructuredTensorCUTLASS


def check_semi_structured_support(device: torch.device | str, dtype: torch.dtype) -> None:
    """Raise :class:`SemiStructuredUnsupportedError` unless 2:4 kernels run for weights on ``device`` in ``dtype``.

    Needed: a CUDA build of PyTorch, a CUDA device with compute capability >= 8.0 and float16 or bfloat16.
    """
    device = torch.device(device)
    needed = (
        "2:4 semi-structured sparsity needs an NVIDIA GPU with compute capability >= 8.0 (Ampere or newer) and "
        "float16 or bfloat16 weights, e.g. `model.to('cuda', torch.float16)` before exporting"
    )
    if device.type != "cuda":
        raise SemiStructuredUnsupportedError(
            f"{needed}; the weights are on {device}. PyTorch has no semi-structured sparse kernels for "
            f"{device.type}, where 2:4 zeros give no speedup: keep the dense model there."
        )
    if not torch.cuda.is_available():
        raise SemiStructuredUnsupportedError(f"{needed}; this PyTorch build or machine has no usable CUDA device.")
    capability = torch.cuda.get_device_capability(device)
    if capability < MIN_COMPUTE_CAPABILITY:
        raise SemiStructuredUnsupportedError(
            f"{needed}; {torch.cuda.get_device_name(device)} has compute capability {capability[0]}.{capability[1]}."
        )
    if dtype not in SEMI_STRUCTURED_DTYPES:
        raise SemiStructuredUnsupportedError(f"{needed}; the weights are {dtype}.")


@torch.no_grad()
def export_semi_structured(
    model: nn.Module,
    *,
    modules_to_not_convert: Sequence[str] = (),
    backend: str = "auto",
) -> SemiStructuredExport:
    """Replace, in place, the weight of every Linear that follows the 2:4 pattern by a semi-structured sparse tensor.

    Every Linear is checked first; layers that break the pattern (a dense ``lm_head``, say) or whose shape the
    kernels do not accept (dimensions must be multiples of the backend's minimum block, e.g. 16 or 64) are left
    dense and listed in ``skipped``. Before anything changes, the layers to convert must sit on a CUDA device of
    compute capability >= 8.0 in float16 or bfloat16. The converted model is for inference: the sparse weights are
    not trainable and ``save_pretrained`` cannot store them (save the dense pruned checkpoint instead and export
    after loading).

    Args:
        model: the pruned model, already moved to the GPU and cast, e.g. ``model.to("cuda", torch.float16)``.
        modules_to_not_convert: module-name substrings to leave dense.
        backend: ``"auto"`` (cuSPARSELt when this PyTorch has it, else CUTLASS), ``"cusparselt"`` or ``"cutlass"``.

    Returns:
        A :class:`SemiStructuredExport` naming the converted and the skipped layers.

    Raises:
        SemiStructuredUnsupportedError: a layer to convert is on CPU (or another non-CUDA device), on a GPU older
            than Ampere, or not float16 / bfloat16.
    """
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(_BACKENDS)}, got {backend!r}")
    result = SemiStructuredExport()
    to_convert: list[tuple[str, nn.Linear]] = []
    for name, linear in model.named_modules():
        if not isinstance(linear, nn.Linear):
            continue
        if any(skip in name for skip in modules_to_not_convert):
            result.skipped[name] = "excluded by modules_to_not_convert"
            continue
        if isinstance(linear.weight, torch.sparse.SparseSemiStructuredTensor):
            result.skipped[name] = "already semi-structured sparse"
            continue
        check = check_nm_pattern(linear.weight, _SEMI_STRUCTURED)
        if not check.ok:
            result.skipped[name] = check.describe(_SEMI_STRUCTURED)
            continue
        to_convert.append((name, linear))

    if not to_convert:
        logger.warning("No Linear layer follows the 2:4 pattern: nothing converted. Prune with target='2:4' first.")
        return result
    # All-or-nothing: refuse before the first weight changes, so a failure never leaves a half-converted model.
    for _name, linear in to_convert:
        check_semi_structured_support(linear.weight.device, linear.weight.dtype)
    # A model split over several GPUs needs a backend every one of them runs.
    devices = list(dict.fromkeys(linear.weight.device for _name, linear in to_convert))
    sparse_class = [_sparse_class(backend, device) for device in devices][0]
    for name, linear in to_convert:
        reason = _shape_problem(sparse_class, linear.weight)
        if reason is not None:
            result.skipped[name] = reason
            continue
        sparse = sparse_class.from_dense(linear.weight.detach().contiguous())
        linear.weight = nn.Parameter(sparse, requires_grad=False)
        result.converted.append(name)
    logger.info("Converted %d Linear layers to 2:4 semi-structured sparse weights", len(result.converted))
    return result


def _shape_problem(sparse_class: type, weight: torch.Tensor) -> str | None:
    """Why the kernels of ``sparse_class`` cannot take ``weight``'s shape, or None when they can."""
    constraints = sparse_class._DTYPE_SHAPE_CONSTRAINTS.get(weight.dtype)
    if constraints is None:
        return f"{sparse_class.BACKEND} has no kernel for {weight.dtype}"
    rows, cols = weight.shape
    min_rows, min_cols = constraints.sparse_min_rows, constraints.sparse_min_cols
    if rows < min_rows or rows % min_rows or cols < min_cols or cols % min_cols:
        return f"shape {tuple(weight.shape)} is not a multiple of the {sparse_class.BACKEND} block ({min_rows}, {min_cols})"
    return None
