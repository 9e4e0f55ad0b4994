"""Which uniformly pruned checkpoints load in plain transformers: exactly those `PLAIN_LOADING` (and README) lists."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from conftest import tiny_bert, tiny_causal_lm, tiny_llama, tiny_mamba
from reload_checks import MIN_RELOAD_TOLERANCE
from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

from optimum_prune import PrunerForCausalLM, PrunerForSequenceClassification, PruningConfig
from optimum_prune.reconstruction import RECONSTRUCTIONS
from optimum_prune.serialization.layout import PLUGIN_REQUIRED_MESSAGE
from optimum_prune.serialization.plain_loading import PLAIN_LOADING, plain_loading_markdown

README = Path(__file__).resolve().parent.parent / "README.md"
INPUT_IDS = [[5, 17, 33, 48, 9, 60, 71, 12]]


# hidden_size 48 and 6 heads in 3 KV groups: 30% removes one group, leaving 4 heads, which divide 48.
FAMILIES = {
    "llama": (lambda: tiny_llama(num_hidden_layers=2), PrunerForCausalLM),
    "mistral": (lambda: tiny_causal_lm(MistralForCausalLM, MistralConfig, num_hidden_layers=2), PrunerForCausalLM),
    "qwen2": (lambda: tiny_causal_lm(Qwen2ForCausalLM, Qwen2Config, num_hidden_layers=2), PrunerForCausalLM),
    "bert": (tiny_bert, PrunerForSequenceClassification),
    "mamba": (tiny_mamba, PrunerForCausalLM),
}

PLAIN_LOAD_SCRIPT = """
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
results = {}
for case in json.loads(sys.argv[1]):
    auto = AutoModelForSequenceClassification if case["encoder"] else AutoModelForCausalLM
    try:
        model = auto.from_pretrained(case["folder"]).eval()
    except Exception as error:
        results[case["folder"]] = {"error": f"{type(error).__name__}: {error}"}
        continue
    with torch.no_grad():
        logits = model(torch.tensor(case["input_ids"])).logits
    expected = torch.load(case["folder"] + "/expected.pt")
    results[case["folder"]] = {
        "difference": (logits - expected).abs().max().item(),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
assert "optimum_prune" not in sys.modules
print(json.dumps(results))
"""


def test_readme_prints_the_plain_loading_table():
    assert plain_loading_markdown() in README.read_text(encoding="utf-8")


def test_plain_transformers_loads_exactly_the_listed_checkpoints(tokenizer, texts, sentences, tmp_path):
    assert {row.model_type for row in PLAIN_LOADING} == set(FAMILIES)
    cases = []
    for row in PLAIN_LOADING:
        assert set(row.reconstructions) <= set(RECONSTRUCTIONS), row
        factory, pruner_class = FAMILIES[row.model_type]
        encoder = pruner_class is PrunerForSequenceClassification
        for reconstruction in RECONSTRUCTIONS:
            pruner = pruner_class(factory(), tokenizer)
            config = PruningConfig(
                sparsity=0.3,
                allocation="uniform",
                reconstruction=reconstruction,
                structures=list(row.structures) if row.structures else None,
                dataset=sentences if encoder else texts,
                num_samples=8,
                seqlen=64,
            )
            pruner.prune(config, show_progress=False)
            assert pruner.summary["parameters_after"] < pruner.summary["parameters_before"]
            folder = tmp_path / f"{row.model_type}-{'-'.join(row.structures or ['all'])}-{reconstruction}"
            pruner.save_pretrained(folder)
            with torch.no_grad():
                torch.save(pruner.model(torch.tensor(INPUT_IDS)).logits, folder / "expected.pt")
            plain = reconstruction in row.reconstructions
            saved = json.loads((folder / "config.json").read_text())
            assert (saved["pruning"]["loader"] == "transformers") is plain, folder.name
            cases.append(
                {
                    "loader": saved["pruning"]["loader"],
                    "folder": str(folder),
                    "encoder": encoder,
                    "input_ids": INPUT_IDS,
                    "plain": plain,
                    "parameters": pruner.summary["parameters_after"],
                }
            )

    # The condition of the LLaMA-family rows: a 42-wide model with 6 heads of size 8 keeps 4, which do not divide 42.
    pruner = PrunerForCausalLM(tiny_llama(hidden_size=42, head_dim=8, num_hidden_layers=2), tokenizer)
    pruner.prune(
        PruningConfig(sparsity=0.3, criterion="magnitude", reconstruction="none", structures=["attention_heads"]),
        show_progress=False,
    )
    assert {layer["num_attention_heads"] for layer in pruner.summary["layers"]} == {4}
    folder = tmp_path / "llama-heads-not-dividing-hidden"
    pruner.save_pretrained(folder)
    loader = json.loads((folder / "config.json").read_text())["pruning"]["loader"]
    cases.append({"loader": loader, "folder": str(folder), "encoder": False, "input_ids": INPUT_IDS, "plain": False})

    # One process without the plugin loads every checkpoint (one interpreter start-up instead of 24).
    listing = json.dumps([{k: c[k] for k in ("folder", "encoder", "input_ids")} for c in cases])
    result = subprocess.run(
        [sys.executable, "-c", PLAIN_LOAD_SCRIPT, listing], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    # transformers prints its trust_remote_code prompt (no newline) before failing on a heterogeneous checkpoint.
    outcomes = json.loads(result.stdout.strip().splitlines()[-1].rsplit("[y/N] ", 1)[-1])
    for case in cases:
        name, outcome = Path(case["folder"]).name, outcomes[case["folder"]]
        if case["plain"]:
            assert "error" not in outcome, (name, outcome)
            assert outcome["parameters"] == case["parameters"], (name, outcome)
            assert outcome["difference"] <= MIN_RELOAD_TOLERANCE, (name, outcome)
        elif case["loader"] == "per_layer_config":
            # Heterogeneous checkpoints: plain transformers asks for the remote code they ship.
            assert outcome.get("error", "").startswith("ValueError") and "trust_remote_code" in outcome["error"]
        else:
            assert outcome.get("error") == f"ValueError: {_guard_error()}", (name, outcome)


def _guard_error() -> str:
    return (
        "The transformers file in the config seems to be incorrect: it is neither a safetensors file "
        "(*.safetensors) nor a safetensors index file (*.safetensors.index.json): " + PLUGIN_REQUIRED_MESSAGE
    )
