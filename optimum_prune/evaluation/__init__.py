"""Evaluation without fine-tuning: perplexity, GLUE-style classification, SQuAD."""

from .glue import GLUE_TASKS, compute_glue_metrics, evaluate_sequence_classification
from .perplexity import perplexity
from .results import format_results_table
from .squad import compute_squad_metrics, evaluate_question_answering, postprocess_qa_predictions

__all__ = [
    "GLUE_TASKS",
    "compute_glue_metrics",
    "compute_squad_metrics",
    "evaluate_question_answering",
    "evaluate_sequence_classification",
    "format_results_table",
    "perplexity",
    "postprocess_qa_predictions",
]
