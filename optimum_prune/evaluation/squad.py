"""SQuAD v1.1 / v2.0 metrics and an extractive question-answering evaluation loop.

The metric code reproduces the official evaluation scripts (``evaluate-v1.1.py`` and ``evaluate-v2.0.py``) line for
line in behaviour, including their small differences: v1.1 gives an empty prediction F1 0 against any gold answer,
while v2.0 gives F1 1 when prediction and gold are both empty (the "no answer" case). Scores are percentages.

Feature preparation and logits post-processing follow ``prepare_validation_features`` and
``postprocess_qa_predictions`` of the transformers ``question-answering`` example (``run_qa.py`` / ``utils_qa.py``).
"""

from __future__ import annotations

import collections
import inspect
import logging
import re
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .perplexity import model_device

logger = logging.getLogger(__name__)

__all__ = [
    "compute_exact",
    "compute_f1",
    "compute_squad_metrics",
    "compute_squad_v1",
    "compute_squad_v2",
    "evaluate_question_answering",
    "exact_match_score",
    "f1_score",
    "metric_max_over_ground_truths",
    "normalize_answer",
    "postprocess_qa_predictions",
    "prepare_qa_features",
]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


# --------------------------------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------------------------------


def normalize_answer(s: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the and collapse whitespace (official scripts)."""
    text = s.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, ground_truth: str) -> bool:
    """SQuAD v1.1 exact match: the normalised strings are equal."""
    return normalize_answer(prediction) == normalize_answer(ground_truth)


def f1_score(prediction: str, ground_truth: str) -> float:
    """SQuAD v1.1 token-overlap F1 between the normalised strings (0 when nothing overlaps, even if both are empty)."""
    prediction_tokens = normalize_answer(prediction).split()
    ground_truth_tokens = normalize_answer(ground_truth).split()
    common = collections.Counter(prediction_tokens) & collections.Counter(ground_truth_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(prediction_tokens)
    recall = num_same / len(ground_truth_tokens)
    return 2 * precision * recall / (precision + recall)


def compute_exact(a_gold: str, a_pred: str) -> int:
    """SQuAD v2.0 exact match (1 or 0)."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def _get_tokens(s: str) -> list[str]:
    if not s:
        return []
    return normalize_answer(s).split()


def compute_f1(a_gold: str, a_pred: str) -> float:
    """SQuAD v2.0 token-overlap F1; when either side has no tokens it is 1 if both are empty, else 0."""
    gold_tokens = _get_tokens(a_gold)
    pred_tokens = _get_tokens(a_pred)
    common = collections.Counter(gold_tokens) & collections.Counter(pred_tokens)
    num_same = sum(common.values())
    if len(gold_tokens) == 0 or len(pred_tokens) == 0:
        return float(gold_tokens == pred_tokens)
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def metric_max_over_ground_truths(
    metric_fn: Callable[[str, str], float], prediction: str, ground_truths: Sequence[str]
) -> float:
    """Best score of ``metric_fn(prediction, gold)`` over the gold answers (v1.1 argument order)."""
    return max(float(metric_fn(prediction, gold)) for gold in ground_truths)


def _predictions_to_dict(predictions: Any) -> dict[str, str]:
    """Accept ``{id: text}`` or ``evaluate``'s ``[{"id": ..., "prediction_text": ...}]``."""
    if isinstance(predictions, Mapping):
        return {str(k): v for k, v in predictions.items()}
    return {str(p["id"]): p["prediction_text"] for p in predictions}


def _answer_texts(answers: Any) -> list[str]:
    if isinstance(answers, Mapping):
        return list(answers["text"])
    return [a["text"] if isinstance(a, Mapping) else a for a in answers]


def _references_to_dict(references: Any) -> dict[str, list[str]]:
    """Accept ``{id: [gold texts]}`` or rows shaped like the HF squad datasets (``id`` and ``answers``)."""
    if isinstance(references, Mapping):
        return {str(k): _answer_texts(v) for k, v in references.items()}
    return {str(r["id"]): _answer_texts(r["answers"]) for r in references}


def compute_squad_v1(predictions: Any, references: Any) -> dict[str, float]:
    """Official SQuAD v1.1 evaluation.

    Args:
        predictions: ``{question_id: answer_text}`` or a list of ``{"id", "prediction_text"}``.
        references: ``{question_id: [gold_text, ...]}`` or rows with ``id`` and ``answers`` (``{"text": [...]}``).

    Returns:
        ``{"exact_match", "f1"}`` in percent over all references; a question without a prediction scores 0, as in
        the official script.
    """
    preds = _predictions_to_dict(predictions)
    golds = _references_to_dict(references)
    if not golds:
        raise ValueError("No references to score")
    exact_match = f1 = 0.0
    for qid, ground_truths in golds.items():
        if not ground_truths:
            raise ValueError(f"Question {qid!r} has no gold answer; score SQuAD v2.0 data with compute_squad_v2")
        if qid not in preds:
            logger.warning("Unanswered question %s will receive score 0.", qid)
            continue
        exact_match += metric_max_over_ground_truths(exact_match_score, preds[qid], ground_truths)
        f1 += metric_max_over_ground_truths(f1_score, preds[qid], ground_truths)
    total = len(golds)
    return {"exact_match": 100.0 * exact_match / total, "f1": 100.0 * f1 / total}


def _make_eval_dict(exact: dict[str, float], f1: dict[str, float], qids: Sequence[str]) -> dict[str, float]:
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact[q] for q in qids) / total,
        "f1": 100.0 * sum(f1[q] for q in qids) / total,
        "total": total,
    }


