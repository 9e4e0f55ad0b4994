"""Load, check and run the evaluations `--evaluate` names, on a model as it sits in memory.

`load_evaluation_data` reads and checks the data of one evaluation before any model is run: the columns the task
reads (GLUE's and SQuAD's names), labels the model's `id2label` knows, a split with rows in it. Whatever it refuses,
it refuses with an `EvaluationInputError` of one line. `run_evaluation` scores a model on loaded data with the loops
of `glue.py`, `squad.py`, `perplexity.py` and `zeroshot.py`, and returns one `TaskResult` per task.

Data sources:

* ``ppl``: a text file or a folder of text / json / csv / parquet files (its text column), ``wikitext2`` / ``c4`` /
  ``ptb`` (their evaluation split, from the Hub), or in memory: a list of strings or a ``datasets.Dataset``.
* ``glue:<task>``: a csv / json / jsonl / parquet file or a folder of them, with GLUE's columns (``sentence`` and
  ``label`` for SST-2 and CoLA, ``sentence1`` / ``sentence2`` for MRPC, RTE, STS-B, ``question`` / ``sentence`` for
  QNLI, ``premise`` / ``hypothesis`` for MNLI, ``question1`` / ``question2`` for QQP); a Hub dataset id; or nothing,
  which reads the task's validation split of ``nyu-mll/glue`` from the Hub. Labels are class ids in GLUE's order or
  class names (GLUE's, e.g. "positive", or the model's ``id2label`` names); STS-B's are scores.
* ``squad`` / ``squad_v2``: files or a Hub dataset with ``question``, ``context`` and ``answers``
  (``{"text": [...], "answer_start": [...]}``, in a csv as that JSON), ``id`` optional; or nothing, which reads
  ``rajpurkar/squad`` / ``rajpurkar/squad_v2``'s validation split.
* ``lm-eval:[<folder>:]<task,...>``: lm-eval task names or local task YAML files, which name their own data (the
  optional ``zeroshot`` extra); with a folder of task YAML files, the names of its tasks (all of them when none is
  named), whose relative ``data_files`` are read from the folder of each YAML file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .results import MetricResult, TaskResult
from .specs import EvaluationInputError, EvaluationSpec, GlueTask, parse_evaluation

__all__ = ["EvaluationData", "load_evaluation_data", "run_evaluation"]

#: Examples (features for SQuAD, requests for lm-eval) per forward pass when not given.
DEFAULT_BATCH_SIZES = {"glue": 32, "squad": 16, "squad_v2": 16, "lm-eval": 8}
#: Longest input in tokens, capped by the model's positions: the defaults of the GLUE and SQuAD example scripts.
MAX_LENGTHS = {"glue": 128, "squad": 384, "squad_v2": 384}
#: Overlap of a long context's windows (run_qa's default), a quarter of the window where that is too long.
_DOC_STRIDE = 128
#: The metrics of each kind written into the model card (the others stay in the results).
CARD_METRICS = {"ppl": ("perplexity",), "squad": ("exact_match", "f1"), "squad_v2": ("exact", "f1")}
#: Counts in the evaluation loops' results: details of a run, not metrics.
_COUNTS = frozenset({"num_samples", "num_features", "total", "HasAns_total", "NoAns_total"})

_SQUAD_HUB = {"squad": "rajpurkar/squad", "squad_v2": "rajpurkar/squad_v2"}
_GLUE_HUB_NAMES = ("glue", "nyu-mll/glue")
_TABLE_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_GENERIC_LABEL = re.compile(r"^label_?\d+$", re.IGNORECASE)


@dataclass
class EvaluationData:
    """The checked data of one evaluation, ready for `run_evaluation`.

    Attributes:
        spec: what is evaluated.
        data: ppl: the text; glue, squad: a ``datasets.Dataset`` in the loops' format; lm-eval: the task list.
        dataset: what the results and the model card call the data: a Hub id, a local file or folder's name.
        dataset_config: the Hub dataset's config, if any.
        split: the split read (or a description, such as "last 20%"); None for local files, read whole.
        max_samples: at most this many examples were kept (lm-eval: its `limit`).
    """

    spec: EvaluationSpec
    data: Any
    dataset: str
    dataset_config: str | None = None
    split: str | None = None
    max_samples: int | None = None

    @property
    def key(self) -> tuple[Any, ...]:
        """What a measurement before pruning must share with one after it to be compared."""
        return (self.spec.name, self.dataset, self.dataset_config, self.split, self.max_samples)


# ---- loading and checking ---------------------------------------------------------------------------------------------


def load_evaluation_data(
    evaluation: str | EvaluationSpec,
    dataset: Any = None,
    *,
    model_config: Any = None,
    split: str | None = None,
    text_column: str | None = None,
    max_samples: int | None = None,
    dataset_name: str | None = None,
) -> EvaluationData:
    """Read the data of one evaluation and check it against the task and the model, before any model runs.

    Args:
        evaluation: "ppl", "glue:<task>", "squad", "squad_v2" or "lm-eval:<task,...>" (or its `EvaluationSpec`).
        dataset: the data (see the module docstring): a local file or folder, a Hub dataset id, a named text dataset
            (ppl), a list of strings (ppl), a ``datasets.Dataset``; None for the task's own Hub data.
        model_config: the model's config: its ``num_labels`` and ``id2label`` are checked against a GLUE task.
        split: the split of a Hub dataset (default: the task's validation split; for wikitext2 / c4 / ptb their
            evaluation split); for data in memory, only the name the results give it.
        text_column: ppl: the text column of a json / csv / parquet source.
        max_samples: keep the first this many examples (lm-eval: its `limit`).
        dataset_name: what the results and the card call data given in memory (default: "in-memory data").

    Raises:
        EvaluationInputError: an unknown task, missing columns (named), labels the model does not have, an empty
            split, a model whose outputs do not fit the task; one line each.
        HubUnreachableError: the Hub data is not cached and the Hub cannot be reached.
    """
    spec = parse_evaluation(evaluation)
    if max_samples is not None and max_samples < 1:
        raise EvaluationInputError(f"max_samples must be at least 1, got {max_samples}.")
    if spec.kind == "lm-eval":
        return _lm_eval_data(spec, dataset, max_samples)
    if spec.kind == "ppl":
        return _ppl_data(spec, dataset, split, text_column, dataset_name)
    if spec.kind == "glue":
        _check_glue_model(spec, model_config)
    table, label, config, split = _load_table(spec, dataset, split, dataset_name)
    what = f"The {spec.name} data ({label}{f', split {split!r}' if split else ''})"
    if max_samples is not None and len(table) > max_samples:
        table = table.select(range(max_samples))
    if len(table) == 0:
        raise EvaluationInputError(f"{what} is empty: no rows to evaluate.")
    if spec.kind == "glue":
        table = _glue_table(spec, table, model_config, what)
    else:
        table = _squad_table(spec, table, what)
    return EvaluationData(spec, table, label, config, split, max_samples)


def _lm_eval_data(spec: EvaluationSpec, dataset: Any, max_samples: int | None) -> EvaluationData:
    from .zeroshot import LM_EVAL_INSTALL_HINT

    if dataset is not None:
        raise EvaluationInputError(
            f"{spec.name}: lm-eval tasks name their own data (a task name, or a task YAML with its data_files); an "
            "evaluation dataset is not read."
        )
    if importlib.util.find_spec("lm_eval") is None:
        raise EvaluationInputError(f"{spec.name}: {LM_EVAL_INSTALL_HINT}")
    tasks = list(spec.tasks)
    for task in tasks:
        if task.lower().endswith((".yaml", ".yml")):
            if not os.path.isfile(os.path.expanduser(task)):
                raise EvaluationInputError(f"{spec.name}: the task file {task!r} does not exist.")
        elif spec.task_dir is None and ("/" in task or os.sep in task):
            raise EvaluationInputError(
                f"{spec.name}: {task!r} is neither a folder of task YAML files nor a task .yaml file."
            )
    if spec.task_dir is not None:
        tasks = _folder_tasks(spec, tasks)
    return EvaluationData(spec, tasks, ",".join(tasks), max_samples=max_samples)


def _folder_tasks(spec: EvaluationSpec, tasks: list[str]) -> list[str]:
    """The tasks of `spec`'s folder that it names, checked against the folder's index (every task when none is
    named); YAML paths among them are kept as they are."""
    from .zeroshot import folder_task_names

    folder = os.path.expanduser(spec.task_dir or "")
    if not os.path.isdir(folder):
        raise EvaluationInputError(f"{spec.name}: the task folder {spec.task_dir!r} does not exist.")
    names, leaves = folder_task_names(folder)
    if not leaves:
        raise EvaluationInputError(f"{spec.name}: the folder {spec.task_dir!r} holds no lm-eval task YAML file.")
    if not tasks:
        return leaves
    unknown = [task for task in tasks if task not in names and not task.lower().endswith((".yaml", ".yml"))]
    if unknown:
        raise EvaluationInputError(
            f"{spec.name}: {', '.join(repr(task) for task in unknown)} is not a task, group or tag of "
            f"{spec.task_dir!r}; its tasks: {', '.join(leaves)}."
        )
    return tasks


def _ppl_data(
    spec: EvaluationSpec, dataset: Any, split: str | None, text_column: str | None, dataset_name: str | None
) -> EvaluationData:
    from ..data.calibration import NAMED_DATASETS, NAMED_EVAL_SPLITS, CalibrationDataError, load_texts

    if dataset is None:
        raise EvaluationInputError(
            "ppl needs text: a text / json / csv / parquet file or folder, wikitext2, c4, ptb, or a list of strings."
        )
    if isinstance(dataset, str) and dataset in NAMED_DATASETS:
        label, split = dataset, split or NAMED_EVAL_SPLITS[dataset]
    elif isinstance(dataset, str):
        label = _local_label(dataset)
    else:
        label = dataset_name or "in-memory data"
    try:
        texts = load_texts(dataset, text_column=text_column, split=split)
    except CalibrationDataError as err:
        if "is empty" in str(err):
            raise EvaluationInputError(f"The ppl text ({label}) is empty: no non-blank text to measure.") from None
        raise EvaluationInputError(f"Cannot read the ppl text ({label}): {err}") from None
    return EvaluationData(spec, "\n\n".join(texts), label, None, split)


def _local_label(path: str) -> str:
    return os.path.basename(os.path.normpath(os.path.expanduser(path))) or path


def _load_table(
    spec: EvaluationSpec, dataset: Any, split: str | None, dataset_name: str | None
) -> tuple[Any, str, str | None, str | None]:
    """(a datasets.Dataset, its name for the results, its Hub config, its split) for glue and squad."""
    import datasets

    if isinstance(dataset, datasets.DatasetDict):
        split = split or _pick_split(spec, list(dataset))
        if split not in dataset:
            raise EvaluationInputError(f"The {spec.name} data has no split {split!r}; its splits: {list(dataset)}.")
        return dataset[split], dataset_name or "in-memory data", None, split
    if isinstance(dataset, datasets.Dataset):
        return dataset, dataset_name or "in-memory data", None, split
    if dataset is not None and not isinstance(dataset, (str, os.PathLike)):
        raise EvaluationInputError(
            f"The {spec.name} data must be a local file or folder, a Hub dataset id or a datasets.Dataset, got "
            f"{type(dataset).__name__}."
        )
    if dataset is not None and os.path.exists(os.path.expanduser(os.fspath(dataset))):
        path = os.path.expanduser(os.fspath(dataset))
        return _read_local_table(spec, path), _local_label(path), None, None
    if dataset is None:
        if spec.kind == "glue":
            path, config = spec.glue_task.dataset_args
        else:
            path, config = _SQUAD_HUB[spec.kind], None
    else:
        path = os.fspath(dataset)
        config = spec.glue_task.dataset_args[1] if spec.kind == "glue" and path in _GLUE_HUB_NAMES else None
    split = split or (spec.glue_task.validation_split if spec.kind == "glue" else "validation")
    return _load_hub_table(spec, path, config, split), path, config, split


def _pick_split(spec: EvaluationSpec, splits: list[str]) -> str:
    preferred = spec.glue_task.validation_split if spec.kind == "glue" else "validation"
    if preferred in splits or len(splits) != 1:
        return preferred
    return splits[0]


def _read_local_table(spec: EvaluationSpec, path: str) -> Any:
    import datasets

    from ..data.calibration import CalibrationDataError, calibration_files

    try:
        files = calibration_files(path)
    except CalibrationDataError as err:
        raise EvaluationInputError(f"{spec.name}: {err}".replace("calibration ", "")) from None
    ext = os.path.splitext(files[0])[1].lower()
    if ext not in _TABLE_BUILDERS:
        raise EvaluationInputError(
            f"{spec.name} reads a table with named columns: {_local_label(path)!r} is {ext} text; use csv, json, "
            "jsonl or parquet."
        )
    if all(os.path.getsize(file) == 0 for file in files):
        raise EvaluationInputError(f"The {spec.name} data ({_local_label(path)}) is empty: no rows to evaluate.")
    try:
        return datasets.load_dataset(_TABLE_BUILDERS[ext], data_files=files, split="train")
    except (ValueError, StopIteration) as err:
        # datasets' word for a table without rows (a csv header alone): "Instruction 'train' corresponds to no data".
        if isinstance(err, StopIteration) or "corresponds to no data" in str(err):
            raise EvaluationInputError(
                f"The {spec.name} data ({_local_label(path)}) is empty: no rows to evaluate."
            ) from None
        raise EvaluationInputError(f"Cannot read the {spec.name} data ({_local_label(path)}): {err}") from None


def _load_hub_table(spec: EvaluationSpec, path: str, config: str | None, split: str) -> Any:
    import datasets

    try:
        return datasets.load_dataset(path, config, split=split)
    except Exception as err:
        from ..offline import hub_unreachable_error, is_hub_unreachable

        if is_hub_unreachable(err):
            raise hub_unreachable_error(
                f"the {spec.name} dataset {path!r}" + (f" ({config})" if config else ""),
                "pass local files with the task's columns (csv, json, jsonl, parquet or a folder of them)",
            ) from None
        if isinstance(err, ValueError) and "split" in str(err).lower():
            raise EvaluationInputError(f"The {spec.name} dataset {path!r} has no split {split!r}: {err}") from None
        raise


def _missing_columns(spec: EvaluationSpec, table: Any, required: Sequence[str], what: str) -> None:
    missing = [column for column in required if column not in table.column_names]
    if missing:
        raise EvaluationInputError(
            f"{what} has no column {', '.join(repr(c) for c in missing)}: {spec.name} reads "
            f"{', '.join(repr(c) for c in required)}; the data has {', '.join(repr(c) for c in table.column_names)}."
        )


# ---- GLUE ------------------------------------------------------------------------------------------------------------


def _model_label_names(model_config: Any) -> dict[int, str] | None:
    """The model's class names by id, or None when they are generic (LABEL_0, LABEL_1, ...) or absent."""
    id2label = getattr(model_config, "id2label", None) or {}
    names = {int(i): str(name) for i, name in id2label.items()}
    if not names or all(_GENERIC_LABEL.match(name) for name in names.values()):
        return None
    return names


