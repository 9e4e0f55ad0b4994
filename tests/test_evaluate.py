"""`--evaluate` and `pruner.evaluate()`: ppl, glue:<task>, squad, squad_v2 and lm-eval:<tasks> on tiny models and small
local files, before and after pruning, into --json and the model card's model-index; bad input refused in one line.

The expected values are computed here independently of the evaluation code where that is short (class predictions
one sentence at a time, scored with scikit-learn and scipy; perplexity with `perplexity()` on the same text), and
with the evaluation loops themselves on the dense and on the reloaded pruned model where it is not (SQuAD's
post-processing, checked on its own in test_metrics.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TEXT, TINY_ENCODER, make_tokenizer, tiny_bert, tiny_llama
from datasets import Dataset
from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results
from scipy import stats
from sklearn import metrics
from transformers import (
    AutoModelForCausalLM,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
)

import optimum_prune  # noqa: F401  (registers the loader of pruned checkpoints)
from optimum_prune import PrunerForCausalLM, PrunerForQuestionAnswering, PrunerForSequenceClassification, PruningConfig
from optimum_prune.cli import main
from optimum_prune.evaluation import (
    GLUE_TASKS,
    EvaluationInputError,
    evaluate_question_answering,
    perplexity,
)

PRUNE = ["--criterion", "magnitude", "--sparsity", "0.3", "--no-progress"]
CONFIG = dict(sparsity=0.3, criterion="magnitude", reconstruction="none")

SENTENCES = [
    "a gripping and moving film",
    "dull, lifeless and far too long",
    "the best performance of the year",
    "i wanted my two hours back",
    "charming",
    "an utterly forgettable sequel",
    "warm, funny and wise",
    "nobody asked for this",
]
SENTIMENT = ["positive", "negative", "positive", "negative", "positive", "negative", "positive", "negative"]

QA_ROWS = [
    {"id": "q0", "question": "Where is the tower?", "context": "The tower stands in paris near the river.",
     "answers": {"text": ["paris"], "answer_start": [20]}},
    {"id": "q1", "question": "Which city?", "context": "Many people visit rome every year.",
     "answers": {"text": ["rome"], "answer_start": [18]}},
    {"id": "q2", "question": "Who built it?", "context": "It was built by the old masons of the town.",
     "answers": {"text": ["the old masons", "old masons"], "answer_start": [16, 20]}},
    {"id": "q3", "question": "When?", "context": "The museum opened in 1901 after a long delay.",
     "answers": {"text": ["1901"], "answer_start": [21]}},
]  # fmt: skip
UNANSWERABLE = [
    {"id": "n0", "question": "Who painted it?", "context": "Nobody knows who built the old bridge.",
     "answers": {"text": [], "answer_start": []}},
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def _classifier(num_labels: int, id2label: dict[int, str] | None = None, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = BertConfig(**{**TINY_ENCODER, "num_labels": num_labels})
    if id2label is not None:
        config.id2label = id2label
        config.label2id = {name: i for i, name in id2label.items()}
    return BertForSequenceClassification(config).eval()


def _save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("evaluate")
    models = SimpleNamespace(
        # GLUE's class names in the other order: predictions must be mapped by name.
        sst2=_save(_classifier(2, {0: "POSITIVE", 1: "NEGATIVE"}), root / "bert-sst2"),
        generic=_save(_classifier(2, seed=1), root / "bert-generic"),  # LABEL_0, LABEL_1: GLUE's order
        stsb=_save(_classifier(1, seed=2), root / "bert-stsb"),
        mnli=_save(_classifier(3, {0: "entailment", 1: "neutral", 2: "contradiction"}, seed=3), root / "bert-mnli"),
        nli2=_save(_classifier(2, {0: "entailment", 1: "not_entailment"}), root / "bert-nli2"),
        qa=_save(tiny_bert(seed=4, head="qa"), root / "bert-qa"),
        llama=_save(tiny_llama(), root / "tiny-llama"),
    )
    data = root / "data"
    data.mkdir()
    (data / "sst2.csv").write_text(
        "sentence,label\n" + "".join(f'"{s}",{label}\n' for s, label in zip(SENTENCES, SENTIMENT)), encoding="utf-8"
    )
    pairs = [
        {"sentence1": a, "sentence2": b, "label": i % 2, "idx": i}
        for i, (a, b) in enumerate(zip(SENTENCES, SENTENCES[::-1]))
    ]
    _jsonl(data / "mrpc.jsonl", pairs)
    Dataset.from_list(
        [
            {"sentence1": a, "sentence2": b, "label": 5.0 * i / 7}
            for i, (a, b) in enumerate(zip(SENTENCES, SENTENCES[3:] + SENTENCES[:3]))
        ]
    ).to_parquet(str(data / "stsb.parquet"))
    (data / "mnli").mkdir()
    nli = [{"premise": a, "hypothesis": b, "label": i % 3} for i, (a, b) in enumerate(zip(SENTENCES, SENTENCES[1:]))]
    _jsonl(data / "mnli" / "part-0.jsonl", nli[:4])
    _jsonl(data / "mnli" / "part-1.jsonl", nli[4:])
    (data / "cola.csv").write_text(
        "sentence,label\n" + "".join(f'"{s}",{i % 2}\n' for i, s in enumerate(SENTENCES)), encoding="utf-8"
    )
    _jsonl(data / "squad.jsonl", QA_ROWS)
    # A csv holds the answers as JSON, and may leave the ids out.
    (data / "squad_v2.csv").write_text(
        "question,context,answers\n"
        + "".join(
            f'"{r["question"]}","{r["context"]}","{json.dumps(r["answers"]).replace(chr(34), chr(34) * 2)}"\n'
            for r in QA_ROWS + UNANSWERABLE
        ),
        encoding="utf-8",
    )
    (data / "wiki.txt").write_text(TEXT, encoding="utf-8")
    return SimpleNamespace(root=root, models=models, data=data)


# ---- independent expectations ------------------------------------------------------------------------------------


@torch.no_grad()
def _predictions(model: torch.nn.Module, rows: list[dict], task: str) -> list[float]:
    """The model's prediction for each row, one row at a time (no padding), as GLUE class ids or scores."""
    spec = GLUE_TASKS[task]
    first, second = spec.text_columns
    tokenizer = make_tokenizer()
    glue_ids = {name: i for i, name in enumerate(spec.label_names)}
    names = {int(i): name.lower() for i, name in model.config.id2label.items()}
    generic = all(name.startswith("label_") for name in names.values())
    predictions = []
    for row in rows:
        encoded = tokenizer(row[first], *([row[second]] if second else []), return_tensors="pt")
        logits = model(**encoded).logits[0]
        if spec.is_regression:
            predictions.append(float(logits[0]))
        else:
            predicted = int(logits.argmax())
            predictions.append(predicted if generic else glue_ids[names[predicted]])
    return predictions


