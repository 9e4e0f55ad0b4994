"""GLUE metrics and a fine-tune-free evaluation loop for sequence-classification models.

The metrics follow the GLUE benchmark definitions and are computed by scikit-learn and scipy, as the ``glue`` metric
of ``evaluate`` computes them (without its download of the metric script); the functions here check the inputs and
pass references as ``y_true``:

* ``cola``: Matthews correlation coefficient,
* ``mrpc`` and ``qqp``: accuracy and binary F1 of the positive class (label 1),
* ``stsb``: Pearson and Spearman correlation,
* every other task: accuracy.

Values are fractions (``0.85``), not percentages, as in ``evaluate``'s ``glue`` metric.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats
from sklearn import metrics as sklearn_metrics
from tqdm.auto import tqdm

from .perplexity import model_device
from .specs import GLUE_TASKS, GlueTask

logger = logging.getLogger(__name__)

__all__ = [
    "GLUE_TASKS",
    "GlueTask",
    "accuracy",
    "binary_f1",
    "compute_classification_metrics",
    "compute_glue_metrics",
    "compute_regression_metrics",
    "evaluate_sequence_classification",
    "macro_f1",
    "matthews_correlation",
    "pearson_correlation",
    "rank_average",
    "spearman_correlation",
]


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


def _as_1d(values: Any, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    return array


def _check_pair(predictions: Any, references: Any) -> tuple[np.ndarray, np.ndarray]:
    preds = _as_1d(predictions, "predictions")
    refs = _as_1d(references, "references")
    if preds.shape != refs.shape:
        raise ValueError(f"predictions ({len(preds)}) and references ({len(refs)}) differ in length")
    if len(preds) == 0:
        raise ValueError("cannot compute a metric over zero examples")
    return preds, refs


def accuracy(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Fraction of predictions equal to their reference (``sklearn.metrics.accuracy_score``)."""
    preds, refs = _check_pair(predictions, references)
    return float(sklearn_metrics.accuracy_score(refs, preds))


def binary_f1(predictions: Sequence[int], references: Sequence[int], pos_label: int = 1) -> float:
    """F1 score of the positive class (``sklearn.metrics.f1_score`` of ``pos_label``); 0 where it is undefined.

    Scored for ``pos_label`` alone, so a run where neither side holds that class gives 0 rather than an error.
    """
    preds, refs = _check_pair(predictions, references)
    scores = sklearn_metrics.f1_score(refs, preds, labels=[pos_label], average=None, zero_division=0.0)
    return float(scores[0])


def macro_f1(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Unweighted mean of the per-class F1 over every label seen in predictions or references (sklearn "macro")."""
    preds, refs = _check_pair(predictions, references)
    return float(sklearn_metrics.f1_score(refs, preds, average="macro", zero_division=0.0))


def matthews_correlation(predictions: Sequence[int], references: Sequence[int]) -> float:
    """Matthews correlation coefficient, multi-class form (``sklearn.metrics.matthews_corrcoef``).

    0.0 when either the predictions or the references hold a single class, as scikit-learn returns.
    """
    preds, refs = _check_pair(predictions, references)
    return float(sklearn_metrics.matthews_corrcoef(refs, preds))


def pearson_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation coefficient (``scipy.stats.pearsonr``); NaN when either input is constant."""
    a, b = _check_pair(x, y)
    if len(a) < 2:
        return float("nan")
    with warnings.catch_warnings():  # a constant input gives NaN, which is the answer, not a problem to report
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.pearsonr(a.astype(np.float64), b.astype(np.float64)).statistic)


def rank_average(values: Sequence[float]) -> np.ndarray:
    """1-based ranks where tied values share the mean of the ranks they span (``scipy.stats.rankdata``)."""
    return stats.rankdata(_as_1d(values, "values"), method="average")