def _check_glue_model(spec: EvaluationSpec, model_config: Any) -> None:
    """A model for `spec`'s GLUE task: its number of outputs, and class names (if it has any) that are the task's."""
    from .glue import label_key

    if model_config is None:
        return
    task = spec.glue_task
    num_labels = getattr(model_config, "num_labels", None)
    if num_labels is not None and num_labels != task.num_labels:
        kind = (
            "a regression model with 1 output" if task.is_regression else f"a classifier of {task.num_labels} classes"
        )
        raise EvaluationInputError(
            f"{spec.name} needs {kind}; the model has {num_labels} output(s) (id2label {_id2label(model_config)})."
        )
    names = _model_label_names(model_config)
    if task.is_regression or names is None:
        return
    glue = {label_key(name) for name in task.label_names}
    unknown = [name for name in names.values() if label_key(name) not in glue]
    if unknown:
        raise EvaluationInputError(
            f"The model's labels ({_id2label(model_config)}) do not match {spec.name}'s classes "
            f"({', '.join(task.label_names)}): {', '.join(repr(n) for n in unknown)} is not one of them. Evaluate it "
            "on the task it was fine-tuned for, or set its config's id2label to the task's class names."
        )


def _id2label(model_config: Any) -> str:
    id2label = getattr(model_config, "id2label", None) or {}
    return (
        "{" + ", ".join(f"{int(i)}: {name!r}" for i, name in sorted(id2label.items(), key=lambda x: int(x[0]))) + "}"
    )