def compute_squad_v2(
    predictions: Any,
    references: Any,
    no_answer_probabilities: Mapping[str, float] | None = None,
    no_answer_threshold: float = 1.0,
) -> dict[str, float]:
    """Official SQuAD v2.0 evaluation.

    A question whose gold list is empty is unanswerable; its only correct answer is ``""``. Gold answers that
    normalise to nothing are dropped, as the official script does.

    Args:
        predictions: ``{question_id: answer_text}`` (``""`` for "no answer") or a list of ``{"id", "prediction_text"}``.
        references: ``{question_id: [gold_text, ...]}`` or rows with ``id`` and ``answers``.
        no_answer_probabilities: optional ``{question_id: P(no answer)}``; a question whose probability exceeds
            ``no_answer_threshold`` is treated as answered with "no answer" (the script's ``--na-prob-file``).
        no_answer_threshold: the script's ``--na-prob-thresh``.

    Returns:
        ``exact``, ``f1``, ``total`` and, when the subsets are non-empty, ``HasAns_exact``, ``HasAns_f1``,
        ``HasAns_total``, ``NoAns_exact``, ``NoAns_f1``, ``NoAns_total``; scores in percent. A question without a
        prediction scores 0 (the official script would stop with a KeyError there).
    """
    preds = _predictions_to_dict(predictions)
    golds = _references_to_dict(references)
    if not golds:
        raise ValueError("No references to score")
    qid_to_has_ans = {qid: bool(answers) for qid, answers in golds.items()}
    exact_raw: dict[str, float] = {}
    f1_raw: dict[str, float] = {}
    for qid, answers in golds.items():
        gold_answers = [a for a in answers if normalize_answer(a)]
        if not gold_answers:
            gold_answers = [""]
        if qid not in preds:
            logger.warning("Missing prediction for %s", qid)
            exact_raw[qid] = f1_raw[qid] = 0.0
            continue
        exact_raw[qid] = max(compute_exact(a, preds[qid]) for a in gold_answers)
        f1_raw[qid] = max(compute_f1(a, preds[qid]) for a in gold_answers)

    if no_answer_probabilities is not None:
        for scores in (exact_raw, f1_raw):
            for qid in scores:
                if no_answer_probabilities.get(qid, 0.0) > no_answer_threshold:
                    scores[qid] = float(not qid_to_has_ans[qid])

    qids = list(golds)
    result = _make_eval_dict(exact_raw, f1_raw, qids)
    has_ans = [q for q in qids if qid_to_has_ans[q]]
    no_ans = [q for q in qids if not qid_to_has_ans[q]]
    if has_ans:
        result.update({f"HasAns_{k}": v for k, v in _make_eval_dict(exact_raw, f1_raw, has_ans).items()})
    if no_ans:
        result.update({f"NoAns_{k}": v for k, v in _make_eval_dict(exact_raw, f1_raw, no_ans).items()})
    return result


