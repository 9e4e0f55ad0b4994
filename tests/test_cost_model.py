"""The cost model of issue 28 (`optimum_prune.cost`): FLOPs of a plan, the fit, prune()'s time-left message, the dry
run's projection, and benchmarks/scale.py --quick (slow: four Python processes).

The FLOP counts are checked against a count by hand for the tiny LLaMA of conftest (hidden 48, FFN 96, 6 query heads
of 8 dims in 3 KV groups, 3 layers) on 4 x 32 calibration tokens.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import TEXT, make_tokenizer, tiny_llama

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.cli import main
from optimum_prune.cost import CostCoefficients, fit_coefficients, plan_cost
from optimum_prune.pipeline import block_timings
from optimum_prune.planning import plan_pruning

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
TOKENS, SEQLEN = 4 * 32, 32
#: The tiny LLaMA's matrices: q 48x48, k and v 24x48, o 48x48, gate and up 96x48, down 48x96.
WEIGHTS_PER_BLOCK = 48 * 48 + 2 * 24 * 48 + 48 * 48 + 2 * 96 * 48 + 48 * 96
#: One pass of one block: 2 FLOPs per weight and token, plus causal attention (2 x tokens x seqlen x heads x dim).
PASS = 2 * TOKENS * WEIGHTS_PER_BLOCK + 2 * TOKENS * SEQLEN * 6 * 8


pytestmark = pytest.mark.usefixtures("one_thread")


def _config(**fields) -> PruningConfig:
    return PruningConfig(num_samples=4, seqlen=SEQLEN, **fields)


def test_structured_liar_flops_match_a_hand_count():
    model = tiny_llama()
    config = _config(sparsity=0.5, criterion="activation", reconstruction="liar")
    plan = plan_pruning(model, config)
    assert plan.layers[0]["attention_heads"] == {"before": 6, "after": 4}
    assert plan.layers[0]["ffn_channels"] == {"before": 96, "after": 40}
    cost = plan_cost(model, plan, config)
    assert (cost.tokens, cost.seqlen, len(cost.blocks)) == (TOKENS, SEQLEN, 3)
    # Consumers: o_proj (48 inputs, 32 kept, 16 pruned, 48 rows), down_proj (96 inputs, 40 kept, 56 pruned, 48 rows).
    statistics = 2 * TOKENS * (48**2 + 96**2)
    liar = (32**3 + 2 * 32**2 * 16 + 2 * 48 * 32 * 16) + (40**3 + 2 * 40**2 * 56 + 2 * 48 * 40 * 56)
    for block in cost.blocks:
        passes = 2 if block.index == 2 else 3  # one per pruned kind, one for the next block's inputs
        assert block.forward == passes * PASS
        assert block.statistics == statistics
        assert block.solver == liar
        assert block.solver_term == "solve_liar"
        assert block.io_bytes == 0
    assert cost.flops == sum(b.forward + b.statistics + b.solver for b in cost.blocks)


def test_sparsegpt_flops_match_a_hand_count():
    model = tiny_llama()
    config = _config(target="2:4", method="sparsegpt")
    cost = plan_cost(model, plan_pruning(model, config), config)
    # Distinct inputs: the hidden states (q, k, v), the attention output (o), the normed stream (gate, up), the
    # FFN activations (down).
    statistics = 2 * TOKENS * (3 * 48**2 + 96**2)
    sweep = sum(
        rows * width * (width + 128)
        for rows, width in ((48, 48), (24, 48), (24, 48), (48, 48), (96, 48), (96, 48), (48, 96))
    )
    factor = 3 * 48**3 + 96**3
    for block in cost.blocks:
        assert block.forward == (1 if block.index == 2 else 2) * PASS
        assert block.statistics == statistics
        assert block.solver == sweep + factor
        assert block.solver_term == "solve_sparsegpt"


def test_a_larger_block_projects_more_time():
    model = tiny_llama()
    config = _config(sparsity=0.5, criterion="activation", reconstruction="liar")
    cost = plan_cost(model, plan_pruning(model, config), config)
    rates = CostCoefficients({"block": 0.0, "forward": 1e-9, "statistics": 1e-9, "solve_liar": 1e-9})
    seconds = cost.seconds(rates)
    assert seconds[0] == seconds[1] > seconds[2] > 0  # the last block has no pass for a next block
    assert cost.remaining_after_first(2.0, rates) == pytest.approx(2.0 * (seconds[1] + seconds[2]) / seconds[0])


def test_the_fit_recovers_known_coefficients():
    generator = torch.Generator().manual_seed(0)
    truth = {"block": 0.03, "forward": 2e-11, "statistics": 5e-11, "solve_liar": 3e-10, "io": 4e-10}
    rows = []
    for _ in range(24):
        draw = torch.rand(5, generator=generator, dtype=torch.float64).tolist()
        rows.append(
            {
                "block": 1.0,
                "forward": 1e9 * (1 + 9 * draw[0]),
                "statistics": 1e8 * (1 + 9 * draw[1]),
                "solve_liar": 1e7 * (1 + 9 * draw[2]),
                "io": 1e6 * (1 + 9 * draw[3]) if draw[4] > 0.5 else 0.0,
            }
        )
    seconds = [sum(truth[k] * v for k, v in row.items()) for row in rows]
    fitted = fit_coefficients(rows, seconds)
    for term, value in truth.items():
        assert fitted[term] == pytest.approx(value, rel=1e-6), term
    # A term no row has gets rate 0; rates are never negative.
    assert fit_coefficients(rows, seconds, [*truth, "solve_sparsegpt"])["solve_sparsegpt"] == 0.0
    noisy = fit_coefficients(rows, [s * (1.1 if i % 2 else 0.9) for i, s in enumerate(seconds)])
    assert all(value >= 0 for value in noisy.values())


def test_block_timings_reports_every_block_once():
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    timings = []
    with block_timings(timings.append):
        pruner.prune(_config(sparsity=0.5), dataset=[TEXT], show_progress=False)
    assert [t.index for t in timings] == [0, 1, 2]
    assert all(t.count == 3 and t.changes_weights and t.wall_seconds >= 0 and t.cpu_seconds >= 0 for t in timings)
    timings.clear()
    pruner.prune(_config(sparsity=0.2), dataset=[TEXT], show_progress=False)
    assert timings == []  # outside the context nothing is reported


@pytest.mark.parametrize(
    "fields",
    [dict(sparsity=0.5, criterion="activation", reconstruction="liar"), dict(target="2:4", method="sparsegpt")],
)
def test_prune_says_once_how_long_is_left(caplog, fields):
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    with caplog.at_level(logging.INFO, logger="optimum_prune.cost"):
        pruner.prune(_config(**fields), dataset=[TEXT], show_progress=False)
    messages = [r.getMessage() for r in caplog.records if "left on this machine" in r.getMessage()]
    assert len(messages) == 1, messages
    match = re.fullmatch(
        r"about ([0-9.e+-]+) (minutes|hours) left on this machine \(3 blocks, ([0-9.e+-]+) s for the first\)",
        messages[0],
    )
    assert match, messages[0]
    assert float(match.group(1)) > 0


def test_a_scoring_pass_before_the_run_does_not_count_as_the_first_block():
    """A global allocation scores every layer first (a pass that changes no weights): the message comes after the
    first block of the pruning pass, once."""
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    timings, blocks_done_at_message = [], []

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            blocks_done_at_message.append(len(timings))

    cost_logger = logging.getLogger("optimum_prune.cost")
    handler, level = Handler(), cost_logger.level
    cost_logger.addHandler(handler)
    cost_logger.setLevel(logging.INFO)
    try:
        with block_timings(timings.append):
            pruner.prune(_config(sparsity=0.5, allocation="global"), dataset=[TEXT], show_progress=False)
    finally:
        cost_logger.removeHandler(handler)
        cost_logger.setLevel(level)
    assert [t.changes_weights for t in timings] == [False] * 3 + [True] * 3
    assert blocks_done_at_message == [4]  # 3 scored, then the first pruned


def test_a_data_free_run_says_nothing(caplog):
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    with caplog.at_level(logging.INFO, logger="optimum_prune.cost"):
        pruner.prune(_config(sparsity=0.5, criterion="magnitude", reconstruction="none"), show_progress=False)
    assert not [r for r in caplog.records if "left on this machine" in r.getMessage()]


def test_dry_run_prints_the_plans_flops_and_a_projection(tmp_path, capsys):
    folder = tmp_path / "llama"
    tiny_llama().save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    arguments = ["--model", str(folder), "--sparsity", "0.5", "--num-samples", "4", "--seqlen", str(SEQLEN)]
    capsys.readouterr()
    assert main([*arguments, "--dry-run", "--json", "--no-progress", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    model = tiny_llama()
    config = _config(sparsity=0.5)
    expected = plan_cost(model, plan_pruning(model, config), config)
    assert report["cost"]["flops"] == expected.flops
    assert report["cost"]["tokens"] == TOKENS
    assert report["cost"]["projected_seconds"] > 0
    line = next(line for line in captured.err.splitlines() if line.startswith("Cost: "))
    assert f"{expected.flops:.3g} FLOPs" in line
    assert "projection: about" in line and "not a measurement" in line
    assert not (tmp_path / "out").exists()


def test_the_cli_prints_the_time_left(tmp_path, capsys):
    folder = tmp_path / "llama"
    tiny_llama().save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    arguments = ["--model", str(folder), "--dataset", str(text), "--num-samples", "4", "--seqlen", str(SEQLEN)]
    capsys.readouterr()
    assert main([*arguments, "--sparsity", "0.5", "--no-progress", str(tmp_path / "out")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "left on this machine" in line]
    assert len(lines) == 1 and lines[0].startswith("About "), lines


@pytest.mark.slow
def test_scale_quick_writes_the_table(tmp_path):
    output = tmp_path / "scale.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.path.dirname(BENCHMARKS)}
    done = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "scale.py"), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=BENCHMARKS,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    page = output.read_text(encoding="utf-8")
    header = next(line for line in page.splitlines() if line.startswith("| shape, job"))
    for column in (
        "projected (CPU s)",
        "prune wall (s)",
        "prune CPU (s)",
        "block wall first / mean / max (s)",
        "peak RSS prune (GiB)",
        "disk read / written, prune (GB)",
        "same next token",
        "max \\|logit diff\\|",
    ):
        assert column in header, column
    rows = [line for line in page.splitlines() if line.startswith("| tiny, ")]
    assert len(rows) == 2 and all("| True |" in row for row in rows), rows
    assert "## Per block" in page
    record = json.loads(output.with_suffix(".json").read_text(encoding="utf-8"))
    assert all(row["projected (CPU s)"] > 0 and row["prune wall (s)"] > 0 for row in record["rows"].values())


def test_gpu_projection_streams_only_what_does_not_fit(tmp_path):
    """`scale.py --project --device-profile`: 8B in bf16 stays resident on an 80 GB GPU, 70B (141 GB) is streamed
    from host RAM, which adds the bytes moved to its time; the roofline's seconds follow the plan's FLOPs."""
    from conftest import benchmark_module

    scale = benchmark_module("scale")
    arguments = ["--project", "--dtype", "bfloat16", "--device-profile", "h100-80gb"]
    small = scale.main([*arguments, "--shape", "8b", "--output", str(tmp_path / "8b.md")])
    large = scale.main([*arguments, "--shape", "70b", "--output", str(tmp_path / "70b.md")])
    assert "resident on the GPU" in (tmp_path / "8b.md").read_text(encoding="utf-8")
    page = (tmp_path / "70b.md").read_text(encoding="utf-8")
    assert "streamed block by block from host RAM" in page and "not a measurement" in page
    for job, seconds in small.items():
        # 70B has 80 blocks of about 8.5x the FLOPs of 8B's 32, plus the streaming: far more than 8B's time.
        assert large[job] > 10 * seconds > 0
    cpu = scale.main(["--project", "--dtype", "bfloat16", "--shape", "8b", "--output", str(tmp_path / "cpu.md")])
    assert all(cpu[job] > 100 * small[job] for job in small)
