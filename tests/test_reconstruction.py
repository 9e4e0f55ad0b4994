"""LIAR must beat bias compensation, which must beat plain removal, on the layer it refits."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_llama

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.pipeline.statistics import InputStatistics
from optimum_prune.reconstruction import RECONSTRUCTIONS
from optimum_prune.reconstruction.liar import solve_interpolation


def _correlated_inputs(tokens: int = 4096, features: int = 32, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(tokens, 12, generator=generator)
    mixing = torch.randn(12, features, generator=generator)
    return latent @ mixing + 0.3 * torch.randn(tokens, features, generator=generator) + 0.5


def _layer_error(
    name: str, linear: torch.nn.Linear, x: torch.Tensor, kept: torch.Tensor, pruned: torch.Tensor
) -> float:
    stats = InputStatistics(x.shape[1], with_gram=True)
    stats.update(x)
    target = linear(x)
    refit = copy.deepcopy(linear)
    RECONSTRUCTIONS[name].refit(refit, stats, kept, pruned, 1e-6)
    kept_out = x[:, kept] @ refit.weight[:, kept].T + (refit.bias if refit.bias is not None else 0)
    return (target - kept_out).pow(2).sum().item() / target.pow(2).sum().item()


def test_liar_beats_bias_beats_none_on_a_linear_layer():
    torch.manual_seed(0)
    x = _correlated_inputs()
    linear = torch.nn.Linear(32, 16)
    kept, pruned = torch.arange(0, 32, 2), torch.arange(1, 32, 2)
    errors = {name: _layer_error(name, linear, x, kept, pruned) for name in ("none", "bias", "liar", "admm")}
    assert errors["liar"] < errors["bias"] < errors["none"], errors
    # ADMM iterates towards the same least-squares optimum that LIAR solves in closed form.
    assert errors["admm"] < errors["bias"] and errors["admm"] <= 1.05 * errors["liar"], errors
    assert errors["liar"] < 0.25 * errors["bias"], errors  # inputs are low-rank: kept channels predict pruned ones


def test_liar_matches_least_squares_with_intercept():
    x = _correlated_inputs(features=10)
    kept, pruned = torch.tensor([0, 2, 3, 5, 7, 8]), torch.tensor([1, 4, 6, 9])
    stats = InputStatistics(10, with_gram=True)
    stats.update(x)
    q, p = solve_interpolation(stats, kept, pruned, damp=0.0)
    design = torch.cat([x[:, kept], torch.ones(x.shape[0], 1)], 1).double()
    reference = torch.linalg.lstsq(design, x[:, pruned].double()).solution
    # The Gram matrix is multiplied in float32 (then summed in float64), hence the float32-level tolerance.
    torch.testing.assert_close(q, reference[:-1], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(p, reference[-1], rtol=1e-4, atol=1e-5)


def test_augmented_gram_is_the_gram_of_inputs_with_a_constant_column():
    x = _correlated_inputs(tokens=256, features=6)
    stats = InputStatistics(6, with_gram=True)
    stats.update(x[:100])
    stats.update(x[100:])  # accumulated over batches, as calibration does
    design = torch.cat([x, torch.ones(x.shape[0], 1)], 1).double()
    torch.testing.assert_close(stats.augmented_gram(), design.T @ design, rtol=1e-5, atol=1e-3)
    with pytest.raises(ValueError, match="with_gram=True"):
        InputStatistics(6).augmented_gram()


def test_liar_adds_bias_only_where_needed(tokenizer, texts):
    # Only the MLP of layer 1 is pruned: only its down_proj may gain a bias.
    overrides = {"0": {"sparsity": 0.0}, "2": {"sparsity": 0.0}}
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)  # sizes differ per layer: no plain-config rewrite
    config = PruningConfig(
        sparsity=0.4, structures=["ffn_channels"], dataset=texts, num_samples=4, seqlen=64, layer_overrides=overrides
    )
    pruner.prune(config, show_progress=False)
    added = [layer["added_biases"] for layer in pruner.summary["layers"]]
    assert added == [[], ["mlp.down_proj"], []]


@pytest.mark.parametrize("sparsity", [0.25, 0.5])
def test_liar_lowers_model_output_error(tokenizer, texts, sparsity):
    """On the whole tiny model, against the unpruned logits on calibration-like text."""
    ids = tokenizer(texts[0][:200], return_tensors="pt").input_ids
    reference = tiny_llama()(ids).logits
    errors = {}
    for name in ("none", "bias", "liar", "admm"):
        pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
        config = PruningConfig(
            sparsity=sparsity,
            criterion="magnitude",
            reconstruction=name,
            structures=["ffn_channels"],
            dataset=texts,
            num_samples=8,
            seqlen=64,
        )
        with torch.no_grad():
            errors[name] = (pruner.prune(config, show_progress=False)(ids).logits - reference).pow(2).mean().item()
    assert errors["liar"] < errors["none"] and errors["bias"] < errors["none"], errors
    assert errors["admm"] < errors["none"], errors


def test_liar_warns_users_about_too_few_calibration_tokens():
    """The warning the test suite filters out (pyproject.toml: tiny test models run on a few tokens on purpose) still
    reaches users: below 4 tokens per kept channel, and not above."""
    import warnings

    from optimum_prune.reconstruction.liar import MIN_TOKENS_PER_KEPT_CHANNEL

    linear = torch.nn.Linear(32, 8)
    kept, pruned = torch.arange(0, 32, 2), torch.arange(1, 32, 2)
    for tokens, should_warn in (
        (MIN_TOKENS_PER_KEPT_CHANNEL * 16 - 1, True),
        (MIN_TOKENS_PER_KEPT_CHANNEL * 16, False),
    ):
        stats = InputStatistics(32, with_gram=True)
        stats.update(_correlated_inputs(tokens=tokens))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            RECONSTRUCTIONS["liar"].refit(copy.deepcopy(linear), stats, kept, pruned, 0.01)
        messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        assert any("LIAR fits each pruned channel" in m for m in messages) == should_warn, (tokens, messages)
