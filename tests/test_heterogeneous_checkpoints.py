"""Checkpoints whose layers differ in size load without the quantization slot (issue 22, items 1 and 4).

Over tiny Llama / Mistral / Qwen2 / Qwen3 models pruned with a non-uniform (global) plan and LIAR biases:
plain transformers without the plugin loads them through the remote code they ship; with the plugin imported the
Auto classes load them without `trust_remote_code`; quantizers apply at load; a quantized model saves and reloads to
the same outputs or the save refuses in one line; a checkpoint saved in the older format still loads.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import TEXT, VOCAB_SIZE, make_tokenizer, tiny_bert, tiny_causal_lm, tiny_llama
from quantized_checks import BNB_4BIT_SHAPE, close_to_unquantized, dequantized_reference
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from optimum_prune import PrunerForCausalLM, PrunerForSequenceClassification, PruningConfig
from optimum_prune.serialization.heterogeneous import QuantizedInMemoryError

pytestmark = pytest.mark.filterwarnings("ignore")

FAMILIES = {
    "llama": (LlamaForCausalLM, LlamaConfig),
    "mistral": (MistralForCausalLM, MistralConfig),
    "qwen2": (Qwen2ForCausalLM, Qwen2Config),
    "qwen3": (Qwen3ForCausalLM, Qwen3Config),
}
INPUT = torch.arange(1, 13).reshape(1, 12) % VOCAB_SIZE
#: Reload tolerance: same weights, possibly another kernel path (see reload_checks.py).
TOLERANCE = 1e-5
LEGACY = Path(__file__).parent / "data" / "legacy_pruned_llama"


def _structured(sparsity: float = 0.3, **overrides) -> PruningConfig:
    fields = dict(
        target="structured",
        sparsity=sparsity,
        allocation="global",
        reconstruction="liar",
        num_samples=4,
        seqlen=32,
    )
    return PruningConfig(**{**fields, **overrides})


def _prune(family: str) -> PrunerForCausalLM:
    model_class, config_class = FAMILIES[family]
    pruner = PrunerForCausalLM(tiny_causal_lm(model_class, config_class), make_tokenizer())
    pruner.prune(_structured(), dataset=[TEXT], show_progress=False)
    return pruner


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, tuple[Path, torch.Tensor]]:
    """Each family pruned non-uniformly and saved, with its in-memory logits on INPUT."""
    out = {}
    for family in FAMILIES:
        pruner = _prune(family)
        folder = tmp_path_factory.mktemp(family) / "pruned"
        pruner.save_pretrained(folder)
        with torch.no_grad():
            out[family] = (folder, pruner.model(INPUT).logits)
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_config_leaves_quantization_slot_free(saved, family):
    folder, _ = saved[family]
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["model_type"] == f"pruned_{family}"
    assert config["per_layer_config"], "the plan must be non-uniform for this test to mean anything"
    sizes = {json.dumps(v, sort_keys=True) for v in config["per_layer_config"].values()}
    assert len(sizes) > 1 or len(config["per_layer_config"]) < config["num_hidden_layers"]
    for name in config["auto_map"].values():
        assert (folder / f"{name.split('.')[0]}.py").is_file()


@pytest.mark.parametrize("family", list(FAMILIES))
def test_plugin_loads_without_trust_remote_code(saved, family):
    folder, expected = saved[family]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert type(model).__name__ == f"Pruned{FAMILIES[family][0].__name__}"
    with torch.no_grad():
        torch.testing.assert_close(model(INPUT).logits, expected, rtol=0, atol=TOLERANCE)


def test_plain_transformers_loads_through_remote_code(saved, tmp_path):
    """A process that never imports optimum_prune loads every family with trust_remote_code=True."""
    cases = {}
    for family, (folder, expected) in saved.items():
        torch.save(expected, tmp_path / f"{family}.pt")
        cases[family] = str(folder)
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoModelForCausalLM
        cases = {cases!r}
        for family, folder in cases.items():
            try:
                AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=False)
            except ValueError as err:
                assert "trust_remote_code" in str(err), err
            else:
                raise AssertionError(family + " loaded without remote code or plugin")
            model = AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True).eval()
            expected = torch.load({str(tmp_path)!r} + "/" + family + ".pt")
            with torch.no_grad():
                diff = (model(torch.arange(1, 13).reshape(1, 12) % {VOCAB_SIZE}).logits - expected).abs().max()
            assert diff <= {TOLERANCE}, (family, float(diff))
            print(family, type(model).__module__.split(".")[0], float(diff))
        assert "optimum_prune" not in sys.modules
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(line.split()[0] for line in result.stdout.splitlines()) == sorted(FAMILIES)
    assert all(line.split()[1] == "transformers_modules" for line in result.stdout.splitlines())


def _close_to_dense(actual: torch.Tensor, expected: torch.Tensor) -> None:
    # int8 weights: the logits move by a few percent of their range, never more.
    assert (actual - expected).abs().max() <= 0.05 * expected.abs().max()


def test_quanto_at_load_and_save_refusal(saved, tmp_path):
    pytest.importorskip("optimum.quanto")
    from transformers import QuantoConfig

    folder, expected = saved["mistral"]
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=QuantoConfig(weights="int8")).eval()
    with torch.no_grad():
        _close_to_dense(model(INPUT).logits, expected)
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "quanto")


def test_torchao_at_load_saves_and_reloads(saved, tmp_path):
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    folder, expected = saved["qwen2"]
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))
    with torch.no_grad():
        quantized = model.eval()(INPUT).logits
    _close_to_dense(quantized, expected)
    model.save_pretrained(tmp_path / "ao")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "ao").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(INPUT).logits, quantized, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_bitsandbytes_8bit_at_load_saves_and_reloads(saved, family, tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    folder, expected = saved[family]
    model = AutoModelForCausalLM.from_pretrained(folder, quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    with torch.no_grad():
        quantized = model.eval()(INPUT).logits
    close_to_unquantized(quantized, expected)
    model.save_pretrained(tmp_path / "int8")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "int8").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(INPUT).logits, quantized, rtol=0, atol=TOLERANCE)


def test_bitsandbytes_4bit_at_load_saves_and_reloads(tmp_path):
    """Heads and FFN channels pruned per layer, in widths bitsandbytes' CPU kernel takes (see quantized_checks.py)."""
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    pruner = PrunerForCausalLM(tiny_llama(**BNB_4BIT_SHAPE), make_tokenizer())
    pruner.prune(
        _structured(structures=["attention_heads", "ffn_channels"], round_to=64), dataset=[TEXT], show_progress=False
    )
    pruner.save_pretrained(tmp_path / "pruned")
    overrides = json.loads((tmp_path / "pruned" / "config.json").read_text())["per_layer_config"]
    assert any("num_attention_heads" in layer for layer in overrides.values()), overrides
    load = AutoModelForCausalLM.from_pretrained
    quantized = load(tmp_path / "pruned", quantization_config=BitsAndBytesConfig(load_in_4bit=True)).eval()
    reference = dequantized_reference(quantized, tmp_path / "pruned")
    quantized.save_pretrained(tmp_path / "nf4")  # before the first forward (see quantized_checks.py)
    with torch.no_grad():
        logits = quantized(INPUT).logits
        torch.testing.assert_close(logits, reference(INPUT).logits, rtol=0, atol=0.02 * logits.abs().max().item())
        torch.testing.assert_close(load(tmp_path / "nf4").eval()(INPUT).logits, logits, rtol=0, atol=TOLERANCE)