def compute_squad_metrics(predictions: Any, references: Any, version_2: bool = False) -> dict[str, float]:
    """``compute_squad_v2`` when ``version_2`` else ``compute_squad_v1``."""
    return compute_squad_v2(predictions, references) if version_2 else compute_squad_v1(predictions, references)


# --------------------------------------------------------------------------------------------------------------------
# Features and post-processing
# --------------------------------------------------------------------------------------------------------------------


def _pad_on_right(tokenizer: Any) -> bool:
    # run_qa puts the question first unless the tokenizer pads on the left (XLNet), where the context comes first.
    return getattr(tokenizer, "padding_side", "right") == "right"


def prepare_qa_features(examples: Any, tokenizer: Any, max_length: int = 384, doc_stride: int = 128) -> Any:
    """Tokenize question/context pairs into model features, splitting long contexts into overlapping windows.

    Args:
        examples: a batch as a dict of lists with ``id``, ``question`` and ``context`` (one example with string values
            is accepted too, and so is a ``datasets.Dataset``).
        tokenizer: a fast tokenizer (offset mappings are needed).
        max_length: tokens per feature, question included.
        doc_stride: tokens of overlap between consecutive windows of the same context.

    Returns:
        The tokenizer's ``BatchEncoding`` (unpadded) plus ``example_id`` per feature; ``offset_mapping`` holds
        ``None`` for every token that is not part of the context so that post-processing can skip them.
    """
    if hasattr(examples, "column_names"):
        examples = examples[:]
    if isinstance(examples["question"], str):
        examples = {key: [value] for key, value in examples.items()}
    pad_on_right = _pad_on_right(tokenizer)
    # Some SQuAD questions start with lots of whitespace, which would only eat into the context budget.
    questions = [q.lstrip() for q in examples["question"]]
    contexts = list(examples["context"])
    tokenized = tokenizer(
        questions if pad_on_right else contexts,
        contexts if pad_on_right else questions,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding=False,
    )
    sample_mapping = tokenized.pop("overflow_to_sample_mapping")
    context_index = 1 if pad_on_right else 0
    tokenized["example_id"] = []
    for i in range(len(tokenized["input_ids"])):
        sequence_ids = tokenized.sequence_ids(i)
        tokenized["example_id"].append(examples["id"][sample_mapping[i]])
        tokenized["offset_mapping"][i] = [
            (tuple(offset) if sequence_ids[k] == context_index else None)
            for k, offset in enumerate(tokenized["offset_mapping"][i])
        ]
    return tokenized


def _feature_rows(features: Any) -> list[tuple[Any, list[Any]]]:
    """(example_id, offset_mapping) per feature from a dict of lists, a BatchEncoding, a Dataset or a list of dicts."""
    if isinstance(features, (list, tuple)):
        return [(f["example_id"], f["offset_mapping"]) for f in features]
    return list(zip(features["example_id"], features["offset_mapping"]))


