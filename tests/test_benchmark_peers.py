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


@pytest.fixture(scope="module")
def common():
    sys.path.insert(0, BENCHMARKS)
    try:
        return importlib.import_module("common")
    finally:
        sys.path.remove(BENCHMARKS)


def test_time_breakdown_wraps_what_the_pruner_calls_and_restores_it(common) -> None:
    """The breakdown's patch points are the ones unstructured pruning really goes through (one solver call per
    pruned matrix, statistics per distinct input), and leaving the block puts the originals back."""
    import optimum_prune.unstructured as unstructured
    from optimum_prune import PruningConfig
    from optimum_prune.pipeline.statistics import InputStatistics

    solve_before, update_before = unstructured.solve_checked, InputStatistics.__dict__["update"]
    model = tiny_llama()
    torch.manual_seed(0)
    samples = [{"input_ids": torch.randint(0, model.config.vocab_size, (1, 16))} for _ in range(2)]
    config = PruningConfig(target="unstructured", sparsity=0.5, method="sparsegpt", num_samples=2, seqlen=16)
    calls: dict[str, int] = {}
    with common.timed_calls(common.our_time_breakdown(), calls) as buckets:
        summary = unstructured.prune_unstructured(model, config, samples, show_progress=False).record
    assert calls["solver s"] == len(summary["modules"]) > 0
    # q/k/v and gate/up share their statistics: fewer updates than matrices x samples.
    assert 0 < calls["statistics s"] < len(summary["modules"]) * len(samples)
    assert unstructured.solve_checked is solve_before
    assert InputStatistics.__dict__["update"] is update_before
    columns = common.breakdown_columns(10.0, buckets)
    assert columns["forward s"] == pytest.approx(10.0 - buckets["solver s"] - buckets["statistics s"])


def test_our_jobs_map_options_to_the_right_config_fields(quality) -> None:
    import argparse

    args = argparse.Namespace(num_samples=4, seqlen=8)
    block = quality._our_config("sparsegpt-50-block", args)
    assert (block.mask_scope, block.solver_options) == ("layer", {})
    matrix = quality._our_config("admm-50-matrix", args)
    assert (matrix.mask_scope, matrix.solver_options) == ("layer", {})
    refit = quality._our_config("admm-2:4-cg", args)
    assert (refit.target, refit.solver_options) == ("2:4", {"refit": "cg"})
    assert quality._our_config("obs_multi-50-norefit", args).solver_options == {"refit": "none"}
    assert quality._our_row_name("admm-50-cg") == "optimum-prune admm 50% (refit=cg)"
    assert quality._our_row_name("sparsegpt-50-block") == "optimum-prune sparsegpt 50% (mask_scope=block)"


def test_issue14_verdicts_say_met_or_missed(quality) -> None:
    def row(ppl: float, seconds: float) -> dict:
        return {"perplexity": ppl, "prune s": seconds, "load": 1.0, "load (start)": 1.0}

    rows = {
        "llm-compressor SparseGPTModifier 50%": row(40.0, 100.0),
        "optimum-prune sparsegpt 50%": row(38.0, 120.0),
        "optimum-prune admm 50%": row(33.0, 140.0),
        "optimum-prune obs_multi 50%": row(36.0, 150.0),
    }
    lines = quality.issue14_verdicts(rows)
    sparsegpt = next(line for line in lines if "sparsegpt 50%" in line)
    assert "perplexity 0.950 x (met" in sparsegpt and "prune time 1.20 x (missed" in sparsegpt
    admm = next(line for line in lines if "admm 50%" in line)
    assert "perplexity 0.825 x (met" in admm and "prune time 1.40 x (met" in admm
    obs = next(line for line in lines if "obs_multi 50%" in line)
    assert "(met, goal <=)" in obs and "closes 40% of the gap" in obs
