"""Benchmark result pages assembled from measured JSON: the speed table's calibration-memory section and the
structured table's shards."""

from __future__ import annotations

import json
import os

import pytest
from conftest import BENCHMARKS, benchmark_module


def _record(rows: dict, **protocol) -> dict:
    return {
        "title": "t",
        "protocol": protocol or {"samples": 4, "seqlen": 8, "activations_dir": "tmp"},
        "machine": {"CPU": "x"},
        "started": "2026-12-01 00:00 UTC",
        "finished": "2026-12-01 01:00 UTC",
        "rows": rows,
    }


def test_speed_table_gets_the_memory_rows_once(tmp_path) -> None:
    memory = benchmark_module("calibration_memory")
    data = tmp_path / "calibration_memory.json"
    data.write_text(json.dumps(_record({"before": {"peak RSS (MiB)": 2611.7}, "after": {"peak RSS (MiB)": 560.8}})))
    speed = tmp_path / "speed.md"
    speed.write_text("# Speed\n\n## Cost\n\ntable\n\n## Machine\n\n- CPU: x\n")
    memory.update_speed_table(str(speed), str(data))
    first = speed.read_text()
    assert "| before | 2611.7 |" in first and "| after | 560.8 |" in first
    assert first.index("## Cost") < first.index(memory.BEGIN) < first.index("## Machine")
    data.write_text(json.dumps(_record({"after": {"peak RSS (MiB)": 500.0}})))
    memory.update_speed_table(str(speed), str(data))  # replaced, not appended
    second = speed.read_text()
    assert second.count(memory.BEGIN) == 1 and "| after | 500.0 |" in second and "2611.7" not in second


def _shard_row(ppl: float) -> dict:
    return {"perplexity": ppl, "ppl / dense": ppl / 20.0, "forward (s)": 1.0, "decode (s)": 1.0}


def test_structured_shards_split_the_plan_and_merge_in_plan_order(tmp_path) -> None:
    structured = benchmark_module("structured")
    plan = structured.row_plan()
    shards = [structured.shard_of(plan, f"{k}/2") for k in range(2)]
    names = [name for name, _ in plan]
    assert sorted(n for shard in shards for n, _ in shard) == sorted(names)  # every row exactly once
    costs = [sum(structured._relative_cost(f) for _, f in shard) for shard in shards]
    assert abs(costs[0] - costs[1]) <= max(structured._relative_cost(f) for _, f in plan)
    with pytest.raises(ValueError, match="--shard"):
        structured.shard_of(plan, "2/2")

    paths = []
    for k, shard in enumerate(shards):
        rows = {"dense": _shard_row(20.0)} | {name: _shard_row(30.0 + i) for i, (name, _) in enumerate(shard[:3])}
        path = tmp_path / f"structured-shard{k}of2.json"
        path.write_text(json.dumps(_record(rows, calibration="64 x 512")))
        paths.append(str(path))
    report = structured.merge_shards(paths, str(tmp_path / "structured.md"))
    merged = [name for name in report.rows if name != "dense"]
    assert merged == [name for name in names if name in merged] and len(merged) == 6
    assert report.finished is None and "2 processes" in report.protocol["processes"]  # 6 of the planned rows

    # Every planned row, from processes that never finished (stopped mid-row, re-run elsewhere): complete.
    everything = _record(
        {"dense": _shard_row(20.0)} | {name: _shard_row(40.0) for name in names}, calibration="64 x 512"
    )
    everything["finished"] = None
    (tmp_path / "all.json").write_text(json.dumps(everything))
    full = structured.merge_shards(paths + [str(tmp_path / "all.json")], str(tmp_path / "full.md"))
    assert full.finished is not None and len(full.rows) == 1 + len(names)
    assert "Complete" in (tmp_path / "full.md").read_text()

    # A later process (another session: another kernel build) re-measures a row: its number wins.
    rerun = _record({"dense": _shard_row(20.0), shards[0][0][0]: _shard_row(25.0)}, calibration="64 x 512")
    rerun["machine"]["OS"] = "Linux other-build"
    (tmp_path / "rerun.json").write_text(json.dumps(rerun))
    report = structured.merge_shards(paths + [str(tmp_path / "rerun.json")], str(tmp_path / "structured.md"))
    assert report.rows[shards[0][0][0]]["perplexity"] == 25.0 and len(report.rows) == 7
    assert "Linux other-build" in report.machine["OS"]

    other = tmp_path / "other.json"
    other.write_text(json.dumps(_record({"dense": _shard_row(20.0)}, calibration="16 x 512")))
    with pytest.raises(ValueError, match="another protocol"):
        structured.merge_shards([paths[0], str(other)], str(tmp_path / "mixed.md"))


