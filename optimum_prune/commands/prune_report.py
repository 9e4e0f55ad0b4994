"""What `prune` prints: the before / after table of a run, a dry run's plan, progress bars, the time-left line and
one-line errors. Like the rest of the command, it imports only the standard library at module level."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any


def report_results(
    pruner: Any,
    config: Any,
    model: str,
    source: tuple[str, str | None],
    output: str,
    prune_seconds: float,
    evaluation: Any,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Print the before / after table of `model` pruned and saved to `output` (sizes on disk: the weight files of
    `source`, (folder or Hub id, GGUF file or None), and of `output`), then the evaluation if there was one; return
    the table as a dict (what --json prints)."""
    from optimum_prune.evaluation import format_results_table

    model_path, gguf_file = source
    ppl = evaluation["ppl"] if evaluation is not None and "ppl" in evaluation else None
    summary = pruner.summary
    results: dict[str, dict[str, Any]] = {
        "before": {
            "parameters": summary["parameters_before"],
            "size on disk (MB)": _source_megabytes(model_path, gguf_file),
            "pruning time (s)": None,
            "sparsity achieved": None,
        },
        "after": {
            "parameters": summary["parameters_after"],
            "size on disk (MB)": _source_megabytes(output, None),
            "pruning time (s)": prune_seconds,
            "sparsity achieved": summary["sparsity_achieved"],
        },
    }
    if ppl is not None:
        results["before"]["perplexity"] = ppl["perplexity"].before
        results["after"]["perplexity"] = ppl["perplexity"].after

    log("")
    log(
        f"{config.target} pruning of {model} ({summary['model_type']}): "
        f"{summary['sparsity_achieved']:.1%} of the prunable parameters "
        f"{'removed' if config.is_structured else 'zeroed'}"
        + (
            f"; perplexity on {ppl.details_after['windows']} x {ppl.details_after['seqlen']} tokens"
            if ppl is not None
            else ""
        )
    )
    log(format_results_table(_display(results), row_header="model"))
    if evaluation is not None:
        results["evaluation"] = evaluation.to_dict()
        log("")
        log("Evaluation (retention = after / before; perplexity is better lower, the other metrics higher):")
        log(evaluation.to_markdown())
    if gguf_file:
        dtype = str(next(pruner.model.parameters()).dtype).replace("torch.", "")
        log(f"The size before is the quantized {gguf_file}; the pruned model is saved dequantized, in {dtype}.")
    log(f"Saved to {output}")
    return results


