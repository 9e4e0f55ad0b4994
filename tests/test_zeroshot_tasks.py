"""The offline zero-shot tasks of benchmarks/zeroshot/ and `--evaluate lm-eval:<folder>[:<task,...>]`.

The builder's checks read the committed task files and the installed Wikipedia text (gensim, in the test extra):
items come from the held-out 20% only, the chance levels are what the manifest says, a rebuild writes the same
bytes. The lm-eval checks need the optional `zeroshot` extra and are skipped without it.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tokenizer, tiny_llama

from optimum_prune import PrunerForCausalLM
from optimum_prune.cli import main
from optimum_prune.evaluation import EvaluationInputError, parse_evaluation
from optimum_prune.evaluation.specs import EvaluationSpec

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "benchmarks" / "zeroshot"
NAMES = ("offline_wiki_next", "offline_wiki_cloze", "offline_movie_sentiment")

needs_lm_eval = pytest.mark.skipif(
    importlib.util.find_spec("lm_eval") is None,
    reason='lm-eval is not installed: it is the optional zeroshot extra (pip install "optimum-prune[zeroshot]")',
)


@pytest.fixture(scope="module")
def build_tasks():
    saved = list(sys.path)
    sys.path.insert(0, str(TASKS))  # it puts benchmarks/ on the path too, for the movie-review snippets
    try:
        import build_tasks

        yield build_tasks
    finally:
        sys.path[:] = saved


@pytest.fixture(scope="module")
def wikipedia(build_tasks):
    """(held-out text, calibration text), wiki emphasis marks dropped and runs of spaces made one, as the items
    have them (sentences are joined with one plain space)."""
    pytest.importorskip("gensim")
    held_out, calibration = build_tasks.wikipedia_held_out()
    return tuple(
        re.sub(r"[^\S\n]+", " ", build_tasks.strip_emphasis("\n\n".join(articles)))
        for articles in (held_out, calibration)
    )


def _items(name: str) -> list[dict]:
    with open(TASKS / f"{name}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _manifest() -> dict:
    return json.loads((TASKS / "manifest.json").read_text(encoding="utf-8"))


# ---- the builder ----------------------------------------------------------------------------------------------


def test_sentences_split_at_ends_not_at_abbreviations(build_tasks):
    text = "Dr. Smith met J. R. Tolkien in the U.S. in 1950. They talked. (It rained.) Then 3 people left."
    assert build_tasks.split_sentences(text) == [
        "Dr. Smith met J. R. Tolkien in the U.S. in 1950.",
        "They talked.",
        "(It rained.)",
        "Then 3 people left.",
    ]
    assert build_tasks.is_clean("The army had ten military regions in 1990.")
    for markup in ("See [[Angola]] for more.", "A list | of cells.", "No final period", "lower case start."):
        assert not build_tasks.is_clean(markup)


def test_committed_tasks_are_the_manifest(build_tasks):
    manifest = _manifest()
    assert sorted(manifest["tasks"]) == sorted(NAMES)
    for name in NAMES:
        task = manifest["tasks"][name]
        items = _items(name)
        assert len(items) == task["items"] == build_tasks.SIZES[name]
        assert hashlib.sha256((TASKS / f"{name}.jsonl").read_bytes()).hexdigest() == task["sha256"]
        assert task["chance"] == pytest.approx(build_tasks.chance_levels(name, items))
        assert len({item["id"] for item in items}) == len(items)


def test_chance_levels(build_tasks):
    chance = {name: _manifest()["tasks"][name]["chance"] for name in NAMES}
    # The true sentence sits at each of the 4 positions equally often: always picking one position is chance.
    positions = collections.Counter(item["label"] for item in _items("offline_wiki_next"))
    assert positions == {0: 100, 1: 100, 2: 100, 3: 100}
    assert all(len(item["choices"]) == 4 == len(set(item["choices"])) for item in _items("offline_wiki_next"))
    assert chance["offline_wiki_next"]["acc"] == 0.25
    # Balanced classes, ratings far from neutral.
    sentiment = _items("offline_movie_sentiment")
    assert collections.Counter(item["label"] for item in sentiment) == {0: 200, 1: 200}
    assert all(abs(item["rating"]) >= build_tasks.MIN_ABS_RATING for item in sentiment)
    assert all(item["label"] == int(item["rating"] > 0) for item in sentiment)
    assert chance["offline_movie_sentiment"]["acc"] == 0.5
    # The cloze: no guess among the vocabulary scores; copying a passage word rarely does.
    assert chance["offline_wiki_cloze"]["acc"] == 0.0
    assert 0 < chance["offline_wiki_cloze"]["acc (a random word of 3+ letters of the passage)"] < 0.05


def test_items_come_from_the_held_out_articles_only(build_tasks, wikipedia):
    held_out, calibration = wikipedia
    pieces = []
    for item in _items("offline_wiki_next"):
        pieces += item["context"].split("\n") + item["choices"]
    for item in _items("offline_wiki_cloze"):
        *lines, last = item["context"].split("\n")
        pieces += lines + [f"{last} {item['target']}."]
        # As in LAMBADA, the word is said before the sentence it ends.
        before = item["context"][: item["context"].rfind(last)] + last.rsplit(". ", 1)[0]
        assert re.search(rf"\b{re.escape(item['target'])}\b", before), item["id"]
    missing = [piece for piece in pieces if piece not in held_out]
    leaked = [
        sentence for piece in pieces for sentence in build_tasks.split_sentences(piece) if sentence in calibration
    ]
    assert not missing, missing[:3]
    assert not leaked, leaked[:3]
    # Distractors come from other articles than the true sentence's.
    for item in _items("offline_wiki_next"):
        for i, choice in enumerate(item["choices"]):
            if i != item["label"]:
                assert choice not in item["context"]


def test_rebuild_writes_the_same_files(build_tasks, tmp_path, wikipedia):
    wiki = ["offline_wiki_next", "offline_wiki_cloze"]
    build_tasks.build(str(tmp_path), tasks=wiki)
    for name in wiki:
        for suffix in (".jsonl", ".yaml"):
            assert (tmp_path / f"{name}{suffix}").read_bytes() == (TASKS / f"{name}{suffix}").read_bytes(), name
    assert json.loads((tmp_path / "manifest.json").read_text())["tasks"] == {
        name: _manifest()["tasks"][name] for name in wiki
    }


def test_sentiment_draw_is_seeded_and_balanced(build_tasks):
    from fixtures.shared import Snippet

    snippets = [Snippet(i, rating, f"Snippet number {i}.") for i, rating in enumerate([-3.0, 3.5, -0.5, 2.5] * 10)]
    snippets.append(Snippet(99, 3.0, "Snippet number 1."))  # a text rated twice is left out
    first = build_tasks.build_movie_sentiment(snippets, 8, seed=1)
    assert first == build_tasks.build_movie_sentiment(snippets, 8, seed=1)
    assert first != build_tasks.build_movie_sentiment(snippets, 8, seed=2)
    assert collections.Counter(item["label"] for item in first) == {0: 4, 1: 4}
    assert all(abs(item["rating"]) >= 2 and item["text"] != "Snippet number 1." for item in first)
    with pytest.raises(ValueError, match="snippets of each polarity"):
        build_tasks.build_movie_sentiment(snippets, 40)


# ---- `lm-eval:<folder>[:<task,...>]` ----------------------------------------------------------------------------


def test_folder_syntax_parses(tmp_path):
    assert parse_evaluation("lm-eval:arc_easy,piqa") == EvaluationSpec("lm-eval", ("arc_easy", "piqa"))
    spec = parse_evaluation("lm-eval:some/folder:offline_wiki_next, offline_wiki_cloze")
    assert spec == EvaluationSpec("lm-eval", ("offline_wiki_next", "offline_wiki_cloze"), "some/folder")
    assert spec.name == "lm-eval:some/folder:offline_wiki_next,offline_wiki_cloze"
    # An existing folder alone, or a folder and ':' with nothing after it: every task in it.
    assert parse_evaluation(f"lm-eval:{tmp_path}") == EvaluationSpec("lm-eval", (), str(tmp_path))
    assert parse_evaluation("lm-eval:not/a/folder:") == EvaluationSpec("lm-eval", (), "not/a/folder")
    assert parse_evaluation(r"lm-eval:C:\tasks:mine") == EvaluationSpec("lm-eval", ("mine",), r"C:\tasks")
    assert parse_evaluation("lm-eval:C:/tasks") == EvaluationSpec("lm-eval", ("C:/tasks",))  # no such folder here
    with pytest.raises(EvaluationInputError, match="names no task folder"):
        parse_evaluation("lm-eval::mine")


@needs_lm_eval
def test_folder_errors_are_one_line(tmp_path):
    from optimum_prune.evaluation import load_evaluation_data

    with pytest.raises(EvaluationInputError, match="task folder 'nowhere' does not exist"):
        load_evaluation_data("lm-eval:nowhere:mine")
    with pytest.raises(EvaluationInputError, match="holds no lm-eval task YAML file"):
        load_evaluation_data(f"lm-eval:{tmp_path}")
    with pytest.raises(EvaluationInputError, match=r"'nope' is not a task, group or tag of .*offline_wiki_cloze"):
        load_evaluation_data(f"lm-eval:{TASKS}:nope")
    with pytest.raises(EvaluationInputError, match="neither a folder of task YAML files nor a task .yaml file"):
        load_evaluation_data("lm-eval:no/such/folder")
    data = load_evaluation_data(f"lm-eval:{TASKS}")
    assert data.data == sorted(NAMES)


@torch.no_grad()
def _choice_accuracy(model: torch.nn.Module, tokenizer, items: list[dict]) -> float:
    """lm-eval's acc by hand: the choice with the highest summed log-probability of " " + choice after the context."""
    correct = 0
    for item in items:
        context = tokenizer(item["context"], add_special_tokens=False).input_ids
        scores = []
        for choice in item["choices"]:
            ids = torch.tensor([context + tokenizer(" " + choice, add_special_tokens=False).input_ids])
            logprobs = model(ids).logits[0, :-1].log_softmax(-1)
            scores.append(sum(logprobs[p, ids[0, p + 1]].item() for p in range(len(context) - 1, ids.shape[1] - 1)))
        correct += int(max(range(len(scores)), key=scores.__getitem__) == item["label"])
    return correct / len(items)