def _glue_table(spec: EvaluationSpec, table: Any, model_config: Any, what: str) -> Any:
    """The rows with the task's columns and labels as GLUE class ids (a ClassLabel with GLUE's names, by which
    `evaluate_sequence_classification` maps the model's ids when its class names are GLUE's in another order)."""
    import datasets

    task = spec.glue_task
    first, second = task.text_columns
    text_columns = [first] + ([second] if second else [])
    _missing_columns(spec, table, [*text_columns, "label"], what)
    for column in text_columns:
        blank = [i for i, text in enumerate(table[column]) if not isinstance(text, str)]
        if blank:
            raise EvaluationInputError(
                f"{what}: column {column!r} holds no text in {len(blank)} row(s) (first: row {blank[0]})."
            )
    if task.is_regression:
        labels = [_score(value, what) for value in table["label"]]
        features = datasets.Features({c: datasets.Value("string") for c in text_columns})
        features["label"] = datasets.Value("float32")
    else:
        labels = _class_ids(spec, task, table, model_config, what)
        features = datasets.Features({c: datasets.Value("string") for c in text_columns})
        features["label"] = datasets.ClassLabel(names=list(task.label_names))
    columns = {c: list(table[c]) for c in text_columns}
    return datasets.Dataset.from_dict({**columns, "label": labels}, features=features)


