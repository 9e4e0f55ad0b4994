"""criterion / recipe 'prunenet': the PruneNet reference implementation's policy (LCS2-IIITD/PruneNet)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_bert, tiny_llama, tiny_mamba

from optimum_prune import PrunerForCausalLM, PrunerForSequenceClassification, PruningConfig
from optimum_prune.architectures import get_adapter
from optimum_prune.criteria.prunenet import (
    DISCOUNT,
    PruneNet,
    SparsityPredictor,
    discounted_rewards,
    sample_without_replacement,
    spectral_reward,
    training_matrices,
)
from optimum_prune.criteria.prunenet_invariant import InvariantPruneNet, channel_features

INPUT_IDS = torch.tensor([[5, 17, 33, 48, 9, 60, 71, 12, 90, 33, 41, 7]])


def _config(**overrides) -> PruningConfig:
    settings = dict(target="structured", recipe="prunenet", sparsity=0.3, prunenet_episodes=3)
    settings.update(overrides)
    return PruningConfig(**settings)


def _kept(pruner) -> list[list[int]]:
    """The FFN channels each layer kept, found by matching the pruned gate_proj rows to the unpruned model's."""
    unpruned = tiny_llama()
    kept = []
    for layer, dense in zip(pruner.model.model.layers, unpruned.model.layers):
        rows = dense.mlp.gate_proj.weight
        kept.append([int((rows == row).all(1).nonzero()[0]) for row in layer.mlp.gate_proj.weight])
    return kept


def test_recipe_fills_the_reference_settings():
    config = _config()
    assert (config.criterion, config.structures, config.reconstruction) == ("prunenet", ["ffn_channels"], "none")


def test_policy_is_a_linear_map_of_the_raw_rows():
    torch.manual_seed(0)
    weight = torch.randn(24, 8)
    predictor = SparsityPredictor(24, 8, torch.Generator().manual_seed(1))
    logits = predictor.logits(weight)
    # By hand: (W P^T + b) v.
    by_hand = (
        weight @ predictor.proj_intermediate.weight.T + predictor.proj_intermediate.bias
    ) @ predictor.row_sparsities
    assert torch.allclose(logits, by_hand.squeeze(-1), atol=1e-5)
    # Affine in the rows: each row's logit depends on that row only, linearly.
    other = torch.randn(24, 8)
    zero = predictor.logits(torch.zeros(24, 8))
    assert torch.allclose(predictor.logits(weight + other), logits + predictor.logits(other) - zero, atol=1e-4)
    # Raw rows, not rotation-invariant features: rotating the input space changes the policy's logits, while the
    # rotation-invariant policy's features do not change.
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    assert not torch.allclose(predictor.logits(weight @ rotation), logits, atol=1e-3)
    assert torch.allclose(channel_features(weight @ rotation), channel_features(weight), atol=1e-4)
    with pytest.raises(ValueError, match=r"reads \[24, 8\] matrices"):
        predictor.logits(torch.randn(20, 8))


