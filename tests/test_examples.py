"""Every script in examples/ runs end to end in its --tiny mode (a tiny random model, seconds) and reports sane numbers.

The real defaults (SmolLM2-135M, MiniLM, Wikipedia text) take minutes on a CPU; they are what the README job runs.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from types import ModuleType
from types import SimpleNamespace as _NS

import pytest
import torch
from huggingface_hub import ModelCard
from huggingface_hub import constants as hf_constants
from huggingface_hub.utils import _http as hf_http
from transformers import AutoModelForCausalLM

try:  # tests/ on sys.path (rootdir-relative import mode, no tests/__init__.py)
    from fake_hub import FakeHub
except ImportError:  # tests/ is a package
    from tests.fake_hub import FakeHub

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FEW_WINDOWS = ["--eval-windows", "4"]


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def example(monkeypatch: pytest.MonkeyPatch):
    """Load examples/NAME.py as a module, with examples/ importable (for its shared tiny_models.py)."""
    monkeypatch.syspath_prepend(str(EXAMPLES))

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


def _sane_perplexity(value: float) -> bool:
    # Random weights over a 128-token vocabulary: near 128, and certainly finite and above 1.
    return math.isfinite(value) and 1.0 < value < 1000.0


def test_prune_causal_lm(example, tmp_path):
    results = example("prune_causal_lm").main(["--tiny", "--output", str(tmp_path), *FEW_WINDOWS])
    dense, pruned = results["dense"], results["pruned"]
    assert pruned["parameters (M)"] < dense["parameters (M)"]
    assert _sane_perplexity(dense["perplexity"]) and _sane_perplexity(pruned["perplexity"])
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.num_parameters() == round(pruned["parameters (M)"] * 1e6)


def test_prune_causal_lm_without_output_leaves_nothing_behind(example, tmp_path, monkeypatch, capsys):
    """The checkpoint is measured in a temporary folder and deleted: repeated runs must not fill the disk."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    results = example("prune_causal_lm").main(["--tiny", *FEW_WINDOWS])
    assert results["pruned"]["saved size (MB)"] > 0
    assert list(tmp_path.iterdir()) == []
    assert "now deleted" in capsys.readouterr().out


def test_prune_causal_lm_says_how_long_before_it_starts(example, capsys):
    example("prune_causal_lm").main(["--tiny", *FEW_WINDOWS])
    assert capsys.readouterr().out.splitlines()[0] == "Expected: a few seconds (tiny random model)."


def test_prune_causal_lm_default_is_the_quick_demo_and_full_the_former_one(example):
    demo = example("prune_causal_lm")
    quick, full = demo.parse_args([]), demo.parse_args(["--full"])
    assert (quick.recipe, quick.num_samples, quick.eval_windows) == ("liar", 16, 8)
    assert (full.recipe, full.num_samples, full.eval_windows) == ("obs", 32, 40)  # the former default
    assert demo.parse_args(["--full", "--num-samples", "8"]).num_samples == 8  # options given win
    # Issue 26's goal: the README job within 5 minutes on 2 idle cores, by the timed model of its cost; and it says so.
    assert demo.expected_seconds("liar", 16, 8, 512) <= 300
    assert demo.expectation(quick).startswith("Expected: about ") and "--full: about" in demo.expectation(quick)
    assert demo.expected_seconds("obs", 32, 40, 512) > 2 * demo.expected_seconds("liar", 16, 8, 512)
    assert "no estimate" in demo.expectation(demo.parse_args(["--model", "some/model"]))
    assert "no estimate" in demo.expectation(demo.parse_args(["--allocation", "global"]))


def test_prune_sequence_classifier(example, tmp_path):
    from tiny_models import labelled_sentences

    _, labels = labelled_sentences()
    assert set(labels[1::2]) == {0, 1}  # the example's evaluation half holds both labels
    results = example("prune_sequence_classifier").main(["--tiny", "--output", str(tmp_path)])
    dense, pruned = results["dense"], results["pruned"]
    assert pruned["parameters (M)"] < dense["parameters (M)"]
    assert 0.0 <= dense["accuracy"] <= 1.0 and 0.0 <= pruned["accuracy"] <= 1.0
    assert 0.0 <= pruned["agreement with dense"] <= 1.0
    assert "model-index" in (tmp_path / "README.md").read_text()  # the accuracy went into the card