def spearman_correlation(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation with average ranks for ties (``scipy.stats.spearmanr``); NaN for a constant input."""
    a, b = _check_pair(x, y)
    if len(a) < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(a.astype(np.float64), b.astype(np.float64)).statistic)


def compute_classification_metrics(predictions: Sequence[int], references: Sequence[int]) -> dict[str, float]:
    """Accuracy and macro F1, the metrics used for a classification dataset that is not a GLUE task."""
    return {"accuracy": accuracy(predictions, references), "macro_f1": macro_f1(predictions, references)}


def compute_regression_metrics(predictions: Sequence[float], references: Sequence[float]) -> dict[str, float]:
    """Pearson and Spearman correlation (the STS-B metrics), keyed as ``evaluate``'s glue metric keys them."""
    return {
        "pearson": pearson_correlation(predictions, references),
        "spearmanr": spearman_correlation(predictions, references),
    }


def _get_task(task: str) -> GlueTask:
    key = task.lower().replace("-", "_")
    if key not in GLUE_TASKS:
        raise ValueError(f"Unknown GLUE task {task!r}; expected one of: {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]


def compute_glue_metrics(task: str, predictions: Sequence[float], references: Sequence[float]) -> dict[str, float]:
    """Score predictions with the metric GLUE defines for ``task``.

    Args:
        task: a key of ``GLUE_TASKS`` (``"cola"``, ``"sst2"``, ``"mrpc"``, ``"qqp"``, ``"stsb"``, ``"mnli"``,
            ``"mnli_matched"``, ``"mnli_mismatched"``, ``"qnli"``, ``"rte"``, ``"wnli"``, ``"ax"``).
        predictions: predicted class ids, or predicted scores for ``stsb``.
        references: gold class ids, or gold scores for ``stsb``.

    Returns:
        ``{"matthews_correlation"}`` for cola, ``{"pearson", "spearmanr"}`` for stsb, ``{"accuracy", "f1"}`` for mrpc
        and qqp, ``{"accuracy"}`` otherwise; values are fractions.

    Raises:
        ValueError: for an unknown task (the message lists the known ones) or mismatched inputs.
    """
    spec = _get_task(task)
    if spec.name == "cola":
        return {"matthews_correlation": matthews_correlation(predictions, references)}
    if spec.name == "stsb":
        return compute_regression_metrics(predictions, references)
    if spec.name in ("mrpc", "qqp"):
        return {"accuracy": accuracy(predictions, references), "f1": binary_f1(predictions, references)}
    return {"accuracy": accuracy(predictions, references)}


# --------------------------------------------------------------------------------------------------------------------
# Evaluation loop
# --------------------------------------------------------------------------------------------------------------------

# Column layouts tried, in order, when a plain dataset is given without ``text_columns``.
_KNOWN_TEXT_COLUMNS: tuple[tuple[str, str | None], ...] = (
    ("sentence1", "sentence2"),
    ("question1", "question2"),
    ("premise", "hypothesis"),
    ("question", "sentence"),
    ("sentence", None),
    ("text", None),
)


def _infer_text_columns(column_names: Sequence[str]) -> tuple[str, str | None]:
    for first, second in _KNOWN_TEXT_COLUMNS:
        if first in column_names and (second is None or second in column_names):
            return first, second
    raise ValueError(
        f"Cannot tell which columns hold the text among {list(column_names)}; pass text_columns=(first, second_or_None)"
    )


def _forward_inputs(model: torch.nn.Module, batch: Any, device: torch.device) -> dict[str, torch.Tensor]:
    """Move the tokenizer outputs the model's forward accepts to its device (DistilBERT takes no token_type_ids)."""
    parameters = inspect.signature(model.forward).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    return {
        key: value.to(device)
        for key, value in batch.items()
        if isinstance(value, torch.Tensor) and (accepts_any or key in parameters)
    }


def label_key(name: Any) -> str:
    """A class name as compared across datasets and models: "Not Entailment", "NOT_ENTAILMENT" and "not-entailment"
    are one name."""
    return "_".join(str(name).lower().replace("-", " ").replace("_", " ").split())


def _label_remapping(model: torch.nn.Module, dataset: Any, label_column: str) -> dict[int, int] | None:
    """Map model output ids onto dataset label ids when both sides name their labels with the same names.

    Checkpoints fine-tuned on MNLI disagree on the class order (e.g. roberta-large-mnli puts contradiction first while
    GLUE puts entailment first); names are the only reliable link. Generic names (LABEL_0) give no remapping.
    """
    feature = (getattr(dataset, "features", None) or {}).get(label_column)
    dataset_names = getattr(feature, "names", None)
    id2label = getattr(getattr(model, "config", None), "id2label", None)
    if not dataset_names or not id2label:
        return None
    dataset_index = {label_key(name): i for i, name in enumerate(dataset_names)}
    model_names = {int(i): label_key(name) for i, name in id2label.items()}
    if not all(name in dataset_index for name in model_names.values()):
        return None
    mapping = {model_id: dataset_index[name] for model_id, name in model_names.items()}
    if all(model_id == dataset_id for model_id, dataset_id in mapping.items()):
        return None
    logger.info("Remapping model labels onto dataset labels by name: %s", mapping)
    return mapping


def evaluate_sequence_classification(
    model: torch.nn.Module,
    tokenizer: Any,
    task_or_dataset: Any,
    split: str | None = None,
    batch_size: int = 32,
    max_length: int = 128,
    text_columns: tuple[str, str | None] | None = None,
    label_column: str = "label",
    max_samples: int | None = None,
    *,
    task: str | None = None,
    return_predictions: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Run a sequence-classification model over a dataset and score it, without any training.

    Args:
        model: a ``*ForSequenceClassification`` model (any module whose output has ``.logits`` or whose first output
            is the logits tensor). It is put in eval mode for the run and its previous mode is restored afterwards.
        tokenizer: the matching tokenizer.
        task_or_dataset: a GLUE task name (the data is loaded from the Hub with
            ``datasets.load_dataset("nyu-mll/glue", task, split=...)``) or a ``datasets.Dataset``.
        split: the split to load for a task name; defaults to the task's validation split
            (``"validation_matched"`` for ``mnli``). Ignored for a dataset.
        batch_size: examples per forward pass; each batch is padded to its longest member.
        max_length: truncation length in tokens.
        text_columns: ``(first, second_or_None)``; defaults to the task's columns, or is inferred from usual column
            names for a plain dataset.
        label_column: column holding the gold label (class id, or float score for regression).
        max_samples: evaluate only the first ``max_samples`` examples.
        task: the GLUE task a local ``datasets.Dataset`` belongs to, so that its GLUE metric is used.
        return_predictions: also return ``"predictions"`` and ``"references"`` lists in the result.
        show_progress: show a progress bar over the batches.

    Returns:
        The GLUE metrics of the task (see ``compute_glue_metrics``); for a plain dataset, ``accuracy`` and ``macro_f1``
        for classification or ``pearson`` and ``spearmanr`` for a regression model (``num_labels == 1``).
        ``num_samples`` is always included.

    Raises:
        ValueError: for an unknown task, a model whose number of outputs does not fit the task, or hidden test labels.
    """
    spec: GlueTask | None = None
    if isinstance(task_or_dataset, str):
        spec = _get_task(task_or_dataset)
        import datasets

        dataset = datasets.load_dataset(*spec.dataset_args, split=split or spec.validation_split)
    else:
        dataset = task_or_dataset
        if task is not None:
            spec = _get_task(task)

    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("The dataset to evaluate is empty")

    if text_columns is None:
        text_columns = spec.text_columns if spec is not None else _infer_text_columns(dataset.column_names)
    first_column, second_column = text_columns

    num_model_labels = getattr(getattr(model, "config", None), "num_labels", None)
    if spec is not None:
        is_regression = spec.is_regression
        if num_model_labels is not None and num_model_labels != spec.num_labels:
            raise ValueError(
                f"Task {spec.name!r} needs a model with {spec.num_labels} output(s), this one has {num_model_labels}"
            )
    else:
        problem_type = getattr(getattr(model, "config", None), "problem_type", None)
        is_regression = num_model_labels == 1 or problem_type == "regression"

    references = list(dataset[label_column])
    if not is_regression and any(int(label) < 0 for label in references):
        raise ValueError(
            f"Column {label_column!r} holds negative labels: this split keeps its labels hidden (GLUE test sets); "
            "evaluate a validation split instead"
        )
    remapping = None if is_regression else _label_remapping(model, dataset, label_column)

    device = model_device(model)
    was_training = model.training
    model.eval()
    predictions: list[float] = []
    try:
        with torch.no_grad():
            for start in tqdm(
                range(0, len(dataset), batch_size), desc="Evaluating", unit="batch", disable=not show_progress
            ):
                rows = dataset[start : start + batch_size]
                texts = (rows[first_column],) if second_column is None else (rows[first_column], rows[second_column])
                encoded = tokenizer(*texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
                outputs = model(**_forward_inputs(model, encoded, device))
                logits = outputs.logits if hasattr(outputs, "logits") else outputs[0]
                logits = logits.float().cpu()
                if is_regression:
                    predictions.extend(logits[:, 0].tolist())
                else:
                    batch_predictions = logits.argmax(dim=-1).tolist()
                    if remapping is not None:
                        batch_predictions = [remapping[p] for p in batch_predictions]
                    predictions.extend(batch_predictions)
    finally:
        model.train(was_training)

    if spec is not None:
        metrics: dict[str, Any] = compute_glue_metrics(spec.name, predictions, references)
    elif is_regression:
        metrics = compute_regression_metrics(predictions, references)
    else:
        metrics = compute_classification_metrics(predictions, references)
    metrics["num_samples"] = len(predictions)
    if return_predictions:
        metrics["predictions"] = predictions
        metrics["references"] = references
    return metrics
