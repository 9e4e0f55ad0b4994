"""Sparsity without an adapter: block discovery, weights the hooks never see, per-expert statistics, odd models."""

from __future__ import annotations

import pytest
import torch
from architectures_matrix import BY_NAME
from conftest import make_tokenizer, tiny_mamba
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput

from optimum_prune import PrunerForCausalLM, PruningConfig, UnsupportedArchitectureError
from optimum_prune.architectures.weights import find_weight_matrices
from optimum_prune.pipeline.blocks import BlockDiscoveryError, find_blocks
from optimum_prune.pipeline.weight_inputs import observe_inputs
from optimum_prune.sparsity import get_sparsity_method
from optimum_prune.sparsity.base import SparsityPattern

# ---- a model type no code in the library knows ----------------------------------------------------------------


class TinyCustomConfig(PretrainedConfig):
    model_type = "tiny_custom_for_test"

    def __init__(self, vocab_size=128, hidden_size=32, num_layers=2, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        super().__init__(**kwargs)


class TinyCustomBlock(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size)
        self.up = nn.Linear(config.hidden_size, 2 * config.hidden_size)
        self.down = nn.Linear(2 * config.hidden_size, config.hidden_size)
        # Used through its weight only, as transformers' Mamba uses dt_proj: no hook ever sees its input.
        self.mix = nn.Linear(config.hidden_size, config.hidden_size, bias=False)

    def forward(self, hidden_states, attention_mask=None):
        x = self.norm(hidden_states)
        if attention_mask is not None:
            x = x * attention_mask[..., None].to(x.dtype)
        x = self.down(torch.relu(self.up(x))) + x @ self.mix.weight.T
        return (hidden_states + x,)


class TinyCustomForCausalLM(PreTrainedModel):
    config_class = TinyCustomConfig
    _no_split_modules = ["TinyCustomBlock"]

    def __init__(self, config):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.hidden_size)
        self.blocks = nn.ModuleList(TinyCustomBlock(config) for _ in range(config.num_layers))
        self.head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids, attention_mask=None, **kwargs):
        hidden = self.embed(input_ids)
        for block in self.blocks:
            hidden = block(hidden, attention_mask=attention_mask)[0]
        return CausalLMOutput(logits=self.head(hidden))


class TinyMaskedBlocksForCausalLM(TinyCustomForCausalLM):
    """Block `i` does not see the first 8 * i tokens: every block gets its own mask, and no config says so."""

    def forward(self, input_ids, attention_mask=None, **kwargs):
        hidden = self.embed(input_ids)
        for index, block in enumerate(self.blocks):
            mask = torch.ones(input_ids.shape, dtype=torch.long)
            mask[:, : 8 * index] = 0
            hidden = block(hidden, attention_mask=mask)[0]
        return CausalLMOutput(logits=self.head(hidden))


def _custom_model(seed: int = 0) -> TinyCustomForCausalLM:
    torch.manual_seed(seed)
    return TinyCustomForCausalLM(TinyCustomConfig()).eval()


def _prune(model, texts, **config):
    pruner = PrunerForCausalLM(model, make_tokenizer())
    pruner.prune(PruningConfig(**{"dataset": texts, "num_samples": 2, "seqlen": 32, **config}), show_progress=False)
    return pruner


