"""prunenet_invariant: calibration-free structured pruning from a rotation-invariant policy learnt on the weights."""

from __future__ import annotations

import warnings

import pytest
import torch
from conftest import tiny_bert, tiny_llama, tiny_mamba

from optimum_prune import PrunerForCausalLM, PrunerForSequenceClassification, PruningConfig
from optimum_prune.architectures import get_adapter
from optimum_prune.criteria.prunenet_invariant import InvariantPruneNet as PruneNet
from optimum_prune.criteria.prunenet_invariant import (
    ks_distance,
    plackett_luce_log_prob,
    sample_without_replacement,
    singular_values,
    spectral_reward,
    training_matrices,
)

INPUT_IDS = torch.tensor([[5, 17, 33, 48, 9, 60, 71, 12, 90, 33, 41, 7]])


def _config(**overrides) -> PruningConfig:
    settings = dict(
        target="structured",
        criterion="prunenet_invariant",
        reconstruction="none",
        sparsity=0.3,
        structures=["ffn_channels"],
        prunenet_episodes=5,
    )
    settings.update(overrides)
    return PruningConfig(**settings)


class _NoData(list):
    """A stand-in that fails the test if anything reads calibration data."""

    def __iter__(self):
        raise AssertionError("calibration data was read")


def test_no_calibration_data_is_touched(tokenizer, monkeypatch):
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)

    def refuse(*args, **kwargs):
        raise AssertionError("calibration samples were requested")

    monkeypatch.setattr(pruner, "calibration_samples", refuse)
    before = pruner.model.model.layers[0].mlp.gate_proj.out_features
    pruner.prune(_config(), show_progress=False)
    after = pruner.model.model.layers[0].mlp.gate_proj.out_features
    assert after < before
    with torch.no_grad():
        assert torch.isfinite(pruner.model(INPUT_IDS).logits).all()


def test_deterministic_for_a_seed(tokenizer):
    def kept(seed: int) -> tuple[torch.Tensor, list[int]]:
        pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
        pruner.prune(_config(seed=seed), show_progress=False)
        with torch.no_grad():
            logits = pruner.model(INPUT_IDS).logits
        return logits, [layer["intermediate_size"] for layer in pruner.summary["layers"]]

    first, sizes = kept(0)
    second, _ = kept(0)
    assert torch.equal(first, second)
    assert all(size < 96 for size in sizes)


def test_learned_policy_beats_random_choices():
    model = tiny_llama(seed=3, intermediate_size=128, num_hidden_layers=2)
    adapter = get_adapter(model)
    config = _config(sparsity=0.5)
    matrices = training_matrices(adapter, config)
    # Give some rows a larger scale so that which rows are kept matters for the spectrum.
    with torch.no_grad():
        for weight in matrices:
            weight[::4] *= 4.0
    criterion = PruneNet.untrained(seed=0)
    history = criterion.train(matrices, episodes=40, learning_rate=0.05, sparsity=0.5, show_progress=False)
    assert len(history) == 40

    generator = torch.Generator().manual_seed(1)
    learned, random_mean = [], []
    for weight in matrices:
        keep_count = weight.shape[0] // 2
        reference = singular_values(weight)
        learned_keep = torch.topk(criterion.channel_scores(weight), keep_count).indices
        learned.append(spectral_reward(weight, learned_keep, reference))
        random_rewards = [
            spectral_reward(weight, torch.randperm(weight.shape[0], generator=generator)[:keep_count], reference)
            for _ in range(64)
        ]
        random_mean.append(sum(random_rewards) / len(random_rewards))
    assert sum(learned) / len(learned) > sum(random_mean) / len(random_mean)


def test_saved_policy_is_reused_for_other_ratios_without_training(tokenizer, tmp_path):
    path = tmp_path / "policy.safetensors"
    first = PrunerForCausalLM(tiny_llama(), tokenizer)
    first.prune(_config(sparsity=0.25, prunenet_save_policy=str(path)), show_progress=False)
    assert path.is_file()

    loaded = PruneNet.load_policy(path)
    weight = get_adapter(tiny_llama()).layers()[0].mlp.gate_proj.weight
    assert loaded.settings["episodes"] == 5
    assert loaded.training_steps == 0
    scores = loaded.channel_scores(weight)

    # Another compression ratio of the same model: the policy ranks, nothing is trained.
    second = PrunerForCausalLM(tiny_llama(), tokenizer)
    calls = []
    original_train = PruneNet.train
    PruneNet.train = lambda self, *a, **k: calls.append(1) or original_train(self, *a, **k)
    try:
        second.prune(_config(sparsity=0.5, prunenet_policy_path=str(path)), show_progress=False)
    finally:
        PruneNet.train = original_train
    assert calls == []
    kept_width = second.model.model.layers[0].mlp.gate_proj.out_features
    assert kept_width == 48
    # The kept channels are the top half by the saved policy's scores.
    expected_rows = weight[torch.sort(torch.topk(scores, 48).indices).values]
    assert torch.allclose(second.model.model.layers[0].mlp.gate_proj.weight, expected_rows)


def test_policy_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="No PruneNet policy"):
        PruneNet.load_policy(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file

    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(1)}, str(other))
    with pytest.raises(ValueError, match="not a PruneNet policy"):
        PruneNet.load_policy(other)


@pytest.mark.parametrize("factory,pruner_class", [(tiny_bert, PrunerForSequenceClassification), (tiny_mamba, None)])
def test_bert_and_mamba(factory, pruner_class, tokenizer):
    pruner = (pruner_class or PrunerForCausalLM)(factory(), tokenizer)
    pruner.prune(_config(structures=None), show_progress=False)
    assert pruner.summary["parameters_after"] < pruner.summary["parameters_before"]


def test_liar_without_data_falls_back_to_none_with_a_warning(tokenizer):
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    with pytest.warns(UserWarning, match="calibration-free.*reconstruction='none'"):
        pruner.prune(_config(reconstruction="liar"), show_progress=False)
    assert pruner.summary["parameters_after"] < pruner.summary["parameters_before"]


def test_liar_with_data_refits(tokenizer, texts):
    def down_proj(reconstruction: str) -> torch.Tensor:
        pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
        config = _config(reconstruction=reconstruction, dataset=texts, num_samples=4, seqlen=32)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pruner.prune(config, show_progress=False)
        # With data there is no fallback to reconstruction='none'.
        assert not [w for w in caught if "calibration-free" in str(w.message)]
        return pruner.model.model.layers[0].mlp.down_proj.weight

    refit, plain = down_proj("liar"), down_proj("none")
    # Same channels kept (the policy reads no data), but LIAR folded the pruned channels into the kept columns.
    assert refit.shape == plain.shape
    assert not torch.allclose(refit, plain)


def test_sampling_helpers():
    logits = torch.tensor([3.0, 0.0, -1.0, 2.0], dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    counts = torch.zeros(4)
    for _ in range(2000):
        counts[sample_without_replacement(logits, 1, generator)] += 1
    # One draw from Gumbel-top-1 is a softmax draw.
    assert torch.allclose(counts / 2000, torch.softmax(logits, 0).float(), atol=0.04)
    # Plackett-Luce: the probabilities of all orders of 2 items out of 3 sum to one.
    small = torch.tensor([0.5, -0.2, 1.0], dtype=torch.float64)
    total = sum(
        plackett_luce_log_prob(small, torch.tensor([i, j])).exp() for i in range(3) for j in range(3) if i != j
    )
    assert abs(float(total) - 1.0) < 1e-9
    a = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    assert float(ks_distance(a, a)) == 0.0
    assert float(ks_distance(a, a + 10)) == 1.0
