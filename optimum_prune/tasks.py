"""The tasks a pruner is made for, in one table: the pruner classes, the command line and the model card read it.

It imports only the standard library: optimum-cli reads it to list `--task`'s choices without loading the package.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_TASK", "TASKS", "Task", "auto_class_for_pipeline", "task_for_pipeline"]


@dataclass(frozen=True)
class Task:
    """One task: how the command line names it, which classes load and prune its models, how the Hub tags them."""

    #: The command line's --task.
    name: str
    #: The pruner class in `optimum_prune.pruners` (and `optimum_prune`).
    pruner: str
    #: The transformers Auto class that loads the model (and the pruned checkpoint).
    auto_class: str
    #: The Hub's pipeline tag, written into the model card.
    pipeline_tag: str
    #: How calibration text is cut: "windows" (random fixed-length windows of the joined text: language models) or
    #: "examples" (one sequence per text: encoders, where a sentence is the natural unit).
    calibration_format: str


TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task("causal-lm", "PrunerForCausalLM", "AutoModelForCausalLM", "text-generation", "windows"),
        Task(
            "sequence-classification",
            "PrunerForSequenceClassification",
            "AutoModelForSequenceClassification",
            "text-classification",
            "examples",
        ),
        Task(
            "question-answering",
            "PrunerForQuestionAnswering",
            "AutoModelForQuestionAnswering",
            "question-answering",
            "examples",
        ),
    )
}
#: The command line's default --task, and the model card's recipe for a pipeline tag no pruner is made for.
DEFAULT_TASK = "causal-lm"

#: Auto classes of pipeline tags that no pruner is made for, which a card written by `create_model_card` may name.
_OTHER_AUTO_CLASSES = {
    "fill-mask": "AutoModelForMaskedLM",
    "token-classification": "AutoModelForTokenClassification",
    "feature-extraction": "AutoModel",
}


def task_for_pipeline(pipeline_tag: str | None) -> Task | None:
    """The task whose models carry `pipeline_tag`, or None."""
    return next((task for task in TASKS.values() if task.pipeline_tag == pipeline_tag), None)


def auto_class_for_pipeline(pipeline_tag: str | None) -> str:
    """The Auto class that loads a model with `pipeline_tag` (None: a causal LM, the library's main case)."""
    task = task_for_pipeline(pipeline_tag or TASKS[DEFAULT_TASK].pipeline_tag)
    return task.auto_class if task is not None else _OTHER_AUTO_CLASSES.get(pipeline_tag or "", "AutoModel")