@pytest.mark.parametrize("method", ["sparsegpt", "admm"])
def test_sparsity_2_4(example, tmp_path, method):
    report = example("sparsity_2_4").main(["--tiny", "--method", method, "--output", str(tmp_path), *FEW_WINDOWS])
    assert report["pattern_ok"]
    assert len(report["layers"]) == 3
    for row in report["layers"].values():
        assert row["groups breaking it"] == 0
        assert row["zero weights"] == pytest.approx(0.5, abs=0.01)
    pruned = report["results"][f"2:4 {method}"]
    assert pruned["zero weights (pruned Linears)"] == pytest.approx(0.5, abs=0.01)
    assert _sane_perplexity(pruned["perplexity"])


def test_calibration_free(example, tmp_path):
    policy = tmp_path / "policy.safetensors"
    argv = ["--tiny", "--episodes", "2", "--save-policy", str(policy), "--output", str(tmp_path / "model")]
    results = example("calibration_free").main([*argv, *FEW_WINDOWS])
    assert set(results) == {"dense", "prunenet", "magnitude"}
    # Same sparsity and structures: PruneNet and the magnitude baseline keep the same number of channels.
    assert results["prunenet"]["parameters (M)"] == results["magnitude"]["parameters (M)"]
    assert results["prunenet"]["parameters (M)"] < results["dense"]["parameters (M)"]
    assert all(_sane_perplexity(row["perplexity"]) for row in results.values())
    assert policy.exists()


def test_push_to_hub_against_a_local_hub(example, tmp_path, monkeypatch):
    repo_id = "fake-user/tiny-pruned"
    with FakeHub(token="fake-token") as hub:
        # huggingface_hub reads HF_ENDPOINT at import, so this process's copy is patched (as in test_hub.py); the
        # token is read from HF_TOKEN at each call, as a user running the script would set it.
        monkeypatch.setattr(hf_constants, "ENDPOINT", hub.endpoint)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_http, "time", _NS(sleep=lambda _seconds: None))
        monkeypatch.setenv("HF_TOKEN", "fake-token")
        try:
            result = example("push_to_hub").main(["--tiny", "--repo-id", repo_id, "--private", *FEW_WINDOWS])
        finally:
            hf_http.close_session()
        served = hub.files(repo_id)
        assert hub.repos[repo_id].private
        endpoint = hub.endpoint

    assert result["url"].startswith(f"{endpoint}/{repo_id}/commit/") and result["endpoint"] == endpoint
    assert {"README.md", "config.json", "model.safetensors", "pruning_config.json"} <= set(result["files"])
    assert set(result["files"]) == set(served)
    card = ModelCard(served["README.md"].decode())
    assert card.data.to_dict()["model-index"][0]["results"][0]["metrics"][0]["type"] == "perplexity"
    assert result["parameters"]["pruned"] < result["parameters"]["dense"]
    # What went up is a loadable checkpoint.
    (tmp_path / "download").mkdir()
    for name, data in served.items():
        (tmp_path / "download" / name).write_bytes(data)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "download")
    assert model.num_parameters() == result["parameters"]["pruned"]
    assert torch.isfinite(model(torch.tensor([[5, 6, 7]])).logits).all()


@pytest.mark.parametrize(
    "name", ["prune_causal_lm", "prune_sequence_classifier", "sparsity_2_4", "calibration_free", "push_to_hub"]
)
def test_every_example_runs_with_tiny_alone(example, name, tmp_path, monkeypatch):
    """The README's promise, as a user types it: `python examples/NAME.py --tiny`, no other argument (push_to_hub
    then stops before the upload and needs neither a token nor a network)."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # whatever the example writes goes here
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    assert EXAMPLES.joinpath(f"{name}.py").exists()
    result = example(name).main(["--tiny"])
    assert result


def test_push_to_hub_without_repo_id_uploads_nothing(example, tmp_path, capsys):
    result = example("push_to_hub").main(["--tiny", "--output", str(tmp_path / "model"), *FEW_WINDOWS])
    assert result["url"] is None and result["repo_id"] is None
    assert {"README.md", "config.json", "model.safetensors"} <= set(result["files"])
    assert set(result["files"]) == {p.name for p in (tmp_path / "model").iterdir()}
    assert "nothing was uploaded" in capsys.readouterr().out


def test_push_to_hub_needs_repo_id_for_a_real_run(example, capsys):
    with pytest.raises(SystemExit) as done:
        example("push_to_hub").main([])
    assert done.value.code == 2
    assert "--repo-id is required" in capsys.readouterr().err
