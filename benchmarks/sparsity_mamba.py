"""Unstructured sparsity on the Mamba fixture: every solver x every per-block allocation (issue 24).

The 70% rows of sparsity.md (SmolLM2) and sparsity_classifier.md (MiniLM), on a state-space model: the fixture of
`benchmarks/fixtures/mamba_wiki.py` (a MambaForCausalLM trained on the first 80% of the Wikipedia text). Rows: the
unpruned model, then each sparsity (default 70%) x solver (magnitude, wanda, sparsegpt, admm, obs_multi) x
allocation (uniform, owl, obs), each on a fresh copy. The targets are the Linear weights of the blocks (in_proj,
x_proj, dt_proj, out_proj); conv1d, A_log, D, the norms and the tied embedding are not pruned. Columns: held-out
perplexity and perplexity / dense, the zero fraction of the blocks' Linear weights counted from the weights, the
lowest and highest per-block sparsity the allocation chose, wall and CPU seconds of `prune()`, and its peak
resident memory. Calibration and evaluation follow quality.md's Mamba section: random 512-token windows of the
first 80%, perplexity on non-overlapping 512-token windows of the last 20%.

    python benchmarks/sparsity_mamba.py                  # ~20 minutes on one core (the fixture must be built)
    python benchmarks/sparsity_mamba.py --sparsities 0.6 0.7 0.8 --resume
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from common import EVAL_SEQLEN, MarkdownReport, default_output, log  # noqa: E402
from fixtures import mamba_wiki as fixture  # noqa: E402
from sparsity_grid import GridModel, add_grid_arguments, best_lines, grid_report, plan, run_grid  # noqa: E402

from optimum_prune import PrunerForCausalLM  # noqa: E402
from optimum_prune.assets import wikipedia_split  # noqa: E402
from optimum_prune.data.calibration import window_prefix  # noqa: E402
from optimum_prune.evaluation import perplexity as evaluate_perplexity  # noqa: E402

#: magnitude too: on this small model every solver runs in a minute or two.
METHODS = ("magnitude", "wanda", "sparsegpt", "admm", "obs_multi")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(parser, METHODS)
    parser.add_argument("--num-samples", type=int, default=128, help="calibration windows (default 128)")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window (default 512)")
    parser.add_argument("--eval-windows", type=int, default=40, help="512-token perplexity windows (default 40)")
    parser.add_argument("--quick", action="store_true", help="the --quick fixture, 8 x 128 tokens, 2 windows")
    parser.add_argument("--output", default=None, help="default benchmarks/results/sparsity_mamba.md")
    return parser


def main(argv: list[str] | None = None) -> MarkdownReport:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.quick:
        args.num_samples, args.seqlen, args.eval_windows = 8, 128, 2
    model, tokenizer, metadata = fixture.load_or_build(quick=args.quick)
    calibration, evaluation = wikipedia_split()
    eval_ids = tokenizer(evaluation, return_tensors="pt", add_special_tokens=False).input_ids
    prefix = window_prefix(tokenizer)
    rows = plan(args.sparsities, args.methods, args.allocations)
    report = grid_report(
        args,
        rows,
        path=args.output or default_output("sparsity_mamba", args.quick),
        title="Unstructured sparsity on the Mamba fixture: solvers x per-block allocations",
        intro=(
            "Held-out perplexity of the Mamba fixture after zeroing a fraction of the Linear weights of its blocks "
            "(in_proj, x_proj, dt_proj, out_proj), no retraining; the fixture's own 8k-token vocabulary, so not "
            "comparable with SmolLM2's perplexities. Block zeros are counted from the weights; min / max block = "
            "the lowest and highest per-block sparsity the allocation chose (the summary's `layer_sparsity`). "
            "Prune s / cpu s: wall and CPU seconds of `prune()` alone; peak RSS: the process's peak resident memory "
            "during `prune()` (the model and data already loaded)."
        ),
        protocol={
            "model": f"MambaForCausalLM from `benchmarks/fixtures/mamba_wiki.py`: {metadata['parameters'] / 1e6:.2f}M "
            f"parameters, {metadata['num_layers']} blocks, trained {metadata.get('steps_done', metadata['steps'])} "
            "steps on the first 80% of the articles",
            "calibration": f"{args.num_samples} random windows x {args.seqlen} tokens of the first 80%, seed 0",
            "evaluation": f"{args.eval_windows} non-overlapping 512-token windows of the last 20%",
        },
    )
    done = report.resume() if args.resume else []

    def perplexity(pruned: torch.nn.Module) -> float:
        result = evaluate_perplexity(
            pruned,
            input_ids=eval_ids,
            seqlen=EVAL_SEQLEN,
            max_windows=args.eval_windows,
            show_progress=False,
            prefix=prefix,
        )
        return result["perplexity"]

    dense = perplexity(model)
    if "unpruned" not in done:
        report.add("unpruned", {"perplexity": dense, "ppl / dense": 1.0, "block zeros": 0.0})
    log(f"unpruned perplexity {dense:.3f}; writing {report.path}")

    def scores(pruned: torch.nn.Module) -> dict[str, float]:
        value = perplexity(pruned)
        return {"perplexity": value, "ppl / dense": value / dense}

    subject = GridModel(
        model=model,
        tokenizer=tokenizer,
        pruner=PrunerForCausalLM,
        score=scores,
        metric="perplexity",
        higher_is_better=False,
        blocks=lambda pruned: pruned.backbone.layers,
    )
    run_grid(report, subject, rows, calibration, done, num_samples=args.num_samples, seqlen=args.seqlen, seed=0)
    lines = best_lines(report.rows, args.sparsities, "perplexity", False, "ppl / dense")
    zeros = [r["block zeros"] for n, r in report.rows.items() if n != "unpruned" and "block zeros" in r]
    if zeros:
        lines.append(
            f"- Budget, counted from the weights: {min(zeros):.4f}-{max(zeros):.4f} of the block weights are zero."
        )
    report.notes = ("## Findings (computed from the rows)\n\n" + "\n".join(lines)) if lines else ""
    report.finish()
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
