"""What a pruning run costs, per block, from its plan: FLOPs and bytes, and a projection in seconds.

`plan_cost(model, plan, config, tokens, seqlen)` reads a `PruningPlan` (the object `plan_pruning` returns, which the
run and the dry run share; its `work` says what each block computes) with the layer shapes of `model` (a meta-device
model will do) and counts, per block:

- ``forward``: the calibration passes through the block, ``passes x 2 x tokens x (weights of the block's matrices)``
  plus causal attention, ``2 x tokens x seqlen x query heads x head_dim`` per pass. Passes: structured pruning runs
  one statistics pass per pruned unit kind and one more for the next block's inputs (none after the last block);
  an error-correcting refit (`liar_dense`) runs a dense copy as well (twice the passes); sparsity runs one
  observation pass and one for the next block's inputs. Statistics passes that stop early (`stopping_after`) and
  the pass of the already pruned block are counted at the dense size, and every expert of a mixture-of-experts block
  as if each token reached it: an upper bound, which the fitted coefficient absorbs.
- ``statistics``: the Gram matrices, ``2 x tokens x d_in^2`` per observed input (d_in its width). Structured pruning
  observes each consumer of a pruned kind (``o_proj``, ``down_proj``); sparsity observes each distinct input once
  (``q/k/v`` and ``gate/up`` read the same tensor, `SHARED_INPUTS`); solvers without a Gram matrix (Wanda,
  magnitude) count none.
- the solver, one term per method (``solve_<method>``), leading-order FLOPs of the code in `reconstruction/` and
  `sparsity/`:

  - LIAR (`reconstruction.liar`): per consumer with ``k`` kept and ``p`` pruned input channels and ``rows`` outputs,
    a Cholesky check and an LU solve of the ``k x k`` system (``k^3``), its ``p`` right-hand sides (``2 k^2 p``) and
    the weight update (``2 rows k p``), in float64;
  - SparseGPT (`sparsity.sparsegpt`): per distinct input, the inverse Hessian's Cholesky factor (``d^3``: Cholesky,
    inverse, Cholesky, shared through the solver's cache); per matrix the column sweep, ``rows x d x (d + blocksize)``
    (lazy block updates and the updates inside each block of 128 columns);
  - ADMM, OBS-multi and the rest: ``rows x d^2`` per matrix (the order of a Gram-matrix product), Wanda and
    magnitude ``rows x d`` (a sort per row);
- ``io``: bytes read from the offload folder when the block's weights are offloaded (accelerate hooks with offload), and
  written back when the method changes weights.

A `CostCoefficients` turns the counts into seconds: seconds per FLOP of each term, seconds per byte of I/O and a
fixed ``block`` overhead, fitted by non-negative least squares (`fit_coefficients`) to per-block times measured on
small shapes (``benchmarks/scale.py --fit`` fits the statistics and solver terms to the seconds spent inside those
calls, the rest to the remainder of each block). `DEFAULT_COEFFICIENTS` is that fit on one machine and one CPU core: a projection for
other machines, never a measurement.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .configuration import PruningConfig
from .planning import PlanWork, PruningPlan

__all__ = [
    "DEFAULT_COEFFICIENTS",
    "SHARED_INPUTS",
    "BlockCost",
    "CostCoefficients",
    "PlanCost",
    "fit_coefficients",
    "plan_cost",
]

#: Matrix names that read one tensor with their siblings of the same module (one Gram matrix, one factorisation).
SHARED_INPUTS = frozenset({"q_proj", "k_proj", "v_proj", "gate_proj", "up_proj", "query", "key", "value", "w1", "w3"})
#: SparseGPT's default block of columns (`sparsity.sparsegpt.solve`'s `blocksize`).
SPARSEGPT_BLOCKSIZE = 128


@dataclass
class BlockCost:
    """One block's counts: FLOPs per term, I/O bytes, and the solver term's name (``solve_<method>``)."""

    index: int
    name: str
    forward: float = 0.0
    statistics: float = 0.0
    solver: float = 0.0
    solver_term: str = "solve_none"
    io_bytes: float = 0.0

    @property
    def flops(self) -> float:
        return self.forward + self.statistics + self.solver

    def features(self) -> dict[str, float]:
        """The regressors of the fit: one per coefficient (``block`` is the fixed per-block overhead)."""
        return {
            "block": 1.0,
            "forward": self.forward,
            "statistics": self.statistics,
            self.solver_term: self.solver,
            "io": self.io_bytes,
        }


@dataclass
class CostCoefficients:
    """Seconds per unit of each term (per FLOP; ``io`` per byte; ``block`` per block) and where they come from."""

    seconds: dict[str, float]
    machine: str = "unknown"
    source: str = ""

    def block_seconds(self, block: BlockCost) -> float:
        """The projected seconds of one block; a solver term without a coefficient uses ``solve_default``."""
        total = 0.0
        for term, amount in block.features().items():
            rate = self.seconds.get(term)
            if rate is None and term.startswith("solve_"):
                rate = self.seconds.get("solve_default", 0.0)
            total += (rate or 0.0) * amount
        return total

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": dict(self.seconds), "machine": self.machine, "source": self.source}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CostCoefficients:
        return cls(dict(data["seconds"]), data.get("machine", "unknown"), data.get("source", ""))

    @classmethod
    def load(cls, path: str) -> CostCoefficients:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))


#: `benchmarks/scale.py --fit` (benchmarks/results/cost_model.json): CPU seconds per block of one process with one
#: torch thread on the machine below, fitted on random LLaMAs of hidden 512, 768 and 1024 (2-3 blocks each, GQA 4:1,
#: FFN 3.5 x hidden) pruned structured 20% (activation + LIAR) and 2:4 (SparseGPT) on 4 x 512 tokens, each offloaded
#: beyond a CPU cap of 40% of its weights. ``statistics`` and the solvers are fitted to the seconds spent inside
#: those calls, ``block``, ``forward`` and ``io`` to the rest of each block's time; the offload folders were small
#: enough to stay in the page cache, so ``io`` holds no disk waits. A projection for another machine, model size or
#: placement, not a measurement.
DEFAULT_COEFFICIENTS = CostCoefficients(
    seconds={
        "block": 0.04072,
        "forward": 8.056e-12,
        "io": 1.58e-09,
        "solve_liar": 3.769e-11,
        "solve_sparsegpt": 4.932e-11,
        "statistics": 1.344e-11,
        "solve_default": 4.932e-11,
    },
    machine="one core of an Intel Xeon (2-core cloud VM; the fit's machine)",
    source="benchmarks/scale.py --fit on s512, s768, s1024, 4 x 512 tokens",
)


@dataclass
class PlanCost:
    """The per-block counts of one plan, with the calibration they assume."""

    blocks: list[BlockCost]
    tokens: int
    seqlen: int

    @property
    def flops(self) -> float:
        return sum(block.flops for block in self.blocks)

    def totals(self) -> dict[str, float]:
        return {
            "forward": sum(b.forward for b in self.blocks),
            "statistics": sum(b.statistics for b in self.blocks),
            "solver": sum(b.solver for b in self.blocks),
            "io_bytes": sum(b.io_bytes for b in self.blocks),
        }

    def seconds(self, coefficients: CostCoefficients = DEFAULT_COEFFICIENTS) -> list[float]:
        """Projected seconds per block."""
        return [coefficients.block_seconds(block) for block in self.blocks]

    def remaining_after_first(
        self, first_seconds: float, coefficients: CostCoefficients = DEFAULT_COEFFICIENTS
    ) -> float:
        """Seconds left once the first block took `first_seconds`: that time scaled by each later block's projected
        cost relative to the first's (blocks of a non-uniform plan differ); the coefficients only set the ratios."""
        projected = self.seconds(coefficients)
        if not projected or projected[0] <= 0:
            return first_seconds * (len(projected) - 1)
        return first_seconds * sum(projected[1:]) / projected[0]

    def to_dict(self, coefficients: CostCoefficients = DEFAULT_COEFFICIENTS) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "seqlen": self.seqlen,
            "flops": self.flops,
            **self.totals(),
            "projected_seconds": sum(self.seconds(coefficients)),
            "coefficients": coefficients.to_dict(),
        }


