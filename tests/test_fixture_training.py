"""The Mamba fixture's training loop: its learning-rate schedule, its plateau test, and resuming a build."""

from __future__ import annotations

import importlib
import math
import os
import sys

import pytest
import torch

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


def _fixture():
    sys.path.insert(0, BENCHMARKS)
    try:
        return importlib.import_module("fixtures.mamba_wiki")
    finally:
        sys.path.remove(BENCHMARKS)


def test_cosine_budget_matches_transformers_schedule() -> None:
    from transformers import get_cosine_schedule_with_warmup

    mamba_wiki = _fixture()
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 5, 50)
    for step in range(1, 51):
        # transformers' lambda at its step counter k is ours at step k (both 0 before the first step).
        expected = scheduler.lr_lambdas[0](step)
        assert math.isclose(mamba_wiki.learning_rate_factor(step, 5, 50, None), expected, abs_tol=1e-12)


def test_warmup_stable_decay_holds_then_reaches_zero() -> None:
    factor = _fixture().learning_rate_factor
    assert factor(5, 10, None, None) == 0.5 and factor(500, 10, None, None) == 1.0
    cooldown = (101, 20)  # plateau found at step 100
    decay = [factor(step, 10, None, cooldown) for step in range(101, 121)]
    assert decay[0] == pytest.approx(1 - 1 / 20) and decay[-1] == 0.0
    assert all(a > b for a, b in zip(decay, decay[1:]))


def test_plateau_needs_patience_evaluations_without_a_relative_gain() -> None:
    plateaued = _fixture().plateaued
    assert not plateaued([100.0, 90.0, 89.5], patience=3, min_improvement=0.01)  # too few evaluations
    assert plateaued([100.0, 90.0, 89.5, 89.4, 89.3], patience=3, min_improvement=0.01)
    assert not plateaued([100.0, 90.0, 89.5, 89.4, 88.0], patience=3, min_improvement=0.01)
    assert not plateaued([100.0, 95.0, 94.0, 93.0], patience=2, min_improvement=0.01)


@pytest.mark.slow
def test_interrupted_build_resumes_to_the_same_weights(tmp_path, monkeypatch) -> None:
    """A build stopped after its second checkpoint and run again ends where an uninterrupted build ends."""
    mamba_wiki = _fixture()
    settings = dict(
        steps=None, max_steps=6, eval_every=2, batch_size=2, seqlen=32, hidden_size=16, num_layers=1, state_size=4,
        vocab_size=300, eval_windows=2,
    )  # fmt: skip
    whole = mamba_wiki.build(str(tmp_path / "whole"), **settings)

    write = mamba_wiki._write_checkpoint
    calls = []

    def stop_after_two(*args, **kwargs):
        write(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(mamba_wiki, "_write_checkpoint", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        mamba_wiki.build(str(tmp_path / "resumed"), **settings)
    assert os.path.isfile(tmp_path / "resumed.checkpoint" / mamba_wiki.CHECKPOINT_NAME)
    monkeypatch.setattr(mamba_wiki, "_write_checkpoint", write)
    resumed = mamba_wiki.build(str(tmp_path / "resumed"), **settings)

    assert resumed["steps_done"] == whole["steps_done"] == 6
    assert resumed["validation"] == whole["validation"]
    assert resumed["perplexity"] == pytest.approx(whole["perplexity"], rel=1e-6)
    assert not os.path.exists(tmp_path / "resumed.checkpoint")