def _score(value: Any, what: str) -> float:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise EvaluationInputError(f"{what}: label {value!r} is not a similarity score (a number).") from None
    if score != score:
        raise EvaluationInputError(f"{what}: a label is empty (NaN); every row needs its similarity score.")
    return score


def _class_ids(spec: EvaluationSpec, task: GlueTask, table: Any, model_config: Any, what: str) -> list[int]:
    """The label column as GLUE class ids: ids as they are (in GLUE's order), names matched to GLUE's class names
    (case and separators aside; a model with class names has GLUE's, `_check_glue_model` saw to it), and LABEL_<i>
    for a model without class names; anything else is refused."""
    from .glue import label_key

    glue_ids = {label_key(name): i for i, name in enumerate(task.label_names)}
    feature = table.features.get("label")
    feature_names = getattr(feature, "names", None)
    if feature_names and all(label_key(name) in glue_ids for name in feature_names):
        # A ClassLabel (Hub GLUE and its copies): its ids are in its own order, its names say which class each is.
        remap = {i: glue_ids[label_key(name)] for i, name in enumerate(feature_names)}
        values = [remap.get(v, v) if isinstance(v, int) and v >= 0 else v for v in table["label"]]
    else:
        values = list(table["label"])
    model_names = _model_label_names(model_config)
    generic = {f"label_{i}": i for i in range(task.num_labels)}  # the names of a model without class names
    accepted = ", ".join(task.label_names) + f", or ids 0..{task.num_labels - 1}"
    ids: list[int] = []
    unknown: list[Any] = []
    for value in values:
        if isinstance(value, bool) or value is None:
            unknown.append(value)
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():  # "1" in a json file
            value = int(value)
        if isinstance(value, int):
            if value < 0:
                raise EvaluationInputError(
                    f"{what}: label {value} is negative: this split keeps its labels hidden (a GLUE test split); "
                    "evaluate a validation split."
                )
            if value >= task.num_labels:
                unknown.append(value)
                continue
            ids.append(value)
            continue
        key = label_key(value)
        if key in glue_ids:
            ids.append(glue_ids[key])
        elif key in generic and not model_names:
            ids.append(generic[key])
        else:
            unknown.append(value)
    if unknown:
        shown = ", ".join(repr(v) for v in dict.fromkeys(unknown))
        raise EvaluationInputError(
            f"{what}: label(s) {shown} match none of {spec.name}'s classes ({accepted}) nor the model's labels "
            f"(id2label {_id2label(model_config)})."
        )
    return ids


