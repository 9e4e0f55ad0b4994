"""The MiniLM sentiment classifier pruned through the CLI with `--evaluate glue:sst2` on local files, beside the API.

Issue 25 asks that what a user gets from the command line equals what the Python benchmarks report. For each
sparsity (default 50%, 60%, 70%; structured activation + LIAR, quality.md's classifier protocol) this script

1. runs `optimum-prune --task sequence-classification ... --evaluate glue:sst2 --eval-dataset dev.jsonl --json` in a
   subprocess, with the fixture's training split as `--dataset` (512 sentences, at most 64 tokens each, seed 0);
2. prunes the same model in-process as `benchmarks/quality.py --sections classifier` does (`PrunerForSequenceClassification`
   on the training sentences, dev accuracy by `fixtures.sentiment_classifier.accuracy`);

and writes both dev accuracies, the CLI's before / after / retention, the difference in correctly classified
examples, and the parameters counted from each pruned model to `benchmarks/results/classifier_cli.md`.

    python benchmarks/classifier_cli.py                      # ~10 minutes on 2 shared cores
    python benchmarks/classifier_cli.py --sparsities 0.5     # one row

The dev split is GLUE SST-2's format already (`sentence`, `label` with 0 = negative, 1 = positive), so the file the
fixture writes is the `--eval-dataset` as it is. The CLI evaluates at GLUE's 128-token truncation, the fixture at
64 tokens, the length the classifier was trained at; the table counts how many dev sentences are longer than 64
tokens, the only examples where the two truncations can disagree.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TQDM_DISABLE", "1")

import torch  # noqa: E402
from common import MarkdownReport, default_output, log, stopwatch  # noqa: E402
from fixtures import sentiment_classifier as fixture  # noqa: E402
from fixtures.shared import fixture_dir  # noqa: E402

from optimum_prune import PrunerForSequenceClassification, PruningConfig  # noqa: E402
from optimum_prune.serialization.layout import count_parameters  # noqa: E402

NUM_SAMPLES = 512  # quality.md's classifier calibration (CLASSIFIER_SAMPLES in quality.py)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.6, 0.7])
    parser.add_argument("--threads", type=int, default=1, help="torch threads, here and in the CLI (default 1)")
    parser.add_argument("--output", default=None, help="markdown file (default benchmarks/results/classifier_cli.md)")
    return parser


def run_cli(folder: str, sparsity: float, output: str, threads: int) -> tuple[dict, float]:
    """(the CLI's --json report, wall seconds) of one pruning of the fixture through `optimum-prune`."""
    command = [
        sys.executable,
        "-m",
        "optimum_prune.cli",
        "-m",
        folder,
        "--task",
        "sequence-classification",
        "--sparsity",
        str(sparsity),
        "--criterion",
        "activation",
        "--reconstruction",
        "liar",
        "--structures",
        "attention_heads",
        "ffn_channels",
        "--num-samples",
        str(NUM_SAMPLES),
        "--seqlen",
        str(fixture.MAX_LENGTH),
        "--seed",
        "0",
        "--dataset",
        os.path.join(folder, "train.jsonl"),
        "--text-column",
        "sentence",
        "--evaluate",
        "glue:sst2",
        "--eval-dataset",
        os.path.join(folder, "dev.jsonl"),
        "--json",
        "--no-progress",
        "--overwrite",
        output,
    ]
    environment = dict(os.environ, OMP_NUM_THREADS=str(threads))
    with stopwatch() as timer:
        done = subprocess.run(command, capture_output=True, text=True, env=environment, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"optimum-prune exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout), timer["seconds"]


def cli_accuracy(report: dict) -> tuple[float, float, float]:
    """(before, after, retention) of glue:sst2 accuracy in the CLI's --json report."""
    for task in report["evaluation"]["tasks"]:
        if task["task"] == "glue:sst2":
            metric = task["metrics"]["accuracy"]
            return metric["before"], metric["after"], metric["retention"]
    raise KeyError(f"no glue:sst2 result in the CLI's report: {sorted(report)}")


def main(argv: list[str] | None = None) -> MarkdownReport:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    folder = fixture_dir(fixture.NAME, False)
    model, tokenizer, train_rows, dev_rows, metadata = fixture.load_or_build()
    calibration = [row["sentence"] for row in train_rows]
    long_sentences = sum(
        len(ids) > fixture.MAX_LENGTH for ids in tokenizer([r["sentence"] for r in dev_rows]).input_ids
    )
    report = MarkdownReport(
        path=args.output or default_output("classifier_cli", False),
        title="MiniLM sentiment classifier: the CLI's `--evaluate glue:sst2` beside the API",
        intro=(
            "Structured activation + LIAR (attention heads and FFN channels, uniform), the same model, calibration "
            "and seed through `optimum-prune` (subprocess, `--json`) and through `PrunerForSequenceClassification` "
            "in-process as quality.md's classifier section runs it. `diff (examples)` = correctly classified dev "
            "examples, CLI minus API. No retraining."
        ),
        protocol={
            "model": f"all-MiniLM-L6-v2 sentiment fixture (dev accuracy at build {metadata['dev_accuracy']:.4f})",
            "calibration": f"{NUM_SAMPLES} training-split sentences, at most {fixture.MAX_LENGTH} tokens, seed 0",
            "evaluation": f"{len(dev_rows)} dev sentences; CLI: glue:sst2 (128-token truncation); API: the "
            f"fixture's accuracy ({fixture.MAX_LENGTH}-token truncation); {long_sentences} dev sentences are longer "
            f"than {fixture.MAX_LENGTH} tokens",
            "torch threads": str(args.threads),
        },
        float_format=".4f",
        planned=len(args.sparsities),
    )
    log(f"fixture {folder}; writing {report.path}")
    with tempfile.TemporaryDirectory() as scratch:
        for sparsity in args.sparsities:
            name = f"{sparsity:.0%} activation + liar"
            log(f"{name}: CLI")
            cli_report, cli_seconds = run_cli(
                folder, sparsity, os.path.join(scratch, f"pruned-{sparsity}"), args.threads
            )
            before, after, retention = cli_accuracy(cli_report)
            log(f"{name}: API")
            pruner = PrunerForSequenceClassification(copy.deepcopy(model), tokenizer)
            config = PruningConfig(
                target="structured",
                sparsity=sparsity,
                criterion="activation",
                reconstruction="liar",
                structures=["attention_heads", "ffn_channels"],
                num_samples=NUM_SAMPLES,
                seqlen=fixture.MAX_LENGTH,
                seed=0,
            )
            with stopwatch() as api_timer:
                pruner.prune(config, dataset=calibration, show_progress=False)
            api_accuracy = fixture.accuracy(pruner.model, tokenizer, dev_rows)
            report.add(
                name,
                {
                    "CLI before": before,
                    "CLI after": after,
                    "CLI retention": retention,
                    "API after": api_accuracy,
                    "diff (examples)": round((after - api_accuracy) * len(dev_rows)),
                    "CLI params (M)": cli_report["after"]["parameters"] / 1e6,
                    "API params (M)": count_parameters(pruner.model) / 1e6,
                    "CLI s": cli_seconds,
                    "API prune s": api_timer["seconds"],
                },
            )
            log(f"{name}: CLI {after:.4f}, API {api_accuracy:.4f}")
            del pruner
    report.finish()
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
