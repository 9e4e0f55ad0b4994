"""Bad input gets a clear error, and nothing is written."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import tiny_llama

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.allocation import BudgetError
from optimum_prune.data.calibration import CalibrationDataError


@pytest.mark.parametrize("sparsity", [1.0, -0.1, 1.5])
def test_impossible_sparsity(sparsity):
    with pytest.raises(ValueError, match="sparsity must be in \\[0, 1\\)"):
        PruningConfig(sparsity=sparsity)


def test_heads_that_break_gqa_groups(tokenizer, texts):
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)  # 6 heads in 3 KV groups of 2
    config = PruningConfig(
        sparsity=0.2, dataset=texts, num_samples=2, seqlen=32, layer_overrides={"1": {"num_heads": 3}}
    )
    before = {k: v.clone() for k, v in pruner.model.state_dict().items()}
    with pytest.raises(BudgetError, match="whole KV groups of 2"):
        pruner.prune(config, show_progress=False)
    after = pruner.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # validated before any layer changed


def test_override_naming_no_layer(tokenizer, texts):
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    config = PruningConfig(sparsity=0.2, dataset=texts, layer_overrides={"7": {"sparsity": 0.1}})
    with pytest.raises(ValueError, match="name layers \\[7\\].*has 3 layers"):
        pruner.prune(config, show_progress=False)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"criterion": "hessian"}, "Unknown criterion 'hessian'"),
        ({"reconstruction": "magic"}, "Unknown reconstruction 'magic'"),
        ({"target": "3:2"}, "N:M target"),
        ({"target": "blocks"}, "Unknown target"),
        ({"layer_overrides": {"first": {"sparsity": 0.1}}}, "not a layer index"),
        ({"layer_overrides": {"0": {"heads": 2}}}, "Unknown layer_overrides"),
        ({"structures": ["experts"]}, "Unknown structure kind"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PruningConfig(**kwargs)


def test_structure_the_model_lacks(tokenizer, texts):
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    with pytest.raises(ValueError, match="has no \\['mamba_inner'\\]"):
        pruner.prune(PruningConfig(structures=["mamba_inner"], dataset=texts, seqlen=32), show_progress=False)


def test_empty_and_short_calibration_data(tokenizer):
    pruner = PrunerForCausalLM(tiny_llama(max_position_embeddings=512), tokenizer)
    with pytest.raises(CalibrationDataError, match="empty"):
        pruner.prune(PruningConfig(sparsity=0.2, dataset=["", "   "]), show_progress=False)
    with pytest.raises(CalibrationDataError, match="fewer than seqlen=512"):
        pruner.prune(PruningConfig(sparsity=0.2, dataset=["just a few words"], seqlen=512), show_progress=False)
    with pytest.raises(CalibrationDataError, match="No calibration data"):
        pruner.prune(PruningConfig(sparsity=0.2), show_progress=False)


def test_output_folder_that_is_a_file(tokenizer, texts, tmp_path):
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    pruner.prune(PruningConfig(sparsity=0.3, dataset=texts, num_samples=2, seqlen=32), show_progress=False)
    target = tmp_path / "out"
    target.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        pruner.save_pretrained(target)
    assert target.read_text() == "not a folder"
    assert os.listdir(tmp_path) == ["out"]


def test_failed_save_leaves_nothing_behind(tokenizer, texts, tmp_path, monkeypatch):
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    pruner.prune(PruningConfig(sparsity=0.3, dataset=texts, num_samples=2, seqlen=32), show_progress=False)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", broken)
    with pytest.raises(OSError, match="disk full"):
        pruner.save_pretrained(tmp_path / "out")
    assert os.listdir(tmp_path) == []
