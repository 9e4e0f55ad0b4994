"""Build the offline zero-shot tasks of `benchmarks/zeroshot/` (lm-eval YAML + JSON lines) from installed packages.

Three tasks, from text that installs with the project (README.md beside this file documents the construction, the
chance level of each and how to run them):

* ``offline_wiki_next``: a passage of a held-out Wikipedia article; pick its true next sentence among 4 (3
  distractors: sentences of similar length from other held-out articles).
* ``offline_wiki_cloze``: LAMBADA-style last-word prediction on held-out Wikipedia passages.
* ``offline_movie_sentiment``: zero-shot sentiment of Pang & Lee's movie-review snippets rated far from neutral.

"Held-out" is the protocol of every benchmark here (``optimum_prune.assets.wikipedia_split``): calibration reads the
first 80% of gensim's Wikipedia articles, perplexity the last 20%. Every passage, sentence and distractor is drawn
from that last 20%, and none occurs in the calibration articles.

    python benchmarks/zeroshot/build_tasks.py            # rewrite the task files beside this script
    python benchmarks/zeroshot/build_tasks.py --output DIR
    python benchmarks/zeroshot/build_tasks.py --check    # rebuild in a temporary folder, compare with the files here

The output depends only on the seed, the sizes and the installed text: gensim 4.4.0's Wikipedia dump and
vaderSentiment 3.3.2's source distribution (downloaded once with pip into the fixtures cache, as
``benchmarks/fixtures/sentiment_classifier.py`` does).
"""

from __future__ import annotations

import argparse
import collections
import filecmp
import hashlib
import json
import os
import random
import re
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:  # `fixtures` (the movie-review snippets) lives in benchmarks/
    sys.path.insert(0, os.path.dirname(HERE))

SEED = 0
WIKI_NEXT, WIKI_CLOZE, SENTIMENT = "offline_wiki_next", "offline_wiki_cloze", "offline_movie_sentiment"
SIZES = {WIKI_NEXT: 400, WIKI_CLOZE: 400, SENTIMENT: 400}
#: The lm-eval tag naming the three tasks (`lm-eval:benchmarks/zeroshot:offline_zeroshot`).
TAG = "offline_zeroshot"
#: Snippets whose mean rating (20 raters, -4..4) is at least this far from neutral.
MIN_ABS_RATING = 2.0
#: Sentences used as targets or distractors have this many words.
MIN_WORDS, MAX_WORDS = 8, 40
#: Sentences of the same paragraph before a next-sentence target (at least one).
NEXT_CONTEXT_SENTENCES = 2
#: Sentences before the one whose last word is hidden in a cloze passage (at least two).
CLOZE_CONTEXT_SENTENCES = 5
#: A distractor's length in words lies within this factor of the true sentence's.
LENGTH_RATIO = 1.25
#: No article gives more than this fraction of a Wikipedia task's items.
MAX_ARTICLE_SHARE = 0.1
MANIFEST = "manifest.json"

# ---- sentences of held-out Wikipedia ---------------------------------------------------------------------------

# Words whose trailing period does not end a sentence.
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "st", "jr", "sr", "prof", "rev", "gen", "col", "lt", "capt", "sgt", "gov", "pres", "sen",
    "rep", "vs", "etc", "e.g", "i.e", "u.s", "u.k", "u.n", "no", "nos", "vol", "vols", "pp", "p", "c", "ca", "approx",
    "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec",
    "mt", "ft", "fig", "op", "ed", "eds", "al", "cf", "est", "fl", "hon", "adm", "cmdr", "maj", "brig",
}  # fmt: skip
# A sentence ends at . ! or ? (or one of them and a closing bracket or quote), before a capital or a digit.
_SPLIT = re.compile(r"(?:(?<=[.!?])|(?<=[.!?][)\"']))\s+(?=[\"'(\[]?[A-Z0-9])")
_WORD_BEFORE_PERIOD = re.compile(r"([\w.]+)\.$")
# Characters that betray wiki markup, tables, lists or templates that filter_wiki left in the text.
_MARKUP = re.compile(r"[\[\]{}|=<>*#_\\~^]|''|https?:|www\.|\s{2,}|\.\.")
_LAST_WORD = re.compile(r"^(.*\S)\s+([A-Za-z]{3,})\.$")
_EMPHASIS = re.compile(r"'{2,}")
_SPACES = re.compile(r"[^\S\n]+")


