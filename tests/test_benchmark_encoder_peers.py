"""benchmarks/encoder_peers.py (issue 23): the peer gets the very sentences our pruner calibrates on, our rows land on
the peer's parameter count, and the --quick run works without the peer's environment."""

from __future__ import annotations

import json

import pytest
from conftest import benchmark_module


@pytest.fixture(scope="module")
def peers():
    return benchmark_module("encoder_peers")


def test_calibration_rows_are_the_sentences_the_pruner_samples(peers) -> None:
    from optimum_prune.data.calibration import sample_examples

    model, tokenizer, train_rows, _, _ = peers.quick_workload()
    chosen = peers.calibration_rows(train_rows, 16, seed=3)
    ours = sample_examples([row["sentence"] for row in train_rows], tokenizer, 16, 64, seed=3)
    assert [row["input_ids"] for row in peers.tokenized(chosen, tokenizer, 64)] == [
        sample["input_ids"][0].tolist() for sample in ours
    ]
    assert len({row["sentence"] for row in chosen}) > 1


def test_our_row_lands_on_the_peer_parameter_count(peers) -> None:
    model, tokenizer, train_rows, dev_rows, _ = peers.quick_workload()
    chosen = peers.calibration_rows(train_rows, 8, seed=0)
    data = {"dev": peers.tokenized(dev_rows, tokenizer, 64), "pad_token_id": 0}
    dense = peers.our_row(model, tokenizer, [], data, {}, None, None)
    target = int(dense["_census"]["parameters"] * 0.8)
    fields = {"structures": ["attention_heads", "ffn_channels"], "num_samples": 8, "seqlen": 64, "seed": 0}
    row = peers.our_row(model, tokenizer, [r["sentence"] for r in chosen], data, fields, target, dense)
    assert row["status"] == "ok"
    # the nearest count whole units allow: within one FFN channel of this BERT (2 x 32 weights + 1 bias)
    assert abs(row["parameters - peer's"]) <= 2 * 32 + 1 + 8 * 32 * 4
    assert row["_census"]["parameters"] == row["parameters - peer's"] + target
    assert row["retention"] == pytest.approx(row["dev accuracy"] / dense["dev accuracy"])


def test_quick_run_without_the_peer_skips_its_rows_and_says_why(peers, tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(peers.PYTHON_ENV, raising=False)
    output = tmp_path / "encoder_peers.md"
    report = peers.main(["--quick", "--output", str(output)])
    assert report.rows["optimum-prune: dense"]["status"] == "ok"
    assert report.rows["Kwon et al.: dense (its env)"]["status"].startswith("skipped: set $")
    recorded = json.loads(output.with_suffix(".json").read_text())
    assert set(recorded["rows"]) == set(report.rows)
    assert str(tmp_path) not in output.read_text()
