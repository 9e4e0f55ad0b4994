"""Evaluation results before and after pruning (`EvaluationResults`), and their markdown rendering."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["EvaluationResults", "MetricResult", "TaskResult", "combine_results", "format_results_table"]

#: Metrics where lower is better: a retention above 1 is a loss there.
LOWER_IS_BETTER = frozenset({"perplexity", "nll"})

#: Readable metric names, shown in the model card (`metric.name` of its model-index).
METRIC_NAMES = {
    "accuracy": "Accuracy",
    "acc": "Accuracy",
    "acc_norm": "Accuracy (length-normalised)",
    "f1": "F1",
    "macro_f1": "Macro F1",
    "matthews_correlation": "Matthews correlation",
    "pearson": "Pearson correlation",
    "spearmanr": "Spearman correlation",
    "exact_match": "Exact match",
    "exact": "Exact match",
    "perplexity": "Perplexity",
}

#: Decimals kept in the model card's values.
CARD_DECIMALS = 4


@dataclass
class MetricResult:
    """One metric of one task: its value before and after pruning (None where that side was not measured)."""

    name: str
    before: float | None = None
    after: float | None = None

    @property
    def higher_is_better(self) -> bool:
        return self.name not in LOWER_IS_BETTER

    @property
    def retention(self) -> float | None:
        """after / before; None without both values or when before is 0. For perplexity (lower is better) a ratio
        above 1 is a loss."""
        if self.before is None or self.after is None or self.before == 0 or math.isnan(self.before):
            return None
        return self.after / self.before

    def to_dict(self) -> dict[str, Any]:
        return {
            "before": self.before,
            "after": self.after,
            "retention": self.retention,
            "higher_is_better": self.higher_is_better,
        }


@dataclass
class TaskResult:
    """The results of one evaluation task on one dataset.

    Attributes:
        task: the task as `--evaluate` names it ("ppl", "glue:sst2", "squad", "lm-eval:arc_easy").
        task_type: the model-index task type (the pipeline tag: "text-classification", ...).
        dataset: the Hub dataset id, the local file or folder name, or the lm-eval task name.
        dataset_config: the Hub dataset's config (e.g. "sst2" of nyu-mll/glue), if any.
        split: the split read, if any (local files are read whole).
        metrics: metric name -> `MetricResult`, in the order the evaluation returns them.
        card_metrics: the metrics written into the model card (the task's own: accuracy for SST-2, exact match and
            F1 for SQuAD, ...); the others (SQuAD v2's HasAns / NoAns splits) are in `metrics` only.
        details_before, details_after: counts of each run (examples, windows, tokens).
        seconds_before, seconds_after: wall time of each run.
    """

    task: str
    task_type: str
    dataset: str
    dataset_config: str | None = None
    split: str | None = None
    metrics: dict[str, MetricResult] = field(default_factory=dict)
    card_metrics: tuple[str, ...] = ()
    details_before: dict[str, Any] = field(default_factory=dict)
    details_after: dict[str, Any] = field(default_factory=dict)
    seconds_before: float | None = None
    seconds_after: float | None = None

    def __getitem__(self, metric: str) -> MetricResult:
        return self.metrics[metric]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "task_type": self.task_type,
            "dataset": self.dataset,
            "dataset_config": self.dataset_config,
            "split": self.split,
            "metrics": {name: metric.to_dict() for name, metric in self.metrics.items()},
            "details": {"before": self.details_before, "after": self.details_after},
            "seconds": {"before": self.seconds_before, "after": self.seconds_after},
        }


def combine_results(before: TaskResult | None, after: TaskResult) -> TaskResult:
    """`after` (measured after pruning) with the values of `before` (the same task, measured before) added."""
    if before is None:
        return after
    metrics = {
        name: MetricResult(name, before.metrics[name].before if name in before.metrics else None, m.after)
        for name, m in after.metrics.items()
    }
    for name, metric in before.metrics.items():
        metrics.setdefault(name, MetricResult(name, metric.before, None))
    return TaskResult(
        task=after.task,
        task_type=after.task_type,
        dataset=after.dataset,
        dataset_config=after.dataset_config,
        split=after.split,
        metrics=metrics,
        card_metrics=after.card_metrics,
        details_before=before.details_before,
        details_after=after.details_after,
        seconds_before=before.seconds_before,
        seconds_after=after.seconds_after,
    )


@dataclass
class EvaluationResults:
    """What `BasePruner.evaluate` returns: one `TaskResult` per task, each metric before and after pruning with its
    retention (after / before), and the time each run took.

    `results["glue:sst2"]["accuracy"].retention`; `to_dict()` is what `optimum-prune --json` prints under
    "evaluation"; `card_entries()` is the model card's model-index.
    """

    tasks: list[TaskResult] = field(default_factory=list)

    def __getitem__(self, task: str) -> TaskResult:
        for result in self.tasks:
            if result.task == task:
                return result
        raise KeyError(f"No results for {task!r}; tasks: {[result.task for result in self.tasks]}")

    def __contains__(self, task: object) -> bool:
        return any(result.task == task for result in self.tasks)

    def __iter__(self) -> Iterator[TaskResult]:
        return iter(self.tasks)

    def __len__(self) -> int:
        return len(self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return {"tasks": [result.to_dict() for result in self.tasks]}

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per (task, metric): task, metric, dataset, split, before, after, retention, seconds."""
        rows = []
        for result in self.tasks:
            for metric in result.metrics.values():
                rows.append(
                    {
                        "task": result.task,
                        "metric": metric.name,
                        "dataset": result.dataset + (f" ({result.dataset_config})" if result.dataset_config else ""),
                        "split": result.split,
                        "before": metric.before,
                        "after": metric.after,
                        "retention": metric.retention,
                        "seconds before": result.seconds_before,
                        "seconds after": result.seconds_after,
                    }
                )
        return rows

    def to_markdown(self, float_format: str = ".4f") -> str:
        """The rows as a markdown table."""
        table = {}
        for row in self.rows():
            key = f"{row.pop('task')} {row.pop('metric')}"
            table[key] = row
        return format_results_table(table, float_format=float_format, row_header="task, metric")

    def card_entries(self) -> dict[str, list[dict[str, Any]]]:
        """The `eval_results` of `serialization.hub.create_model_card`: the card metrics measured after pruning,
        keyed by metric id, with the value before pruning as "base_value"."""
        entries: dict[str, list[dict[str, Any]]] = {}
        for result in self.tasks:
            for name in result.card_metrics:
                metric = result.metrics.get(name)
                if metric is None or metric.after is None or math.isnan(metric.after):
                    continue
                entry = {
                    "value": round(metric.after, CARD_DECIMALS),
                    "dataset": result.dataset,
                    "dataset_config": result.dataset_config,
                    "split": result.split,
                    "task": result.task_type,
                    "metric_name": METRIC_NAMES.get(name, name),
                }
                if metric.before is not None and not math.isnan(metric.before):
                    entry["base_value"] = round(metric.before, CARD_DECIMALS)
                entries.setdefault(name, []).append({k: v for k, v in entry.items() if v is not None})
        return entries


def _format_value(value: Any, float_format: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return format(value, float_format)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        # numpy / torch scalars print like their python counterparts.
        return _format_value(value.item(), float_format)
    return str(value)


def _cell(text: Any) -> str:
    # A literal "|" would end the cell early in markdown.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def format_results_table(
    results: Mapping[str, Mapping[str, float]] | Mapping[str, float],
    float_format: str = ".4f",
    row_header: str = "",
) -> str:
    """Render evaluation results as a markdown table.

    Args:
        results: either flat ``{metric: value}``, rendered as a two-column ``Metric | Value`` table, or nested
            ``{row_name: {metric: value}}`` (e.g. one row per task or per model), rendered with one column per metric
            in first-seen order; a metric a row lacks shows ``-``.
        float_format: format spec applied to floats (ints, such as sample counts, are printed as is).
        row_header: heading of the first column of a nested table.

    Returns:
        The table, lines joined with ``"\\n"`` and no trailing newline.

    Raises:
        TypeError: when row values mix nested mappings and scalars.
    """
    if not results:
        return _row(["Metric", "Value"]) + "\n" + _row(["---", "---"])
    nested = [isinstance(value, Mapping) for value in results.values()]
    if any(nested) and not all(nested):
        raise TypeError("results must map either every key to a metrics dict or every key to a scalar")

    if not any(nested):
        lines = [_row(["Metric", "Value"]), _row(["---", "---:"])]
        lines += [_row([_cell(name), _cell(_format_value(value, float_format))]) for name, value in results.items()]
        return "\n".join(lines)

    columns: list[str] = []
    for metrics in results.values():
        for name in metrics:
            if name not in columns:
                columns.append(name)
    lines = [
        _row([_cell(row_header)] + [_cell(c) for c in columns]),
        _row(["---"] + ["---:"] * len(columns)),
    ]
    for row_name, metrics in results.items():
        cells = [_cell(_format_value(metrics.get(c), float_format)) for c in columns]
        lines.append(_row([_cell(row_name)] + cells))
    return "\n".join(lines)
