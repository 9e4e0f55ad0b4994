"""benchmarks/structured_transfer.py (issue 23, part 3): every recipe row is scored on both texts against the same
model's dense row, and the news corpus is a real, different text."""

from __future__ import annotations

import pytest
from conftest import benchmark_module


@pytest.fixture(scope="module")
def transfer():
    return benchmark_module("structured_transfer")


def test_news_text_is_the_gensim_news_corpus(transfer) -> None:
    from optimum_prune.assets import wikipedia_split

    news = transfer.news_text()
    assert news.count("\n\n") == 299  # 300 documents
    assert news[:200] not in wikipedia_split()[1]


def test_quick_run_scores_every_recipe_on_both_texts(transfer, tmp_path) -> None:
    names = [name for name, _ in transfer.RECIPES]
    report = transfer.main(["--quick", "--seed", "1", "--recipes", *names, "--output", str(tmp_path / "t.md")])
    assert report.protocol["calibration"].endswith("seed 1")
    dense = report.rows["tiny Llama: dense"]
    assert dense["wikipedia / dense"] == dense["news / dense"] == 1.0
    for recipe, _ in transfer.RECIPES:
        row = report.rows[f"tiny Llama: {recipe}"]
        assert row["status"] == "ok"
        assert row["parameters (M)"] < dense["parameters (M)"]
        for text in transfer.TEXTS:
            assert row[f"{text} / dense"] == pytest.approx(row[f"{text} ppl"] / dense[f"{text} ppl"])
    assert list(report.rows["tiny Llama: obs"]) == list(transfer.COLUMNS)


def test_recipes_default_to_the_default_and_obs_and_refuse_unknown_names(transfer, tmp_path) -> None:
    report = transfer.main(["--quick", "--output", str(tmp_path / "transfer.md")])
    assert [row["recipe"] for row in report.rows.values()] == ["dense", transfer.RECIPES[0][0], "obs"]
    with pytest.raises(SystemExit, match="unknown recipe rows"):
        transfer.main(["--quick", "--recipes", "obs", "nope", "--output", str(tmp_path / "other.md")])