@dataclass(frozen=True)
class Sentence:
    article: int  # index of the article among the held-out ones
    paragraph: int  # index of the paragraph in the article
    text: str

    @property
    def words(self) -> int:
        return len(self.text.split())


def strip_emphasis(text: str) -> str:
    """Drop wiki bold and italics marks (two or more apostrophes), which filter_wiki leaves in."""
    return _EMPHASIS.sub("", text)


def split_sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences, keeping abbreviations (``Dr.``, ``U.S.``) and initials (``J.``) whole."""
    sentences: list[str] = []
    for piece in _SPLIT.split(paragraph.strip()):
        if sentences:
            match = _WORD_BEFORE_PERIOD.search(sentences[-1])
            word = match.group(1).lower() if match else ""
            if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
                sentences[-1] += " " + piece
                continue
        sentences.append(piece)
    return sentences


def is_clean(sentence: str) -> bool:
    """A plain prose sentence: a capital first letter, one final period, no markup, quotes and brackets balanced,
    mostly letters."""
    if not sentence or not sentence[0].isupper() or not sentence.endswith(".") or sentence.endswith(".."):
        return False
    if _MARKUP.search(sentence) or sentence.count("(") != sentence.count(")") or sentence.count('"') % 2:
        return False
    return sum(ch.isalpha() for ch in sentence) >= 0.7 * len(sentence.replace(" ", ""))


def paragraphs(article: str) -> list[str]:
    """The text lines of one article with emphasis marks dropped and any run of spaces (no-break spaces included)
    made one space, less headings, lists, tables and templates."""
    kept = []
    for line in article.split("\n"):
        line = _SPACES.sub(" ", strip_emphasis(line)).strip()
        if line and line[0] not in "=*#:;|{!":
            kept.append(line)
    return kept


def article_sentences(articles: Sequence[str]) -> list[list[Sentence]]:
    """Per article, its sentences in order (clean or not: the task builders check)."""
    result = []
    for a, article in enumerate(articles):
        sentences = []
        for p, paragraph in enumerate(paragraphs(article)):
            sentences += [Sentence(a, p, text) for text in split_sentences(paragraph)]
        result.append(sentences)
    return result


def wikipedia_held_out() -> tuple[list[str], list[str]]:
    """(held-out articles: the last 20%, calibration articles: the first 80%), the split of every benchmark here."""
    from optimum_prune.assets import CALIBRATION_FRACTION, wikipedia_articles

    articles = wikipedia_articles()
    cut = int(len(articles) * CALIBRATION_FRACTION)
    return list(articles[cut:]), list(articles[:cut])


class CalibrationText:
    """Whether a text occurs in the calibration articles, wiki emphasis marks dropped and spaces made one in both."""

    def __init__(self, calibration: Sequence[str]) -> None:
        self.text = _SPACES.sub(" ", strip_emphasis("\n\n".join(calibration)))

    def overlaps(self, texts: Iterable[str]) -> bool:
        return any(text in self.text for text in texts)


def _passage(sentences: Sequence[Sentence]) -> str:
    """Consecutive sentences as text: a space within a paragraph, a line break between paragraphs."""
    text = sentences[0].text
    for before, sentence in zip(sentences, sentences[1:]):
        text += ("\n" if sentence.paragraph != before.paragraph else " ") + sentence.text
    return text


def _target_sentence(sentence: Sentence) -> bool:
    return MIN_WORDS <= sentence.words <= MAX_WORDS and is_clean(sentence.text)


def _preceding(sentences: Sequence[Sentence], i: int, most: int, same_paragraph: bool) -> list[Sentence]:
    """Up to `most` clean sentences right before sentence `i` (of its paragraph only, if `same_paragraph`)."""
    context: list[Sentence] = []
    j = i - 1
    while j >= 0 and len(context) < most and is_clean(sentences[j].text):
        if same_paragraph and sentences[j].paragraph != sentences[i].paragraph:
            break
        context.insert(0, sentences[j])
        j -= 1
    return context


def _draw(
    name: str,
    candidates: Sequence[Any],
    size: int,
    rng: random.Random,
    article_of: Callable[[Any], int],
    make_item: Callable[[Any, int], dict[str, Any] | None],
) -> list[dict[str, Any]]:
    """`size` items from the candidates in a seeded random order; no article gives more than MAX_ARTICLE_SHARE of
    them, and a candidate whose item cannot be made (`make_item` returns None) is passed over."""
    order = list(candidates)
    rng.shuffle(order)
    cap = max(1, int(size * MAX_ARTICLE_SHARE))
    items: list[dict[str, Any]] = []
    per_article: collections.Counter[int] = collections.Counter()
    for candidate in order:
        article = article_of(candidate)
        if per_article[article] >= cap:
            continue
        item = make_item(candidate, len(items))
        if item is not None:
            items.append(item)
            per_article[article] += 1
            if len(items) == size:
                return items
    raise ValueError(f"{name}: only {len(items)} items can be drawn (asked for {size}); lower the size")


# ---- the tasks --------------------------------------------------------------------------------------------------


def build_wiki_next(
    articles: Sequence[str], calibration: CalibrationText, size: int, seed: int = SEED
) -> list[dict[str, Any]]:
    """Next-sentence choice: a passage (1 to NEXT_CONTEXT_SENTENCES sentences of one paragraph), then its true next
    sentence among 4; the 3 distractors come from other held-out articles (each from a paragraph of two or more
    sentences, so no captions) and are within LENGTH_RATIO of its length in words, so length alone does not tell.
    The true sentence is at each of the 4 positions equally often (up to one item when `size` is not a multiple of 4),
    so no position bias scores above chance."""
    rng = random.Random(f"{seed}-{WIKI_NEXT}")
    labels = [index % 4 for index in range(size)]
    rng.shuffle(labels)
    per_article = article_sentences(articles)
    paragraph_sizes = collections.Counter((s.article, s.paragraph) for sentences in per_article for s in sentences)
    pool = [
        s
        for sentences in per_article
        for s in sentences
        if _target_sentence(s) and paragraph_sizes[s.article, s.paragraph] > 1
    ]
    candidates = []
    for sentences in per_article:
        for i, sentence in enumerate(sentences):
            context = _preceding(sentences, i, NEXT_CONTEXT_SENTENCES, same_paragraph=True)
            if context and _target_sentence(sentence):
                candidates.append((context, sentence))

    def make_item(candidate: tuple[list[Sentence], Sentence], index: int) -> dict[str, Any] | None:
        context, sentence = candidate
        low, high = sentence.words / LENGTH_RATIO, sentence.words * LENGTH_RATIO
        others = [s for s in pool if s.article != sentence.article and low <= s.words <= high]
        distractors: list[str] = []
        for other in rng.sample(others, min(len(others), 12)):
            if other.text != sentence.text and other.text not in distractors:
                distractors.append(other.text)
            if len(distractors) == 3:
                break
        if len(distractors) < 3 or calibration.overlaps([*(c.text for c in context), sentence.text, *distractors]):
            return None
        label = labels[index]
        choices = distractors[:label] + [sentence.text] + distractors[label:]
        return {
            "id": f"wiki_next_{index}",
            "article": sentence.article,
            "context": _passage(context),
            "choices": choices,
            "label": label,
        }

    return _draw(WIKI_NEXT, candidates, size, rng, lambda c: c[1].article, make_item)


def build_wiki_cloze(
    articles: Sequence[str], calibration: CalibrationText, size: int, seed: int = SEED
) -> list[dict[str, Any]]:
    """LAMBADA-style cloze: 2 to CLOZE_CONTEXT_SENTENCES consecutive sentences of one article (paragraph breaks
    kept), then a sentence whose last word (3+ letters) is to be predicted. Kept: targets that occur in the sentences
    before the last one: as in LAMBADA, the passage, not the last sentence alone, says what the word is."""
    rng = random.Random(f"{seed}-{WIKI_CLOZE}")
    candidates = []
    for sentences in article_sentences(articles):
        for i, sentence in enumerate(sentences):
            match = _LAST_WORD.match(sentence.text)
            if match is None or not _target_sentence(sentence):
                continue
            context = _preceding(sentences, i, CLOZE_CONTEXT_SENTENCES, same_paragraph=False)
            if len(context) >= 2 and re.search(rf"\b{re.escape(match.group(2))}\b", _passage(context)):
                candidates.append((context, sentence, match.group(1), match.group(2)))

    def make_item(candidate: tuple[list[Sentence], Sentence, str, str], index: int) -> dict[str, Any] | None:
        context, sentence, head, target = candidate
        if calibration.overlaps([*(c.text for c in context), sentence.text]):
            return None
        passage = _passage([*context, Sentence(sentence.article, sentence.paragraph, head)])
        return {"id": f"wiki_cloze_{index}", "article": sentence.article, "context": passage, "target": target}

    return _draw(WIKI_CLOZE, candidates, size, rng, lambda c: c[1].article, make_item)


def build_movie_sentiment(snippets: Sequence[Any], size: int, seed: int = SEED) -> list[dict[str, Any]]:
    """Balanced positive / negative snippets whose mean rating is at least MIN_ABS_RATING from neutral, in a seeded
    random order; a text that occurs twice (with either rating) is left out. Wiki-style '' quotes become "."""
    rng = random.Random(f"{seed}-{SENTIMENT}")
    counts = collections.Counter(s.text for s in snippets)
    kept = [s for s in snippets if counts[s.text] == 1 and abs(s.rating) >= MIN_ABS_RATING]
    by_label = {label: [s for s in kept if int(s.rating > 0) == label] for label in (0, 1)}
    if size % 2 or any(len(rows) < size // 2 for rows in by_label.values()):
        raise ValueError(f"{SENTIMENT}: {size} items need an even size and {size // 2} snippets of each polarity")
    chosen = [(s, label) for label in (0, 1) for s in rng.sample(by_label[label], size // 2)]
    rng.shuffle(chosen)
    return [
        {
            "id": f"movie_sentiment_{i}",
            "snippet_id": s.id,
            "rating": s.rating,
            "text": s.text.replace("''", '"'),
            "label": label,
        }
        for i, (s, label) in enumerate(chosen)
    ]


# ---- chance levels ----------------------------------------------------------------------------------------------


def chance_levels(name: str, items: Sequence[dict[str, Any]]) -> dict[str, float]:
    """What a model that knows nothing scores, per metric: uniform guessing, and the simple baselines below."""
    if name == WIKI_NEXT:
        labels = collections.Counter(item["label"] for item in items)
        return {"acc": 1 / 4, "acc (always the most frequent position)": max(labels.values()) / len(items)}
    if name == SENTIMENT:
        labels = collections.Counter(item["label"] for item in items)
        return {"acc": 1 / 2, "acc (always the majority class)": max(labels.values()) / len(items)}
    if name == WIKI_CLOZE:
        targets = collections.Counter(item["target"] for item in items)
        copy = 0.0
        for item in items:
            # The context's words, the hidden sentence's own words included (what a copying guesser can pick from).
            words = re.findall(r"[A-Za-z]{3,}", item["context"])
            copy += words.count(item["target"]) / len(words)
        return {
            "acc": 0.0,
            "acc (always the most frequent target)": max(targets.values()) / len(items),
            "acc (a random word of 3+ letters of the passage)": copy / len(items),
        }
    raise KeyError(name)


# ---- task files -------------------------------------------------------------------------------------------------

_YAML = {
    WIKI_NEXT: """\
# Pick the true next sentence of a held-out Wikipedia passage among 4. Chance: 25%. Built by build_tasks.py.
tag: {tag}
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {name}.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
    WIKI_CLOZE: """\
# LAMBADA-style last word of a held-out Wikipedia passage (greedy match). Chance: about 0. Built by build_tasks.py.
tag: {tag}
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {name}.jsonl
test_split: test
output_type: loglikelihood
doc_to_text: "{{{{context}}}}"
doc_to_target: "{{{{' ' + target}}}}"
target_delimiter: ""
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
    SENTIMENT: """\
# Zero-shot sentiment of movie-review snippets rated far from neutral, balanced. Chance: 50%. Built by build_tasks.py.
tag: {tag}
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {name}.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Review: {{{{text}}}}\\nSentiment:"
doc_to_choice: ["negative", "positive"]
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
""",
}


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write(text)


def _sha256(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def build(
    output: str = HERE,
    *,
    seed: int = SEED,
    sizes: dict[str, int] | None = None,
    tasks: Sequence[str] | None = None,
    snippets: Sequence[Any] | None = None,
) -> dict[str, Any]:
    """Write `<task>.yaml` and `<task>.jsonl` of each task and `manifest.json` into `output`; return the manifest.

    `tasks` picks some of the three (default: all); `snippets` are the movie-review snippets (default: read from
    vaderSentiment's sdist, downloaded once with pip).
    """
    import gensim

    sizes = {**SIZES, **(sizes or {})}
    tasks = list(tasks or SIZES)
    unknown = sorted(set(tasks) - set(SIZES))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; the tasks are {list(SIZES)}")
    os.makedirs(output, exist_ok=True)
    manifest: dict[str, Any] = {
        "seed": seed,
        "sources": {
            "wikipedia": f"gensim {gensim.__version__}, the last 20% of its Wikipedia articles (held out)",
            "movie reviews": "vaderSentiment 3.3.2 sdist, movieReviewSnippets_GroundTruth.txt",
        },
        "tasks": {},
    }
    built: dict[str, list[dict[str, Any]]] = {}
    if WIKI_NEXT in tasks or WIKI_CLOZE in tasks:
        held_out, calibration_articles = wikipedia_held_out()
        calibration = CalibrationText(calibration_articles)
        if WIKI_NEXT in tasks:
            built[WIKI_NEXT] = build_wiki_next(held_out, calibration, sizes[WIKI_NEXT], seed)
        if WIKI_CLOZE in tasks:
            built[WIKI_CLOZE] = build_wiki_cloze(held_out, calibration, sizes[WIKI_CLOZE], seed)
    if SENTIMENT in tasks:
        if snippets is None:
            from fixtures.shared import load_snippets

            snippets = load_snippets()
        built[SENTIMENT] = build_movie_sentiment(snippets, sizes[SENTIMENT], seed)
    for name in SIZES:
        if name not in built:
            continue
        items = built[name]
        data = os.path.join(output, f"{name}.jsonl")
        _write(data, "".join(json.dumps(item, ensure_ascii=False) + "\n" for item in items))
        _write(os.path.join(output, f"{name}.yaml"), _YAML[name].format(name=name, tag=TAG))
        manifest["tasks"][name] = {
            "items": len(items),
            "chance": chance_levels(name, items),
            "sha256": _sha256(data),
        }
    _write(os.path.join(output, MANIFEST), json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def check(folder: str = HERE, seed: int = SEED) -> list[str]:
    """Rebuild into a temporary folder; return the files of `folder` that differ from the rebuild (empty: none)."""
    with tempfile.TemporaryDirectory() as temporary:
        build(temporary, seed=seed)
        names = sorted(name for name in os.listdir(temporary))
        return [
            name
            for name in names
            if not os.path.isfile(os.path.join(folder, name))
            or not filecmp.cmp(os.path.join(folder, name), os.path.join(temporary, name), shallow=False)
        ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=HERE, help="folder to write the tasks to (default: beside this script)")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--check", action="store_true", help="rebuild in a temporary folder and compare")
    args = parser.parse_args(argv)
    if args.check:
        differing = check(args.output, args.seed)
        for name in differing:
            print(f"{name} differs from a fresh build", file=sys.stderr)
        if not differing:
            print(f"{args.output}: the task files equal a fresh build")
        return 1 if differing else 0
    manifest = build(args.output, seed=args.seed)
    for name, task in manifest["tasks"].items():
        chance = ", ".join(f"{metric} {value:.3f}" for metric, value in task["chance"].items())
        print(f"{name}: {task['items']} items; chance {chance}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
