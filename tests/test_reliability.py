"""Nothing corrupt and nothing silent: every solve is checked, bad input is refused up front with one clear line, and
`import optimum_prune` is light yet still registers the loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from conftest import TEXT, make_tokenizer, tiny_bert, tiny_llama

from optimum_prune import PrunerForCausalLM, PrunerForSequenceClassification, PruningConfig
from optimum_prune.checks import (
    EXPLOSION_FACTOR,
    IllConditionedWarning,
    NonFiniteWeightsError,
    SparsityShortfallError,
    check_solution,
)
from optimum_prune.data.calibration import CalibrationDataError

SMALL = {"num_samples": 4, "seqlen": 64}


def _duplicated_channels_llama() -> torch.nn.Module:
    """Every FFN channel of the second half repeats one of the first half: a singular Gram matrix for LIAR."""
    model = tiny_llama()
    with torch.no_grad():
        for layer in model.model.layers:
            half = layer.mlp.gate_proj.out_features // 2
            layer.mlp.gate_proj.weight[half:] = layer.mlp.gate_proj.weight[:half]
            layer.mlp.up_proj.weight[half:] = layer.mlp.up_proj.weight[:half]
    return model


def _overflowing_fp16_llama() -> torch.nn.Module:
    """A float16 model whose FFN activations overflow (about 1e6 > 65504) on ordinary text."""
    model = tiny_llama().half()
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight.mul_(1e4)
            layer.mlp.up_proj.weight.mul_(1e4)
    return model


# ---- numerics ------------------------------------------------------------------------------------------------------


def test_duplicated_channels_with_no_damping_give_a_finite_reported_fallback(tokenizer, texts, tmp_path):
    pruner = PrunerForCausalLM(_duplicated_channels_llama(), tokenizer)
    originals = [layer.mlp.down_proj.weight.abs().max().item() for layer in pruner.model.model.layers]
    config = PruningConfig(sparsity=0.2, structures=["ffn_channels"], damp=0.0, dataset=texts, **SMALL)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pruner.prune(config, show_progress=False)
    reported = [str(w.message) for w in caught if issubclass(w.category, IllConditionedWarning)]
    # Each layer keeps more than half of its 96 channels, so some duplicated pair is kept whole: singular.
    assert [m.split(":")[0] for m in reported] == [f"layers.{i}.mlp.down_proj" for i in range(3)], reported
    assert all("damp" in m for m in reported)
    for layer, original in zip(pruner.model.model.layers, originals):
        weight = layer.mlp.down_proj.weight
        assert torch.isfinite(weight).all() and weight.abs().max() < 100 * original
    pruner.save_pretrained(tmp_path / "out")  # a finite, reported result may be saved


def test_exploding_and_non_finite_solutions_are_refused_with_the_layer_name():
    original = torch.randn(8, 16)
    check_solution("layers.0.mlp.down_proj", original * 3, original, damp=0.01)  # an ordinary refit passes
    for bad, found in (
        (original * EXPLOSION_FACTOR * 10, "times the original's largest"),
        (torch.where(original > 1, torch.nan, original), "non-finite weights"),
    ):
        with pytest.raises(NonFiniteWeightsError, match="layers.0.mlp.down_proj") as info:
            check_solution("layers.0.mlp.down_proj", bad, original, damp=0.0)
        message = str(info.value)
        assert found in message and "Raise damp" in message and "\n" not in message


@pytest.mark.parametrize("target", ["structured", "unstructured"])
def test_an_overflowing_fp16_model_ends_in_a_clear_error_and_nothing_is_written(tokenizer, texts, tmp_path, target):
    pruner = PrunerForCausalLM(_overflowing_fp16_llama(), tokenizer)
    config = PruningConfig(target=target, sparsity=0.2, dataset=texts, **SMALL)
    with pytest.raises(NonFiniteWeightsError, match=r"layers\.0\.mlp\.down_proj.*overflow in float16.*float32"):
        pruner.prune(config, show_progress=False)
    with pytest.raises(RuntimeError, match="half-pruned"):
        pruner.save_pretrained(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_fp16_statistics_accumulate_in_float64():
    from optimum_prune.pipeline.statistics import InputStatistics

    stats = InputStatistics(4, with_gram=True)
    big = torch.full((4096, 4), 200.0, dtype=torch.float16)  # 4096 x 200^2 = 1.6e8: far beyond float16
    stats.update(big)
    assert stats.gram.dtype == torch.float64 and stats.sum.dtype == torch.float64
    assert stats.gram[0, 0].item() == 4096 * 200.0**2


# ---- bad input: refused before anything changes or is written -------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"sparsity": -0.1}, "sparsity must be in [0, 1), got -0.1: it is the fraction to remove, not a negative"),
        ({"sparsity": 1.0}, "1.0 would remove everything"),
        ({"target": "unstructured", "method": "obs"}, "Unknown method 'obs'. Choose one of:"),
        # With the default structured target, where a method is not used (nor recorded).
        ({"method": "obs"}, "method='obs' is an option of unstructured and N:M sparsity"),
    ],
)
def test_config_refuses_with_one_line(kwargs, message):
    with pytest.raises(ValueError) as info:
        PruningConfig(**kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_seqlen_beyond_the_position_embeddings_is_refused(family, tokenizer, texts, sentences):
    if family == "llama":
        pruner, data = PrunerForCausalLM(tiny_llama(), tokenizer), texts
    else:
        pruner, data = PrunerForSequenceClassification(tiny_bert(), tokenizer), [" ".join(sentences)] * 4
    before = {k: v.clone() for k, v in pruner.model.state_dict().items()}
    with pytest.raises(ValueError, match=f"seqlen=300 is longer than the 256 positions {family} models"):
        pruner.prune(PruningConfig(sparsity=0.2, dataset=data, num_samples=2, seqlen=300), show_progress=False)
    assert all(torch.equal(before[k], v) for k, v in pruner.model.state_dict().items())


def test_non_utf8_calibration_file_is_named(tokenizer, tmp_path):
    latin1 = tmp_path / "notes-latin1.txt"
    latin1.write_bytes("Café au lait, crème brûlée. ".encode("latin-1") * 50)
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    with pytest.raises(CalibrationDataError, match=f"calibration file '{latin1}' is not UTF-8 text"):
        pruner.prune(PruningConfig(sparsity=0.2, dataset=str(latin1), **SMALL), show_progress=False)


@pytest.mark.parametrize("path", ["./no-such-model", "/no/such/model", "models/org/no-such-model"])
def test_missing_local_model_folder_is_said_so(path):
    with pytest.raises(FileNotFoundError, match=f"Model folder '{path}' does not exist"):
        PrunerForCausalLM.from_pretrained(path)


def test_structured_sparsity_that_whole_units_cannot_meet_is_refused_unless_allowed(tokenizer, texts):
    # Per layer 3 KV groups of 2,304 parameters and 96 FFN channels of 144; one of each must stay, so at most
    # 1 - (2,304 + 144) / (3 x 2,304 + 96 x 144) = 88.2% can go, whatever sparsity asks for.
    most = 1 - (2304 + 144) / (3 * 2304 + 96 * 144)
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    before = {k: v.clone() for k, v in pruner.model.state_dict().items()}
    config = PruningConfig(sparsity=0.999, dataset=texts, **SMALL)
    with pytest.raises(SparsityShortfallError, match=rf"sparsity=0.999 cannot be met: .* at most {most:.1%} .*allow_"):
        pruner.prune(config, show_progress=False)
    assert all(torch.equal(before[k], v) for k, v in pruner.model.state_dict().items())

    config = PruningConfig(sparsity=0.999, allow_sparsity_shortfall=True, criterion="magnitude", reconstruction="none")
    pruner.prune(config, show_progress=False)
    assert pruner.summary["sparsity_achieved"] == pytest.approx(most, abs=1e-6)

    # An ordinary request is met within the rounding of whole units (and round_to) and passes.
    for round_to in (1, 8):
        PrunerForCausalLM(tiny_llama(), tokenizer).prune(
            PruningConfig(sparsity=0.3, round_to=round_to, criterion="magnitude", reconstruction="none"),
            show_progress=False,
        )


# ---- a light import that still registers the loader ------------------------------------------------------------------

IMPORT_CHECK = textwrap.dedent(
    """
    import json, sys, time
    start = time.perf_counter()
    import optimum_prune
    from optimum_prune.cli import build_parser
    build_parser().format_help()
    heavy = sorted(m for m in ("torch", "transformers", "numpy") if m in sys.modules)
    # The loader must be in place once transformers is used, although `import optimum_prune` came first.
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
    sizes = [layer.mlp.down_proj.in_features for layer in model.model.layers]
    print(json.dumps({"heavy_after_import": heavy, "sizes": sizes}))
    """
)


def test_import_is_light_and_still_registers_the_loader(tokenizer, texts, tmp_path):
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    # Layers of different sizes: only the registered loader can rebuild them.
    config = PruningConfig(sparsity=0.3, layer_overrides={"0": {"sparsity": 0.0}}, dataset=texts, **SMALL)
    pruner.prune(config, show_progress=False)
    pruner.save_pretrained(tmp_path / "pruned")
    expected = [layer.mlp.down_proj.in_features for layer in pruner.model.model.layers]
    assert len(set(expected)) > 1

    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_CHECK, str(tmp_path / "pruned")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"heavy_after_import": [], "sizes": expected}


def test_lazy_names_resolve():
    import optimum_prune

    assert optimum_prune.PruningConfig is PruningConfig
    assert callable(optimum_prune.get_adapter) and "llama" in optimum_prune.ADAPTERS
    assert optimum_prune.sparsity.SPARSITY_METHODS  # a subpackage, as after an eager import
    with pytest.raises(AttributeError, match="no attribute 'nothing_here'"):
        optimum_prune.nothing_here  # noqa: B018
    _ = make_tokenizer, TEXT