def _glue_expected(model: torch.nn.Module, rows: list[dict], task: str) -> dict[str, float]:
    predictions = _predictions(model, rows, task)
    glue_ids = {name: i for i, name in enumerate(GLUE_TASKS[task].label_names)}
    # csv cells are strings: names ("positive") or ids ("1").
    number = float if task == "stsb" else int
    references = [glue_ids[row["label"]] if row["label"] in glue_ids else number(row["label"]) for row in rows]
    if task == "stsb":
        return {
            "pearson": stats.pearsonr(predictions, references)[0],
            "spearmanr": stats.spearmanr(predictions, references)[0],
        }
    if task == "cola":
        return {"matthews_correlation": metrics.matthews_corrcoef(references, predictions)}
    expected = {"accuracy": metrics.accuracy_score(references, predictions)}
    if task == "mrpc":
        expected["f1"] = metrics.f1_score(references, predictions, zero_division=0)
    return expected


def _rows(path: Path) -> list[dict]:
    if path.is_dir():
        return [row for file in sorted(path.iterdir()) for row in _rows(file)]
    if path.suffix == ".csv":
        import csv

        with path.open(encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    if path.suffix == ".parquet":
        return Dataset.from_parquet(str(path)).to_list()
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _card_results(folder: Path) -> dict[tuple, float]:
    """The model-index of the saved card, read back with huggingface_hub's card tools (both ways it offers)."""
    card = ModelCard.load(folder / "README.md")
    _, from_metadata = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert [r.metric_value for r in from_metadata] == [r.metric_value for r in card.data.eval_results]
    return {
        (r.task_type, r.dataset_type, r.dataset_config, r.dataset_split, r.metric_type): r.metric_value
        for r in card.data.eval_results
    }


def _run_json(arguments: list[str], capsys) -> dict:
    status = main([*arguments, "--json"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    return json.loads(captured.out)


def _check_task(task: dict, expected_before: dict, expected_after: dict) -> None:
    assert set(expected_before) <= set(task["metrics"])
    for name, before in expected_before.items():
        metric = task["metrics"][name]
        assert metric["before"] == pytest.approx(before, rel=1e-4, abs=1e-6), name
        assert metric["after"] == pytest.approx(expected_after[name], rel=1e-4, abs=1e-6), name
        if metric["before"]:
            assert metric["retention"] == pytest.approx(metric["after"] / metric["before"])
    assert task["seconds"]["before"] > 0 and task["seconds"]["after"] > 0


# ---- the command line, each kind end to end ----------------------------------------------------------------------

GLUE_RUNS = {
    # task: (model, data file, what the run shows)
    "sst2": ("sst2", "sst2.csv"),  # label names in a csv; the model's classes in the other order
    "mrpc": ("generic", "mrpc.jsonl"),  # sentence pairs; ids; accuracy and F1
    "stsb": ("stsb", "stsb.parquet"),  # regression scores; Pearson and Spearman
    "mnli": ("mnli", "mnli"),  # three classes, from a folder of jsonl files
    "cola": ("generic", "cola.csv"),  # Matthews correlation
}


@pytest.mark.parametrize("task", list(GLUE_RUNS))
def test_cli_glue(work, tmp_path, capsys, task):
    model_name, data_name = GLUE_RUNS[task]
    model, data, output = getattr(work.models, model_name), work.data / data_name, tmp_path / "pruned"
    arguments = ["-m", str(model), "--task", "sequence-classification", *PRUNE]
    results = _run_json([*arguments, "--evaluate", f"glue:{task}", "--eval-dataset", str(data), str(output)], capsys)

    rows = _rows(data)
    dense = AutoModelForSequenceClassification.from_pretrained(model).eval()
    pruned = AutoModelForSequenceClassification.from_pretrained(output).eval()
    assert pruned.num_parameters() < dense.num_parameters()
    [evaluated] = results["evaluation"]["tasks"]
    assert (evaluated["task"], evaluated["dataset"], evaluated["split"]) == (f"glue:{task}", data.name, None)
    assert evaluated["details"]["after"]["num_samples"] == len(rows)
    expected_after = _glue_expected(pruned, rows, task)
    _check_task(evaluated, _glue_expected(dense, rows, task), expected_after)

    assert _card_results(output) == {
        ("text-classification", data.name, None, None, name): round(metric["after"], 4)
        for name, metric in evaluated["metrics"].items()
    }


@pytest.mark.parametrize("kind, data_name", [("squad", "squad.jsonl"), ("squad_v2", "squad_v2.csv")])
def test_cli_squad(work, tmp_path, capsys, kind, data_name):
    data, output = work.data / data_name, tmp_path / "pruned"
    arguments = ["-m", str(work.models.qa), "--task", "question-answering", *PRUNE, "--evaluate", kind]
    results = _run_json([*arguments, "--eval-dataset", str(data), str(output)], capsys)

    rows = [{**row, "answers": row["answers"]} for row in QA_ROWS + (UNANSWERABLE if kind == "squad_v2" else [])]
    if kind == "squad_v2":  # the csv has no ids: rows are named by their position
        rows = [{**row, "id": str(i)} for i, row in enumerate(rows)]
    table = Dataset.from_list(rows)
    tokenizer = make_tokenizer()

    def expected(model):
        values = evaluate_question_answering(
            model, tokenizer, table, version_2=kind == "squad_v2", max_length=256, doc_stride=64, show_progress=False
        )
        return {k: v for k, v in values.items() if k in ("exact_match", "exact", "f1", "HasAns_f1", "NoAns_f1")}

    dense = AutoModelForQuestionAnswering.from_pretrained(work.models.qa).eval()
    pruned = AutoModelForQuestionAnswering.from_pretrained(output).eval()
    [evaluated] = results["evaluation"]["tasks"]
    assert evaluated["task"] == kind and evaluated["details"]["after"]["num_samples"] == len(rows)
    _check_task(evaluated, expected(dense), expected(pruned))
    headline = ("exact_match", "f1") if kind == "squad" else ("exact", "f1")
    assert _card_results(output) == {
        ("question-answering", data.name, None, None, name): round(evaluated["metrics"][name]["after"], 4)
        for name in headline
    }


def test_cli_ppl_reports_before_after_retention_and_card(work, tmp_path, capsys):
    output = tmp_path / "pruned"
    arguments = ["-m", str(work.models.llama), *PRUNE, "--seqlen", "32", "--evaluate", "ppl"]
    results = _run_json(
        [*arguments, "--eval-dataset", str(work.data / "wiki.txt"), "--eval-windows", "3", str(output)], capsys
    )

    ids = make_tokenizer()(TEXT, return_tensors="pt", add_special_tokens=False).input_ids
    dense = AutoModelForCausalLM.from_pretrained(work.models.llama).eval()
    pruned = AutoModelForCausalLM.from_pretrained(output).eval()
    expected = {
        name: perplexity(model, input_ids=ids, seqlen=32, max_windows=3, show_progress=False)["perplexity"]
        for name, model in (("before", dense), ("after", pruned))
    }
    [evaluated] = results["evaluation"]["tasks"]
    assert (evaluated["task"], evaluated["dataset"]) == ("ppl", "wiki.txt")
    assert evaluated["details"]["after"] == {"windows": 3, "tokens": 93, "seqlen": 32}
    _check_task(evaluated, {"perplexity": expected["before"]}, {"perplexity": expected["after"]})
    assert evaluated["metrics"]["perplexity"]["higher_is_better"] is False
    assert results["after"]["perplexity"] == evaluated["metrics"]["perplexity"]["after"]  # the summary row too
    assert _card_results(output) == {
        ("text-generation", "wiki.txt", None, None, "perplexity"): round(expected["after"], 4)
    }


def test_cli_ppl_on_the_held_out_fifth_of_dataset(work, tmp_path, capsys):
    output = tmp_path / "pruned"
    arguments = ["-m", str(work.models.llama), "--sparsity", "0.3", "--criterion", "activation", "--no-progress"]
    arguments += ["--dataset", str(work.data / "wiki.txt"), "--num-samples", "4", "--seqlen", "32"]
    results = _run_json([*arguments, "--evaluate", "ppl", "--eval-windows", "2", str(output)], capsys)
    [evaluated] = results["evaluation"]["tasks"]
    assert (evaluated["dataset"], evaluated["split"]) == ("wiki.txt", "last 20%")
    assert list(_card_results(output)) == [("text-generation", "wiki.txt", None, "last 20%", "perplexity")]


TASK_YAML = """\
task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: tiny_mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""
QUESTIONS = [
    {"question": "The sky is", "choices": ["blue", "green"], "label": 0},
    {"question": "Grass is", "choices": ["red", "green"], "label": 1},
    {"question": "Snow is", "choices": ["white", "black"], "label": 0},
    {"question": "Fire is", "choices": ["cold", "hot"], "label": 1},
]


def _task_file(folder: Path) -> Path:
    _jsonl(folder / "tiny_mc.jsonl", QUESTIONS)
    (folder / "tiny_mc.yaml").write_text(TASK_YAML, encoding="utf-8")
    return folder / "tiny_mc.yaml"


def test_cli_lm_eval_local_yaml_task(work, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    from optimum_prune.evaluation import evaluate_zero_shot

    task, output = _task_file(tmp_path), tmp_path / "pruned"
    arguments = ["-m", str(work.models.llama), *PRUNE, "--evaluate", f"lm-eval:{task}", str(output)]
    results = _run_json(arguments, capsys)
    tokenizer = make_tokenizer()
    expected = {
        name: evaluate_zero_shot(AutoModelForCausalLM.from_pretrained(path).eval(), tokenizer, [task])["tiny_mc"]
        for name, path in (("before", work.models.llama), ("after", output))
    }
    [evaluated] = results["evaluation"]["tasks"]
    assert (evaluated["task"], evaluated["dataset"]) == ("lm-eval:tiny_mc", "tiny_mc")
    _check_task(evaluated, {"acc": expected["before"]["acc"]}, {"acc": expected["after"]["acc"]})
    assert _card_results(output) == {
        ("text-generation", "tiny_mc", None, None, "acc"): round(expected["after"]["acc"], 4)
    }


def test_cli_lm_eval_without_the_extra_is_one_line(work, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if the zeroshot extra were not installed
    output = tmp_path / "pruned"
    assert main(["-m", str(work.models.llama), *PRUNE, "--evaluate", "lm-eval:arc_easy", str(output)]) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and 'pip install "optimum-prune[zeroshot]"' in lines[0], lines
    assert list(tmp_path.iterdir()) == []


# ---- the Python API ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pruner_class, model, evaluation, data",
    [
        (PrunerForSequenceClassification, "sst2", "glue:sst2", "sst2.csv"),
        (PrunerForSequenceClassification, "stsb", "glue:stsb", "stsb.parquet"),
        (PrunerForQuestionAnswering, "qa", "squad", "squad.jsonl"),
        (PrunerForQuestionAnswering, "qa", "squad_v2", "squad_v2.csv"),
        (PrunerForCausalLM, "llama", "ppl", "wiki.txt"),
    ],
)
def test_api_evaluate_before_and_after(work, tmp_path, pruner_class, model, evaluation, data):
    pruner = pruner_class.from_pretrained(getattr(work.models, model))
    source = str(work.data / data)
    options = dict(seqlen=32, max_windows=3) if evaluation == "ppl" else {}
    before = pruner.evaluate(evaluation, source, show_progress=False, **options)
    [measured] = before.tasks
    assert measured.task == evaluation and measured.seconds_before > 0 and measured.seconds_after is None
    assert all(m.after is None and m.retention is None for m in measured.metrics.values())
    assert pruner.evaluation is None  # nothing for the card before pruning

    pruner.prune(PruningConfig(**CONFIG), show_progress=False)
    after = pruner.evaluate([evaluation], source, show_progress=False, **options)
    result = after[evaluation]
    assert result.seconds_before == measured.seconds_before and result.seconds_after > 0
    for name, metric in result.metrics.items():
        assert metric.before == measured.metrics[name].before  # the baseline measured before pruning
        assert metric.after is not None
        if metric.before:
            assert metric.retention == pytest.approx(metric.after / metric.before)
    # Measured again now, the after values are the same: they are the pruned model's.
    again = pruner.evaluate(evaluation, source, stage="before", show_progress=False, **options)
    assert {n: m.before for n, m in again[evaluation].metrics.items()} == {
        n: m.after for n, m in result.metrics.items()
    }
    assert after.to_dict()["tasks"][0]["metrics"] == {n: m.to_dict() for n, m in result.metrics.items()}

    pruner.save_pretrained(tmp_path / "saved")
    card = _card_results(tmp_path / "saved")
    assert card and all(key[1] == data and key[0] == result.task_type for key in card)
    assert card == {
        (result.task_type, data, None, None, name): round(result.metrics[name].after, 4)
        for name in result.card_metrics
    }


def test_api_glue_labels_are_mapped_by_name(work):
    # The wrapper's label handling, which scikit-learn cannot know: label names in the data, a model whose class
    # ids are in another order than GLUE's, and F1 of GLUE's positive class ("equivalent") whatever the model's order.
    rows = _rows(work.data / "sst2.csv")
    reversed_names = PrunerForSequenceClassification.from_pretrained(work.models.sst2)
    accuracy = reversed_names.evaluate("glue:sst2", str(work.data / "sst2.csv"), show_progress=False)
    assert accuracy["glue:sst2"]["accuracy"].before == pytest.approx(
        _glue_expected(reversed_names.model, rows, "sst2")["accuracy"]
    )
    # The model's raw ids would score otherwise: the mapping is what makes the number right.
    raw = [1 - p for p in _predictions(reversed_names.model, rows, "sst2")]
    assert accuracy["glue:sst2"]["accuracy"].before != pytest.approx(
        metrics.accuracy_score([int(r["label"] == "positive") for r in rows], raw)
    )

    model = _classifier(2, {0: "equivalent", 1: "not_equivalent"}, seed=5)
    pairs = Dataset.from_list(_rows(work.data / "mrpc.jsonl"))
    pruner = PrunerForSequenceClassification(model, make_tokenizer())
    scored = pruner.evaluate("glue:mrpc", pairs, show_progress=False)["glue:mrpc"]
    predictions = [1 - p for p in _predictions(_classifier(2, seed=5), pairs.to_list(), "mrpc")]  # ids -> GLUE's
    references = pairs["label"]
    assert scored["f1"].before == pytest.approx(metrics.f1_score(references, predictions, pos_label=1))
    assert scored["accuracy"].before == pytest.approx(metrics.accuracy_score(references, predictions))
    assert scored["f1"].before != pytest.approx(metrics.f1_score(references, predictions, pos_label=0))


def test_api_refuses_an_evaluation_for_another_kind_of_model(work):
    pruner = PrunerForCausalLM.from_pretrained(work.models.llama)
    with pytest.raises(EvaluationInputError, match="scores a sequence classifier") as error:
        pruner.evaluate("glue:sst2", str(work.data / "sst2.csv"))
    assert "\n" not in str(error.value)
    assert pruner.evaluation is None


# ---- bad input: one line, nothing written ---------------------------------------------------------------------------

BAD_FILES = {
    "no_sentence.csv": "text,label\nfine,1\n",
    "neutral.csv": "sentence,label\nfine,positive\nmeh,neutral\n",
    "label_two.csv": "sentence,label\nfine,1\nmeh,2\n",
    "hidden.csv": "sentence,label\nfine,-1\n",
    "header_only.csv": "sentence,label\n",
    "empty.jsonl": "",
    "no_context.jsonl": json.dumps({"question": "Why?", "answers": {"text": ["a"], "answer_start": [0]}}) + "\n",
    "short.txt": "ab",
}


@pytest.mark.parametrize(
    "model, arguments, status, message",
    [
        ("sst2", ["--evaluate", "bleu"], 2, "argument --evaluate: Unknown evaluation 'bleu': use ppl, glue:<task>"),
        ("sst2", ["--evaluate", "glue:sst3"], 2, "Unknown GLUE task 'sst3' in 'glue:sst3'; use one of: cola, sst2"),
        ("sst2", ["--evaluate", "glue"], 2, "glue needs a task, e.g. glue:sst2"),
        ("llama", ["--evaluate", "lm-eval:"], 2, "lm-eval needs its tasks"),
        ("llama", ["--evaluate", "glue:sst2"], 1, "--evaluate glue:sst2 scores a sequence classifier: it needs --task"),
        ("sst2", ["--evaluate", "glue:sst2", "--eval-dataset", "{no_sentence.csv}"], 1,
         "has no column 'sentence': glue:sst2 reads 'sentence', 'label'; the data has 'text', 'label'"),
        ("qa", ["--evaluate", "squad", "--task", "question-answering", "--eval-dataset", "{no_context.jsonl}"], 1,
         "has no column 'context': squad reads 'question', 'context', 'answers'"),
        ("sst2", ["--evaluate", "glue:sst2", "--eval-dataset", "{neutral.csv}"], 1,
         "label(s) 'neutral' match none of glue:sst2's classes (negative, positive, or ids 0..1)"),
        ("sst2", ["--evaluate", "glue:sst2", "--eval-dataset", "{label_two.csv}"], 1,
         "label(s) 2 match none of glue:sst2's classes"),
        ("generic", ["--evaluate", "glue:sst2", "--eval-dataset", "{hidden.csv}"], 1, "keeps its labels hidden"),
        ("nli2", ["--evaluate", "glue:sst2", "--eval-dataset", "{sst2.csv}"], 1,
         "The model's labels ({0: 'entailment', 1: 'not_entailment'}) do not match glue:sst2's classes"),
        ("sst2", ["--evaluate", "glue:mnli", "--eval-dataset", "{mnli}"], 1,
         "glue:mnli needs a classifier of 3 classes; the model has 2 output(s)"),
        ("sst2", ["--evaluate", "glue:sst2", "--eval-dataset", "{header_only.csv}"], 1,
         "The glue:sst2 data (header_only.csv) is empty: no rows to evaluate."),
        ("sst2", ["--evaluate", "glue:sst2", "--eval-dataset", "{empty.jsonl}"], 1, "(empty.jsonl) is empty"),
        ("qa", ["--evaluate", "squad", "--task", "question-answering", "--eval-dataset", "{squad_v2.csv}"], 1,
         "1 row(s) have no answer; squad scores answerable questions only: evaluate squad_v2"),
        ("sst2", ["--evaluate", "glue:sst2", "--eval-dataset", "{sst2.csv}", "--eval-samples", "0"], 1,
         "--eval-samples 0: give a number of examples >= 1"),
        ("sst2", ["--evaluate", "glue:sst2", "--eval-dataset", "{sst2.csv}", "--eval-split", "test"], 1,
         "--eval-split names a split of a Hub dataset"),
        ("llama", ["--evaluate", "lm-eval:arc_easy", "--eval-dataset", "{sst2.csv}"], 1,
         "--eval-dataset is not read by --evaluate lm-eval:arc_easy"),
        ("llama", ["--evaluate", "ppl", "--eval-dataset", "{short.txt}", "--seqlen", "32"], 1, "has 2 tokens: too few to measure"),
        ("sst2", ["--eval-split", "validation"], 1, "--eval-split is only read with --evaluate."),
    ],
)  # fmt: skip
def test_bad_evaluation_input_is_one_line_and_nothing_is_written(
    work, tmp_path, capsys, model, arguments, status, message
):
    for name, content in BAD_FILES.items():
        if not (work.data / name).exists():
            (work.data / name).write_text(content, encoding="utf-8")
    arguments = [a.replace("{", str(work.data) + "/").replace("}", "") if a.startswith("{") else a for a in arguments]
    task = ["--task", "sequence-classification"] if model not in ("llama", "qa") else []
    output = tmp_path / "out"
    assert main(["-m", str(getattr(work.models, model)), *task, *PRUNE, *arguments, str(output)]) == status
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("optimum-prune: error: "), lines
    assert message in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


def test_glue_without_eval_dataset_reads_the_hub_and_offline_says_so_in_one_line(work, tmp_path):
    # Without --eval-dataset the task's validation split comes from the Hub (nyu-mll/glue); offline, one line.
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "optimum_prune.cli", "-m", str(work.models.sst2), "--task"]
    command += ["sequence-classification", *PRUNE, "--evaluate", "glue:sst2", str(tmp_path / "out")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(
        "optimum-prune: error: --evaluate glue:sst2: Cannot load the "
        "glue:sst2 dataset 'nyu-mll/glue' (sst2): the Hugging Face Hub "
        "is unreachable"
    ), done.stderr
    assert "reading nyu-mll/glue sst2 from the Hub" in done.stdout
    assert list(tmp_path.iterdir()) == []


def test_bad_input_through_the_api_is_one_line_and_leaves_the_pruner_alone(work):
    pruner = PrunerForSequenceClassification.from_pretrained(work.models.sst2)
    for evaluation, data, message in [
        ("glue:sst3", None, "Unknown GLUE task"),
        ("squad", None, "scores an extractive question-answering model"),
        ("glue:sst2", Dataset.from_dict({"sentence": ["a"]}), "has no column 'label'"),
        ("glue:sst2", Dataset.from_dict({"sentence": ["a"], "label": ["great"]}), "label(s) 'great' match none"),
        ("glue:sst2", Dataset.from_dict({"sentence": [], "label": []}), "is empty: no rows to evaluate"),
    ]:
        with pytest.raises(EvaluationInputError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
            pruner.evaluate(evaluation, data, show_progress=False)
        assert "\n" not in str(error.value)
    assert pruner.evaluation is None and pruner._evaluation_baseline == {}