def test_a_page_keeps_the_commands_that_measured_its_rows(tmp_path, monkeypatch) -> None:
    common = benchmark_module("common")
    page = tmp_path / "page.md"

    def run(*arguments: str, rows: dict) -> str:
        monkeypatch.setattr("sys.argv", ["benchmarks/x.py", *arguments])
        report = common.MarkdownReport(path=str(page), title="t", machine={"CPU": "x"}, protocol={"n": 1})
        report.resume()
        for name, metrics in rows.items():
            report.add(name, metrics)
        report.write()
        return page.read_text()

    first = run("--rows", "a", rows={"a": {"ppl": 1.0}})
    assert "Command: `python benchmarks/x.py --rows a`" in first
    second = run("--rows", "b", "--resume", rows={"b": {"ppl": 2.0}})
    assert "- `python benchmarks/x.py --rows a`\n- `python benchmarks/x.py --rows b --resume`" in second
    assert "Written by" not in second
    rendered = run("--resume", rows={})  # a render-only call measured nothing: the page still names who did
    assert (
        "- `python benchmarks/x.py --rows a`" in rendered
        and "- `python benchmarks/x.py --rows b --resume`" in rendered
    )
    assert "Written by: `python benchmarks/x.py --resume`" in rendered
    assert json.loads((tmp_path / "page.json").read_text())["commands"] == [
        "python benchmarks/x.py --rows a",
        "python benchmarks/x.py --rows b --resume",
    ]

    structured = benchmark_module("structured")
    shards = []
    for k, command in enumerate(
        ["python benchmarks/structured.py --shard 0/2", "python benchmarks/structured.py --shard 1/2"]
    ):
        record = _record({"dense": _shard_row(20.0)}, calibration="64 x 512") | {"commands": [command]}
        (tmp_path / f"s{k}.json").write_text(json.dumps(record))
        shards.append(str(tmp_path / f"s{k}.json"))
    merged = structured.merge_shards(shards, str(tmp_path / "merged.md"))
    assert merged.commands == [
        "python benchmarks/structured.py --shard 0/2",
        "python benchmarks/structured.py --shard 1/2",
    ]
    assert "- `python benchmarks/structured.py --shard 1/2`" in (tmp_path / "merged.md").read_text()