# ---- SQuAD -----------------------------------------------------------------------------------------------------------


def _squad_table(spec: EvaluationSpec, table: Any, what: str) -> Any:
    """Rows with id, question, context and answers ({"text": [...], "answer_start": [...]}), as squad.py reads them."""
    import datasets

    _missing_columns(spec, table, ["question", "context", "answers"], what)
    ids = [str(i) for i in table["id"]] if "id" in table.column_names else [str(i) for i in range(len(table))]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise EvaluationInputError(f"{what}: id {duplicate!r} is used by more than one row; ids name one question.")
    answers = [_answers(value, row, what) for row, value in enumerate(table["answers"])]
    unanswered = sum(1 for a in answers if not a["text"])
    if spec.kind == "squad" and unanswered:
        raise EvaluationInputError(
            f"{what}: {unanswered} row(s) have no answer; squad scores answerable questions only: evaluate "
            "squad_v2, which scores 'no answer' too."
        )
    for column in ("question", "context"):
        bad = [i for i, text in enumerate(table[column]) if not isinstance(text, str) or not text.strip()]
        if bad:
            raise EvaluationInputError(
                f"{what}: column {column!r} is empty in {len(bad)} row(s) (first: row {bad[0]})."
            )
    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "question": datasets.Value("string"),
            "context": datasets.Value("string"),
            "answers": {
                "text": datasets.Sequence(datasets.Value("string")),
                "answer_start": datasets.Sequence(datasets.Value("int32")),
            },
        }
    )
    return datasets.Dataset.from_dict(
        {"id": ids, "question": list(table["question"]), "context": list(table["context"]), "answers": answers},
        features=features,
    )


