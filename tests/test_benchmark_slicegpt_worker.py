"""The SliceGPT peer worker (benchmarks/peers/slicegpt_worker.py): its census here, the worker itself in SliceGPT's
own environment when one is named (``OPTIMUM_PRUNE_SLICEGPT_PYTHON`` and ``OPTIMUM_PRUNE_SLICEGPT_SOURCE``)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from optimum_prune.evaluation.perplexity import perplexity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "benchmarks", "peers", "slicegpt_worker.py")

# The smoke model of the brief: hidden 64, 4 layers, 4 query and 2 KV heads, tied head; a RoPE theta other than
# transformers 4's default, so a config that 4.41 misreads would show in the dense perplexity.
TINY = dict(
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=True,
    rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
)


@pytest.fixture(scope="module")
def worker():
    spec = importlib.util.spec_from_file_location("slicegpt_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**TINY)).eval()


def test_census_counts_a_tied_head_once(worker) -> None:
    model = tiny_model()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:5] = 0  # 5 rows of 64
    census = worker.parameter_census(model)
    vocab, hidden, inner, kv = 256, 64, 128, 2 * 16  # 2 KV heads of head_dim 16
    per_layer = hidden * hidden * 2 + hidden * kv * 2 + 3 * hidden * inner + 2 * hidden  # q, o; k, v; mlp; norms
    blocks = 4 * per_layer + hidden  # and the final norm
    assert census == {
        "parameters": vocab * hidden + blocks,
        "parameters_without_embeddings": blocks,
        "zeros": 5 * hidden,
        "lm_head_tied": True,
    }

    # SliceGPT's state after fuse_modules and slicing: an untied head and shortcut matrices as parameters.
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    model.model.layers[1].attn_shortcut_Q = torch.nn.Parameter(torch.ones(48, 48))
    untied = worker.parameter_census(model)
    assert untied["parameters"] == 2 * vocab * hidden + blocks + 48 * 48
    assert untied["parameters_without_embeddings"] == blocks + 48 * 48 and not untied["lm_head_tied"]
    assert worker.layer_summary(model)["distinct"][1]["dims"]["attn_shortcut"] == [48, 48]


def test_layer_summary_and_job_names(worker) -> None:
    summary = worker.layer_summary(tiny_model())
    assert summary["hidden_size"] == 64 and summary["embedding_dim"] == 64 and summary["head_in"] == 64
    [only] = summary["distinct"]
    assert only["layers"] == [0, 1, 2, 3]
    assert only["dims"] == {
        "attn_in": 64,
        "attn_out": 64,
        "mlp_in": 64,
        "mlp_out": 64,
        "intermediate": 128,
        "attn_shortcut": None,
        "mlp_shortcut": None,
    }
    assert worker.parse_job("dense") is None and worker.parse_job("slice-20") == pytest.approx(0.2)
    for bad in ("slice-100", "slice-x", "prune-20"):
        with pytest.raises(ValueError):
            worker.parse_job(bad)
    # run_slicegpt.py's rounding for SmolLM2 (hidden 576) and the smoke model.
    assert worker.new_embedding_dimension(576, 0.2) == 456 and worker.new_embedding_dimension(576, 0.3) == 400
    assert worker.new_embedding_dimension(64, 0.2) == 48


def test_config_gets_rope_theta_for_transformers_4(worker) -> None:
    config, changes = worker.config_for_transformers_4(LlamaConfig(**TINY).to_dict())
    assert config["rope_theta"] == 100000.0 and changes and "rope_scaling" not in config
    again, none = worker.config_for_transformers_4(config)
    assert again == config and none == []


def _run_worker(python: str, job: str, checkpoint: str, data: str) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [python, WORKER, "--job", job, "--checkpoint", checkpoint, "--data", data, "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, check=False)
    results = [line for line in done.stdout.splitlines() if line.startswith("PEER_RESULT ")]
    assert results, f"no PEER_RESULT line; stderr:\n{done.stderr[-3000:]}"
    return json.loads(results[-1][len("PEER_RESULT ") :])


@pytest.mark.slow
@pytest.mark.skipif(
    not (os.environ.get("OPTIMUM_PRUNE_SLICEGPT_PYTHON") and os.environ.get("OPTIMUM_PRUNE_SLICEGPT_SOURCE")),
    reason="needs SliceGPT's environment: OPTIMUM_PRUNE_SLICEGPT_PYTHON and OPTIMUM_PRUNE_SLICEGPT_SOURCE",
)
def test_worker_slices_a_tiny_llama(tmp_path) -> None:
    python = os.environ["OPTIMUM_PRUNE_SLICEGPT_PYTHON"]
    model = tiny_model()
    model.save_pretrained(tmp_path / "model")
    generator = torch.Generator().manual_seed(1)
    stream = torch.randint(0, 256, (1, 4 * 63), generator=generator)
    torch.save(
        {
            "calibration": torch.randint(0, 256, (20, 32), generator=generator),  # two batches of SliceGPT's 16
            "eval_ids": stream,
            "eval_prefix": [1],
            "eval_seqlen": 64,
        },
        tmp_path / "data.pt",
    )
    ours = perplexity(model, input_ids=stream, seqlen=64, show_progress=False, prefix=[1])["perplexity"]

    dense = _run_worker(python, "dense", str(tmp_path / "model"), str(tmp_path / "data.pt"))
    assert dense["status"] == "ok", dense["status"]
    # The same weights and windows under transformers 4.41 give this environment's perplexity (RoPE theta read).
    assert dense["perplexity"] == pytest.approx(ours, rel=1e-4)
    assert dense["parameters"] == dense["parameters_before"] and dense["lm_head_tied"]

    sliced = _run_worker(python, "slice-20", str(tmp_path / "model"), str(tmp_path / "data.pt"))
    assert sliced["status"] == "ok", sliced["status"]
    assert math.isfinite(sliced["perplexity"]) and sliced["parameters"] != sliced["parameters_before"]
    assert not sliced["lm_head_tied"] and sliced["prune s"] > 0
    layers = sliced["layers"]
    assert layers["new_embedding_dimension"] == 48 and layers["embedding_dim"] == 48 and layers["head_in"] == 64
    # Every block works in 48 dimensions; the last one writes the head's 64 (run_slicegpt.py keeps the head whole).
    inner, last = layers["distinct"]
    assert inner["layers"] == [0, 1, 2] and last["layers"] == [3]
    for dims in (inner["dims"], last["dims"]):
        assert dims["attn_in"] == dims["mlp_in"] == dims["attn_out"] == 48 and dims["attn_shortcut"] == [48, 48]
    assert inner["dims"]["mlp_out"] == 48 and inner["dims"]["mlp_shortcut"] == [48, 48]
    assert last["dims"]["mlp_out"] == 64 and last["dims"]["mlp_shortcut"] == [48, 64]
    assert sliced["versions"]["transformers"] == "4.41.0" and sliced["adaptations"]
