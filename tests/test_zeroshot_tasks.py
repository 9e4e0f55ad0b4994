"""The offline zero-shot tasks of benchmarks/zeroshot/.

The builder's checks read the committed task files and the installed Wikipedia text (gensim, in the test extra):
items come from the held-out 20% only, the chance levels are what the manifest says, a rebuild writes the same
bytes.
"""

from __future__ import annotations

import collections
import hashlib
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "benchmarks" / "zeroshot"
NAMES = ("offline_wiki_next", "offline_wiki_cloze", "offline_movie_sentiment")


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
