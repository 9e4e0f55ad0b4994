"""The architecture matrix (tests/architectures_matrix.py): every family gets every check.

For every entry: SparseGPT at 50% and Wanda at 2:4 meet the request counted from the weights of every targeted
matrix, with no matrix fully zeroed and nothing outside the targets changed; causal LMs still generate; the sparse
checkpoint reloads in a fresh process (after `import optimum_prune`, and in plain transformers) into the same
logits, bit for bit where the dense save/reload is. Entries with a structured adapter are pruned with LIAR within
the budget and reload the same way; where declared, the entry's `plain_recipe` gives a uniform structured checkpoint
that plain transformers loads. Entries without an adapter get a one-line error. All reloads run in ONE subprocess
(see `reloads`).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from architectures_matrix import ARCHITECTURES, PLAIN_RELOAD, STRUCTURED, ArchitectureEntry
from conftest import make_tokenizer
from transformers.pytorch_utils import Conv1D

from optimum_prune import (
    PrunerForCausalLM,
    PrunerForSequenceClassification,
    PruningConfig,
    UnsupportedArchitectureError,
)

IDS = [entry.name for entry in ARCHITECTURES]
_EXPERT = re.compile(r"^(?P<module>.+)\.(?P<parameter>\w+)\[(?P<expert>\d+)\]$")
#: Module names that are never sparsified by default (outside the blocks, or routers).
_NOT_TARGETED = re.compile(
    r"(lm_head|embed|classifier|pooler|score|qa_outputs|(^|\.)(gate|router|shared_expert_gate)$)"
)


def _pruner(entry: ArchitectureEntry, model=None):
    pruner_class = PrunerForCausalLM if entry.is_causal_lm else PrunerForSequenceClassification
    return pruner_class(model if model is not None else entry.build(), make_tokenizer())


def _data(entry: ArchitectureEntry, texts: list[str], sentences: list[str]):
    return texts if entry.is_causal_lm else sentences


def _prune(entry, texts, sentences, **config):
    pruner = _pruner(entry)
    config = PruningConfig(**{"dataset": _data(entry, texts, sentences), "num_samples": 2, "seqlen": 32, **config})
    pruner.prune(config, show_progress=False)
    return pruner


def _matrix(model: torch.nn.Module, name: str) -> torch.Tensor:
    """The `[out, in]` matrix a summary name points to, read from the model independently of the library."""
    match = _EXPERT.match(name)
    if match:
        module = model.get_submodule(match["module"])
        stacked = getattr(module, match["parameter"])[int(match["expert"])]
        return stacked.T if getattr(module, "is_transposed", False) else stacked
    module = model.get_submodule(name)
    return module.weight.T if isinstance(module, Conv1D) else module.weight


def _expected_targets(model: torch.nn.Module) -> set[str]:
    """Every matrix inside a repeated block (a name with a list index) that the defaults should sparsify."""
    names = set()
    for name, module in model.named_modules():
        if not re.search(r"\.\d+(\.|$)", name) or _NOT_TARGETED.search(name):
            continue
        if isinstance(module, (torch.nn.Linear, Conv1D)):
            names.add(name)
        for parameter, value in module.named_parameters(recurse=False):
            if value.dim() == 3 and hasattr(module, "is_transposed"):
                names.update(f"{name}.{parameter}[{e}]" for e in range(value.shape[0]))
    return names


def _check_targets(entry, pruner, check_matrix) -> None:
    summary = pruner.summary
    model = pruner.model
    targeted = set(summary["modules"])
    assert targeted, "nothing was sparsified"
    assert targeted | {n for n, why in summary["skipped"].items() if "divisible" in why} == _expected_targets(model)
    zeros = total = 0
    for name in targeted:
        weight = _matrix(model, name)
        assert not torch.all(weight == 0), f"{name} was zeroed entirely"
        check_matrix(name, weight)
        counted = float((weight == 0).sum()) / weight.numel()
        assert summary["modules"][name] == pytest.approx(counted), name
        zeros += int((weight == 0).sum())
        total += weight.numel()
    assert summary["sparsity_achieved"] == pytest.approx(zeros / total)
    # Nothing outside the targeted matrices changed (embeddings, heads, norms, routers, skipped matrices).
    original = entry.build().state_dict()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, original[k])}
    owners = {re.sub(r"\[\d+\]$", "", name) for name in targeted}
    assert all(k.rpartition(".")[0] in owners or k in owners for k in changed), sorted(changed)[:5]


@pytest.mark.parametrize("entry", ARCHITECTURES, ids=IDS)
def test_unstructured_sparsegpt(entry, texts, sentences):
    pruner = _prune(entry, texts, sentences, target="unstructured", sparsity=0.5, method="sparsegpt")

    def exactly_half_per_row(name, weight):
        zeros_per_row = (weight == 0).sum(1)
        assert torch.all(zeros_per_row >= weight.shape[1] // 2), name

    _check_targets(entry, pruner, exactly_half_per_row)
    assert not pruner.summary["data_free"], pruner.summary["data_free"]
    if entry.is_causal_lm:
        ids = torch.tensor([[5, 20, 33, 41, 7]])
        generated = pruner.model.generate(ids, max_new_tokens=4, do_sample=False)
        assert generated.shape == (1, 9)


@pytest.mark.parametrize("entry", ARCHITECTURES, ids=IDS)
def test_two_four_wanda(entry, texts, sentences):
    pruner = _prune(entry, texts, sentences, target="2:4", method="wanda")

    def two_of_four(name, weight):
        groups = (weight == 0).reshape(weight.shape[0], -1, 4).sum(-1)
        assert torch.all(groups >= 2), name

    _check_targets(entry, pruner, two_of_four)
    for name, why in pruner.summary["skipped"].items():
        assert "divisible by 4" in why or why.startswith("MoE router"), (name, why)


@pytest.mark.parametrize("entry", ARCHITECTURES, ids=IDS)
def test_structured_liar(entry, texts, sentences):
    if STRUCTURED not in entry.capabilities:
        pruner = _pruner(entry)
        with pytest.raises(UnsupportedArchitectureError) as error:
            pruner.prune(PruningConfig(target="structured", sparsity=0.25, dataset=["x"]), show_progress=False)
        message = str(error.value)
        assert "\n" not in message and "Supported model types: " in message and "llama" in message, message
        return
    pruner = _prune(entry, texts, sentences, target="structured", sparsity=0.25, reconstruction="liar")
    summary = pruner.summary
    assert abs(summary["sparsity_achieved"] - 0.25) < 0.08, summary["sparsity_achieved"]
    assert summary["parameters_after"] < summary["parameters_before"]
    ids = torch.tensor([[5, 20, 33, 41, 7]])
    assert torch.isfinite(pruner.model(ids).logits).all()


# ---- save and reload in one fresh process -------------------------------------------------------------------

_RELOAD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch
    import transformers
    torch.set_num_threads(1)
    manifest = json.load(open(sys.argv[1]))
    results = {}

    def reload(item):
        auto = getattr(transformers, item["auto_class"])
        try:
            model = auto.from_pretrained(item["path"]).eval()
            with torch.no_grad():
                logits = model(torch.tensor(item["ids"])).logits
            expected = torch.load(item["expected"])
            # Again with every parameter in fresh memory: plain transformers hands back tensors at the file's
            # offsets, which odd pruned sizes leave off 64-byte alignment, where CPU kernels round differently.
            for param in model.parameters():
                param.data = param.data.clone()
            with torch.no_grad():
                copied = model(torch.tensor(item["ids"])).logits
            results[item["key"]] = {
                "plugin_loader": item["plugin_loader"],
                "exact": bool(torch.equal(logits, expected)),
                "max_diff": float((logits - expected).abs().max()),
                "copied_exact": bool(torch.equal(copied, expected)),
            }
        except Exception as error:  # reported per entry, so one family's failure does not hide the others
            results[item["key"]] = {"error": f"{type(error).__name__}: {error}"[:500]}

    # Plain transformers first: the plugin must not be needed for these.
    for item in manifest:
        if item["plain"]:
            reload(item)
    assert "optimum_prune" not in sys.modules
    import optimum_prune  # noqa: F401  (registers the loader of pruned checkpoints)
    for item in manifest:
        if not item["plain"]:
            reload(item)
    print(json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def reloads(tmp_path_factory):
    """Dense, 2:4 and (where supported) structured checkpoints of every entry, reloaded in ONE fresh process."""
    from conftest import TEXT

    texts = [TEXT]
    sentences = [s.strip() + "." for s in TEXT.split(".") if s.strip()][:40]
    root = tmp_path_factory.mktemp("reloads")
    manifest = []
    ids = [[5, 20, 33, 41, 7, 12, 60, 2, 18]]

    def add(entry, kind, pruner, plain=False):
        path = root / f"{entry.name}-{kind}"
        pruner.save_pretrained(path)
        with torch.no_grad():
            expected = pruner.model(torch.tensor(ids)).logits
        torch.save(expected, root / f"{entry.name}-{kind}.pt")
        auto = "AutoModelForCausalLM" if entry.is_causal_lm else "AutoModelForSequenceClassification"
        item = {"key": f"{entry.name}/{kind}", "path": str(path), "auto_class": auto, "ids": ids, "plain": plain}
        # A checkpoint that needs no plugin loads through plain transformers even with the plugin imported: its
        # tensors stay at the file's offsets (the plugin's loader, which copies them aligned, is not involved).
        layout = getattr(pruner.model.config, "pruning", None) or {}
        item["plugin_loader"] = bool(layout.get("requires_plugin", False)) and not plain
        manifest.append({**item, "expected": str(root / f"{entry.name}-{kind}.pt")})

    setup_errors = {}
    for entry in ARCHITECTURES:
        try:
            dense = _pruner(entry)
            dense.pruning_config = None
            add(entry, "dense", dense)
            sparse = _prune(entry, texts, sentences, target="2:4", method="wanda")
            add(entry, "2:4", sparse)
            add(entry, "2:4-plain", sparse, plain=True)  # dense safetensors holding zeros: no plugin needed
            if STRUCTURED in entry.capabilities:
                structured = _prune(entry, texts, sentences, target="structured", sparsity=0.25)
                add(entry, "structured", structured)
                if PLAIN_RELOAD in entry.capabilities:
                    if entry.plain_recipe:
                        recipe = {"target": "structured", "sparsity": 0.25, **entry.plain_recipe}
                        structured = _prune(entry, texts, sentences, **recipe)
                    layout = structured.model.config.pruning
                    assert layout["requires_plugin"] is False, f"{entry.plain_recipe_text} needs the plugin"
                    add(entry, "structured-plain", structured, plain=True)
        except Exception as error:  # the entry's own tests report it
            setup_errors[entry.name] = f"{type(error).__name__}: {error}"
    (root / "manifest.json").write_text(json.dumps(manifest))
    (root / "reload.py").write_text(_RELOAD_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, str(root / "reload.py"), str(root / "manifest.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1]), setup_errors


def _same_as_before(results: dict, name: str, kind: str, *, aligned: bool = True) -> None:
    """`aligned=False` for resized checkpoints loaded by plain transformers: bit for bit once the parameters sit in
    fresh memory (the plugin's loader does that copy; plain transformers cannot), within float32 rounding as loaded.
    """
    dense, outcome = results[f"{name}/dense"], results[f"{name}/{kind}"]
    assert "error" not in dense, dense["error"]
    assert "error" not in outcome, outcome["error"]
    if dense["exact"] and aligned:
        assert outcome["exact"], f"dense reload is bit for bit but {kind} differs by {outcome['max_diff']:.3g}"
    elif dense["copied_exact"]:
        assert outcome["copied_exact"], f"dense reload is bit for bit but {kind} differs by {outcome['max_diff']:.3g}"
        assert outcome["max_diff"] <= max(4 * dense["max_diff"], 1e-6), (outcome, dense)
    else:  # within what a dense save/reload of the same family changes
        assert outcome["max_diff"] <= max(4 * dense["max_diff"], 1e-6), (outcome, dense)
    assert math.isfinite(outcome["max_diff"])


@pytest.mark.parametrize("entry", ARCHITECTURES, ids=IDS)
def test_sparse_reload_in_fresh_process(entry, reloads):
    results, setup_errors = reloads
    assert entry.name not in setup_errors, setup_errors.get(entry.name)
    _same_as_before(results, entry.name, "2:4")


@pytest.mark.parametrize("entry", ARCHITECTURES, ids=IDS)
def test_sparse_plain_transformers_reload(entry, reloads):
    results, setup_errors = reloads
    assert entry.name not in setup_errors, setup_errors.get(entry.name)
    _same_as_before(results, entry.name, "2:4-plain")


@pytest.mark.parametrize("entry", ARCHITECTURES, ids=IDS)
def test_structured_reload_in_fresh_process(entry, reloads):
    if STRUCTURED not in entry.capabilities:
        pytest.skip("no structured adapter")
    results, setup_errors = reloads
    assert entry.name not in setup_errors, setup_errors.get(entry.name)
    # Bit for bit where the plugin's loader placed the tensors; a structured checkpoint that needs no plugin (the
    # same sizes in every layer, e.g. Qwen2-MoE's experts) loads through plain transformers at the file's offsets,
    # where AMD's kernels round differently (1.5e-8 on the tiny Qwen2-MoE; Intel's gave the same bits).
    _same_as_before(
        results, entry.name, "structured", aligned=results[f"{entry.name}/structured"].get("plugin_loader", True)
    )


def test_matrix_declarations_are_consistent():
    for entry in ARCHITECTURES:
        if PLAIN_RELOAD in entry.capabilities:
            assert STRUCTURED in entry.capabilities, entry.name
        elif entry.plain_recipe:
            raise AssertionError(f"{entry.name}: a plain_recipe without PLAIN_RELOAD is never checked")
        assert "target" not in entry.plain_recipe, "the plain recipe is a structured run"


@pytest.mark.parametrize("entry", ARCHITECTURES, ids=IDS)
def test_structured_plain_transformers_reload(entry, reloads):
    if PLAIN_RELOAD not in entry.capabilities:
        pytest.skip("uniform structured sizes are not expressible in the family's config (or no adapter)")
    results, setup_errors = reloads
    assert entry.name not in setup_errors, setup_errors.get(entry.name)
    _same_as_before(results, entry.name, "structured-plain", aligned=False)
