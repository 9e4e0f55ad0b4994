"""Per-block sparsity of unstructured targets (issue 24): OWL against a hand computation, the OBS-error allocation,
the budget counted from the weights for every allocation x solver, overrides, and the refusals."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tokenizer, tiny_llama

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.allocation import allocate_by_error, obs_error_curve, owl_sparsities
from optimum_prune.unstructured import prunable_linears

METHODS = ["magnitude", "wanda", "sparsegpt", "admm", "obs_multi"]


def _config(texts, **fields) -> PruningConfig:
    return PruningConfig(**{"target": "unstructured", "dataset": texts, "num_samples": 4, "seqlen": 64, **fields})


def _planted_llama() -> torch.nn.Module:
    """A tiny LLaMA whose block 1 has a few huge weights: its Wanda scores have far more outliers."""
    model = tiny_llama(num_hidden_layers=4)
    with torch.no_grad():
        for linear in prunable_linears(model.model.layers[1], []).values():
            linear.weight[:, :3] *= 40.0
    return model


def _hand_owl(model: torch.nn.Module, samples, m: float, lam: float, sparsity: float) -> list[float]:
    """OWL as the paper's code computes it, written out independently: input norms over every calibration token
    from a plain forward of the dense model, |W| x norm per weight, outliers above m x the block mean, min-max scaled
    onto [0, 2 lam], centred, subtracted from the target."""
    model = copy.deepcopy(model).eval()
    squares: dict[torch.nn.Module, torch.Tensor] = {}

    def hook(module, args):
        x = args[0].detach().reshape(-1, module.in_features).double()
        squares[module] = squares.get(module, 0) + (x * x).sum(0)

    handles = [mod.register_forward_pre_hook(hook) for mod in model.modules() if isinstance(mod, torch.nn.Linear)]
    with torch.no_grad():
        for sample in samples:
            model(**sample)
    for handle in handles:
        handle.remove()
    ratios = []
    for layer in model.model.layers:
        scores = torch.cat(
            [
                (lin.weight.abs().double() * squares[lin].sqrt().unsqueeze(0)).flatten()
                for lin in prunable_linears(layer, []).values()
            ]
        )
        ratios.append(100.0 * float((scores > m * scores.mean()).sum()) / scores.numel())
    low, high = min(ratios), max(ratios)
    scaled = [(r - low) / (high - low) * 2 * lam for r in ratios]
    mean = sum(scaled) / len(scaled)
    return [sparsity - (s - mean) for s in scaled]


def _layer_zeros(model: torch.nn.Module) -> list[float]:
    result = []
    for layer in model.model.layers:
        weights = [lin.weight for lin in prunable_linears(layer, []).values()]
        result.append(sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights))
    return result


def test_owl_matches_a_hand_computation_on_planted_outliers(texts):
    model = _planted_llama()
    pruner = PrunerForCausalLM(copy.deepcopy(model), make_tokenizer())
    config = _config(texts, sparsity=0.6, method="wanda", allocation="owl", owl_m=5.0, owl_lambda=0.1)
    expected = _hand_owl(model, pruner.calibration_samples(config), 5.0, 0.1, 0.6)
    pruner.prune(config, show_progress=False)
    planned = pruner.summary["planned_layer_sparsity"]
    assert planned == pytest.approx(expected, abs=1e-6)
    # The planted block has the most outliers, so OWL keeps it densest, at the bottom of the range.
    assert min(range(4), key=lambda i: planned[i]) == 1
    assert planned[1] == pytest.approx(min(planned)) and max(planned) - min(planned) == pytest.approx(0.2)
    # And the weights carry the plan: each block within one weight per row of its planned sparsity.
    for achieved, wanted in zip(_layer_zeros(pruner.model), planned):
        assert achieved == pytest.approx(wanted, abs=1 / 32 + 1e-9)


@pytest.mark.parametrize("allocation", ["uniform", "owl", "obs"])
@pytest.mark.parametrize("method", METHODS)
def test_budget_holds_for_every_allocation_and_solver(method, allocation, texts):
    pruner = PrunerForCausalLM(_planted_llama(), make_tokenizer())
    pruner.prune(_config(texts, sparsity=0.6, method=method, allocation=allocation), show_progress=False)
    zeros = sum(
        int((lin.weight == 0).sum())
        for layer in pruner.model.model.layers
        for lin in prunable_linears(layer, []).values()
    )
    total = sum(
        lin.weight.numel() for layer in pruner.model.model.layers for lin in prunable_linears(layer, []).values()
    )
    # Each row removes floor(s x in_features) weights: at most one weight per row short of the target (in_features
    # of the tiny model: 32 or 64).
    assert 0.6 - 1 / 32 <= zeros / total <= 0.6 + 1e-9
    assert pruner.summary["sparsity_achieved"] == pytest.approx(zeros / total)
    assert pruner.summary["layer_sparsity"] == pytest.approx(_layer_zeros(pruner.model))
    if allocation != "uniform":
        assert len(set(round(s, 6) for s in pruner.summary["planned_layer_sparsity"])) > 1


@pytest.mark.parametrize("allocation", ["owl", "obs"])
def test_overrides_win_over_the_allocation(allocation, texts):
    pruner = PrunerForCausalLM(_planted_llama(), make_tokenizer())
    config = _config(
        texts,
        sparsity=0.6,
        method="sparsegpt",
        allocation=allocation,
        layer_overrides={"2": {"sparsity": 0.25}},
        module_sparsity={"down_proj": 0.5},
    )
    pruner.prune(config, show_progress=False)
    layer = pruner.model.model.layers[2]
    for name, linear in prunable_linears(layer, []).items():
        wanted = 0.5 if "down_proj" in name else 0.25
        assert float((linear.weight == 0).float().mean()) == pytest.approx(wanted, abs=1 / 32)
    for other in (0, 1, 3):
        down = pruner.model.model.layers[other].mlp.down_proj.weight
        assert float((down == 0).float().mean()) == pytest.approx(0.5, abs=1 / 64)


def test_n_m_and_structured_refuse_other_allocations():
    with pytest.raises(ValueError, match="N:M target '2:4'") as error:
        PruningConfig(target="2:4", allocation="owl")
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="unstructured targets take"):
        PruningConfig(target="unstructured", allocation="global")
    with pytest.raises(ValueError, match="structured targets take"):
        PruningConfig(target="structured", allocation="owl")
    with pytest.raises(ValueError, match="owl_lambda"):
        PruningConfig(target="unstructured", allocation="owl", owl_lambda=1.5)


def test_owl_range_that_leaves_zero_to_one_is_refused_before_weights_change(texts):
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    before = {k: v.clone() for k, v in pruner.model.state_dict().items()}
    with pytest.raises(ValueError, match="lower owl_lambda"):
        pruner.prune(
            _config(texts, sparsity=0.95, method="wanda", allocation="owl", owl_lambda=0.08), show_progress=False
        )
    assert all(torch.equal(before[k], v) for k, v in pruner.model.state_dict().items())


def test_owl_sparsities_formula():
    assert owl_sparsities([1.0, 1.0, 1.0], 0.7, 0.08) == [0.7, 0.7, 0.7]
    result = owl_sparsities([0.0, 1.0, 3.0], 0.7, 0.08)  # scaled: 0, 0.0533, 0.16; mean 0.0711
    assert result == pytest.approx(
        [0.7 + 0.16 / 3 + 0.0533333 / 3, 0.7 - 0.0533333 + 0.0711111, 0.7 - 0.16 + 0.0711111]
    )
    assert sum(result) / 3 == pytest.approx(0.7)


def test_obs_error_curve_with_a_diagonal_gram_is_the_sorted_saliency_sum():
    weight = torch.tensor([[1.0, -2.0, 3.0, 0.5], [4.0, 1.0, -1.0, 2.0]])
    diagonal = torch.tensor([1.0, 2.0, 0.5, 4.0], dtype=torch.float64)
    grid = torch.tensor([0.0, 0.25, 0.5, 0.75])
    curve = obs_error_curve(weight, torch.diag(diagonal), damp=0.0, grid=grid)
    saliency = weight.double() ** 2 * diagonal  # w^2 / [H^-1]_jj with H diagonal
    energy = float(saliency.sum())
    ordered = saliency.sort(dim=1).values
    expected = [0.0] + [float(ordered[:, :k].sum()) / energy for k in (1, 2, 3)]
    assert curve.tolist() == pytest.approx(expected)


def test_allocate_by_error_equalises_marginal_errors_under_the_budget():
    grid = torch.arange(0, 1000, dtype=torch.float64) / 1000
    # Block l's error a_l s^2: the optimum puts s_l proportional to 1 / a_l (equal marginal 2 a_l s_l).
    scales = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    errors = scales.unsqueeze(1) * grid.unsqueeze(0) ** 2
    chosen = allocate_by_error(errors, [100, 100, 100], grid, 0.5, max_deviation=0.4)
    expected = [0.5 * 3 / (1 + 0.5 + 0.25) * f for f in (1.0, 0.5, 0.25)]
    assert chosen == pytest.approx(expected, abs=0.004)
    assert sum(chosen) / 3 == pytest.approx(0.5, abs=1e-9)
    bounded = allocate_by_error(errors, [100, 100, 100], grid, 0.5, max_deviation=0.1)
    assert min(bounded) >= 0.4 - 1e-9 and max(bounded) <= 0.6 + 1e-9
    assert sum(bounded) / 3 == pytest.approx(0.5, abs=1e-9)
    # Unequal sizes: the budget is over weights, not blocks.
    sized = allocate_by_error(errors, [300, 100, 100], grid, 0.5, max_deviation=0.4)
    assert (300 * sized[0] + 100 * sized[1] + 100 * sized[2]) / 500 == pytest.approx(0.5, abs=1e-9)


def test_plan_of_an_allocation_reads_data_and_matches_the_run(texts):
    model = _planted_llama()
    pruner = PrunerForCausalLM(copy.deepcopy(model), make_tokenizer())
    config = _config(texts, sparsity=0.6, method="sparsegpt", allocation="obs")
    plan = pruner.plan(config, show_progress=False)
    assert plan.reads == ["config", "weights", "data"]
    with pytest.raises(ValueError, match="reads calibration data"):
        PrunerForCausalLM(copy.deepcopy(model), make_tokenizer()).plan(
            _config(None, sparsity=0.6, method="sparsegpt", allocation="owl"), show_progress=False
        )
    pruner.prune(config, show_progress=False)
    for entry in plan.layers:
        layer = pruner.model.model.layers[entry["layer"]]
        for name, fraction in entry["modules"].items():
            weight = layer.get_submodule(name).weight
            assert float((weight == 0).float().mean()) == pytest.approx(fraction)
    assert plan.sparsity == pytest.approx(pruner.summary["sparsity_achieved"])


def test_model_card_lists_each_block_counted_from_the_weights(texts):
    from optimum_prune.serialization.hub import create_model_card

    pruner = PrunerForCausalLM(_planted_llama(), make_tokenizer())
    config = _config(texts, sparsity=0.6, method="wanda", allocation="owl")
    pruner.prune(config, show_progress=False)
    card = str(
        create_model_card(
            base_model=None, pipeline_tag="text-generation", pruning_config=config.to_dict(), summary=pruner.summary
        )
    )
    assert "### Per-block sparsity (allocation: owl)" in card
    for index, value in enumerate(_layer_zeros(pruner.model)):
        assert f"| {index} | {value:.2%} |" in card