def _quantize_chain():
    import importlib.util

    path = os.path.join(BENCHMARKS, "serving", "quantize_chain.py")
    spec = importlib.util.spec_from_file_location("quantize_chain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quantize_chain_token_agreement() -> None:
    agreement = _quantize_chain().agreement
    same = agreement([[1, 2, 3, 4], [5, 6]], [[1, 2, 3, 4], [5, 6]])
    assert same == {"prefix": 1.0, "position": 1.0, "identical_prompts": 2, "prompts": 2}
    # After the first difference the runs continue from different texts: "prefix" stops counting there.
    moved = agreement([[1, 2, 3, 4], [5, 6]], [[1, 9, 3, 4], [5, 6]])
    assert moved == {"prefix": 3 / 6, "position": 5 / 6, "identical_prompts": 1, "prompts": 2}


def test_quantize_chain_section_is_replaced_and_the_page_kept(tmp_path) -> None:
    chain = _quantize_chain()
    record = {
        "protocol": {key: key for key in ("pruning", "quantization", "prompts", "perplexity", "vllm")},
        "versions": {
            "transformers (pruning)": "5.25",
            "llm-compressor env": {"llmcompressor": "0.14", "transformers": "5.17"},
            "vllm": "0.32.0",
        },
        "pruning": {
            "prune_seconds": 10.0,
            "parameter_ratio": 0.88,
            "transformers_perplexity": 29.7,
            "vllm_architecture": ["DeciLMForCausalLM"],
        },
        "llmcompressor_load_check": {"W8A8 RTN": 0.0},
        "rows": {"pruned": {"vLLM perplexity": 29.7}, "W8A8 RTN": {"vLLM perplexity": 30.1}},
        "finished": "2026-12-07 03:00 UTC",
    }
    data = tmp_path / "chain.json"
    data.write_text(json.dumps(record))
    page = tmp_path / "serving.md"
    page.write_text("# Serving\n\n| a | b |\n\n## Machine\n\n- CPU: x\n\nCommand: `python benchmarks/serving.py`\n")
    chain.update_serving_page(str(page), str(data))
    first = page.read_text()
    assert first.startswith("# Serving\n\n| a | b |\n\n## Machine") and "| W8A8 RTN | 30.10 |" in first
    record["rows"]["W8A8 RTN"]["vLLM perplexity"] = 31.0
    data.write_text(json.dumps(record))
    chain.update_serving_page(str(page), str(data))  # replaced, not appended
    second = page.read_text()
    assert second.count(chain.BEGIN) == 1 and "31.00" in second and "30.10" not in second
    assert second.split(chain.BEGIN)[0] == first.split(chain.BEGIN)[0]


def test_sparsity_grid_prunes_each_row_on_a_fresh_copy_and_counts_the_budget(tmp_path) -> None:
    """The solver x allocation grid (sparsity_classifier.py, sparsity_mamba.py): each row starts from the unpruned
    weights, its zeros are counted from the weights, and the notes rank rows in the metric's direction."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    common, grid = benchmark_module("common"), benchmark_module("sparsity_grid")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    model = LlamaForCausalLM(config).eval()
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    from optimum_prune import PrunerForCausalLM

    subject = grid.GridModel(
        model=model,
        tokenizer=None,
        pruner=PrunerForCausalLM,
        score=lambda pruned: {"zeros": grid.block_zero_fraction(pruned.model.layers)},
        metric="zeros",
        higher_is_better=False,
        blocks=lambda pruned: pruned.model.layers,
    )
    report = common.MarkdownReport(path=str(tmp_path / "grid.md"), title="t", planned=2)
    rows = grid.plan([0.5, 0.75], ["magnitude"], ["uniform"])
    calibration = torch.randint(0, 64, (4, 16))
    grid.run_grid(report, subject, rows, calibration, done=["75% magnitude, uniform"], num_samples=4, seqlen=16)
    assert list(report.rows) == ["50% magnitude, uniform"]  # the done row is not run again
    row = report.rows["50% magnitude, uniform"]
    assert row["block zeros"] == pytest.approx(0.5, abs=0.02)
    assert row["min block"] == row["max block"] == 0.5
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    report.rows["60% magnitude, owl"] = {"zeros": 0.2, "ppl / dense": 3.0}
    report.rows["60% magnitude, uniform"] = {"zeros": 0.1, "ppl / dense": 2.0}
    lines = grid.best_lines(report.rows, [0.6], "zeros", False, "ppl / dense")
    assert lines[0] == "- 60%: best 60% magnitude, uniform (2.000 ppl / dense)."


def test_worker_launcher_returns_the_result_times_out_a_silent_worker_and_reports_a_crash(tmp_path) -> None:
    common = benchmark_module("common")
    script = tmp_path / "worker.py"
    script.write_text(
        "import json, sys, time\n"
        "spec = json.load(open(sys.argv[2]))\n"
        "print('PROJECTION about 3 s', flush=True)\n"
        "if spec['kind'] == 'sleep':\n"
        "    time.sleep(60)\n"
        "if spec['kind'] == 'crash':\n"
        "    raise SystemExit('worker broke')\n"
        "print('RESULT ' + json.dumps({'twice': 2 * spec['x']}))\n"
    )
    assert common.launch_worker_process(str(script), {"kind": "ok", "x": 4}, str(tmp_path), 60) == {"twice": 8}
    silent = common.launch_worker_process(str(script), {"kind": "sleep"}, str(tmp_path), 2, echo="PROJECTION ")
    assert silent == {"error": "timed out after 2s"}  # no output after the first line: still stopped in time
    crashed = common.launch_worker_process(str(script), {"kind": "crash"}, str(tmp_path), 60)
    assert crashed["error"].startswith("exit 1") and "worker broke" in crashed["error"]
    assert [p.name for p in tmp_path.iterdir()] == ["worker.py"]  # the spec files are removed