def test_keep_probabilities_are_the_relaxed_bernoulli_of_the_reference():
    weight = torch.randn(16, 6, generator=torch.Generator().manual_seed(2))
    predictor = SparsityPredictor(16, 6, torch.Generator().manual_seed(3))
    log_p = predictor.log_keep_probabilities(weight, torch.Generator().manual_seed(4))
    # The reference's expression: sigmoid(log u - log(1 - u) + log alpha - log(1 - alpha)), same uniform draw.
    u = torch.rand(16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    alpha = torch.sigmoid(predictor.logits(weight)).double()
    reference = torch.sigmoid(u.log() - (1 - u).log() + alpha.log() - (1 - alpha).log())
    assert torch.allclose(log_p.double().exp(), reference, atol=1e-5)


def test_channels_are_sampled_reproducibly_with_the_seed(tokenizer, tmp_path):
    path = tmp_path / "policy.safetensors"
    first = PrunerForCausalLM(tiny_llama(), tokenizer)
    first.prune(_config(prunenet_save_policy=str(path)), show_progress=False)
    again = PrunerForCausalLM(tiny_llama(), tokenizer)
    again.prune(_config(prunenet_policy_path=str(path)), show_progress=False)
    assert _kept(again) == _kept(first)

    # Same policy, other seed: other draws (a sample, not the most likely set).
    other = PrunerForCausalLM(tiny_llama(), tokenizer)
    other.prune(_config(prunenet_policy_path=str(path), seed=7), show_progress=False)
    assert _kept(other) != _kept(first)
    assert [len(k) for k in _kept(other)] == [len(k) for k in _kept(first)]

    # Drawn with probability proportional to p: rows with large keep logits are kept far more often than the rest.
    policy = PruneNet.load_policy(path)
    weight = get_adapter(tiny_llama()).layers()[0].mlp.gate_proj.weight.detach()
    predictor = policy.predictor_for(weight)
    direction = torch.randn(weight.shape[1], generator=torch.Generator().manual_seed(5))
    projection = weight @ direction
    top = torch.topk(projection, 9).values
    threshold = float(top[7] + top[8]) / 2
    with torch.no_grad():
        # v = e_0 and one row of the linear map: z_i = 20 (W_i . d - t) / spread, positive for the top 8 rows only.
        scale = 20.0 / float(projection.std())
        predictor.row_sparsities.zero_()
        predictor.row_sparsities[0] = 1.0
        predictor.proj_intermediate.weight[0] = scale * direction
        predictor.proj_intermediate.bias[0] = -scale * threshold
    favoured = torch.topk(projection, 8).indices
    counts = torch.zeros(weight.shape[0])
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        counts[sample_without_replacement(policy.log_keep_probabilities(weight, generator), 8, generator)] += 1
    others = torch.ones(weight.shape[0], dtype=torch.bool)
    others[favoured] = False
    assert counts[favoured].mean() > 10 * counts[others].mean()
    assert counts[others].sum() > 0  # still a draw: the others are kept now and then


def test_saved_policy_gives_the_same_plan_and_is_not_retrained(tokenizer, tmp_path, monkeypatch):
    path = tmp_path / "policy.safetensors"
    first = PrunerForCausalLM(tiny_llama(), tokenizer)
    first.prune(_config(sparsity=0.4, prunenet_save_policy=str(path)), show_progress=False)
    loaded = PruneNet.load_policy(path)
    assert loaded.settings["episodes"] == 3 and loaded.training_steps == 0
    calls = []
    monkeypatch.setattr(PruneNet, "train", lambda self, *a, **k: calls.append(1))
    second = PrunerForCausalLM(tiny_llama(), tokenizer)
    second.prune(_config(sparsity=0.4, prunenet_policy_path=str(path)), show_progress=False)
    assert calls == []
    assert _kept(second) == _kept(first)
    for a, b in zip(first.model.model.layers, second.model.model.layers):
        assert torch.equal(a.mlp.down_proj.weight, b.mlp.down_proj.weight)
    with torch.no_grad():
        assert torch.equal(first.model(INPUT_IDS).logits, second.model(INPUT_IDS).logits)


def test_reward_is_discounted_over_layers():
    assert discounted_rewards([2.0, 2.0, 4.0], 0.5) == [2.0, 1.0, 1.0]
    model = tiny_llama(num_hidden_layers=3)
    matrices = training_matrices(get_adapter(model), _config())
    criterion = PruneNet.untrained(matrices, seed=0)
    history = criterion.train(matrices, episodes=2, learning_rate=1e-3, sparsity=0.5, show_progress=False)
    episode = criterion.last_episode
    assert len(history) == 2 and history[-1] == pytest.approx(sum(episode["rewards"]))
    assert episode["discounted"] == pytest.approx([DISCOUNT**i * r for i, r in enumerate(episode["rewards"])])
    # Each reward is the reference's: 1 / KS distance of the kept rows' singular values to the whole matrix's.
    for weight, keep, reward in zip(matrices, episode["kept"], episode["rewards"]):
        assert len(keep) == int(0.5 * weight.shape[0])
        assert reward == pytest.approx(spectral_reward(weight, keep))
    assert criterion.training_steps == 2 * len(matrices)


def test_training_keeps_the_best_episode(monkeypatch):
    model = tiny_llama(num_hidden_layers=2)
    matrices = training_matrices(get_adapter(model), _config())
    criterion = PruneNet.untrained(matrices, seed=0)
    snapshots = []
    original = PruneNet.train

    rewards = iter([1.0, 1.0, 5.0, 5.0, 2.0, 2.0])  # episode totals 2, 10, 4: the second is best
    monkeypatch.setattr("optimum_prune.criteria.prunenet.spectral_reward", lambda *a, **k: next(rewards))
    step = torch.optim.AdamW.step

    def recording_step(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        snapshots.append({k: v.clone() for k, v in criterion.predictors.state_dict().items()})
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    original(criterion, matrices, episodes=3, learning_rate=1e-2, sparsity=0.5, show_progress=False)
    assert criterion.history == [2.0, 10.0, 4.0]
    # After episode 2 (4 steps: 2 layers x 2 episodes) the policy is the one kept, not the last one.
    best, last = snapshots[3], snapshots[-1]
    state = criterion.predictors.state_dict()
    assert all(torch.equal(state[k], best[k]) for k in state)
    assert not all(torch.equal(state[k], last[k]) for k in state)


def test_no_calibration_data_and_heads_fall_back_to_magnitude(tokenizer, monkeypatch):
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    monkeypatch.setattr(pruner, "calibration_samples", lambda *a, **k: pytest.fail("calibration data was read"))
    pruner.prune(_config(recipe=None, criterion="prunenet", reconstruction="none", sparsity=0.5), show_progress=False)
    assert pruner.summary["parameters_after"] < pruner.summary["parameters_before"]
    assert pruner.model.model.layers[0].self_attn.k_proj.out_features < 24  # heads went too (by magnitude)
    with torch.no_grad():
        assert torch.isfinite(pruner.model(INPUT_IDS).logits).all()


@pytest.mark.parametrize("factory,pruner_class", [(tiny_bert, PrunerForSequenceClassification), (tiny_mamba, None)])
def test_bert_and_mamba(factory, pruner_class, tokenizer):
    pruner = (pruner_class or PrunerForCausalLM)(factory(), tokenizer)
    pruner.prune(_config(recipe=None, criterion="prunenet", reconstruction="none"), show_progress=False)
    assert pruner.summary["parameters_after"] < pruner.summary["parameters_before"]


def test_policy_files_of_the_other_variant_are_refused(tokenizer, tmp_path):
    invariant_path, reference_path = tmp_path / "invariant.safetensors", tmp_path / "reference.safetensors"
    InvariantPruneNet.untrained(seed=0).save_policy(invariant_path)
    matrices = training_matrices(get_adapter(tiny_llama()), _config())
    PruneNet.untrained(matrices, seed=0).save_policy(reference_path)
    with pytest.raises(ValueError, match="prunenet_invariant"):
        PruneNet.load_policy(invariant_path)
    with pytest.raises(ValueError, match="criterion='prunenet'"):
        InvariantPruneNet.load_policy(reference_path)
    # A policy trained on other FFN widths: a clear error before any weight changes.
    narrow = PrunerForCausalLM(tiny_llama(intermediate_size=64), tokenizer)
    before = [p.clone() for p in narrow.model.parameters()]
    with pytest.raises(ValueError, match="tied to one shape"):
        narrow.prune(_config(prunenet_policy_path=str(reference_path)), show_progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, narrow.model.parameters()))