def postprocess_qa_predictions(
    examples: Any,
    features: Any,
    predictions: tuple[Any, Any],
    version_2_with_negative: bool = False,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
    show_progress: bool = True,
) -> dict[str, str]:
    """Turn start/end logits of every feature into one answer text per example (transformers ``utils_qa`` logic).

    For each example, all its features are scanned: the ``n_best_size`` best start and end positions are paired, and
    a pair is kept when both tokens lie in the context (their offset is not ``None``), the end does not precede the
    start and the span has at most ``max_answer_length`` tokens; its score is ``start_logit + end_logit``. For SQuAD
    v2 the null answer scores ``start_logits[0] + end_logits[0]`` (the CLS token), taking the smallest over the
    example's features, and "no answer" (``""``) is predicted when the null score exceeds the best span's score by
    more than ``null_score_diff_threshold``.

    Args:
        examples: rows with ``id`` and ``context`` (a ``datasets.Dataset`` or a list of dicts).
        features: the output of ``prepare_qa_features`` (``example_id`` and ``offset_mapping`` per feature).
        predictions: ``(start_logits, end_logits)``, each indexable by feature (an array of shape
            ``(num_features, seq_len)`` or a list of 1-D arrays, one per feature and possibly of different lengths).
        version_2_with_negative: whether "no answer" is allowed.
        n_best_size: candidates kept per side and in the n-best list.
        max_answer_length: longest answer, in tokens.
        null_score_diff_threshold: margin the null score needs over the best span to predict "no answer".
        show_progress: show a progress bar over the examples.

    Returns:
        ``{example_id: answer_text}``; as in the reference implementation the text is ``"empty"`` when no valid span
        exists at all (SQuAD v1.1).
    """
    all_start_logits, all_end_logits = predictions
    feature_rows = _feature_rows(features)
    if len(all_start_logits) != len(feature_rows) or len(all_end_logits) != len(feature_rows):
        raise ValueError(
            f"Got {len(all_start_logits)} start and {len(all_end_logits)} end logit rows for {len(feature_rows)} features"
        )
    example_rows = [{"id": ex["id"], "context": ex["context"]} for ex in examples]
    example_id_to_index = {row["id"]: i for i, row in enumerate(example_rows)}
    features_per_example: dict[int, list[int]] = collections.defaultdict(list)
    for feature_index, (example_id, _) in enumerate(feature_rows):
        features_per_example[example_id_to_index[example_id]].append(feature_index)

    all_predictions: dict[str, str] = collections.OrderedDict()
    for example_index, example in enumerate(
        tqdm(example_rows, desc="Post-processing", unit="example", disable=not show_progress)
    ):
        min_null_prediction: dict[str, Any] | None = None
        prelim_predictions: list[dict[str, Any]] = []
        for feature_index in features_per_example[example_index]:
            start_logits = np.asarray(all_start_logits[feature_index], dtype=np.float64)
            end_logits = np.asarray(all_end_logits[feature_index], dtype=np.float64)
            offset_mapping = feature_rows[feature_index][1]

            feature_null_score = start_logits[0] + end_logits[0]
            if min_null_prediction is None or min_null_prediction["score"] > feature_null_score:
                min_null_prediction = {
                    "offsets": (0, 0),
                    "score": feature_null_score,
                    "start_logit": start_logits[0],
                    "end_logit": end_logits[0],
                }

            start_indexes = np.argsort(start_logits)[-1 : -n_best_size - 1 : -1].tolist()
            end_indexes = np.argsort(end_logits)[-1 : -n_best_size - 1 : -1].tolist()
            for start_index in start_indexes:
                for end_index in end_indexes:
                    # Positions past the feature (padding) or outside the context cannot hold an answer.
                    if (
                        start_index >= len(offset_mapping)
                        or end_index >= len(offset_mapping)
                        or offset_mapping[start_index] is None
                        or len(offset_mapping[start_index]) < 2
                        or offset_mapping[end_index] is None
                        or len(offset_mapping[end_index]) < 2
                    ):
                        continue
                    if end_index < start_index or end_index - start_index + 1 > max_answer_length:
                        continue
                    prelim_predictions.append(
                        {
                            "offsets": (offset_mapping[start_index][0], offset_mapping[end_index][1]),
                            "score": start_logits[start_index] + end_logits[end_index],
                            "start_logit": start_logits[start_index],
                            "end_logit": end_logits[end_index],
                        }
                    )

        null_score = None
        if version_2_with_negative and min_null_prediction is not None:
            prelim_predictions.append(min_null_prediction)
            null_score = min_null_prediction["score"]

        n_best = sorted(prelim_predictions, key=lambda x: x["score"], reverse=True)[:n_best_size]
        if (
            version_2_with_negative
            and min_null_prediction is not None
            and not any(p["offsets"] == (0, 0) for p in n_best)
        ):
            n_best.append(min_null_prediction)

        context = example["context"]
        candidates = [
            {
                "text": context[p["offsets"][0] : p["offsets"][1]],
                "start_logit": p["start_logit"],
                "end_logit": p["end_logit"],
            }
            for p in n_best
        ]
        # The reference implementation answers "empty" rather than failing when nothing valid was found.
        if len(candidates) == 0 or (len(candidates) == 1 and candidates[0]["text"] == ""):
            candidates.insert(0, {"text": "empty", "start_logit": 0.0, "end_logit": 0.0})

        if not version_2_with_negative:
            all_predictions[example["id"]] = candidates[0]["text"]
            continue
        best_non_null = next((c for c in candidates if c["text"] != ""), None)
        if best_non_null is None or null_score is None:
            all_predictions[example["id"]] = ""
            continue
        score_diff = null_score - best_non_null["start_logit"] - best_non_null["end_logit"]
        all_predictions[example["id"]] = "" if score_diff > null_score_diff_threshold else best_non_null["text"]
    return all_predictions