def test_quantized_in_memory_refuses_to_save(saved, tmp_path):
    """quanto's quantize + freeze, then save_pretrained: once a silent reload with random weights; now one error."""
    quanto = pytest.importorskip("optimum.quanto")
    folder, _ = saved["llama"]
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    quanto.quantize(model, weights=quanto.qint8)
    quanto.freeze(model)
    with pytest.raises(QuantizedInMemoryError, match="QuantoConfig"):
        model.save_pretrained(tmp_path / "mem")
    assert not (tmp_path / "mem" / "model.safetensors").exists()


def test_checkpoint_of_the_older_format_still_loads():
    """tests/data/legacy_pruned_llama was saved by the code before this change (quantization-slot format)."""
    config = json.loads((LEGACY / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "optimum_prune"}
    expected = torch.load(LEGACY / "expected_logits.pt")
    model = AutoModelForCausalLM.from_pretrained(LEGACY).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(expected["input_ids"]).logits, expected["logits"], rtol=0, atol=TOLERANCE)


def _torchao_config():
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import TorchAoConfig

    return TorchAoConfig(Int8WeightOnlyConfig())


def _bitsandbytes_config():
    pytest.importorskip("bitsandbytes")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


@pytest.mark.parametrize("quantization_config", [_torchao_config, _bitsandbytes_config], ids=["torchao", "bnb"])
def test_checkpoint_of_the_older_format_refuses_a_quantizer(quantization_config):
    """Its layout sits in the quantization slot, so transformers refuses a second quantizer in one line."""
    with pytest.raises(ValueError, match="quantized with PrunedLayoutConfig but you are passing"):
        AutoModelForCausalLM.from_pretrained(LEGACY, quantization_config=quantization_config())