def _answers(value: Any, row: int, what: str) -> dict[str, list[Any]]:
    """One row's answers as {"text": [...], "answer_start": [...]}; a csv cell holds that object as JSON."""
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else {"text": []}
        except json.JSONDecodeError:
            value = [value]  # a bare answer text
    if isinstance(value, Mapping) and "text" in value:
        texts = value["text"]
        texts = [texts] if isinstance(texts, str) else list(texts or [])
        starts = value.get("answer_start")
        starts = [starts] if isinstance(starts, int) else list(starts or [])
    elif isinstance(value, Sequence) and all(isinstance(t, str) for t in value):
        texts, starts = list(value), []
    else:
        raise EvaluationInputError(
            f'{what}: the answers of row {row} are not {{"text": [...], "answer_start": [...]}} (got {value!r}).'
        )
    if not all(isinstance(t, str) for t in texts):
        raise EvaluationInputError(f"{what}: the answers of row {row} hold a text that is not a string: {texts!r}.")
    if len(starts) != len(texts):
        starts = [-1] * len(texts)  # only the texts are scored
    return {"text": texts, "answer_start": [int(s) for s in starts]}


# ---- running ---------------------------------------------------------------------------------------------------------


def run_evaluation(
    data: EvaluationData,
    model: Any,
    tokenizer: Any,
    *,
    stage: str = "after",
    batch_size: int | None = None,
    seqlen: int = 512,
    max_windows: int | None = None,
    show_progress: bool = True,
) -> list[TaskResult]:
    """Score `model` on `data`; one `TaskResult` per task (lm-eval: per task and group), with the values and the
    time filled in on `stage`'s side ("before" or "after" pruning).

    `seqlen` and `max_windows` are perplexity's window length (shortened to fit a short text) and window count.

    Raises:
        EvaluationInputError: a text too short for one perplexity window, a QA tokenizer without offsets.
    """
    if stage not in ("before", "after"):
        raise ValueError(f"stage must be 'before' or 'after', got {stage!r}.")
    if tokenizer is None:
        raise EvaluationInputError(f"{data.spec.name} needs the model's tokenizer: pass one to the pruner.")
    spec = data.spec
    batch_size = batch_size or DEFAULT_BATCH_SIZES.get(spec.kind, 8)
    start = time.perf_counter()
    if spec.kind == "ppl":
        measured = {"ppl": _run_perplexity(data, model, tokenizer, seqlen, max_windows, show_progress)}
    elif spec.kind == "glue":
        from .glue import evaluate_sequence_classification

        measured = {
            spec.name: evaluate_sequence_classification(
                model,
                tokenizer,
                data.data,
                task=spec.glue_task.name,
                batch_size=batch_size,
                max_length=_max_length(model, MAX_LENGTHS["glue"]),
                show_progress=show_progress,
            )
        }
    elif spec.kind in ("squad", "squad_v2"):
        from .squad import evaluate_question_answering

        if not getattr(tokenizer, "is_fast", False):
            raise EvaluationInputError(
                f"{spec.name} needs a fast tokenizer (its answers are located by character offsets)."
            )
        max_length = _max_length(model, MAX_LENGTHS[spec.kind])
        measured = {
            spec.name: evaluate_question_answering(
                model,
                tokenizer,
                data.data,
                version_2=spec.kind == "squad_v2",
                batch_size=batch_size,
                max_length=max_length,
                doc_stride=_DOC_STRIDE if _DOC_STRIDE < max_length // 2 else max_length // 4,
                show_progress=show_progress,
            )
        }
    else:
        from .zeroshot import evaluate_zero_shot

        scores = evaluate_zero_shot(
            model,
            tokenizer,
            data.data,
            batch_size=batch_size,
            limit=data.max_samples,
            include_path=os.path.expanduser(spec.task_dir) if spec.task_dir else None,
        )
        measured = {f"lm-eval:{task}": values for task, values in scores.items()}
    seconds = time.perf_counter() - start

    results = []
    for task, values in measured.items():
        metrics = {
            name: float(value)
            for name, value in values.items()
            if name not in _COUNTS and "stderr" not in name and isinstance(value, (int, float))
        }
        details = {name: value for name, value in values.items() if name in _COUNTS or name in ("windows", "tokens")}
        if spec.kind == "ppl":
            metrics = {"perplexity": values["perplexity"]}
            details = {"windows": values["windows"], "tokens": values["tokens"], "seqlen": values["seqlen"]}
        card = CARD_METRICS.get(spec.kind) or (spec.glue_task.metrics if spec.kind == "glue" else tuple(metrics))
        results.append(
            TaskResult(
                task=task,
                task_type=spec.pipeline_tag,
                dataset=task.partition(":")[2] if spec.kind == "lm-eval" else data.dataset,
                dataset_config=data.dataset_config,
                split=data.split,
                metrics={name: MetricResult(name, **{stage: value}) for name, value in metrics.items()},
                card_metrics=tuple(name for name in card if name in metrics),
                # lm-eval scores its tasks in one run: each is given the run's time.
                **{f"details_{stage}": details, f"seconds_{stage}": seconds},
            )
        )
    return results


def _run_perplexity(
    data: EvaluationData, model: Any, tokenizer: Any, seqlen: int, max_windows: int | None, show_progress: bool
) -> dict[str, Any]:
    from .perplexity import perplexity

    ids = tokenizer(data.data, return_tensors="pt", add_special_tokens=False).input_ids
    window = min(seqlen, ids.numel() - 1)
    if window < 2:
        raise EvaluationInputError(
            f"The ppl text ({data.dataset}) has {ids.numel()} tokens: too few to measure perplexity."
        )
    # The tokenizer gives the ids each window starts with (its BOS, where it adds one), as in calibration.
    values = perplexity(
        model, tokenizer, input_ids=ids, seqlen=window, max_windows=max_windows, show_progress=show_progress
    )
    return {**values, "seqlen": window}


def _max_length(model: Any, default: int) -> int:
    positions = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    return min(default, positions) if isinstance(positions, int) and positions > 0 else default
