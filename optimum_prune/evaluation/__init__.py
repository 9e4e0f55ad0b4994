"""Evaluation without fine-tuning: perplexity, GLUE-style classification, SQuAD, zero-shot through lm-eval."""

from .glue import compute_glue_metrics, evaluate_sequence_classification
from .perplexity import perplexity
from .results import EvaluationResults, MetricResult, TaskResult, format_results_table
from .runner import EvaluationData, load_evaluation_data, run_evaluation
from .specs import GLUE_TASKS, EvaluationInputError, EvaluationSpec, parse_evaluation
from .squad import compute_squad_metrics, evaluate_question_answering, postprocess_qa_predictions
from .zeroshot import evaluate_zero_shot  # imports lm-eval (an optional extra) only when called

__all__ = [
    "GLUE_TASKS",
    "EvaluationData",
    "EvaluationInputError",
    "EvaluationResults",
    "EvaluationSpec",
    "MetricResult",
    "TaskResult",
    "compute_glue_metrics",
    "compute_squad_metrics",
    "evaluate_question_answering",
    "evaluate_sequence_classification",
    "evaluate_zero_shot",
    "format_results_table",
    "load_evaluation_data",
    "parse_evaluation",
    "perplexity",
    "postprocess_qa_predictions",
    "run_evaluation",
]