@needs_lm_eval
def test_benchmark_tasks_through_pruner_evaluate_from_any_folder(tmp_path, monkeypatch):
    # The YAML files name their data relative to themselves: found whatever the working directory.
    monkeypatch.chdir(tmp_path)
    tokenizer = make_tokenizer()
    model = tiny_llama(max_position_embeddings=4096)
    pruner = PrunerForCausalLM(model, tokenizer)
    results = pruner.evaluate(f"lm-eval:{TASKS}:offline_zeroshot", max_samples=3, show_progress=False)
    assert sorted(result.task for result in results) == sorted(f"lm-eval:{name}" for name in NAMES)
    for result in results:
        assert result.details_before["num_samples"] == 3
    assert results["lm-eval:offline_wiki_next"]["acc"].before == pytest.approx(
        _choice_accuracy(model.eval(), tokenizer, _items("offline_wiki_next")[:3])
    )
    # A random model over the tiny vocabulary: the cloze target is about as likely as any token.
    assert results["lm-eval:offline_wiki_cloze"]["perplexity"].before > 10
    assert results["lm-eval:offline_wiki_cloze"]["acc"].before == 0.0


@needs_lm_eval
def test_cli_evaluates_a_folder_task(tmp_path, capsys):
    model_dir = tmp_path / "tiny-llama"
    tiny_llama(max_position_embeddings=4096).save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    arguments = ["-m", str(model_dir), "--criterion", "magnitude", "--sparsity", "0.3", "--no-progress", "--json"]
    arguments += ["--evaluate", f"lm-eval:{TASKS}:offline_wiki_next", "--eval-samples", "4"]
    status = main([*arguments, str(tmp_path / "pruned")])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    [task] = json.loads(captured.out)["evaluation"]["tasks"]
    assert (task["task"], task["dataset"]) == ("lm-eval:offline_wiki_next", "offline_wiki_next")
    assert task["details"]["before"]["num_samples"] == 4
    assert 0 <= task["metrics"]["acc"]["before"] <= 1 and 0 <= task["metrics"]["acc"]["after"] <= 1
    assert os.path.isfile(tmp_path / "pruned" / "README.md")