# --------------------------------------------------------------------------------------------------------------------
# Evaluation loop
# --------------------------------------------------------------------------------------------------------------------

_DATASET_NAMES = {"squad": "rajpurkar/squad", "squad_v2": "rajpurkar/squad_v2"}
_FEATURE_KEYS = ("input_ids", "attention_mask", "token_type_ids", "offset_mapping", "example_id")


def _pad_batch(tokenizer: Any, rows: list[dict[str, list[int]]], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Pad a list of unpadded features to the longest, on the tokenizer's padding side."""
    parameters = inspect.signature(model.forward).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    pad_values = {
        "input_ids": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        "attention_mask": 0,
        "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0),
    }
    left = getattr(tokenizer, "padding_side", "right") == "left"
    longest = max(len(row["input_ids"]) for row in rows)
    batch: dict[str, torch.Tensor] = {}
    for key, pad_value in pad_values.items():
        if key not in rows[0] or not (accepts_any or key in parameters):
            continue
        padded = []
        for row in rows:
            padding = [pad_value] * (longest - len(row[key]))
            padded.append(padding + list(row[key]) if left else list(row[key]) + padding)
        batch[key] = torch.tensor(padded, dtype=torch.long)
    return batch


def evaluate_question_answering(
    model: torch.nn.Module,
    tokenizer: Any,
    dataset_or_name: Any = "squad",
    split: str = "validation",
    version_2: bool | None = None,
    batch_size: int = 16,
    max_samples: int | None = None,
    *,
    max_length: int = 384,
    doc_stride: int = 128,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
    return_predictions: bool = False,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluate an extractive question-answering model on SQuAD-style data, without any training.

    Args:
        model: a ``*ForQuestionAnswering`` model (outputs ``start_logits`` and ``end_logits``); put in eval mode for
            the run, its previous mode restored afterwards.
        tokenizer: the matching fast tokenizer.
        dataset_or_name: ``"squad"`` (``rajpurkar/squad``), ``"squad_v2"`` (``rajpurkar/squad_v2``), another Hub
            dataset name, or a ``datasets.Dataset`` with ``id``, ``question``, ``context`` and
            ``answers`` (``{"text": [...], "answer_start": [...]}``).
        split: split to load for a name.
        version_2: score as SQuAD v2.0 (no-answer allowed); by default true for ``"squad_v2"`` and for a dataset where
            some example has no gold answer.
        batch_size: features per forward pass.
        max_samples: evaluate only the first ``max_samples`` examples.
        max_length: tokens per feature (capped by the tokenizer's ``model_max_length``).
        doc_stride: overlap between windows of a long context (lowered to ``max_length // 4`` when it is at least
            half of ``max_length``, where the tokenizer would refuse it).
        n_best_size: see ``postprocess_qa_predictions``.
        max_answer_length: see ``postprocess_qa_predictions``.
        null_score_diff_threshold: see ``postprocess_qa_predictions``.
        return_predictions: also return ``"predictions"`` (``{id: text}``) in the result.
        show_progress: show progress bars over the batches and the post-processing.

    Returns:
        v1.1: ``exact_match`` and ``f1``; v2.0: the keys of ``compute_squad_v2``. Percentages, plus ``num_samples``
        (examples) and ``num_features`` (windows).
    """
    if isinstance(dataset_or_name, str):
        import datasets

        if version_2 is None:
            version_2 = dataset_or_name == "squad_v2" or dataset_or_name.endswith("squad_v2")
        dataset = datasets.load_dataset(_DATASET_NAMES.get(dataset_or_name, dataset_or_name), split=split)
    else:
        dataset = dataset_or_name
    if max_samples is not None:
        dataset = dataset.select(range(min(max_samples, len(dataset))))
    if len(dataset) == 0:
        raise ValueError("The dataset to evaluate is empty")
    references = {str(row["id"]): _answer_texts(row["answers"]) for row in dataset}
    if version_2 is None:
        version_2 = any(len(answers) == 0 for answers in references.values())

    model_max_length = getattr(tokenizer, "model_max_length", None)
    if model_max_length is not None and model_max_length < max_length:
        max_length = model_max_length
    if doc_stride >= max_length // 2:
        # The overlap has to fit in the context part of a window, which the question and special tokens shrink.
        logger.warning(
            "doc_stride %d is too large for max_length %d; using %d", doc_stride, max_length, max_length // 4
        )
        doc_stride = max_length // 4

    feature_rows: list[dict[str, Any]] = []
    chunk = 256
    for start in range(0, len(dataset), chunk):
        encoded = prepare_qa_features(dataset[start : start + chunk], tokenizer, max_length, doc_stride)
        keys = [k for k in _FEATURE_KEYS if k in encoded]
        feature_rows.extend({k: encoded[k][i] for k in keys} for i in range(len(encoded["input_ids"])))

    device = model_device(model)
    was_training = model.training
    model.eval()
    all_start: list[np.ndarray] = []
    all_end: list[np.ndarray] = []
    left = getattr(tokenizer, "padding_side", "right") == "left"
    try:
        with torch.no_grad():
            for start in tqdm(
                range(0, len(feature_rows), batch_size), desc="Evaluating", unit="batch", disable=not show_progress
            ):
                rows = feature_rows[start : start + batch_size]
                batch = {k: v.to(device) for k, v in _pad_batch(tokenizer, rows, model).items()}
                outputs = model(**batch)
                start_logits = outputs.start_logits.float().cpu().numpy()
                end_logits = outputs.end_logits.float().cpu().numpy()
                width = start_logits.shape[1]
                for i, row in enumerate(rows):
                    # Keep each feature's own positions so that index 0 stays its CLS token whatever the padding.
                    length = len(row["input_ids"])
                    window = slice(width - length, width) if left else slice(0, length)
                    all_start.append(start_logits[i, window])
                    all_end.append(end_logits[i, window])
    finally:
        model.train(was_training)

    predictions = postprocess_qa_predictions(
        dataset,
        feature_rows,
        (all_start, all_end),
        version_2_with_negative=version_2,
        n_best_size=n_best_size,
        max_answer_length=max_answer_length,
        null_score_diff_threshold=null_score_diff_threshold,
        show_progress=show_progress,
    )
    predictions = {str(k): v for k, v in predictions.items()}
    result: dict[str, Any] = dict(compute_squad_metrics(predictions, references, version_2=version_2))
    result["num_samples"] = len(dataset)
    result["num_features"] = len(feature_rows)
    if return_predictions:
        result["predictions"] = predictions
    return result
