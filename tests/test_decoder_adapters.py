"""LLaMA-like decoder families on tiny random models: structured pruning, reload, plain-transformers loading,
query-head units (issue 13) and MoE experts (issue 12)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import transformers
from conftest import VOCAB_SIZE, tiny_llama
from transformers import AutoModelForCausalLM

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.architectures import get_adapter
from optimum_prune.architectures.decoder import QUERY_HEADS

INPUT_IDS = torch.tensor([[5, 17, 33, 48, 9, 60, 71, 12, 90, 33, 41, 7]])

_COMMON = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=256,
    bos_token_id=2,
    eos_token_id=3,
    pad_token_id=0,
)
_GEMMA = dict(head_dim=8, query_pre_attn_scalar=8, sliding_window=4, intermediate_size=64)
#: family -> (config class, model class, config fields beyond _COMMON)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(intermediate_size=64)),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(intermediate_size=64, sliding_window=4)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(intermediate_size=64)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(intermediate_size=64, head_dim=8)),
    # softcapping on, one sliding-window and one full-attention layer
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(_GEMMA, attn_logit_softcapping=5.0)),
    "gemma3_text": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(_GEMMA, sliding_window_pattern=2)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(intermediate_size=64)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(intermediate_size=64, num_local_experts=4)),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(
            intermediate_size=64,
            moe_intermediate_size=64,
            shared_expert_intermediate_size=48,
            num_experts=4,
            mlp_only_layers=[1],  # one MoE layer with a shared expert, one dense layer
        ),
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(intermediate_size=64, moe_intermediate_size=64, num_experts=4, head_dim=8),
    ),
}
MOE = ("mixtral", "qwen2_moe", "qwen3_moe")


def tiny_decoder(family: str, seed: int = 0, **overrides) -> torch.nn.Module:
    config_class, model_class, fields = FAMILIES[family]
    torch.manual_seed(seed)
    config = getattr(transformers, config_class)(**{**_COMMON, **fields, **overrides})
    if family in MOE:
        config.num_experts_per_tok = 2
    return getattr(transformers, model_class)(config).eval()


def _logits(model: torch.nn.Module, input_ids: torch.Tensor = INPUT_IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids).logits


def _prune(family, tokenizer, texts, **config):
    pruner = PrunerForCausalLM(tiny_decoder(family), tokenizer)
    pruner.prune(PruningConfig(**{"dataset": texts, "num_samples": 8, "seqlen": 64, **config}), show_progress=False)
    return pruner


def _run_fresh(script: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("allocation", ["uniform", "global"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_structured_liar_meets_budget_and_reloads(family, allocation, tokenizer, texts, tmp_path):
    # 50%: the uniform allocation rounds the coarse unit down, so one of the 2 KV groups goes only from 50% on.
    pruner = _prune(family, tokenizer, texts, sparsity=0.5, allocation=allocation, reconstruction="liar")
    summary = pruner.summary
    assert abs(summary["sparsity_achieved"] - 0.5) < 0.08, summary["sparsity_achieved"]
    dense_sizes = {k: v for k, v in FAMILIES[family][2].items() if k.endswith("intermediate_size")}
    for layer, description in zip(pruner.adapter.layers(), summary["layers"]):
        # the attention's own counter follows the weights (eager attention repeats KV heads by it)
        attn = layer.self_attn
        assert attn.num_key_value_groups * description["num_key_value_heads"] == description["num_attention_heads"]
        assert all(description[k] <= dense_sizes[k] for k in description if k in dense_sizes)
    if allocation == "uniform":  # every kind shrinks in every layer
        for description in summary["layers"]:
            assert description["num_key_value_heads"] == 1  # of 2 KV groups
            assert all(description[k] < dense_sizes[k] for k in description if k in dense_sizes), description
    if family in MOE:
        size_key = "intermediate_size" if family == "mixtral" else "moe_intermediate_size"
        assert all(d[size_key] % 8 == 0 for d in summary["layers"] if size_key in d)
    expected = _logits(pruner.model)
    assert torch.isfinite(expected).all()
    generated = pruner.model.generate(INPUT_IDS, max_new_tokens=6, do_sample=False)
    assert generated.shape == (1, INPUT_IDS.shape[1] + 6)

    pruner.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(_logits(reloaded), expected)
    assert sum(p.numel() for p in reloaded.parameters()) == summary["parameters_after"]
    assert torch.equal(reloaded.generate(INPUT_IDS, max_new_tokens=6, do_sample=False), generated)


def test_fresh_process_reload_and_plain_transformers(tokenizer, texts, tmp_path):
    """All families in one subprocess each way: non-uniform checkpoints after `import optimum_prune`, uniform ones
    (whose config can express the sizes) in plain transformers without the plugin."""
    cases = {}
    for family in FAMILIES:
        # A LIAR refit adds biases that only LlamaConfig has flags for; without a refit every family's config
        # can express uniform sizes.
        for allocation, reconstruction in (("global", "liar"), ("uniform", "none")):
            pruner = _prune(
                family,
                tokenizer,
                texts,
                sparsity=0.3,
                allocation=allocation,
                round_to=4,
                reconstruction=reconstruction,
            )
            folder = tmp_path / f"{family}-{allocation}"
            pruner.save_pretrained(folder)
            torch.save(_logits(pruner.model), folder / "expected.pt")
            config = json.loads((folder / "config.json").read_text())
            cases[str(folder)] = config["pruning"]["loader"] != "transformers"
            if allocation == "uniform":
                assert config["pruning"]["loader"] == "transformers", family
                assert "quantization_config" not in config

    def save_plain(name, pruner):
        folder = tmp_path / name
        pruner.save_pretrained(folder)
        torch.save(_logits(pruner.model), folder / "expected.pt")
        config = json.loads((folder / "config.json").read_text())
        assert config["pruning"]["loader"] == "transformers" and "quantization_config" not in config
        cases[str(folder)] = False
        return config

    # LIAR's o_proj bias on Qwen3 is expressed by attention_bias=True (zero biases on q, k, v).
    pruner = PrunerForCausalLM(tiny_decoder("qwen3", num_key_value_heads=3), tokenizer)
    calibration = {"dataset": texts, "num_samples": 8, "seqlen": 64}
    pruner.prune(PruningConfig(structures=["attention_heads"], sparsity=0.4, **calibration), show_progress=False)
    config = save_plain("qwen3-attention-bias", pruner)
    assert config["attention_bias"] is True and config["num_key_value_heads"] == 2
    # Uniform query heads: 6 query heads over 3 KV groups -> one per group, a plain LlamaConfig.
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    pruner.prune(
        PruningConfig(structures=["query_heads", "ffn_channels"], sparsity=0.5, **calibration), show_progress=False
    )
    config = save_plain("llama-query-heads", pruner)
    assert config["num_attention_heads"] == 3 and config["num_key_value_heads"] == 3
    plugin = [f for f, needs in cases.items() if needs]
    plain = [f for f, needs in cases.items() if not needs]
    assert plugin, "global allocation should give per-layer sizes somewhere"
    # Within float32 rounding, not bit for bit: Mixtral's stacked-expert forward, with weights bit-identical to the
    # pruned model's (checked in the same process), differs by 6e-8 between the pruning process and a fresh one.
    check = (
        "import sys, torch\n"
        "from transformers import AutoModelForCausalLM\n"
        f"ids = torch.tensor({INPUT_IDS.tolist()})\n"
        "def check(folder, atol):\n"
        "    m = AutoModelForCausalLM.from_pretrained(folder).eval()\n"
        "    with torch.no_grad():\n"
        "        diff = (m(ids).logits - torch.load(folder + '/expected.pt')).abs().max().item()\n"
        "    assert diff <= atol, (folder, diff)\n"
        "    m.generate(ids, max_new_tokens=3, do_sample=False)\n"
    )
    plain_script = (
        check + f"for f in {plain!r}:\n    check(f, 1e-6)\nassert 'optimum_prune' not in sys.modules\nprint('ok')\n"
    )
    result = _run_fresh(plain_script)
    assert result.stdout.strip().endswith("ok"), result.stderr[-3000:]
    plugin_script = "import optimum_prune\n" + check + f"for f in {plugin!r}:\n    check(f, 1e-6)\nprint('ok')\n"
    result = _run_fresh(plugin_script)
    assert result.stdout.strip().endswith("ok"), result.stderr[-3000:]


# ---- query heads inside KV groups (issue 13) ----------------------------------------------------------------------
def _masked_reference(family: str, attn_implementation: str, kept_heads: list[list[int]]) -> torch.nn.Module:
    """The dense model with the removed query heads' o_proj columns zeroed."""
    model = tiny_decoder(family)
    model.config._attn_implementation = attn_implementation
    adapter = get_adapter(model)
    for layer, kept in zip(adapter.layers(), kept_heads):
        o_proj = layer.self_attn.o_proj
        head_dim = layer.self_attn.head_dim
        removed = sorted(set(range(o_proj.in_features // head_dim)) - set(kept))
        for head in removed:
            o_proj.weight.data[:, head * head_dim : (head + 1) * head_dim] = 0
    return model


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["llama", "qwen3", "gemma3_text", "phi3", "mixtral"])
def test_query_heads_equal_masked_reference_and_reload(family, attn_implementation, tokenizer, texts, tmp_path):
    pruner = PrunerForCausalLM(tiny_decoder(family), tokenizer)
    pruner.model.config._attn_implementation = attn_implementation
    overrides = {"1": {"num_heads": 2}}  # layer 0 by the budget (6 -> 4 heads), layer 1 forced to one per group
    config = PruningConfig(
        structures=["query_heads"],
        sparsity=0.3,
        criterion="activation",
        reconstruction="none",
        dataset=texts,
        num_samples=4,
        seqlen=32,
        layer_overrides=overrides,
    )
    pruner.prune(config, show_progress=False)
    layers = pruner.summary["layers"]
    assert [(d["num_attention_heads"], d["num_key_value_heads"]) for d in layers] == [(4, 2), (2, 2)]
    kept = _kept_query_heads(pruner, tiny_decoder(family))
    assert pruner.model.config.pruned_heads == {
        i: sorted(set(range(6)) - set(heads)) for i, heads in enumerate(kept)
    }  # transformers' convention, as for whole KV groups
    for heads in kept:  # the same number in each KV group of 3 query heads
        assert [sum(1 for h in heads if h // 3 == g) for g in range(2)] == [len(heads) // 2] * 2
    reference = _masked_reference(family, attn_implementation, kept)
    # k_proj / v_proj untouched, groups now 2 and 1 query heads wide
    assert [layer.self_attn.num_key_value_groups for layer in pruner.adapter.layers()] == [2, 1]
    torch.testing.assert_close(_logits(pruner.model), _logits(reference), rtol=1e-5, atol=1e-5)

    pruner.save_pretrained(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "config.json").read_text())
    assert [d["num_attention_heads"] for d in saved["pruning"]["layers"]] == [4, 2]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation=attn_implementation).eval()
    assert torch.equal(_logits(reloaded), _logits(pruner.model))
    assert [layer.self_attn.num_key_value_groups for layer in get_adapter(reloaded).layers()] == [2, 1]


def _kept_query_heads(pruner: PrunerForCausalLM, dense: torch.nn.Module) -> list[list[int]]:
    """Which dense query heads each pruned layer kept: without a refit, their query rows are copies."""
    adapter, dense_adapter = pruner.adapter, get_adapter(dense)
    kept = []
    for layer, dense_layer in zip(adapter.layers(), dense_adapter.layers()):
        group = next(g for g in adapter.groups(layer) if g.kind == QUERY_HEADS)
        dense_group = next(g for g in dense_adapter.groups(dense_layer) if g.kind == QUERY_HEADS)
        rows = adapter.producer_weight(layer, group).reshape(group.num_units, -1)
        dense_rows = dense_adapter.producer_weight(dense_layer, dense_group).reshape(dense_group.num_units, -1)
        kept.append([int(torch.nonzero((dense_rows == row).all(1))[0]) for row in rows])
    return kept


def test_query_heads_and_kv_groups_are_exclusive():
    with pytest.raises(ValueError, match="choose one"):
        PruningConfig(structures=["attention_heads", "query_heads"])


def test_query_head_override_must_fill_groups_equally(tokenizer, texts):
    from optimum_prune.allocation import BudgetError

    pruner = PrunerForCausalLM(tiny_decoder("llama"), tokenizer)
    config = PruningConfig(
        structures=["query_heads"],
        sparsity=0.2,
        dataset=texts,
        num_samples=4,
        seqlen=32,
        layer_overrides={"0": {"num_heads": 3}},
    )
    with pytest.raises(BudgetError, match="multiple of 2"):
        pruner.prune(config, show_progress=False)


# ---- MoE experts ------------------------------------------------------------------------------------------------
def test_expert_views_see_exactly_the_routed_tokens():
    from optimum_prune.architectures.experts import expert_views
    from optimum_prune.pipeline.statistics import attach_statistics

    model = tiny_decoder("mixtral")
    experts = model.model.layers[0].mlp.experts
    views = expert_views(experts)
    stats, handles = attach_statistics({v.name: v for v in views}, with_gram=True)
    routed = []
    hook = model.model.layers[0].mlp.gate.register_forward_hook(lambda m, a, out: routed.append(out[2]))
    _logits(model)
    for handle in (*handles, hook):
        handle.remove()
    counts = torch.bincount(routed[0].reshape(-1), minlength=4)
    assert [stats[v.name].count for v in views] == counts.tolist()
    assert sum(counts.tolist()) == 2 * INPUT_IDS.numel()
    assert not experts._forward_pre_hooks  # the driver went away with the statistics hook
    # the view's weight is the stacked parameter's slice: writes go through
    views[1].weight.data.mul_(0)
    assert experts.down_proj[1].abs().sum() == 0 and experts.down_proj[0].abs().sum() > 0


def test_expert_channels_each_expert_keeps_its_own_channels(tokenizer, texts):
    dense = tiny_decoder("qwen3_moe")
    pruner = PrunerForCausalLM(tiny_decoder("qwen3_moe"), tokenizer)
    config = PruningConfig(
        structures=["expert_channels"], sparsity=0.5, reconstruction="none", dataset=texts, num_samples=4, seqlen=32
    )
    pruner.prune(config, show_progress=False)
    choices = set()
    for pruned_layer, dense_layer in zip(pruner.adapter.layers(), dense.model.layers):
        pruned, reference = pruned_layer.mlp.experts, dense_layer.mlp.experts
        assert pruned.down_proj.shape == (4, 48, 32) and pruned.gate_up_proj.shape == (4, 64, 48)
        for e in range(4):
            # without a refit each kept column is a copy of one dense column: find which
            kept = [
                int(torch.nonzero((reference.down_proj[e] == pruned.down_proj[e][:, j : j + 1]).all(0))[0])
                for j in range(32)
            ]
            choices.add(tuple(kept))
            gone = sorted(set(range(64)) - set(kept))
            reference.gate_up_proj.data[e, gone] = 0  # the masked reference: removed channels output zero
            reference.gate_up_proj.data[e, [64 + g for g in gone]] = 0
    assert len(choices) > 1  # each expert chose its own channels
    torch.testing.assert_close(_logits(pruner.model), _logits(dense), rtol=1e-5, atol=1e-5)


def test_bias_reconstruction_on_stacked_experts_is_a_clear_error(tokenizer, texts):
    pruner = PrunerForCausalLM(tiny_decoder("mixtral"), tokenizer)
    config = PruningConfig(
        structures=["expert_channels"], sparsity=0.3, reconstruction="bias", dataset=texts, num_samples=4, seqlen=32
    )
    with pytest.raises(ValueError, match="cannot hold a bias"):
        pruner.prune(config, show_progress=False)


@pytest.mark.parametrize("family", MOE)
def test_liar_dense_on_experts_prunes_and_reloads(family, tokenizer, texts, tmp_path):
    """reconstruction='liar_dense' on MoE models: the pruned and the dense copy of a block route tokens to
    different experts once their streams differ (the second block on), which crashed the cross-covariance."""
    pruner = _prune(family, tokenizer, texts, sparsity=0.5, reconstruction="liar_dense")
    assert abs(pruner.summary["sparsity_achieved"] - 0.5) < 0.08
    expected = _logits(pruner.model)
    assert torch.isfinite(expected).all()
    pruner.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(_logits(reloaded), expected)


@pytest.mark.parametrize("family", MOE)
def test_liar_dense_equals_liar_on_experts_when_the_streams_agree(family, tokenizer, texts):
    """In the first block both copies see the same stream: the refit to the dense outputs is LIAR's, fitted
    without an intercept on stacked experts (which hold no bias) instead of failing on the bias it added."""
    models = {}
    for reconstruction in ("liar", "liar_dense"):
        pruner = PrunerForCausalLM(tiny_decoder(family, num_hidden_layers=1), tokenizer)
        config = PruningConfig(
            structures=["expert_channels"],
            sparsity=0.5,
            reconstruction=reconstruction,
            dataset=texts,
            num_samples=4,
            seqlen=32,
        )
        pruner.prune(config, show_progress=False)
        models[reconstruction] = pruner.model
    liar, dense_target = (models[r].model.layers[0].mlp.experts for r in ("liar", "liar_dense"))
    torch.testing.assert_close(dense_target.down_proj, liar.down_proj, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dense_target.gate_up_proj, liar.gate_up_proj)


@pytest.mark.parametrize("family", MOE)
def test_liar_dense_pairs_each_expert_with_the_dense_expert_on_the_pruned_routing(family, monkeypatch):
    """Per expert, the statistics of the dense-target refit are those of the tokens the PRUNED block routes to the
    expert: the Gram matrix of its inputs there, and the cross-covariance with the dense copy of the expert
    evaluated on the dense stream's hidden states of those same tokens (checked on block 1, after block 0 was
    pruned, where the two routings differ)."""
    import copy

    from torch.nn import functional as F

    from optimum_prune import structured

    overrides = {"mlp_only_layers": []} if family == "qwen2_moe" else {}
    model = tiny_decoder(family, **overrides)
    dense = copy.deepcopy(model)
    torch.manual_seed(1)
    samples = [{"input_ids": torch.randint(4, 100, (1, 32))} for _ in range(4)]
    collected = {}  # (block, consumer) -> the statistics the refit got
    original = structured._collect_with_dense

    def spy(block, dense_layer, consumers, dense_inputs):
        stats = original(block, dense_layer, consumers, dense_inputs)
        collected.update({(block.index, name): stats[name] for name in consumers})
        return stats

    monkeypatch.setattr(structured, "_collect_with_dense", spy)
    config = PruningConfig(structures=["expert_channels"], sparsity=0.75, reconstruction="liar_dense")
    structured.prune_structured(model, get_adapter(model), config, samples, show_progress=False)

    def experts_calls(network):  # (hidden states, top-k experts) of block 1's experts, per sample
        calls = []
        experts = network.model.layers[1].mlp.experts
        handle = experts.register_forward_pre_hook(lambda _m, args: calls.append((args[0], args[1])))
        with torch.no_grad():
            for sample in samples:
                network(**sample, use_cache=False)
        handle.remove()
        return calls

    # The pruned model as block 1 saw it: block 0 pruned, block 1 still dense.
    as_seen = copy.deepcopy(model)
    as_seen.model.layers[1] = copy.deepcopy(dense.model.layers[1])
    pruned_calls, dense_calls = experts_calls(as_seen), experts_calls(dense)
    experts = dense.model.layers[1].mlp.experts
    differs = False
    for e in range(experts.down_proj.shape[0]):
        gram = cross = 0
        count = 0
        for (hidden, chosen), (dense_hidden, dense_chosen) in zip(pruned_calls, dense_calls):
            routed = (chosen == e).any(-1)
            differs |= not torch.equal(routed, (dense_chosen == e).any(-1))

            def inputs(states, _routed=routed, _expert=e):
                gate, up = F.linear(states[_routed], experts.gate_up_proj[_expert]).chunk(2, dim=-1)
                return (experts.act_fn(gate) * up).double()

            x, x_dense = inputs(hidden), inputs(dense_hidden)
            gram, cross, count = gram + x.T @ x, cross + x.T @ x_dense, count + int(routed.sum())
        stats = collected[(1, f"mlp.experts.down_proj_expert_{e}")]
        assert stats.count == count
        torch.testing.assert_close(stats.gram, gram, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(stats.cross, cross, rtol=1e-5, atol=1e-6)
    assert differs  # the check means something: the pruned block routes some token elsewhere


def test_expert_override_must_keep_a_kernel_friendly_size(tokenizer, texts):
    from optimum_prune.allocation import BudgetError

    pruner = PrunerForCausalLM(tiny_decoder("mixtral"), tokenizer)
    config = PruningConfig(
        sparsity=0.2, dataset=texts, num_samples=4, seqlen=32, layer_overrides={"0": {"ffn_channels": 30}}
    )
    with pytest.raises(BudgetError, match="multiples of 8"):
        pruner.prune(config, show_progress=False)


def test_query_heads_global_allocation_reloads(tokenizer, texts, tmp_path):
    pruner = PrunerForCausalLM(tiny_decoder("qwen3", num_hidden_layers=3), tokenizer)
    config = PruningConfig(
        structures=["query_heads", "ffn_channels"],
        allocation="global",
        sparsity=0.4,
        dataset=texts,
        num_samples=8,
        seqlen=64,
    )
    pruner.prune(config, show_progress=False)
    heads = [d["num_attention_heads"] for d in pruner.summary["layers"]]
    assert all(h % 2 == 0 and 2 <= h <= 6 for h in heads) and min(heads) < 6, heads
    assert all(d["num_key_value_heads"] == 2 for d in pruner.summary["layers"])
    pruner.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert torch.equal(_logits(reloaded), _logits(pruner.model))


# ---- blocks with their own masks: Gemma's sliding-window and full-attention layers ---------------------------------
def _o_proj_statistics(model: torch.nn.Module, layer: int, samples: list[dict[str, torch.Tensor]]):
    """The input statistics of `layer`'s o_proj over full forwards of `model` (the reference)."""
    from optimum_prune.pipeline.statistics import attach_statistics

    stats, handles = attach_statistics({"o_proj": model.model.layers[layer].self_attn.o_proj}, with_gram=True)
    with torch.no_grad():
        for sample in samples:
            model(**sample, use_cache=False)
    for handle in handles:
        handle.remove()
    return stats["o_proj"]


def _assert_same_statistics(collected, reference) -> None:
    assert collected.count == reference.count
    for field in ("sum", "sum_sq", "gram"):
        torch.testing.assert_close(getattr(collected, field), getattr(reference, field), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    "allocation, reconstruction", [("uniform", "none"), ("global", "none"), ("uniform", "liar_dense")]
)
def test_structured_calibrates_each_block_on_its_own_mask(allocation, reconstruction, monkeypatch):
    """Gemma 3's full-attention layer is calibrated with its own mask and rotary embeddings, not with those of the
    sliding-window layer before it: the statistics its consumer gets during a structured run equal those of full
    forwards of the model as it stands (dense for global allocation's scoring pass; block 0 pruned in the main
    loop; liar_dense also streams the dense copy of each block with the same arguments)."""
    import copy

    from optimum_prune.pipeline import statistics
    from optimum_prune.pipeline.layerwise import capture_block_arguments
    from optimum_prune.structured import prune_structured

    model = tiny_decoder("gemma3_text")
    assert model.config.layer_types == ["sliding_attention", "full_attention"] and model.config.sliding_window == 4
    dense = copy.deepcopy(model)
    torch.manual_seed(1)
    samples = [{"input_ids": torch.randint(4, 100, (1, 24))} for _ in range(3)]  # 24 tokens, a window of 4
    full_o_proj = model.model.layers[1].self_attn.o_proj
    collected = []  # InputStatistics the run gathered for the full-attention layer's o_proj, in order
    original = statistics.attach_statistics

    def spy(modules, with_gram):
        stats, handles = original(modules, True)  # with the Gram matrix, to compare it too
        collected.extend(s for name, s in stats.items() if modules[name] is full_o_proj)
        return stats, handles

    monkeypatch.setattr(statistics, "attach_statistics", spy)
    config = PruningConfig(
        structures=["attention_heads"], sparsity=0.5, reconstruction=reconstruction, allocation=allocation
    )
    prune_structured(model, get_adapter(model), config, samples, show_progress=False)
    assert len(collected) == (2 if allocation == "global" else 1)
    if allocation == "global":  # the scoring pass reads the dense model
        _assert_same_statistics(collected[0], _o_proj_statistics(dense, 1, samples))
    # The main loop reads block 1 (still dense) after block 0 was pruned.
    reference_model = copy.deepcopy(model)
    reference_model.model.layers[1] = copy.deepcopy(dense.model.layers[1])
    reference = _o_proj_statistics(reference_model, 1, samples)
    _assert_same_statistics(collected[-1], reference)

    # The check can fail: with the sliding-window layer's arguments, the full-attention layer sees other inputs.
    arguments = capture_block_arguments(reference_model, reference_model.model.layers, samples)
    hidden = []
    layer = reference_model.model.layers[1]
    handle = layer.register_forward_pre_hook(
        lambda _m, args, kwargs: hidden.append(args[0] if args else kwargs["hidden_states"]), with_kwargs=True
    )
    with torch.no_grad():
        for sample in samples:
            reference_model(**sample, use_cache=False)
    handle.remove()
    wrong, handles = original({"o_proj": layer.self_attn.o_proj}, with_gram=True)
    with torch.no_grad():
        for state, (args, kwargs) in zip(hidden, arguments[0]):
            layer(state, *args, **kwargs)
    handles[0].remove()
    assert not torch.allclose(wrong["o_proj"].sum_sq, reference.sum_sq, rtol=1e-3)


def test_depth_pruning_streams_each_block_with_its_own_mask(monkeypatch):
    """Depth pruning's block influence reads what each block computes in a full forward: Gemma 3's full-attention
    block with its own mask, not the sliding-window block's."""
    from optimum_prune import depth
    from optimum_prune.structured import prune_structured

    model = tiny_decoder("gemma3_text", num_hidden_layers=3)
    assert model.config.layer_types == ["sliding_attention", "full_attention", "sliding_attention"]
    torch.manual_seed(1)
    samples = [{"input_ids": torch.randint(4, 100, (1, 24))} for _ in range(2)]
    with torch.no_grad():
        reference = [model(**s, output_hidden_states=True, use_cache=False).hidden_states for s in samples]
    streamed = []  # (block input, block output) of every block influence computed, in order
    original = depth._influence  # block_influence's arithmetic, read back once per block rather than per sample

    def spy(inputs, outputs):
        streamed.append((inputs, outputs))
        return original(inputs, outputs)

    monkeypatch.setattr(depth, "_influence", spy)
    config = PruningConfig(structures=["layers"], sparsity=0.3, reconstruction="none")
    prune_structured(model, get_adapter(model), config, samples, show_progress=False)
    assert len(streamed) == 3 * len(samples)
    for position, (inputs, outputs) in enumerate(streamed):
        block, sample = divmod(position, len(samples))
        torch.testing.assert_close(inputs, reference[sample][block], rtol=1e-5, atol=1e-6)
        if block + 1 < 3:  # the last entry of hidden_states is after the final norm
            torch.testing.assert_close(outputs, reference[sample][block + 1], rtol=1e-5, atol=1e-6)


# ---- multi-head decoders with biases and ungated MLPs: OPT (separate q/k/v), GPT-NeoX (qkv interleaved per head) ---
@pytest.mark.parametrize("family", ["opt", "gpt_neox"])
def test_mha_decoder_equals_dense_model_with_pruned_columns_zeroed(family):
    """Without reconstruction, the physically smaller model computes what the dense one computes with the removed
    heads' and channels' consumer columns zeroed: the right rows of the fused / interleaved projections went."""
    from architectures_matrix import BY_NAME

    from optimum_prune.structured import prune_structured

    entry = BY_NAME[family]
    model, reference = entry.build(), entry.build()
    adapter = get_adapter(model)
    assert adapter.structure_kinds == ("attention_heads", "ffn_channels")
    config = PruningConfig(sparsity=0.4, criterion="random", reconstruction="none", seed=1)
    result = prune_structured(model, adapter, config, None, show_progress=False)
    reference_adapter = get_adapter(reference)
    for layer, kept in zip(reference_adapter.layers(), result.kept_units):
        for group in reference_adapter.groups(layer):
            if group.kind not in kept:
                continue
            pruned = torch.tensor(sorted(set(range(group.num_units)) - set(kept[group.kind])), dtype=torch.long)
            assert pruned.numel(), group.kind
            layer.get_submodule(group.consumers[0]).weight.data[:, group.unit_channels(pruned)] = 0.0
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in reference.parameters())
    torch.testing.assert_close(_logits(model), _logits(reference), rtol=1e-5, atol=1e-5)
    description = adapter.describe_layer(adapter.layers()[0])
    assert description["num_attention_heads"] == len(result.kept_units[0]["attention_heads"]) < 4


def test_depth_pruning_refills_the_block_list_where_the_family_keeps_it(tokenizer, texts, tmp_path):
    """OPT keeps its blocks under `decoder.layers`: depth pruning shortens that list, and the checkpoint reloads."""
    from architectures_matrix import BY_NAME

    entry = BY_NAME["opt"]
    torch.manual_seed(0)
    model = getattr(transformers, entry.model_class)(
        getattr(transformers, entry.config_class)(**{**entry.config, "num_hidden_layers": 4})
    ).eval()
    pruner = PrunerForCausalLM(model, tokenizer)
    pruner.prune(
        PruningConfig(
            structures=["layers"], sparsity=0.25, reconstruction="none", dataset=texts, num_samples=2, seqlen=32
        ),
        show_progress=False,
    )
    layers = pruner.model.model.decoder.layers
    assert len(layers) == pruner.model.config.num_hidden_layers == 3
    assert not hasattr(pruner.model.model, "layers")
    expected = _logits(pruner.model)
    pruner.save_pretrained(tmp_path / "out")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert len(reloaded.model.decoder.layers) == 3
    assert torch.equal(_logits(reloaded), expected)
