"""Real-model checks (marked slow): SmolLM2-135M and all-MiniLM-L6-v2, installed offline from package registries.

They prove on real weights what the tiny-model tests prove on random ones: a pruned checkpoint reloads into the
same outputs, and pruning with reconstruction keeps a usable model. Run with `pytest -m slow` (a few minutes).

Lean on purpose, so that they finish under pytest's 600 s timeout on 2 busy cores: 4 held-out windows, 8 x 512
calibration tokens for the structured runs (half the FFN channels, so LIAR still has more than 4 tokens per kept
channel and the gap to no refit is wide), and the shared fixtures fail fast (tests/fail_fast.py): one that failed,
a timeout included, is not run again for the next test.
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from fail_fast import fail_fast_fixture
from reload_checks import assert_saved_tensors_equal, assert_state_dicts_equal, dense_reload_tolerance
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from optimum_prune import PrunerForCausalLM, PrunerForSequenceClassification, PruningConfig
from optimum_prune.assets import minilm_path, smollm2_path, wikipedia_split
from optimum_prune.evaluation import perplexity

pytestmark = pytest.mark.slow

EVAL_WINDOWS = 4
#: Half of every layer's 1536 FFN channels (768 kept, a multiple of 8), calibrated on 8 x 512 tokens: 4096 tokens,
#: 5.3 per kept channel, above the 4 below which LIAR warns that it may fit noise.
FFN_SPARSITY, NUM_SAMPLES, SEQLEN = 0.5, 8, 512


@pytest.fixture(scope="module", autouse=True)
def all_threads():
    previous = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    yield
    torch.set_num_threads(previous)


@fail_fast_fixture()
def smollm2() -> PrunerForCausalLM:
    folder, gguf = smollm2_path()
    return PrunerForCausalLM.from_pretrained(folder, gguf_file=gguf)


@fail_fast_fixture()
def wikipedia(smollm2) -> tuple[list[str], torch.Tensor]:
    calibration, evaluation = wikipedia_split()
    ids = smollm2.tokenizer(evaluation, return_tensors="pt", add_special_tokens=False).input_ids
    return calibration, ids


@fail_fast_fixture()
def dense_perplexity(smollm2, wikipedia) -> float:
    return perplexity(smollm2.model, input_ids=wikipedia[1], seqlen=512, max_windows=EVAL_WINDOWS)["perplexity"]


def _fresh(pruner: PrunerForCausalLM) -> PrunerForCausalLM:
    return PrunerForCausalLM(copy.deepcopy(pruner.model), pruner.tokenizer)


def _prune_ffn(smollm2: PrunerForCausalLM, calibration: list[str], reconstruction: str) -> PrunerForCausalLM:
    pruner = _fresh(smollm2)
    config = PruningConfig(
        target="structured",
        sparsity=FFN_SPARSITY,
        criterion="activation",
        reconstruction=reconstruction,
        structures=["ffn_channels"],
        round_to=8,
        num_samples=NUM_SAMPLES,
        seqlen=SEQLEN,
    )
    pruner.prune(config, dataset=calibration, show_progress=False)
    return pruner


@fail_fast_fixture()
def liar_pruned(smollm2, wikipedia) -> PrunerForCausalLM:
    return _prune_ffn(smollm2, wikipedia[0], "liar")


def test_smollm2_structured_liar_reloads_identically(liar_pruned, smollm2, wikipedia, tmp_path):
    pruner = liar_pruned
    # The budget is half the FFN channels of every layer (1536 -> 768, a multiple of 8).
    sizes = {layer["intermediate_size"] for layer in pruner.summary["layers"]}
    assert sizes == {768}, sizes

    pruner.save_pretrained(tmp_path / "smollm2-pruned")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "smollm2-pruned", dtype=torch.float32).eval()
    sample = wikipedia[1][:, :128]
    with torch.no_grad():
        assert torch.equal(pruner.model(sample).logits, reloaded(sample).logits)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "smollm2-pruned")
    assert tokenizer("Hello").input_ids == smollm2.tokenizer("Hello").input_ids


def test_smollm2_liar_beats_no_reconstruction(liar_pruned, smollm2, wikipedia, dense_perplexity):
    eval_ids = wikipedia[1]
    plain = _prune_ffn(smollm2, wikipedia[0], "none")
    results = {
        name: perplexity(p.model, input_ids=eval_ids, seqlen=512, max_windows=EVAL_WINDOWS)["perplexity"]
        for name, p in (("none", plain), ("liar", liar_pruned))
    }
    assert dense_perplexity < results["liar"] < results["none"], (dense_perplexity, results)
    # And the refit leaves a usable model: a broken solve gives thousands.
    assert results["liar"] < 8 * dense_perplexity, (dense_perplexity, results)


def test_smollm2_2_4_sparsegpt(smollm2, wikipedia, dense_perplexity, tmp_path):
    calibration, eval_ids = wikipedia
    pruner = _fresh(smollm2)
    config = PruningConfig(target="2:4", method="sparsegpt", num_samples=8, seqlen=256)
    pruner.prune(config, dataset=calibration, show_progress=False)
    for name, module in pruner.model.model.layers.named_modules():
        if isinstance(module, torch.nn.Linear):
            groups = module.weight.reshape(module.out_features, -1, 4)
            assert int((groups != 0).sum(-1).max()) <= 2, name
    pruned = perplexity(pruner.model, input_ids=eval_ids, seqlen=512, max_windows=EVAL_WINDOWS)["perplexity"]
    assert dense_perplexity < pruned < 6 * dense_perplexity, (dense_perplexity, pruned)


def test_minilm_heads_and_ffn_reload_identically(tmp_path):
    path = minilm_path()
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    pruner = PrunerForSequenceClassification(model, tokenizer)
    # 80 passages of about 100 tokens: enough tokens per kept channel for LIAR (it warns below 4).
    sentences = [article[start : start + 400] for article in wikipedia_split()[0][:40] for start in (0, 400)]
    config = PruningConfig(
        target="structured", sparsity=0.4, criterion="fluctuation", reconstruction="liar", num_samples=80, seqlen=128
    )
    pruner.prune(config, dataset=sentences, show_progress=False)
    assert pruner.summary["parameters_after"] < pruner.summary["parameters_before"]
    pruner.save_pretrained(tmp_path / "minilm-pruned")
    assert_saved_tensors_equal(pruner.model, tmp_path / "minilm-pruned")
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "minilm-pruned").eval()
    assert_state_dicts_equal(reloaded, pruner.model)
    batch = tokenizer(["a wonderful, moving film", "dull and far too long"], return_tensors="pt", padding=True)

    @torch.no_grad()
    def logits(m: torch.nn.Module) -> torch.Tensor:
        return m(**batch).logits

    # BERT logits are not bit-reproducible across a save/reload (see tests/reload_checks.py): compare within what the
    # dense model's own round trip shows.
    dense = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2, dtype=torch.float32).eval()
    tolerance = dense_reload_tolerance(dense, AutoModelForSequenceClassification, logits, tmp_path / "dense")
    difference = (logits(reloaded) - logits(pruner.model)).abs().max().item()
    assert difference <= tolerance, (difference, tolerance)