@pytest.mark.parametrize(("target", "method"), [("unstructured", "sparsegpt"), ("2:4", "wanda")])
def test_custom_model_gets_sparsity(target, method, texts):
    original = _custom_model().state_dict()
    pruner = _prune(_custom_model(), texts, target=target, sparsity=0.5, method=method)
    model, summary = pruner.model, pruner.summary
    expected = {f"blocks.{i}.{name}" for i in range(2) for name in ("up", "down", "mix")}
    assert set(summary["modules"]) == expected
    for name in expected:
        weight = model.get_submodule(name).weight
        if target == "2:4":
            assert torch.all((weight == 0).reshape(weight.shape[0], -1, 4).sum(-1) == 2), name
        else:
            assert torch.all((weight == 0).sum(1) == weight.shape[1] // 2), name
        assert summary["modules"][name] == pytest.approx(0.5)
    # `mix` is never called, so its inputs were never observed: pruned by magnitude, and said so.
    assert set(summary["data_free"]) == {"blocks.0.mix", "blocks.1.mix"}
    mix = model.blocks[0].mix.weight
    magnitude, _ = get_sparsity_method("magnitude")(
        original["blocks.0.mix.weight"], torch.eye(32), SparsityPattern.parse(target, 0.5)
    )
    assert torch.equal(mix, magnitude)
    for name in ("embed.weight", "head.weight", "blocks.0.norm.weight"):
        assert torch.equal(model.state_dict()[name], original[name]), name


def test_custom_model_structured_is_one_clear_line():
    pruner = PrunerForCausalLM(_custom_model(), make_tokenizer())  # constructing works for any model
    with pytest.raises(UnsupportedArchitectureError) as error:
        pruner.prune(target="structured", sparsity=0.2, dataset=["some text"], show_progress=False)
    message = str(error.value)
    assert "\n" not in message
    from optimum_prune.architectures import ADAPTERS

    assert "'tiny_custom_for_test'" in message and f"Supported model types: {', '.join(sorted(ADAPTERS))}." in message


def test_sequential_targets_override(texts):
    by_regex = _prune(
        _custom_model(), texts, target="unstructured", method="wanda", sequential_targets=[r"re:blocks\.1"]
    )
    assert set(by_regex.summary["modules"]) == {"blocks.1.up", "blocks.1.down", "blocks.1.mix"}
    assert torch.equal(by_regex.model.blocks[0].up.weight, _custom_model().blocks[0].up.weight)
    by_class = _prune(
        _custom_model(), texts, target="unstructured", method="wanda", sequential_targets="TinyCustomBlock"
    )
    assert len(by_class.summary["modules"]) == 6
    with pytest.raises(BlockDiscoveryError, match="match no module"):
        _prune(_custom_model(), texts, target="unstructured", method="wanda", sequential_targets=["NoSuchLayer"])


def test_block_discovery():
    roberta = BY_NAME["roberta"].build()  # names RobertaEmbeddings in _no_split_modules too: not a repeated block
    assert [n for n, _ in find_blocks(roberta)] == ["roberta.encoder.layer.0", "roberta.encoder.layer.1"]
    distilbert = BY_NAME["distilbert"].build()  # empty _no_split_modules: its largest module list
    assert [n for n, _ in find_blocks(distilbert)] == [
        "distilbert.transformer.layer.0",
        "distilbert.transformer.layer.1",
    ]
    falcon = BY_NAME["falcon_mamba"].build()  # names both the block and its mixer: the outer one wins
    assert [type(b).__name__ for _, b in find_blocks(falcon)] == ["FalconMambaBlock"] * 2
    jamba = BY_NAME["jamba"].build()
    assert [type(b).__name__ for _, b in find_blocks(jamba)] == [
        "JambaMambaDecoderLayer",
        "JambaAttentionDecoderLayer",
    ]
    from transformers import T5Config, T5ForConditionalGeneration

    t5 = T5ForConditionalGeneration(T5Config(vocab_size=128, d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2))
    with pytest.raises(BlockDiscoveryError, match=r"blocks in 2 module lists \(decoder.block, encoder.block\)"):
        find_blocks(t5)  # an encoder and a decoder are not one chain
    assert [n for n, _ in find_blocks(t5, [r"re:encoder\.block\.\d+"])] == ["encoder.block.0"]


# ---- weights whose inputs the forward hooks never see -----------------------------------------------------------


@pytest.mark.parametrize("method", ["sparsegpt", "admm", "obs_multi"])
def test_mamba_dt_proj_is_solved_on_its_real_inputs(method, texts):
    pruner = _prune(tiny_mamba(), texts, target="unstructured", sparsity=0.5, method=method)
    summary = pruner.summary
    for name, sparsity in summary["modules"].items():
        weight = pruner.model.get_submodule(name).weight
        assert not torch.all(weight == 0), name
        assert sparsity == pytest.approx(float((weight == 0).float().mean()))
    dt_proj = pruner.model.backbone.layers[0].mixer.dt_proj.weight
    assert float((dt_proj == 0).float().mean()) == pytest.approx(0.5)
    assert summary["modules"]["backbone.layers.0.mixer.dt_proj"] == pytest.approx(0.5)
    assert "x_proj" in summary["input_taps"]["backbone.layers.0.mixer.dt_proj"]
    assert not summary["data_free"]


def test_dt_proj_tap_equals_the_modules_own_input():
    # With `_is_quantized` set, FalconMamba's mixer calls dt_proj as a module, so its own hook sees the input the
    # tap (dt_layernorm's output) must reproduce.
    model = BY_NAME["falcon_mamba"].build()
    block = model.backbone.layers[0]
    matrices = [m for m in find_weight_matrices(block, [])[0] if m.name == "mixer.dt_proj"]
    ids = torch.randint(4, 100, (2, 24))
    with observe_inputs(block, matrices) as plain, torch.no_grad():
        model(ids)
    assert "mixer.dt_proj" not in plain.direct  # the hook never fired
    stats, tap = plain.get("mixer.dt_proj")
    assert "dt_layernorm" in tap
    model.config._is_quantized = True
    with observe_inputs(block, matrices) as called, torch.no_grad():
        model(ids)
    direct, tap = called.get("mixer.dt_proj")
    assert tap is None and direct.count == stats.count == 48
    torch.testing.assert_close(stats.gram, direct.gram)


# ---- stacked experts ---------------------------------------------------------------------------------------------


def test_expert_statistics_are_the_tokens_routed_to_each_expert(monkeypatch):
    model = BY_NAME["mixtral"].build()
    model.config._experts_implementation = "eager"
    experts = model.model.layers[0].mlp.experts
    block = model.model.layers[0]
    matrices = [m for m in find_weight_matrices(block, [])[0] if m.expert is not None]
    # What the eager implementation really multiplies each expert slice with, recorded by storage address.
    seen: dict[int, list[torch.Tensor]] = {}
    linear = torch.nn.functional.linear

    def recording_linear(x, weight, bias=None):
        seen.setdefault(weight.data_ptr(), []).append(x.detach().reshape(-1, x.shape[-1]))
        return linear(x, weight, bias)

    ids = torch.randint(4, 100, (2, 24))
    with observe_inputs(block, matrices) as observed, torch.no_grad():
        monkeypatch.setattr(torch.nn.functional, "linear", recording_linear)
        model(ids)
        monkeypatch.setattr(torch.nn.functional, "linear", linear)
    checked = 0
    for matrix in matrices:
        stats, _ = observed.get(matrix.name)
        recorded = seen.get(getattr(experts, matrix.parameter)[matrix.expert].data_ptr())
        if recorded is None:
            assert stats is None
            continue
        x = torch.cat(recorded).double()
        assert stats.count == x.shape[0]
        torch.testing.assert_close(stats.gram, x.T @ x, rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked >= 4


def test_unrouted_expert_falls_back_to_magnitude(texts, monkeypatch):
    model = BY_NAME["mixtral"].build()
    for layer in model.model.layers:
        router = layer.mlp.gate
        original = router.forward

        def never_expert_3(hidden_states, _original=original):
            logits, scores, indices = _original(hidden_states)
            return logits, scores, torch.where(indices == 3, torch.zeros_like(indices), indices)

        monkeypatch.setattr(router, "forward", never_expert_3)
    pruner = _prune(model, texts, target="unstructured", sparsity=0.5, method="sparsegpt")
    summary = pruner.summary
    unrouted = {f"model.layers.{i}.mlp.experts.{p}[3]" for i in range(2) for p in ("gate_up_proj", "down_proj")}
    assert set(summary["data_free"]) == unrouted
    for name in unrouted:
        assert summary["modules"][name] == pytest.approx(0.5)  # not 1.0: never solved on an empty Gram matrix
    down = model.model.layers[0].mlp.experts.down_proj
    assert not torch.all(down[3] == 0)
    assert torch.all((down[0] == 0).sum(1) == down.shape[2] // 2)


# ---- blocks with their own masks ---------------------------------------------------------------------------------


def test_blocks_get_their_own_masks(texts):
    # Gemma3 with a 4-token sliding window in layer 0 and full attention in layer 1: layer 1's o_proj must be pruned
    # on what it sees in the real model, not on inputs computed with layer 0's sliding-window mask.
    entry = BY_NAME["gemma3_text"]
    config = PruningConfig(
        target="unstructured",
        method="wanda",
        sparsity=0.5,
        dataset=texts,
        num_samples=2,
        seqlen=32,
        layer_overrides={"0": {"sparsity": 0.0}},
        modules_to_not_prune=["mlp", "q_proj", "k_proj", "v_proj"],
    )
    reference_model = entry.build()
    pruner = PrunerForCausalLM(entry.build(), make_tokenizer())
    samples = pruner.calibration_samples(config)
    block = reference_model.model.layers[1]
    matrices = [m for m in find_weight_matrices(block, [])[0] if m.name == "self_attn.o_proj"]
    with observe_inputs(block, matrices) as observed, torch.no_grad():
        for sample in samples:
            reference_model(**sample)
    expected, _ = get_sparsity_method("wanda")(
        block.self_attn.o_proj.weight, observed.direct["self_attn.o_proj"].gram, SparsityPattern(0.5)
    )
    pruner.prune(config, show_progress=False)
    assert set(pruner.summary["modules"]) == {"model.layers.1.self_attn.o_proj"}
    assert torch.equal(pruner.model.model.layers[1].self_attn.o_proj.weight, expected)


def test_cli_sparsifies_a_family_without_adapter(tmp_path, texts):
    from transformers import AutoModelForCausalLM

    from optimum_prune.cli import main

    source, output = tmp_path / "gpt2", tmp_path / "out"
    model = BY_NAME["gpt2"].build()
    model.save_pretrained(source)
    make_tokenizer().save_pretrained(source)
    (tmp_path / "calibration.txt").write_text(texts[0], encoding="utf-8")
    arguments = ["-m", str(source), "--target", "2:4", "--method", "wanda", "--no-progress"]
    data = ["--dataset", str(tmp_path / "calibration.txt"), "--num-samples", "2", "--seqlen", "32"]
    assert main([*arguments, *data, str(output)]) == 0
    reloaded = AutoModelForCausalLM.from_pretrained(output)
    c_fc = reloaded.transformer.h[0].mlp.c_fc.weight  # Conv1D: [in, out], 2 of every 4 inputs of each output zero
    assert torch.all((c_fc.T == 0).reshape(c_fc.shape[1], -1, 4).sum(-1) == 2)


def test_blocks_with_own_arguments_are_found_without_config_hints(texts):
    torch.manual_seed(0)
    reference = TinyMaskedBlocksForCausalLM(TinyCustomConfig()).eval()
    model = TinyMaskedBlocksForCausalLM(TinyCustomConfig()).eval()
    model.load_state_dict(reference.state_dict())
    config = PruningConfig(
        target="unstructured",
        method="sparsegpt",
        dataset=texts,
        num_samples=2,
        seqlen=32,
        layer_overrides={"0": {"sparsity": 0.0}},
        modules_to_not_prune=["down", "mix"],
    )
    pruner = PrunerForCausalLM(model, make_tokenizer())
    samples = pruner.calibration_samples(config)
    block = reference.blocks[1]
    matrices = [m for m in find_weight_matrices(block, [])[0] if m.name == "up"]
    with observe_inputs(block, matrices) as observed, torch.no_grad():
        for sample in samples:
            reference(**sample)
    assert observed.direct["up"].count == 2 * 32  # masked tokens are zero rows, still counted
    expected, _ = get_sparsity_method("sparsegpt")(block.up.weight, observed.direct["up"].gram, SparsityPattern(0.5))
    pruner.prune(config, show_progress=False)
    assert set(pruner.summary["modules"]) == {"blocks.1.up"}
    torch.testing.assert_close(model.blocks[1].up.weight, expected)


class TinyReversedForCausalLM(TinyCustomForCausalLM):
    def forward(self, input_ids, attention_mask=None, **kwargs):
        hidden = self.embed(input_ids)
        for block in reversed(self.blocks):
            hidden = block(hidden)[0]
        return CausalLMOutput(logits=self.head(hidden))


def test_blocks_out_of_list_order_are_refused(texts):
    torch.manual_seed(0)
    model = TinyReversedForCausalLM(TinyCustomConfig()).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match=r"do not run in the order of their module list \(they ran as \[1, 0\]\)"):
        _prune(model, texts, target="unstructured", method="sparsegpt")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_model_card_lists_matrices_left_dense_or_pruned_by_magnitude(texts, tmp_path):
    pruner = _prune(tiny_mamba(), texts, target="2:4", method="sparsegpt")
    pruner.save_pretrained(tmp_path / "mamba")
    card = (tmp_path / "mamba" / "README.md").read_text()
    assert "`backbone.layers.0.mixer.dt_proj` left dense: 2:4 needs in_features divisible by 4, got 2" in card
    custom = _prune(_custom_model(), texts, target="unstructured", method="sparsegpt")
    custom.save_pretrained(tmp_path / "custom")
    card = (tmp_path / "custom" / "README.md").read_text()
    assert "`blocks.1.mix`: no calibration input reached it; pruned by magnitude" in card