# ---- issue 26, fault 1: every combination of runs saves and reloads -----------------------------------------------
def _reload_equal(pruner, folder, auto_class=AutoModelForCausalLM) -> None:
    pruner.save_pretrained(folder)
    reloaded = auto_class.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(INPUT).logits, pruner.model.eval()(INPUT).logits, rtol=0, atol=TOLERANCE)


def test_structured_then_unstructured_reloads(tmp_path):
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    pruner.prune(_structured(), dataset=[TEXT], show_progress=False)
    pruner.prune(PruningConfig(target="unstructured", sparsity=0.5, method="magnitude"), show_progress=False)
    _reload_equal(pruner, tmp_path / "llama")


def test_structured_twice_reloads(tmp_path):
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    pruner.prune(_structured(0.2), dataset=[TEXT], show_progress=False)
    pruner.prune(_structured(0.2), dataset=[TEXT], show_progress=False)
    _reload_equal(pruner, tmp_path / "twice")


def test_depth_then_structured_reloads(tmp_path):
    pruner = PrunerForCausalLM(tiny_llama(num_hidden_layers=4), make_tokenizer())
    pruner.prune(
        PruningConfig(
            target="structured", structures=["layers"], sparsity=0.25, reconstruction="none", num_samples=4, seqlen=32
        ),
        dataset=[TEXT],
        show_progress=False,
    )
    pruner.prune(_structured(0.2), dataset=[TEXT], show_progress=False)
    _reload_equal(pruner, tmp_path / "depth")


def test_legacy_family_structured_then_unstructured_reloads(tmp_path):
    """BERT keeps the older format (its head size is derived from hidden_size / heads)."""
    pruner = PrunerForSequenceClassification(tiny_bert(), make_tokenizer())
    pruner.prune(_structured(), dataset=[TEXT], show_progress=False)
    assert pruner.model.config.quantization_config == {"quant_method": "optimum_prune"}
    pruner.prune(PruningConfig(target="unstructured", sparsity=0.5, method="magnitude"), show_progress=False)
    _reload_equal(pruner, tmp_path / "bert", AutoModelForSequenceClassification)


# ---- issue 26, fault 8: a damaged config names the layer and the key ---------------------------------------------
def test_damaged_per_layer_config_names_layer(saved, tmp_path):
    import shutil

    folder, _ = saved["llama"]
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    config = json.loads((damaged / "config.json").read_text())
    layer = sorted(config["per_layer_config"])[0]
    config["per_layer_config"][layer]["intermediate_size"] = -3
    (damaged / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=rf"layer {int(layer)}: intermediate_size is -3"):
        AutoModelForCausalLM.from_pretrained(damaged)


@pytest.mark.parametrize("damage", ["empty", "negative", "missing"])
def test_damaged_legacy_layout_names_layer(tmp_path, damage):
    import shutil

    damaged = tmp_path / "legacy"
    shutil.copytree(LEGACY, damaged)
    config = json.loads((damaged / "config.json").read_text())
    layers = config["pruning"]["layers"]
    if damage == "empty":
        layers[1] = {}
        pattern = r"layers\[1\]` is empty"
    elif damage == "negative":
        layers[1]["intermediate_size"] = -1
        pattern = r"layers\[1\]`\.intermediate_size is -1"
    else:
        del layers[1]["num_key_value_heads"]
        pattern = r"layers\[1\]` has no 'num_key_value_heads'"
    (damaged / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=pattern):
        AutoModelForCausalLM.from_pretrained(damaged)
