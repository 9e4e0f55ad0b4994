"""Evaluation without fine-tuning: perplexity, GLUE-style classification, SQuAD."""

from .glue import GLUE_TASKS, compute_glue_metrics, evaluate_sequence_classification
from .perplexity import perplexity
from .results import format_results_table
from .squad import compute_squad_metrics, evaluate_question_answering, postprocess_qa_predictions
from .zeroshot import evaluate_zero_shot  # imports lm-eval (an optional extra) only when called

__all__ = [
    "GLUE_TASKS",
    "compute_glue_metrics",
    "compute_squad_metrics",
    "evaluate_question_answering",
    "evaluate_sequence_classification",
    "evaluate_zero_shot",
    "format_results_table",
    "perplexity",
    "postprocess_qa_predictions",
]
