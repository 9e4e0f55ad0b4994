"""What can be evaluated, by name: `ppl`, `glue:<task>`, `squad`, `squad_v2`, `lm-eval:[<folder>:]<task,...>`.

An lm-eval evaluation names lm-eval tasks, groups or tags (``lm-eval:arc_easy,piqa``), task YAML files
(``lm-eval:tasks/my_task.yaml``), or the tasks of a folder of task YAML files (lm-eval's ``include_path``):
``lm-eval:benchmarks/zeroshot:offline_wiki_next,offline_wiki_cloze`` runs those two tasks of the folder, and
``lm-eval:benchmarks/zeroshot`` (an existing folder, no task after it) runs every task in it.

This module imports nothing heavy (no torch, numpy or datasets): the command line parses `--evaluate` with it before
deciding to load anything. The GLUE task table lives here for the same reason; `glue.py` re-exports it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from ..tasks import TASKS

__all__ = [
    "EVALUATION_KINDS",
    "GLUE_TASKS",
    "EvaluationInputError",
    "EvaluationSpec",
    "GlueTask",
    "parse_evaluation",
]


class EvaluationInputError(ValueError):
    """Evaluation input that cannot be scored (an unknown task, missing columns, labels the model does not have, an
    empty split); the message is one line that names what is wrong."""


@dataclass(frozen=True)
class GlueTask:
    """What is needed to load and score one GLUE task.

    Attributes:
        name: the task name as used by ``compute_glue_metrics``.
        dataset_args: positional arguments of ``datasets.load_dataset`` (path, config name).
        text_columns: the first and (for sentence-pair tasks) second text column; ``None`` for single-sentence tasks.
        num_labels: number of model outputs (1 for the regression task ``stsb``).
        validation_split: the split that holds labelled evaluation data.
        is_regression: whether the label is a float score rather than a class id.
        metrics: the metric names ``compute_glue_metrics`` returns for this task.
        label_names: the class names in GLUE's order (the ``ClassLabel`` names of ``nyu-mll/glue``), by which label
            strings in local files and a model's ``id2label`` are matched to GLUE's class ids.
    """

    name: str
    dataset_args: tuple[str, str]
    text_columns: tuple[str, str | None]
    num_labels: int
    validation_split: str = "validation"
    is_regression: bool = False
    metrics: tuple[str, ...] = ("accuracy",)
    label_names: tuple[str, ...] = ()


_GLUE_PATH = "nyu-mll/glue"
_NLI = ("entailment", "neutral", "contradiction")
_RTE = ("entailment", "not_entailment")

GLUE_TASKS: dict[str, GlueTask] = {
    "cola": GlueTask(
        "cola",
        (_GLUE_PATH, "cola"),
        ("sentence", None),
        2,
        metrics=("matthews_correlation",),
        label_names=("unacceptable", "acceptable"),
    ),
    "sst2": GlueTask("sst2", (_GLUE_PATH, "sst2"), ("sentence", None), 2, label_names=("negative", "positive")),
    "mrpc": GlueTask(
        "mrpc",
        (_GLUE_PATH, "mrpc"),
        ("sentence1", "sentence2"),
        2,
        metrics=("accuracy", "f1"),
        label_names=("not_equivalent", "equivalent"),
    ),
    "qqp": GlueTask(
        "qqp",
        (_GLUE_PATH, "qqp"),
        ("question1", "question2"),
        2,
        metrics=("accuracy", "f1"),
        label_names=("not_duplicate", "duplicate"),
    ),
    "stsb": GlueTask(
        "stsb",
        (_GLUE_PATH, "stsb"),
        ("sentence1", "sentence2"),
        1,
        is_regression=True,
        metrics=("pearson", "spearmanr"),
    ),
    # The "mnli" config has no plain "validation" split: it carries validation_matched and validation_mismatched.
    "mnli": GlueTask(
        "mnli",
        (_GLUE_PATH, "mnli"),
        ("premise", "hypothesis"),
        3,
        validation_split="validation_matched",
        label_names=_NLI,
    ),
    "mnli_matched": GlueTask(
        "mnli_matched", (_GLUE_PATH, "mnli_matched"), ("premise", "hypothesis"), 3, label_names=_NLI
    ),
    "mnli_mismatched": GlueTask(
        "mnli_mismatched", (_GLUE_PATH, "mnli_mismatched"), ("premise", "hypothesis"), 3, label_names=_NLI
    ),
    "qnli": GlueTask("qnli", (_GLUE_PATH, "qnli"), ("question", "sentence"), 2, label_names=_RTE),
    "rte": GlueTask("rte", (_GLUE_PATH, "rte"), ("sentence1", "sentence2"), 2, label_names=_RTE),
    "wnli": GlueTask(
        "wnli", (_GLUE_PATH, "wnli"), ("sentence1", "sentence2"), 2, label_names=("not_entailment", "entailment")
    ),
    # The diagnostic set only has a test split, whose labels GLUE keeps hidden (-1); it is scored with an MNLI model
    # through the GLUE server. It is listed so its metric and columns are known, not because it can be scored here.
    "ax": GlueTask("ax", (_GLUE_PATH, "ax"), ("premise", "hypothesis"), 3, validation_split="test", label_names=_NLI),
}

#: kind -> the model it scores, as the command line's --task (whose pipeline tag, in tasks.py, is the model-index
#: task type).
EVALUATION_KINDS: dict[str, str] = {
    "ppl": "causal-lm",
    "lm-eval": "causal-lm",
    "glue": "sequence-classification",
    "squad": "question-answering",
    "squad_v2": "question-answering",
}

_WHAT_IT_SCORES = {
    "causal-lm": "measures a language model",
    "sequence-classification": "scores a sequence classifier",
    "question-answering": "scores an extractive question-answering model",
}

USAGE = "ppl, glue:<task>, squad, squad_v2 or lm-eval:[<folder>:]<task,...>"


@dataclass(frozen=True)
class EvaluationSpec:
    """One evaluation, as `--evaluate` names it.

    Attributes:
        kind: "ppl", "glue", "squad", "squad_v2" or "lm-eval".
        tasks: the GLUE task (one) or the lm-eval task names / YAML paths; empty for the other kinds, and for an
            lm-eval folder whose every task is run.
        task_dir: lm-eval: a folder of task YAML files whose tasks, groups and tags `tasks` may name (lm-eval's
            ``include_path``); relative ``data_files`` in its YAML files are read from the folder of each file.
    """

    kind: str
    tasks: tuple[str, ...] = ()
    task_dir: str | None = None

    @property
    def name(self) -> str:
        named = ",".join(self.tasks)
        if self.task_dir is not None:
            named = f"{self.task_dir}:{named}" if named else self.task_dir
        return f"{self.kind}:{named}" if named else self.kind

    @property
    def model_task(self) -> str:
        """The command line's --task of the model it scores."""
        return EVALUATION_KINDS[self.kind]

    @property
    def pipeline_tag(self) -> str:
        return TASKS[self.model_task].pipeline_tag

    @property
    def what_it_scores(self) -> str:
        return _WHAT_IT_SCORES[self.model_task]

    @property
    def reads_dataset(self) -> bool:
        """Whether it reads the evaluation dataset given with it (lm-eval tasks name their own data)."""
        return self.kind != "lm-eval"

    @property
    def glue_task(self) -> GlueTask:
        return GLUE_TASKS[self.tasks[0]]

    def __str__(self) -> str:
        return self.name


