"""Issue 13 pieces on tiny models: allocation without rounding overshoot, FLAP / OBS allocation, the OBS cost,
the error-correcting refit, depth pruning, recipes."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import TEXT, make_tokenizer, tiny_llama
from torch import nn

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.allocation import global_plan, uniform_layer_plan, uniform_plan
from optimum_prune.architectures import UnitGroup, get_adapter
from optimum_prune.criteria.obs import OBSCriterion, augmented_inverse_gram, greedy_obs, set_cost
from optimum_prune.depth import LinearBridge, block_influence
from optimum_prune.pipeline.layerwise import capture_block_inputs, run_block
from optimum_prune.pipeline.statistics import InputStatistics
from optimum_prune.reconstruction import RECONSTRUCTIONS
from optimum_prune.serialization.layout import LAYOUT_KEY


def _stats(x: torch.Tensor, with_gram: bool = True) -> InputStatistics:
    stats = InputStatistics(x.shape[1], with_gram=with_gram)
    stats.update(x)
    return stats


def _correlated_inputs(tokens: int = 400, features: int = 12, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(tokens, 5, generator=g)
    mix = torch.randn(5, features, generator=g)
    return (base @ mix + 0.3 * torch.randn(tokens, features, generator=g) + 0.5).float()


# ---- allocation -----------------------------------------------------------------------------------------------------
def test_uniform_plan_never_overshoots_coarse_units():
    # 3 KV groups as in SmolLM2: 20% must not strip a whole group (a third of attention); the FFN absorbs it all.
    heads = UnitGroup("attention_heads", 3, 192, 294_912, ("self_attn.o_proj",))
    ffn = UnitGroup("ffn_channels", 1536, 1, 1728, ("mlp.down_proj",))
    total = 3 * 294_912 + 1536 * 1728
    for sparsity, expected_heads in ((0.2, 3), (0.3, 3), (0.5, 2)):
        plan = uniform_layer_plan([heads, ffn], sparsity, 1, {})
        assert plan["attention_heads"] == expected_heads
        removed = (3 - plan["attention_heads"]) * 294_912 + (1536 - plan["ffn_channels"]) * 1728
        assert abs(removed - sparsity * total) <= 1728 / 2


def test_protect_layers_keeps_first_and_last_dense_and_meets_budget():
    model = tiny_llama(num_hidden_layers=4)
    adapter = get_adapter(model)
    config = PruningConfig(sparsity=0.3, protect_layers=[0, -1], structures=["ffn_channels"])
    plans = uniform_plan(adapter, ("ffn_channels",), config)
    assert plans[0]["ffn_channels"] == 96 and plans[3]["ffn_channels"] == 96
    removed = sum(96 - p["ffn_channels"] for p in plans)
    assert abs(removed - 0.3 * 4 * 96) <= 2


def test_flap_allocation_standardises_per_layer():
    """Scaling one layer's scores changes nothing under FLAP's per-layer standardisation (it does when pooled)."""
    model = tiny_llama(num_hidden_layers=3)
    adapter = get_adapter(model)
    kinds = ("ffn_channels",)
    config = PruningConfig(sparsity=0.4, structures=["ffn_channels"], min_keep_fraction=0.05)
    g = torch.Generator().manual_seed(0)
    scores = [{"ffn_channels": torch.rand(96, 1, generator=g, dtype=torch.float64) * (i + 1)} for i in range(3)]
    scaled = [{"ffn_channels": s["ffn_channels"] * (100.0 if i == 0 else 1.0)} for i, s in enumerate(scores)]
    flap = global_plan(adapter, kinds, config, scores, mode="flap")
    assert flap == global_plan(adapter, kinds, config, scaled, mode="flap")
    pooled = [{"ffn_channels": s["ffn_channels"].squeeze(1)} for s in scores]
    pooled_scaled = [{"ffn_channels": s["ffn_channels"].squeeze(1)} for s in scaled]
    assert global_plan(adapter, kinds, config, pooled) != global_plan(adapter, kinds, config, pooled_scaled)
    assert abs(sum(96 - p["ffn_channels"] for p in flap) - 0.4 * 3 * 96) <= 1


def test_obs_allocation_takes_cheap_layers_first():
    model = tiny_llama(num_hidden_layers=2)
    adapter = get_adapter(model)
    config = PruningConfig(sparsity=0.25, structures=["ffn_channels"], min_keep_fraction=0.05)
    cheap = torch.linspace(0.0, 1.0, 86, dtype=torch.float64)
    costly = cheap + 10.0
    plans = global_plan(
        adapter, ("ffn_channels",), config, [{"ffn_channels": costly}, {"ffn_channels": cheap}], mode="obs"
    )
    assert plans[0]["ffn_channels"] == 96 and plans[1]["ffn_channels"] == 96 - 48


@pytest.mark.parametrize("mode", ["global", "obs"])
def test_global_allocations_fill_what_query_head_rounding_leaves(mode, monkeypatch):
    """Query heads keep a multiple of the KV groups per layer; the budget that rounding leaves goes to FFN channels
    (SmolLM2 with query heads had 4% fewer parameters removed than asked at 20% under the OBS allocation)."""
    heads = UnitGroup("query_heads", 9, 64, 73_728, ("self_attn.o_proj",), keep_multiple=3)
    ffn = UnitGroup("ffn_channels", 1536, 1, 1728, ("mlp.down_proj",))

    class Adapter:
        def layers(self):
            return [object()] * 4

        def groups(self, _layer):
            return [heads, ffn]

    g = torch.Generator().manual_seed(0)
    scores = [
        {
            "query_heads": torch.rand(9, generator=g, dtype=torch.float64) * 3,
            "ffn_channels": torch.rand(1536, generator=g, dtype=torch.float64),
        }
        for _ in range(4)
    ]
    if mode == "obs":  # per-unit step costs in removal order
        scores = [{k: v.sort().values for k, v in layer.items()} for layer in scores]
    kinds = ("query_heads", "ffn_channels")
    total = 4 * (9 * 73_728 + 1536 * 1728)
    for sparsity in (0.2, 0.3, 0.5):
        config = PruningConfig(sparsity=sparsity, structures=list(kinds))
        plans = global_plan(Adapter(), kinds, config, scores, mode=mode)
        assert all(p["query_heads"] % 3 == 0 for p in plans)
        removed = sum((9 - p["query_heads"]) * 73_728 + (1536 - p["ffn_channels"]) * 1728 for p in plans)
        assert abs(removed - sparsity * total) <= 1728 / 2, (sparsity, removed / total)


# ---- OBS cost -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels_per_unit", [1, 3])
def test_obs_cost_equals_error_after_liar_refit(channels_per_unit):
    x = _correlated_inputs()
    stats = _stats(x)
    linear = nn.Linear(12, 7)
    torch.manual_seed(1)
    nn.init.normal_(linear.weight)
    dense_out = linear(x).double()
    units = torch.tensor([1, 3])
    pruned = (units[:, None] * channels_per_unit + torch.arange(channels_per_unit)).reshape(-1)
    kept = torch.tensor(sorted(set(range(12)) - set(pruned.tolist())))
    cost = set_cost(linear.weight.detach(), augmented_inverse_gram(stats, 0.0), pruned)
    refit = copy.deepcopy(linear).double()
    RECONSTRUCTIONS["liar"].refit(refit, stats, kept, pruned, 0.0)
    measured = (refit.weight[:, kept] @ x.double()[:, kept].T + refit.bias[:, None]).T - dense_out
    # Equal up to the float32 accumulation of the Gram matrix.
    assert cost.item() == pytest.approx(measured.pow(2).sum().item(), rel=1e-5)


def test_greedy_obs_steps_add_up_to_the_cost_of_the_removed_set():
    x = _correlated_inputs(features=16)
    stats = _stats(x)
    weight = torch.randn(5, 16, generator=torch.Generator().manual_seed(2))
    result = greedy_obs(weight, stats, channels_per_unit=2, damp=0.0, steps=8)
    assert sorted(result.order + result.remaining) == list(range(8))
    removed = torch.tensor(result.order)
    channels = (removed[:, None] * 2 + torch.arange(2)).reshape(-1)
    total = set_cost(weight, augmented_inverse_gram(stats, 0.0), channels).item()
    assert sum(result.step_costs) == pytest.approx(total, rel=1e-6)
    # The first unit removed is the cheapest single unit.
    singles = [
        set_cost(weight, augmented_inverse_gram(stats, 0.0), torch.tensor([2 * u, 2 * u + 1])) for u in range(8)
    ]
    assert result.order[0] == int(torch.stack(singles).argmin())


@pytest.mark.parametrize("channels_per_unit", [1, 4])
def test_greedy_obs_cut_short_takes_the_full_runs_first_steps(channels_per_unit):
    # The ranking for a known keep count stops the greedy early (OBSCriterion.select_units): the steps it takes,
    # several units each here, must be exactly the full run's, and the working matrices are compacted as it goes.
    generator = torch.Generator().manual_seed(channels_per_unit)
    n = 300 * channels_per_unit if channels_per_unit == 1 else 160
    stats = _stats(torch.randn(800, n, generator=generator) * torch.rand(n, generator=generator))
    weight = torch.randn(24, n, generator=generator)
    full = greedy_obs(weight, stats, channels_per_unit, damp=0.01)
    units = n // channels_per_unit
    for stop in (1, units // 5, units // 2 + 1, int(0.9 * units)):
        cut = greedy_obs(weight, stats, channels_per_unit, damp=0.01, stop_after=stop)
        assert len(cut.order) >= stop
        assert cut.order == full.order[: len(cut.order)]
        assert cut.step_costs == full.step_costs[: len(cut.order)]
        assert sorted(cut.order + cut.remaining) == list(range(units))
    # Past the full run's limit nothing is cut: the rest is ranked by cost, as without stop_after.
    assert greedy_obs(weight, stats, channels_per_unit, damp=0.01, stop_after=units - 1) == full


def test_obs_select_units_equals_the_full_rankings_selection():
    model = tiny_llama(intermediate_size=320)
    adapter = get_adapter(model)
    layer = adapter.layers()[0]
    criterion = OBSCriterion(0.01)
    generator = torch.Generator()
    for group in adapter.groups(layer):
        x = torch.randn(600, layer.get_submodule(group.consumers[0]).in_features, generator=generator.manual_seed(3))
        stats = {name: _stats(x) for name in group.consumers}
        full = criterion.score_units(adapter, layer, group, stats, generator)
        for keep in range(1, group.num_units, max(1, group.num_units // 7)):
            if keep % group.keep_multiple:
                continue
            expected = adapter.select_units(group, full, keep)
            assert torch.equal(criterion.select_units(adapter, layer, group, stats, generator, keep), expected)


# ---- error-correcting refit and depth pruning -----------------------------------------------------------------------
def _samples(count: int = 6, seqlen: int = 48) -> list[dict[str, torch.Tensor]]:
    ids = make_tokenizer()(TEXT, add_special_tokens=False, return_tensors="pt").input_ids[0]
    return [{"input_ids": ids[i * seqlen : (i + 1) * seqlen][None]} for i in range(count)]


@torch.no_grad()
def _final_hidden_error(pruned: nn.Module, dense: nn.Module, samples) -> float:
    error = 0.0
    for sample in samples:
        a = pruned.model(**sample).last_hidden_state
        b = dense.model(**sample).last_hidden_state
        error += float((a - b).pow(2).sum())
    return error


def _pruner(model: nn.Module, **kwargs) -> PrunerForCausalLM:
    pruner = PrunerForCausalLM(model, make_tokenizer())
    config = PruningConfig(target="structured", num_samples=8, seqlen=48, seed=0, **kwargs)
    pruner.prune(config, dataset=[TEXT], show_progress=False)
    return pruner


def _prune(model: nn.Module, **kwargs) -> nn.Module:
    return _pruner(model, **kwargs).model


def test_dense_target_refit_lowers_error_against_dense_model():
    dense = tiny_llama(num_hidden_layers=3)
    samples = _samples()
    liar = _prune(copy.deepcopy(dense), sparsity=0.4, reconstruction="liar", structures=["ffn_channels"])
    corrected = _prune(copy.deepcopy(dense), sparsity=0.4, reconstruction="liar_dense", structures=["ffn_channels"])
    assert _final_hidden_error(corrected, dense, samples) < _final_hidden_error(liar, dense, samples)


def test_dense_target_refit_equals_liar_on_identical_streams():
    x = _correlated_inputs()
    stats = _stats(x)
    stats.update_cross(x, x)
    a, b = nn.Linear(12, 7).double(), None
    b = copy.deepcopy(a)
    kept, pruned = torch.arange(8), torch.arange(8, 12)
    RECONSTRUCTIONS["liar"].refit(a, stats, kept, pruned, 0.01)
    RECONSTRUCTIONS["liar_dense"].refit(b, stats, kept, pruned, 0.01)
    torch.testing.assert_close(a.weight[:, kept], b.weight[:, kept])
    torch.testing.assert_close(a.bias, b.bias)


def test_depth_pruning_removes_lowest_influence_blocks_and_shrinks_config():
    dense = tiny_llama(num_hidden_layers=5)
    samples = _samples()
    inputs = capture_block_inputs(dense, dense.model.layers[0], samples)
    influence = []
    for layer in dense.model.layers:
        outputs = run_block(layer, inputs)
        influence.append(sum(block_influence(a.hidden_states, b.hidden_states) for a, b in zip(inputs, outputs)))
        inputs = outputs
    expected_removed = sorted(sorted(range(5), key=lambda i: influence[i])[:2])
    pruned = _prune(copy.deepcopy(dense), sparsity=0.4, recipe="shortgpt")
    assert pruned.config.num_hidden_layers == 3 and len(pruned.model.layers) == 3
    kept = [i for i in range(5) if i not in expected_removed]
    for new, old in zip(pruned.model.layers, kept):
        torch.testing.assert_close(new.mlp.down_proj.weight, dense.model.layers[old].mlp.down_proj.weight)
    assert [layer.self_attn.layer_idx for layer in pruned.model.layers] == [0, 1, 2]
    assert pruned.config.pruning["requires_plugin"] is False  # plain transformers loads it
    # Generation with a KV cache runs on the shortened model.
    pruned.generate(samples[0]["input_ids"][:, :8], max_new_tokens=3, do_sample=False)


def test_depth_linear_bridge_lowers_error_against_plain_removal(tmp_path):
    dense = tiny_llama(num_hidden_layers=5)
    samples = _samples()
    plain = _prune(copy.deepcopy(dense), sparsity=0.4, recipe="shortgpt")
    pruner = _pruner(copy.deepcopy(dense), sparsity=0.4, recipe="shortgpt_linear")
    bridged = pruner.model
    assert any(isinstance(layer, LinearBridge) for layer in bridged.model.layers)
    assert _final_hidden_error(bridged, dense, samples) < _final_hidden_error(plain, dense, samples)
    # Bridges reload through the plugin, exactly.
    pruner.save_pretrained(tmp_path)
    assert getattr(bridged.config, LAYOUT_KEY)["requires_plugin"] is True
    from transformers import AutoModelForCausalLM

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = samples[0]["input_ids"]
    torch.testing.assert_close(reloaded(ids).logits, bridged(ids).logits)


def _tiny_ssm(family: str, dtype: torch.dtype) -> nn.Module:
    from transformers import FalconMambaConfig, FalconMambaForCausalLM, MambaConfig, MambaForCausalLM

    model_class, config_class = {
        "mamba": (MambaForCausalLM, MambaConfig),
        "falcon_mamba": (FalconMambaForCausalLM, FalconMambaConfig),
    }[family]
    torch.manual_seed(0)
    config = config_class(vocab_size=128, hidden_size=32, state_size=8, num_hidden_layers=2, expand=2, conv_kernel=4)
    return model_class(config).eval().to(dtype)


@pytest.mark.parametrize(
    ("family", "dtype"), [("mamba", torch.float32), ("falcon_mamba", torch.float32), ("mamba", torch.bfloat16)]
)
@pytest.mark.parametrize("recipe", ["shortgpt", "shortgpt_linear"])
def test_depth_pruning_of_mamba_saves_and_reloads(tmp_path, family, dtype, recipe):
    """`MambaConfig.layer_types` is a read-only property (`["linear_attention"] * num_hidden_layers`): writing it
    failed whenever the bridges kept the block count (one bridge per removed block). In bfloat16 the bridge also
    took float32 (Mamba's blocks have no `input_layernorm`) and the reloaded one the weights' dtype, while the
    stream between blocks stays float32 (`residual_in_fp32`)."""
    from transformers import AutoModelForCausalLM

    pruner = _pruner(_tiny_ssm(family, dtype), sparsity=0.5, recipe=recipe)
    pruned = pruner.model
    layers = pruned.backbone.layers
    bridged = recipe == "shortgpt_linear"
    assert len(layers) == pruned.config.num_hidden_layers == (2 if bridged else 1)
    assert pruned.config.layer_types == ["linear_attention"] * len(layers)
    assert sum(isinstance(layer, LinearBridge) for layer in layers) == (1 if bridged else 0)
    pruner.save_pretrained(tmp_path)
    assert getattr(pruned.config, LAYOUT_KEY)["requires_plugin"] is bridged
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=dtype)
    ids = _samples(1, 16)[0]["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, pruned(ids).logits)
        pruned.generate(ids[:, :6], max_new_tokens=2, do_sample=False)


# ---- recipes --------------------------------------------------------------------------------------------------------
def test_recipe_fills_defaults_and_explicit_fields_win():
    flap = PruningConfig(recipe="flap", sparsity=0.3)
    assert (flap.criterion, flap.reconstruction, flap.allocation) == ("fluctuation", "bias", "flap")
    mixed = PruningConfig(recipe="flap", reconstruction="none")
    assert mixed.reconstruction == "none" and mixed.criterion == "fluctuation"
    assert PruningConfig.from_dict(flap.to_dict()).to_dict() == flap.to_dict()
    with pytest.raises(ValueError, match="Unknown recipe"):
        PruningConfig(recipe="nope")


@pytest.mark.parametrize("name", ["mamba", "bert"])
def test_obs_recipe_runs_on_other_families(name, sentences):
    from conftest import tiny_bert, tiny_mamba

    from optimum_prune import PrunerForSequenceClassification

    if name == "mamba":
        pruner = PrunerForCausalLM(tiny_mamba(), make_tokenizer())
        data = [TEXT]
    else:
        pruner = PrunerForSequenceClassification(tiny_bert(), make_tokenizer())
        data = sentences
    config = PruningConfig(target="structured", sparsity=0.3, recipe="obs", num_samples=8, seqlen=48)
    pruner.prune(config, dataset=data, show_progress=False)
    assert 0.2 < pruner.summary["sparsity_achieved"] < 0.4
    ids = torch.tensor([[5, 17, 33, 48, 9, 60]])
    with torch.no_grad():
        out = pruner.model(ids).logits
    assert torch.isfinite(out).all()
