"""Pruning runs with several torch threads (the test suite itself runs on one: see conftest).

torch's batched LU on CPU hangs (or fails with "Parameter 6 was incorrect on entry to DLASWP") when more than one
thread solves a batch of systems larger than 128 x 128 (pytorch/pytorch#142815). The greedy solves one system per
unit, and a KV group of SmolLM2 is 192 channels, so `recipe="obs"` hung for every user with the default thread
count; the benchmarks, run on one thread, never saw it. Each check runs in a subprocess with two threads and a
time limit, so a hang fails the test instead of stopping the suite; the last one runs every method once that way.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from optimum_prune.criteria.obs import solve_blocks

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
#: Seconds for the runs, which take 1-30 on an idle machine (a hang never ends).
LIMIT = 300


#: What every script starts with; the thread count is set after conftest's import, which sets one for the suite.
PREAMBLE = """
import warnings
import torch
from conftest import TEXT, make_tokenizer, tiny_llama
from optimum_prune import PrunerForCausalLM
warnings.filterwarnings("ignore")
torch.set_num_threads(2)
"""


def _run_with_two_threads(body: str) -> str:
    script = PREAMBLE + textwrap.dedent(body)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, os.environ.get("PYTHONPATH", "")])}
    # Idle OpenMP threads sleep instead of spinning: on a machine busy with other work, spinning threads made these
    # runs 50-100x slower. (The hang does not depend on it.)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=LIMIT, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"did not finish in {LIMIT} s with two threads (the batched-LU hang)")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "DLASWP" not in done.stderr, done.stderr[-3000:]
    return done.stdout


def test_solve_blocks_agrees_with_the_batched_solve_and_finishes_with_two_threads():
    out = _run_with_two_threads(
        """
        from optimum_prune.criteria.obs import solve_blocks
        g = torch.Generator().manual_seed(0)
        a = torch.randn(3, 192, 192, dtype=torch.float64, generator=g)
        a = a @ a.mT + 192 * torch.eye(192, dtype=torch.float64)
        b = torch.randn(3, 192, 40, dtype=torch.float64, generator=g)
        x = solve_blocks(a, b)
        torch.set_num_threads(1)
        # (Bitwise equal only at the same thread count: MKL splits the work differently on two.)
        print(torch.allclose(x, torch.linalg.solve(a, b), rtol=1e-10, atol=0))
        """
    )
    assert out.split() == ["True"]


def test_obs_recipe_finishes_with_two_threads_on_wide_kv_groups():
    # 4 query heads of 64 per KV group: units of 256 channels, as in real grouped-query models.
    out = _run_with_two_threads(
        """
        model = tiny_llama(hidden_size=512, intermediate_size=256, num_hidden_layers=1, num_attention_heads=8,
                           num_key_value_heads=2, head_dim=64)
        pruner = PrunerForCausalLM(model, make_tokenizer())
        pruner.prune(target="structured", sparsity=0.5, recipe="obs", structures=["attention_heads"],
                     dataset=[TEXT], num_samples=4, seqlen=64, show_progress=False)
        print(model.model.layers[0].self_attn.k_proj.out_features, torch.get_num_threads())
        """
    )
    assert out.split() == ["64", "2"]  # one of the two KV groups left, pruned with two threads


def test_solve_blocks_solves_each_system():
    a = (
        torch.eye(2, dtype=torch.float64).repeat(3, 1, 1)
        * torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)[:, None, None]
    )
    b = torch.ones(3, 2, 1, dtype=torch.float64)
    assert torch.equal(solve_blocks(a, b)[:, 0, 0], torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64))


def test_every_method_finishes_with_two_threads():
    # Units wider than 128 channels (KV groups of 256, 768 FFN channels), where multi-threaded LAPACK differs.
    out = _run_with_two_threads(
        """
        cases = [
            dict(target="structured", sparsity=0.3),
            dict(target="structured", sparsity=0.3, recipe="flap"),
            dict(target="structured", sparsity=0.3, criterion="taylor"),
            dict(target="structured", sparsity=0.3, allocation="global"),
            dict(target="structured", sparsity=0.3, reconstruction="liar_dense"),
            dict(target="structured", sparsity=0.5, structures=["layers"]),
            dict(target="unstructured", sparsity=0.5, allocation="owl"),
            dict(target="unstructured", sparsity=0.5, allocation="obs"),
        ] + [dict(target="unstructured", sparsity=0.5, method=m) for m in ("wanda", "admm", "obs_multi")] + [
            dict(target="2:4", method=m) for m in ("sparsegpt", "admm", "obs_multi")
        ]
        for case in cases:
            model = tiny_llama(hidden_size=512, intermediate_size=768, num_hidden_layers=2, num_attention_heads=8,
                               num_key_value_heads=2, head_dim=64)
            pruner = PrunerForCausalLM(model, make_tokenizer())
            pruner.prune(dataset=[TEXT], num_samples=4, seqlen=64, show_progress=False, **case)
            print(pruner.summary["sparsity_achieved"] > 0, torch.get_num_threads())
        """
    )
    assert out.split() == ["True", "2"] * 14