def parse_evaluation(text: str | EvaluationSpec) -> EvaluationSpec:
    """`"glue:sst2"` -> `EvaluationSpec("glue", ("sst2",))`; raises EvaluationInputError (one line) otherwise."""
    if isinstance(text, EvaluationSpec):
        return text
    if not isinstance(text, str):
        raise EvaluationInputError(f"An evaluation is named by a string ({USAGE}), got {type(text).__name__}.")
    kind, colon, rest = text.strip().partition(":")
    kind = kind.strip().lower()
    if kind in ("squad-v2", "squadv2"):
        kind = "squad_v2"
    if kind in ("lm_eval", "lmeval"):
        kind = "lm-eval"
    if kind not in EVALUATION_KINDS:
        raise EvaluationInputError(f"Unknown evaluation {text!r}: use {USAGE}.")
    if kind == "glue":
        task = rest.strip().lower().replace("-", "_")
        if not task:
            raise EvaluationInputError(f"glue needs a task, e.g. glue:sst2; GLUE tasks: {', '.join(GLUE_TASKS)}.")
        if task not in GLUE_TASKS:
            raise EvaluationInputError(
                f"Unknown GLUE task {rest.strip()!r} in {text!r}; use one of: {', '.join(GLUE_TASKS)}."
            )
        return EvaluationSpec("glue", (task,))
    if kind == "lm-eval":
        task_dir, names = _split_task_dir(rest.strip())
        tasks = tuple(task.strip() for task in names.split(",") if task.strip())
        if not tasks and task_dir is None:
            raise EvaluationInputError(
                "lm-eval needs its tasks, e.g. lm-eval:arc_easy,piqa, lm-eval:path/to/task.yaml or "
                "lm-eval:path/to/task_folder[:task,...]."
            )
        return EvaluationSpec("lm-eval", tasks, task_dir)
    if colon:
        raise EvaluationInputError(f"{kind} takes no ':<task>' (got {text!r}): use {USAGE}.")
    return EvaluationSpec(kind)


# A Windows drive ("C:\\" or "C:/"), whose colon does not end a folder name.
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def _split_task_dir(text: str) -> tuple[str | None, str]:
    """`"DIR:a,b"` -> `("DIR", "a,b")`; an existing folder alone -> `(folder, "")`; task names alone -> `(None, ...)`."""
    start = 2 if _DRIVE.match(text) else 0
    colon = text.rfind(":", start)
    if colon >= 0:
        task_dir = text[:colon].strip()
        if not task_dir:
            raise EvaluationInputError(
                f"lm-eval:{text} names no task folder before ':'; use lm-eval:<folder>:<task,...> or lm-eval:<task,...>."
            )
        return task_dir, text[colon + 1 :]
    if "," not in text and text and os.path.isdir(os.path.expanduser(text)):
        return text, ""
    return None, text
