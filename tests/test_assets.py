"""`python -m optimum_prune.assets`: the paths of the model and text the install ships, for the command line."""

from __future__ import annotations

import json
import os

from optimum_prune import assets
from optimum_prune.commands.prune_run import split_for_evaluation


def test_smollm2_path_is_the_gguf_file(capsys):
    assert assets.main(["smollm2"]) == 0
    printed = capsys.readouterr().out.strip()
    folder, gguf = assets.smollm2_path()
    assert printed == os.path.join(folder, gguf) and os.path.isfile(printed) and printed.endswith(".gguf")


def test_listing_names_every_asset(capsys):
    assert assets.main([]) == 0
    out = capsys.readouterr().out
    assert assets.smollm2_gguf() in out and assets.minilm_path() in out
    assert "wikipedia" in out and "wiki.jsonl" in out


def test_wikipedia_jsonl_gives_the_cli_the_demo_split(tmp_path, capsys):
    path = tmp_path / "wiki.jsonl"
    assert assets.main(["wikipedia", str(path)]) == 0
    texts = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert texts == list(assets.wikipedia_articles())
    # `--dataset wiki.jsonl --evaluate ppl` splits the texts 80/20 as the examples and benchmarks do.
    assert split_for_evaluation(texts) == assets.wikipedia_split()
    assert not list(tmp_path.glob("*.partial"))


def test_wikipedia_needs_a_file(capsys):
    try:
        assets.main(["wikipedia"])
    except SystemExit as done:
        assert done.code == 2
    else:
        raise AssertionError("wikipedia without a FILE was accepted")
    assert "needs a FILE" in capsys.readouterr().err