def report_plan(
    model: Any,
    plan: Any,
    config: Any,
    name: str,
    model_type: str,
    run_needs_data: str | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Print a dry run's plan for `model` (`name` as --model gave it): one line per layer, the parameter totals, the
    projected cost and why the run itself needs --dataset (`run_needs_data`), if it does; return it as a dict."""
    read = "the config only" if plan.reads == ["config"] else ", ".join(plan.reads)
    allocation = f", allocation {plan.allocation}" if plan.allocation else ""
    if config.is_structured and plan.allocation is None:
        allocation = ", whole blocks (depth pruning)"
    log(f"Dry run: {config.target} pruning of {name} ({model_type}){allocation}; read {read}; nothing was written.")
    rows = plan.rows()
    for row in rows:
        log("  " + ", ".join(f"{key} {value}" for key, value in row.items()))
    totals = plan.totals()
    if plan.structured:
        depth = config.structures is not None and "layers" in config.structures
        refit = " (before any bias the refit adds)" if config.reconstruction != "none" and not depth else ""
        log(
            f"Parameters: {totals['parameters_before']:,} before, {totals['parameters_after']:,} after{refit}: "
            f"{totals['parameters_removed']:,} removed, {totals['sparsity']:.1%} of the "
            f"{totals['prunable_parameters']:,} prunable."
        )
    else:
        log(
            f"Parameters: {totals['parameters_before']:,} (zeros are stored): {totals['parameters_zeroed']:,} "
            f"zeroed, {totals['sparsity']:.1%} of the {totals['prunable_parameters']:,} in the pruned matrices."
        )
    cost = _projected_cost(model, plan, config, log)
    notes = [f"The run itself needs --dataset: {run_needs_data}"] if run_needs_data else []
    for note in notes:
        log(note)
    return {
        "dry_run": True,
        "model_type": model_type,
        **plan.to_dict(),
        "layers": rows,
        **({"cost": cost} if cost is not None else {}),
        "notes": notes,
    }


def _projected_cost(model: Any, plan: Any, config: Any, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The plan's FLOPs (from the plan object just printed) and a projected time with the shipped coefficients
    (`cost.DEFAULT_COEFFICIENTS`); None where the plan has no per-block cost (depth pruning)."""
    from optimum_prune.cost import DEFAULT_COEFFICIENTS, describe_minutes, plan_cost

    cost = plan_cost(model, plan, config)
    if cost is None:
        return None
    totals = cost.totals()
    seconds = sum(cost.seconds(DEFAULT_COEFFICIENTS))
    log(
        f"Cost: {cost.flops:.3g} FLOPs for {cost.tokens:,} calibration tokens (forward {totals['forward']:.3g}, "
        f"statistics {totals['statistics']:.3g}, solver {totals['solver']:.3g}); projection: about "
        f"{describe_minutes(seconds)} on {DEFAULT_COEFFICIENTS.machine} (not a measurement; see optimum_prune/cost.py)."
    )
    return cost.to_dict(DEFAULT_COEFFICIENTS)


def dataset_label(source: str) -> str:
    """How the output names --dataset: a local path by its base name, a dataset name as given."""
    return os.path.basename(source) if os.path.exists(source) else source


def _source_megabytes(model_path: str, gguf_file: str | None) -> float | None:
    """Size of a checkpoint's weight files (the input's, or the saved output's), when it is a local folder: the
    same files on both sides of the before / after table, tokenizer and config left out."""
    if not os.path.isdir(model_path):
        return None
    if gguf_file:
        return os.path.getsize(os.path.join(model_path, gguf_file)) / 1e6
    weights = [f for f in os.listdir(model_path) if f.endswith((".safetensors", ".bin", ".pt", ".pth"))]
    return sum(os.path.getsize(os.path.join(model_path, f)) for f in weights) / 1e6 if weights else None


def _display(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The results with readable numbers: thousands separators, one-decimal sizes and times, percentages."""
    shown: dict[str, dict[str, Any]] = {}
    for row, values in results.items():
        if row in ("hub", "evaluation"):
            continue
        cells: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                cells[key] = None
            elif key == "parameters":
                cells[key] = f"{value:,}"
            elif key == "sparsity achieved":
                cells[key] = f"{value:.1%}"
            elif key == "perplexity":
                cells[key] = f"{value:.3f}"
            else:
                cells[key] = f"{value:.2f}"
        shown[row] = cells
    return shown


@contextlib.contextmanager
def time_left_lines(log: Callable[[str], None]) -> Iterator[None]:
    """Print `prune()`'s "about N minutes left on this machine" message (logger ``optimum_prune.cost``) as a line."""
    import logging

    class _Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log(record.getMessage()[:1].upper() + record.getMessage()[1:] + ".")

    cost_logger = logging.getLogger("optimum_prune.cost")
    handler, level = _Lines(logging.INFO), cost_logger.level
    cost_logger.addHandler(handler)
    cost_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        cost_logger.removeHandler(handler)
        cost_logger.setLevel(level)


@contextlib.contextmanager
def progress_bars(enabled: bool) -> Iterator[None]:
    """With `enabled=False`, also silence transformers' and huggingface_hub's loading and saving bars (the pruner's
    own follow `show_progress`); the previous state is restored, for callers that run several commands in-process."""
    import datasets
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    if enabled:
        yield
        return
    hub_was_enabled = not are_progress_bars_disabled()
    transformers_was_enabled = transformers_logging.is_progress_bar_enabled()
    datasets_was_enabled = datasets.is_progress_bar_enabled()
    disable_progress_bars()
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if hub_was_enabled:
            enable_progress_bars()
        if transformers_was_enabled:
            transformers_logging.enable_progress_bar()
        if datasets_was_enabled:
            datasets.enable_progress_bars()


def one_line(message: object) -> str:
    return " ".join(str(message).split())
