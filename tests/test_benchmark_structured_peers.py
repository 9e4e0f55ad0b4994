"""benchmarks/structured_peers.py (issue 23): our rows land on the peer's parameter count, LLM-Pruner's rule gives the
issue's SmolLM2 count, the workers' census and perplexity are this library's numbers, and the --quick run works
without any peer environment."""

from __future__ import annotations

import copy
import json
import os

import pytest
import torch
from conftest import benchmark_module, tiny_llama
from test_repository_hygiene import machine_paths


@pytest.fixture(scope="module")
def peers():
    return benchmark_module("structured_peers")


@pytest.fixture(scope="module")
def worker_common():
    return benchmark_module("peers.worker_common")


def _pruned(model, fields, sparsity, calibration):
    from optimum_prune import PrunerForCausalLM, PruningConfig

    pruner = PrunerForCausalLM(copy.deepcopy(model), None)
    config = PruningConfig(target="structured", sparsity=sparsity, num_samples=4, seqlen=16, seed=0, **fields)
    pruner.prune(config, dataset=calibration, show_progress=False)
    return pruner.model


@pytest.mark.parametrize(
    "fields, removed_fraction",
    [
        ({"structures": ["ffn_channels"]}, 0.2),  # FFN channels only
        ({}, 0.1),  # heads + FFN at a budget that keeps every KV group (the coarse kind is rounded down)
        ({}, 0.5),  # heads + FFN removing KV groups: o_proj gets a bias, and q / k / v zero ones with the flag
    ],
)
def test_match_sparsity_lands_on_the_closest_count_the_run_really_leaves(
    peers, worker_common, fields, removed_fraction
):
    """The planner's count (plan + refit biases + layout) is what the pruned model holds, and the budget chosen is
    the best any budget achieves."""
    from optimum_prune import PruningConfig

    model = tiny_llama(tie_word_embeddings=True)
    calibration = torch.randint(4, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    dense = worker_common.census(model)["parameters"]
    target = int(dense - removed_fraction * (dense - model.model.embed_tokens.weight.numel()))
    base = {"num_samples": 4, "seqlen": 16, "seed": 0, **fields}
    sparsity, planned = peers.match_sparsity(model, base, target)
    pruned = _pruned(model, fields, sparsity, calibration)
    assert worker_common.census(pruned)["parameters"] == planned
    grid = [i / 400 for i in range(0, 361)]
    best = min(
        abs(peers.planned_parameters(model, PruningConfig(target="structured", sparsity=s, **base)) - target)
        for s in grid
    )
    assert abs(planned - target) <= best
    if removed_fraction == 0.5:
        assert worker_common.census(pruned)["kv heads"] != worker_common.census(model)["kv heads"]


def test_match_sparsity_of_the_obs_allocation_removes_the_budget(peers, worker_common) -> None:
    """A data-dependent allocation is not bisected: its one ranking removes the budget to within half a unit, and
    the refit's biases are added to it."""
    model = tiny_llama(tie_word_embeddings=True)
    calibration = torch.randint(4, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    fields = {"structures": ["ffn_channels"], "recipe": "obs"}
    target = worker_common.census(model)["parameters"] - 60 * 3 * 48  # 60 FFN channels of 3 x 48 parameters
    sparsity, planned = peers.match_sparsity(model, {"num_samples": 4, "seqlen": 16, "seed": 0, **fields}, target)
    assert planned is None
    left = worker_common.census(_pruned(model, fields, sparsity, calibration))["parameters"]
    # Within half a channel, plus one down_proj bias per block the ranking might leave whole.
    assert abs(left - target) <= 3 * 48 / 2 + 3 * 48


def test_llm_pruner_rule_gives_the_issue_count_on_smollm2(peers) -> None:
    """SmolLM2-135M's shapes on the meta device: ffn-20 keeps int(1536 x 0.8) = 1228 channels in blocks 4-27,
    121,741,632 parameters (issue 23: 121.74M), of 134,515,008."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    assert peers.llm_pruner_blocks(30) == (4, 28)
    dense = peers.llm_pruner_expected(model, "dense")
    assert dense["parameters"] == 134_515_008 and dense["zeros"] is None
    expected = peers.llm_pruner_expected(model, "ffn-20")
    assert expected["parameters"] == 121_741_632
    assert expected["ffn widths"] == [1536] * 4 + [1228] * 24 + [1536] * 2
    assert expected["attention heads"] == [9] * 30 and expected["kv heads"] == [3] * 30
    assert peers.PEERS["LLM-Pruner"].describe("ffn-20", 30) == "FFN 20% (Taylor param_first, blocks 4-27)"


def test_worker_census_counts_every_parameter_once(worker_common) -> None:
    for tied in (True, False):
        model = tiny_llama(tie_word_embeddings=tied)
        embedding = model.model.embed_tokens.weight.numel()
        total = sum(p.numel() for p in model.parameters())
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight[:, :5] = 0
        counted = worker_common.census(model)
        assert counted["parameters"] == total
        assert counted["parameters without embeddings"] == total - embedding - (0 if tied else embedding)
        assert counted["tied embeddings"] is tied
        assert counted["zeros"] == 5 * 96
        assert counted["ffn widths"] == [96] * 3 and counted["attention heads"] == [6] * 3
        assert counted["kv heads"] == [3] * 3


def test_worker_perplexity_is_this_librarys(worker_common) -> None:
    """The function a peer's environment loads from the module file gives the package's numbers."""
    from optimum_prune.evaluation import perplexity

    model = tiny_llama()
    ids = torch.randint(4, 128, (1, 200), generator=torch.Generator().manual_seed(1))
    assert worker_common.load_perplexity() is perplexity
    data = {"eval_ids": ids, "eval_prefix": [2], "eval_seqlen": 32}
    ours = perplexity(model, input_ids=ids, seqlen=32, show_progress=False, prefix=[2])
    assert (
        worker_common.perplexity_from_file()(model, input_ids=ids, seqlen=32, show_progress=False, prefix=[2]) == ours
    )
    assert worker_common.evaluate(model, data) == ours


def test_llm_pruner_worker_dense_job_runs_without_llm_pruner(tmp_path, monkeypatch, capsys, worker_common) -> None:
    """The worker's dense job (no LLM-Pruner code) in this environment: its PEER_RESULT is this library's count and
    perplexity; a pruning job without the source folder is a failed result, not a crash."""
    worker = benchmark_module("peers.llm_pruner_worker")
    monkeypatch.delenv(worker.SOURCE_ENV, raising=False)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    model = tiny_llama(tie_word_embeddings=True)
    model.save_pretrained(tmp_path / "checkpoint")
    ids = torch.randint(4, 128, (1, 200), generator=torch.Generator().manual_seed(2))
    data = {"calibration": ids[:, :64].reshape(4, 16), "eval_ids": ids, "eval_prefix": [], "eval_seqlen": 32}
    torch.save(data, tmp_path / "data.pt")
    arguments = ["--checkpoint", str(tmp_path / "checkpoint"), "--data", str(tmp_path / "data.pt"), "--threads", "1"]
    assert worker.main(["--job", "dense", *arguments]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("PEER_RESULT "))
    assert result["status"] == "ok" and result["parameters"] == worker_common.census(model)["parameters"]
    assert result["perplexity"] == pytest.approx(worker_common.evaluate(model, data)["perplexity"], rel=1e-6)
    assert worker.main(["--job", "ffn-20", *arguments]) == 1
    failed = json.loads(capsys.readouterr().out.strip().splitlines()[-1].removeprefix("PEER_RESULT "))
    assert failed["status"].startswith("failed: RuntimeError") and worker.SOURCE_ENV in failed["status"]
    with pytest.raises(ValueError):
        worker.parse_job("attention-20")


def test_quick_run_matches_our_rows_to_the_peer_rule_without_a_peer(peers, tmp_path, monkeypatch) -> None:
    for spec in peers.PEERS.values():
        monkeypatch.delenv(spec.python_env, raising=False)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    output = tmp_path / "peers.md"
    report = peers.main(["--quick", "--peers", "LLM-Pruner", "--output", str(output)])
    rows = report.rows
    assert rows["optimum-prune: dense"]["status"] == "ok"
    peer = rows["LLM-Pruner: FFN 20% (Taylor param_first, blocks 1-2)"]
    assert peer["status"].startswith("skipped: no Python for LLM-Pruner")
    ours = {name: row for name, row in rows.items() if "at LLM-Pruner ffn-20's parameters" in name}
    assert len(ours) == 4
    for row in ours.values():
        assert row["status"].startswith("ok") and "its rule" in row["status"]
        # The uniform rows move in steps of one FFN channel (3 x 64 parameters) in each of the 4 blocks.
        assert abs(row["parameters - peer's"]) <= 4 * 3 * 64 / 2
    text = output.read_text()
    assert "| optimum-prune: FFN only, obs, at LLM-Pruner ffn-20's parameters |" in text
    assert not machine_paths(text) and "_census" not in text
    assert json.loads(output.with_suffix(".json").read_text())["rows"].keys() == rows.keys()


def test_the_page_shows_no_interpreter_path(peers) -> None:
    inside = os.path.join(peers.REPO_ROOT, "benchmarks", "results", "x.md")
    argv = ["--llm-pruner-python", os.path.join("a", "python"), "--slicegpt-source=x", "--output", inside, "--quick"]
    shown = "python benchmarks/structured_peers.py --llm-pruner-python <path> --slicegpt-source=<path> --output "
    assert peers.shown_command(argv) == shown + os.path.join("benchmarks", "results", "x.md") + " --quick"
    assert peers.shown_command(["--output=" + os.path.abspath(os.sep + "elsewhere.md")]).endswith("--output=<path>")
    assert peers.run_length([1536] * 4 + [1228] * 24 + [1536] * 2) == "1536x4, 1228x24, 1536x2"
    assert peers.run_length([1, 2, 3, 4, 5]) == "1-5, mean 3"
    # Query / KV head pairs of a non-uniform plan (the obs allocation): more than four runs, not numbers.
    assert peers.run_length(["9/3", "8/3", "9/3", "7/3", "9/3"]) == "3 distinct: 7/3, 8/3, 9/3"


def test_seed_summary_matches_our_rows_to_the_peer_row_of_the_same_seed(peers) -> None:
    def peer(ratio, seed, parameters):
        return {"ppl / dense": ratio, "_seed_of_run": seed, "_census": {"parameters": parameters}}

    def ours(ratio, seed, parameters):
        return {"ppl / dense": ratio, "_seed_of_run": seed, "_target parameters": parameters}

    variant = peers.OUR_VARIANTS[0][0]
    rows = {
        "LLM-Pruner: FFN 20%": peer(1.5, 0, 100),
        "LLM-Pruner: FFN 20% [seed 1]": peer(1.2, 1, 100),
        f"optimum-prune: {variant}, at LLM-Pruner ffn-20's parameters": ours(1.2, 0, 100),
        f"optimum-prune: {variant}, at LLM-Pruner ffn-20's parameters [seed 1]": ours(1.2, 1, 100),
        f"optimum-prune: {variant}, at another count [seed 1]": ours(0.1, 1, 99),
        "LLM-Pruner: FFN 30%": peer(2.0, 0, 90),  # one seed only: no summary line
    }
    (line,) = peers.seed_summary(rows)
    assert line.startswith("- LLM-Pruner: FFN 20%, seeds 0, 1: the peer at 1.500, 1.200 x its dense")
    assert f"{variant} 0.800 / 1.000 (mean 0.900, worst 1.000)" in line
