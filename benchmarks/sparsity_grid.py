"""The solver x per-block allocation grid of issue 24, shared by the models it runs on.

`sparsity_classifier.py` (MiniLM, accuracy retention) and `sparsity_mamba.py` (the Mamba fixture, perplexity) run
the same rows: each sparsity x solver x allocation pruned on a fresh copy of the model with `target="unstructured"`,
timed (wall and CPU seconds of `prune()` alone), its peak resident memory recorded, its blocks' zeros counted from
the weights, and its per-block sparsities (the summary's `layer_sparsity`) reported. Only the pruner class, the
metric and the Linear weights that count as the budget differ; `GridModel` carries them.
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from common import MarkdownReport, log, peak_rss

from optimum_prune import PruningConfig

METHODS = ("wanda", "sparsegpt", "admm", "obs_multi")
ALLOCATIONS = ("uniform", "owl", "obs")


@dataclass
class GridModel:
    """What the grid needs to know about one model.

    pruner: `(model copy, tokenizer) -> pruner`; score: `model -> {column: value}`, the metric columns of a row
    (the reference row's too); metric: the column the notes rank rows by; higher_is_better: its direction;
    blocks: `model -> module` whose Linear weights are the unstructured targets (the budget is counted there).
    """

    model: torch.nn.Module
    tokenizer: Any
    pruner: Callable[[torch.nn.Module, Any], Any]
    score: Callable[[torch.nn.Module], dict[str, float]]
    metric: str
    higher_is_better: bool
    blocks: Callable[[torch.nn.Module], torch.nn.Module]


def block_zero_fraction(blocks: torch.nn.Module) -> float:
    """Zero fraction of the Linear weights inside `blocks` (what the unstructured targets prune)."""
    zeros = total = 0
    for module in blocks.modules():
        if isinstance(module, torch.nn.Linear):
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / total


def add_grid_arguments(parser: argparse.ArgumentParser, methods: Sequence[str]) -> None:
    """The grid's options: --sparsities (default 0.7), --methods, --allocations, --threads, --resume."""
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.7])
    parser.add_argument("--methods", nargs="+", choices=methods, default=list(methods))
    parser.add_argument("--allocations", nargs="+", choices=ALLOCATIONS, default=list(ALLOCATIONS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--resume", action="store_true", help="keep the rows of an earlier run (its .json)")


def grid_report(
    args: argparse.Namespace, rows: Sequence[tuple], *, path: str, title: str, intro: str, protocol: dict[str, str]
) -> MarkdownReport:
    """The grid's page: `protocol` (model, calibration, evaluation) and the grid's own settings; one row per
    configuration plus the reference row."""
    return MarkdownReport(
        path=path,
        title=title,
        intro=intro,
        protocol={
            **protocol,
            "pruning": "target='unstructured', PruningConfig defaults otherwise (owl_m=5, owl_lambda=0.08, "
            "max_layer_deviation=0.1, mask_scope per solver default)",
            "sparsities": ", ".join(f"{s:.0%}" for s in args.sparsities),
            "methods": ", ".join(args.methods),
            "allocations": ", ".join(args.allocations),
            "torch threads": str(args.threads),
        },
        float_format=".4f",
        planned=1 + len(rows),
        selection_keys=("sparsities", "methods", "allocations"),
    )


def plan(sparsities: Sequence[float], methods: Sequence[str], allocations: Sequence[str]) -> list[tuple]:
    return [(s, m, a) for s in sparsities for m in methods for a in allocations]


def row_name(sparsity: float, method: str, allocation: str) -> str:
    return f"{sparsity:.0%} {method}, {allocation}"


def run_grid(
    report: MarkdownReport,
    subject: GridModel,
    rows: Sequence[tuple[float, str, str]],
    calibration: Any,
    done: Sequence[str],
    **config: Any,
) -> None:
    """Prune a fresh copy of `subject.model` for each (sparsity, method, allocation) of `rows` not in `done`; add
    each row to `report` (a failing configuration becomes a row with its error). `config`: the remaining
    `PruningConfig` fields (num_samples, seqlen, seed)."""
    for sparsity, method, allocation in rows:
        name = row_name(sparsity, method, allocation)
        if name in done:
            continue
        pruner = subject.pruner(copy.deepcopy(subject.model), subject.tokenizer)
        pruning = PruningConfig(
            target="unstructured", sparsity=sparsity, method=method, allocation=allocation, **config
        )
        log(f"{name}: pruning")
        try:
            with peak_rss() as memory:
                start, cpu_start = time.perf_counter(), time.process_time()
                pruner.prune(pruning, dataset=calibration, show_progress=False)
                seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
            scores = subject.score(pruner.model)
        except Exception as error:  # a failing configuration is a row with its error
            log(f"{name}: {type(error).__name__}: {error}")
            report.add(name, {"error": f"{type(error).__name__}: {error}"[:300]})
            continue
        layers = pruner.summary.get("layer_sparsity") or [sparsity]
        report.add(
            name,
            {
                **scores,
                "block zeros": block_zero_fraction(subject.blocks(pruner.model)),
                "min block": min(layers),
                "max block": max(layers),
                "prune s": seconds,
                "prune cpu s": cpu_seconds,
                "peak RSS (MiB)": memory["MiB"],
            },
        )
        log(f"{name}: {subject.metric} {scores[subject.metric]:.4f}, prune {seconds:.0f}s")
        del pruner


def best_lines(
    rows: dict[str, dict], sparsities: Sequence[float], metric: str, higher_is_better: bool, relative: str
) -> list[str]:
    """Per sparsity: the best row (with its `relative` column), and each allocation's best (computed from rows)."""
    pick = max if higher_is_better else min
    lines = []
    for sparsity in sparsities:
        prefix = f"{sparsity:.0%} "
        scored = {n: r for n, r in rows.items() if n.startswith(prefix) and metric in r}
        if not scored:
            continue
        best = pick(scored, key=lambda n: scored[n][metric])
        lines.append(f"- {prefix.strip()}: best {best} ({scored[best][relative]:.3f} {relative}).")
        for allocation in ALLOCATIONS:
            mine = [r[metric] for n, r in scored.items() if n.endswith(f", {allocation}")]
            if mine:
                lines.append(f"  - best with {allocation} allocation: {pick(mine):.4f}")
    return lines
