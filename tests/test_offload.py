"""Pruning a model loaded with accelerate's big-model support (max_memory cap, disk offload) block by block.

The offloaded run must give exactly what pruning the same model in memory gives, never hold all weights at once,
and save a checkpoint that reloads with the same logits.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from conftest import TEXT, make_tokenizer, tiny_llama
from transformers import AutoModelForCausalLM

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.pipeline.offload import count_materialized_parameters, is_offloaded

pytestmark = [
    # transformers warns about shard sizes whenever a model with offloaded modules is saved.
    pytest.mark.filterwarnings("ignore:Attempting to save a model with offloaded modules"),
    # Offloaded and in-memory runs are compared with each other, so a small calibration set is enough here.
    pytest.mark.filterwarnings("ignore:LIAR fits each pruned channel"),
]

INPUT_IDS = torch.tensor([[5, 17, 33, 48, 9, 60, 71, 12, 90, 33, 41, 7]])

CONFIGS = {
    "structured-uniform": dict(sparsity=0.3, criterion="activation", reconstruction="liar", round_to=8),
    "structured-global": dict(sparsity=0.4, criterion="activation", reconstruction="liar", allocation="global"),
    "sparsegpt": dict(target="unstructured", method="sparsegpt", sparsity=0.5),
}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> tuple[str, int]:
    """A 6-layer random LLaMA (about 3.7 MB of float32) saved as safetensors; returns (folder, size in bytes)."""
    folder = tmp_path_factory.mktemp("base") / "model"
    model = tiny_llama(
        hidden_size=128, intermediate_size=256, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2
    )
    model.save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return str(folder), sum(p.numel() * p.element_size() for p in model.parameters())


def _config(name: str) -> PruningConfig:
    return PruningConfig(dataset=[TEXT], num_samples=4, seqlen=48, **CONFIGS[name])


_REFERENCES: dict[tuple[str, str], PrunerForCausalLM] = {}


def _reference(folder: str, name: str) -> PrunerForCausalLM:
    """The same model pruned the ordinary way, fully in memory (computed once per configuration)."""
    if (folder, name) not in _REFERENCES:
        pruner = PrunerForCausalLM.from_pretrained(folder)
        pruner.prune(_config(name), show_progress=False)
        _REFERENCES[folder, name] = pruner
    return _REFERENCES[folder, name]


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(INPUT_IDS).logits


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _load_offloaded(folder: str, size: int, offload_folder) -> PrunerForCausalLM:
    # Half the model may stay in CPU memory; accelerate puts the rest on disk.
    pruner = PrunerForCausalLM.from_pretrained(
        folder, device_map="auto", max_memory={"cpu": size // 2}, offload_folder=str(offload_folder)
    )
    assert is_offloaded(pruner.model)
    assert "disk" in pruner.model.hf_device_map.values()
    return pruner


@pytest.mark.parametrize("name", list(CONFIGS))
def test_offloaded_pruning_matches_in_memory(name, checkpoint, tmp_path):
    folder, size = checkpoint
    original_digest = _digest(os.path.join(folder, "model.safetensors"))
    reference = _reference(folder, name)
    expected = _logits(reference.model)

    pruner = _load_offloaded(folder, size, tmp_path / "offload")
    model = pruner.model
    total = sum(p.numel() for p in model.parameters())
    resident = count_materialized_parameters(model)
    largest_block = max(sum(p.numel() for p in layer.parameters()) for layer in model.model.layers)
    peaks: list[int] = []
    handles = [
        layer.register_forward_pre_hook(lambda *_: peaks.append(count_materialized_parameters(model)))
        for layer in model.model.layers
    ]
    pruner.prune(_config(name), show_progress=False)
    for handle in handles:
        handle.remove()

    # Never more than what stays in memory plus the one block being pruned (well below the whole model).
    assert resident + largest_block < total
    assert peaks and max(peaks) <= resident + largest_block
    assert is_offloaded(model) and count_materialized_parameters(model) <= resident
    assert pruner.summary["parameters_after"] == reference.summary["parameters_after"]
    assert model.config.pruning == reference.model.config.pruning

    logits = _logits(model)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)

    pruner.save_pretrained(tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "pruned").eval()
    reference_state = reference.model.state_dict()
    reloaded_state = reloaded.state_dict()
    assert reloaded_state.keys() == reference_state.keys()
    for key, value in reference_state.items():
        torch.testing.assert_close(reloaded_state[key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert torch.equal(_logits(reloaded), logits)
    # The pruned weights went to the offload folder; the source checkpoint was only read.
    assert _digest(os.path.join(folder, "model.safetensors")) == original_digest


def test_activations_on_disk_and_offloaded_reload(checkpoint, tmp_path):
    folder, size = checkpoint
    pruner = _load_offloaded(folder, size, tmp_path / "offload")
    # Global allocation gives per-layer sizes, so the checkpoint reloads through the plugin's loader.
    pruner.prune(_config("structured-global"), show_progress=False, activations_dir=tmp_path / "activations")
    assert os.listdir(tmp_path / "activations") == []  # every block's activation files are gone once it is done
    logits = _logits(pruner.model)
    torch.testing.assert_close(logits, _logits(_reference(folder, "structured-global").model), rtol=1e-5, atol=1e-5)

    pruner.save_pretrained(tmp_path / "pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(
        tmp_path / "pruned", device_map="auto", max_memory={"cpu": size // 4}, offload_folder=tmp_path / "offload2"
    )
    assert is_offloaded(reloaded)
    assert torch.equal(_logits(reloaded), logits)


def test_offloading_without_offload_folder_leaves_checkpoint_untouched(checkpoint, tmp_path):
    # transformers reads disk-offloaded weights straight from the checkpoint when no offload folder is given;
    # the pruned ones must then go to a scratch folder, not into the checkpoint.
    folder, size = checkpoint
    digest = _digest(os.path.join(folder, "model.safetensors"))
    pruner = PrunerForCausalLM.from_pretrained(folder, device_map="auto", max_memory={"cpu": size // 2})
    assert is_offloaded(pruner.model)
    pruner.prune(_config("structured-uniform"), show_progress=False)
    expected = _logits(_reference(folder, "structured-uniform").model)
    torch.testing.assert_close(_logits(pruner.model), expected, rtol=1e-5, atol=1e-5)
    assert _digest(os.path.join(folder, "model.safetensors")) == digest


def test_prunenet_training_on_offloaded_model_is_a_clear_error(checkpoint, tmp_path):
    folder, size = checkpoint
    pruner = _load_offloaded(folder, size, tmp_path / "offload")
    with pytest.raises(ValueError, match="prunenet_policy_path"):
        pruner.prune(sparsity=0.3, criterion="prunenet", reconstruction="none", show_progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cpu_model_pruned_block_by_block_on_gpu(checkpoint):
    folder, _ = checkpoint
    on_cpu = _reference(folder, "structured-uniform")
    streamed = PrunerForCausalLM.from_pretrained(folder)
    streamed.prune(_config("structured-uniform"), show_progress=False, execution_device="cuda")
    assert all(p.device.type == "cpu" for p in streamed.model.parameters())  # each block went back after its turn
    torch.testing.assert_close(_logits(streamed.model), _logits(on_cpu.model), rtol=1e-3, atol=1e-3)
