"""The checks of the peer benchmark (benchmarks/quality.py) that decide whether a peer row is reported at all."""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch
from conftest import tiny_llama

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def quality():
    before = os.environ.get("TQDM_DISABLE")
    sys.path.insert(0, BENCHMARKS)
    try:
        module = importlib.import_module("quality")
    finally:
        sys.path.remove(BENCHMARKS)
        # The script silences tqdm for its own logs; the rest of the suite keeps its progress bars.
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
    return module


def test_census_marks_a_pruned_embedding_table_failed(quality) -> None:
    model = tiny_llama(tie_word_embeddings=True)
    reference = quality.untargeted_parameters(model)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.up_proj.weight[:, ::2] = 0
    clean = quality.census_row(quality.weight_census(model, reference), {"perplexity": 9.0, "status": "ok"}, "peer")
    assert clean["status"] == "ok" and clean["untargeted changed"] == 0 and clean["perplexity"] == 9.0
    assert clean["non-block zeros"] == 0.0 and 0.0 < clean["block zeros"] < 0.5

    with torch.no_grad():  # what llm-compressor did with ignore=["lm_head"]: the tied lm_head is the embedding table
        model.lm_head.weight[:, ::2] = 0
    failed = quality.census_row(quality.weight_census(model, reference), {"perplexity": 9.0, "status": "ok"}, "peer")
    embedding = model.model.embed_tokens.weight
    assert failed["status"].startswith("failed: peer changed") and "model.embed_tokens.weight" in failed["status"]
    assert "perplexity" not in failed and failed["untargeted changed"] == embedding.numel() // 2
    assert failed["non-block zeros"] == pytest.approx(embedding.numel() / 2 / (embedding.numel() + 48))


def test_peers_section_needs_an_interpreter(quality, monkeypatch, capsys) -> None:
    monkeypatch.delenv(quality.PEERS_PYTHON_ENV, raising=False)
    threads = torch.get_num_threads()  # main() sets the script's thread count before it checks its arguments
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    with pytest.raises(SystemExit):
        quality.main(["--sections", "peers"])
    assert "--peers-python" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        quality.main(["--sections", "peers", "--peers-python", os.path.join(BENCHMARKS, "no-such-python")])
    assert "not an executable file" in capsys.readouterr().err
    assert torch.get_num_threads() == threads