def _attention_shape(model: nn.Module) -> tuple[int, int]:
    """(query heads, head_dim) from the model's (text) config; (0, 0) where it has no attention to count."""
    config = getattr(model, "config", None)
    if config is None:
        return 0, 0
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    head_dim = getattr(config, "head_dim", None) or (hidden // heads if heads and hidden else None)
    return (int(heads), int(head_dim)) if heads and head_dim else (0, 0)


def _block_offloaded(block: nn.Module) -> bool:
    from .pipeline.offload import align_hooks

    return any(h.offload for m in block.modules() for h in align_hooks(m))


def _block_bytes(block: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in block.parameters())


def _dense_forward(block: nn.Module, tokens: int, seqlen: int, heads: int, head_dim: int) -> float:
    from .architectures.weights import find_weight_matrices

    matrices, _ = find_weight_matrices(block, [], skip_routers=False)
    attention = 2.0 * tokens * seqlen * heads * head_dim if any(_is_attention(m.name) for m in matrices) else 0.0
    return 2.0 * tokens * sum(m.numel for m in matrices) + attention


def _is_attention(name: str) -> bool:
    return any(part in name for part in ("attn", "attention"))


def plan_cost(
    model: nn.Module,
    plan: PruningPlan,
    config: PruningConfig | None = None,
    tokens: int | None = None,
    seqlen: int | None = None,
) -> PlanCost | None:
    """The per-block counts of `plan` (see the module docstring) for `tokens` calibration tokens in sequences of
    `seqlen` (default: `num_samples x seqlen`, `seqlen` of `config`, else of the config the plan was made from).
    `model` is the model the plan was made for, before pruning (its shapes; weights may be on the meta device).
    None for depth pruning, which has no per-block solver."""
    calibration = config if config is not None else plan.work
    seqlen = int(seqlen or calibration.seqlen)
    tokens = int(tokens if tokens is not None else calibration.num_samples * seqlen)
    heads, head_dim = _attention_shape(model)
    if plan.structured:
        if any("kept" in entry for entry in plan.layers):
            return None
        blocks = _structured_costs(model, plan, plan.work, tokens, seqlen, heads, head_dim)
    else:
        blocks = _sparsity_costs(model, plan, plan.work, tokens, seqlen, heads, head_dim)
    return PlanCost(blocks, tokens, seqlen)


def _structured_costs(
    model: nn.Module,
    plan: PruningPlan,
    work: PlanWork,
    tokens: int,
    seqlen: int,
    heads: int,
    head_dim: int,
) -> list[BlockCost]:
    from .architectures import get_adapter

    adapter = get_adapter(model)
    uses_data, with_gram, dense = work.reads_data, work.gram, work.dense_copy
    layers = adapter.layers()
    costs = []
    for index, (layer, entry) in enumerate(zip(layers, plan.layers)):
        cost = BlockCost(index, f"layers.{index}", solver_term=f"solve_{work.solver}")
        last = index + 1 == len(layers)
        passes = 0
        seen_kinds: set[str] = set()
        for group in adapter.groups(layer):
            sizes = entry.get(group.kind)
            if sizes is None:
                continue
            pruned = sizes["after"] < sizes["before"]
            if not pruned and not dense:
                continue
            if group.kind not in seen_kinds:
                seen_kinds.add(group.kind)
                passes += 1
            fraction_kept = sizes["after"] / max(sizes["before"], 1)
            for consumer in group.consumers:
                module = layer.get_submodule(consumer)
                rows, width = _shape(module)
                if uses_data and with_gram:
                    cost.statistics += 2.0 * tokens * width * width * (2 if dense else 1)
                kept = round(width * fraction_kept)
                removed = width - kept
                if work.solver != "none" and uses_data and (removed or dense):
                    cost.solver += float(kept) ** 3 + 2.0 * kept * kept * removed + 2.0 * rows * kept * removed
        if uses_data:
            passes += 0 if last else 1
            cost.forward = passes * (2 if dense else 1) * _dense_forward(layer, tokens, seqlen, heads, head_dim)
        if _block_offloaded(layer):
            cost.io_bytes = 2.0 * _block_bytes(layer)
        costs.append(cost)
    return costs


def _shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a Linear-like consumer (stacked experts: per expert, times experts for the rows)."""
    weight = getattr(module, "weight", None)
    if weight is not None and weight.ndim == 2:
        return int(weight.shape[0]), int(weight.shape[1])
    out_features = getattr(module, "out_features", None)
    in_features = getattr(module, "in_features", None)
    if in_features is not None:
        return int(out_features or in_features), int(in_features)
    raise ValueError(f"Cannot read the shape of consumer {type(module).__name__}.")


def _sparsity_costs(
    model: nn.Module,
    plan: PruningPlan,
    work: PlanWork,
    tokens: int,
    seqlen: int,
    heads: int,
    head_dim: int,
) -> list[BlockCost]:
    from .architectures.weights import find_weight_matrices

    method, uses_data, gram = work.solver, work.reads_data, work.gram
    costs = []
    for position, entry in enumerate(plan.layers):
        block = model.get_submodule(entry["block"])
        cost = BlockCost(position, entry["block"], solver_term=f"solve_{method}")
        matrices, _ = find_weight_matrices(block, [])  # the plan's modules leave out what the config excludes
        planned = [m for m in matrices if m.name in entry["modules"]]
        inputs: dict[tuple[str, ...], int] = {}
        for matrix in planned:
            inputs.setdefault(_input_key(matrix.name), matrix.in_features)
        if gram:
            cost.statistics = sum(2.0 * tokens * width * width for width in inputs.values())
        for matrix in planned:
            width = matrix.in_features
            rows = matrix.numel // width
            if method == "sparsegpt":
                cost.solver += rows * width * (width + float(SPARSEGPT_BLOCKSIZE))
            elif method in ("wanda", "magnitude"):
                cost.solver += float(rows) * width
            else:
                cost.solver += float(rows) * width * width
        if method == "sparsegpt" and uses_data:
            cost.solver += sum(float(width) ** 3 for width in inputs.values())
        if uses_data:
            last = position + 1 == len(plan.layers)
            cost.forward = (1 if last else 2) * _dense_forward(block, tokens, seqlen, heads, head_dim)
        if _block_offloaded(block):
            cost.io_bytes = 2.0 * _block_bytes(block)
        costs.append(cost)
    return costs


def _input_key(name: str) -> tuple[str, ...]:
    """Matrices with one key read one input tensor (`SHARED_INPUTS`); any other matrix has its own."""
    parent, _, leaf = name.rpartition(".")
    return (parent, "shared") if leaf in SHARED_INPUTS else (name,)


def fit_coefficients(
    features: Sequence[Mapping[str, float]], seconds: Sequence[float], terms: Sequence[str] | None = None
) -> dict[str, float]:
    """Non-negative least squares: seconds per unit of each term so that ``sum(rate x amount)`` matches `seconds`.

    Each column is scaled to unit norm before solving (FLOPs and the per-block constant differ by 10 orders of
    magnitude); a term that is zero in every row gets rate 0.
    """
    import numpy as np
    from scipy.optimize import nnls

    if len(features) != len(seconds) or not features:
        raise ValueError("fit_coefficients needs one time per feature row, and at least one row.")
    names = list(terms) if terms is not None else sorted({key for row in features for key in row})
    matrix = np.array([[float(row.get(name, 0.0)) for name in names] for row in features], dtype=np.float64)
    scale = np.linalg.norm(matrix, axis=0)
    used = scale > 0
    solution = np.zeros(len(names))
    if used.any():
        scaled, _ = nnls(matrix[:, used] / scale[used], np.asarray(seconds, dtype=np.float64))
        solution[used] = scaled / scale[used]
    return {name: float(value) for name, value in zip(names, solution)}


def describe_minutes(seconds: float) -> str:
    """ "12 minutes", "3.5 minutes", "0.042 minutes", "2.1 hours": a projection's readable size."""
    minutes = seconds / 60
    if minutes >= 120:
        return f"{minutes / 60:.1f} hours"
    if minutes >= 10:
        return f"{minutes:.0f} minutes"
    return f"{minutes:.1f} minutes" if minutes >= 1 else f"{max(minutes, 0.0):.2g} minutes"


@dataclass
class _EtaLogger:
    """Logs once, after the first block of the run that changes weights: the time left, projected from that block.

    Registered by `prune()` through `pipeline.block_timings`; `remaining_after_first` scales the first block's wall
    time by the plan's per-block ratios.
    """

    cost: PlanCost
    log: Any
    coefficients: CostCoefficients = field(default_factory=lambda: DEFAULT_COEFFICIENTS)
    done: bool = False

    def __call__(self, timing: Any) -> None:
        if self.done or not timing.changes_weights or timing.index != 0:
            return
        self.done = True
        if timing.count != len(self.cost.blocks) or timing.count < 2:
            return
        left = self.cost.remaining_after_first(timing.wall_seconds, self.coefficients)
        if math.isfinite(left) and left > 0:
            self.log(
                "about %s left on this machine (%d blocks, %s s for the first)",
                describe_minutes(left),
                timing.count,
                f"{timing.wall_seconds:.1f}" if timing.wall_seconds >= 1 else f"{timing.wall_seconds:.2g}",
            )
