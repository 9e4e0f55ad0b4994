"""`optimum-prune --dry-run` prints the plan the run executes (issues 26 and 27).

Every test compares the dry run's per-layer plan (`--json`: "plan", "totals") with what a real run of the same
command line saves, on a tiny LLaMA and a tiny BERT. A uniform allocation and sparsity patterns are planned from the
config alone (no weights, no data, even when --dataset is given); a global allocation with a calibration-free
criterion reads the weights; flap / obs allocations, global ones with a data-driven criterion and depth pruning
read the weights and --dataset, and without --dataset the dry run stops with one line (exit status 1) saying that
the plan depends on calibration data.

The runs are in this process (`optimum_prune.cli.main`, as in test_cli.py): the same code as the console script.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TEXT, make_tokenizer, tiny_bert, tiny_llama
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from optimum_prune import get_adapter
from optimum_prune.cli import main
from optimum_prune.depth import LinearBridge

#: Small calibration: 4 sequences of 32 tokens.
DATA = ["--num-samples", "4", "--seqlen", "32"]
AUTO = {"llama": AutoModelForCausalLM, "bert": AutoModelForSequenceClassification}
TASK = {"llama": [], "bert": ["--task", "sequence-classification"]}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """Saved tiny models with their tokenizer, each also as a folder holding its config.json alone; calibration
    text for each."""
    root = tmp_path_factory.mktemp("dry-run")
    folders, config_only = {}, {}
    for name, model in (("llama", tiny_llama()), ("bert", tiny_bert())):
        folders[name] = root / name
        model.save_pretrained(folders[name])
        make_tokenizer().save_pretrained(folders[name])
        config_only[name] = root / f"{name}-config-only"
        config_only[name].mkdir()
        shutil.copy(folders[name] / "config.json", config_only[name])
    text = root / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    sentences = root / "sentences.jsonl"
    lines = [json.dumps({"text": s.strip() + "."}) for s in TEXT.split(".") if s.strip()][:40]
    sentences.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return SimpleNamespace(
        root=root, folders=folders, config_only=config_only, data={"llama": text, "bert": sentences}
    )


def _dry_run(capsys, arguments: list[str], output: Path) -> dict:
    capsys.readouterr()
    status = main([*arguments, "--dry-run", "--json", "--no-progress", str(output)])
    captured = capsys.readouterr()
    assert status == 0, captured.err[-2000:]
    assert not output.exists()
    return json.loads(captured.out)


def _run(capsys, arguments: list[str], output: Path) -> dict:
    capsys.readouterr()
    status = main([*arguments, "--json", "--no-progress", str(output)])
    captured = capsys.readouterr()
    assert status == 0, captured.err[-2000:]
    return json.loads(captured.out)


def _unit_counts(model: torch.nn.Module) -> list[dict[str, int]]:
    """Per layer, kind -> units, attention counted in heads (as the plan counts them)."""
    adapter = get_adapter(model)
    counts = []
    for layer in adapter.layers():
        row = {}
        for group in adapter.groups(layer):
            per_unit = adapter.heads_per_unit(layer) if group.kind == "attention_heads" else 1
            row.setdefault(group.kind, group.num_units * per_unit)
        counts.append(row)
    return counts


def _check_structured(plan: dict, family: str, before: Path, after: Path) -> None:
    """The dry run's units before and after, layer by layer, are those of the input and the saved model."""
    sizes_before = _unit_counts(AUTO[family].from_pretrained(before))
    sizes_after = _unit_counts(AUTO[family].from_pretrained(after))
    # The printed rows ("ffn_channels": "96 -> 53"), then the numbers of the JSON plan.
    assert len(plan["layers"]) == len(sizes_before), plan["layers"]
    for row, old, new in zip(plan["layers"], sizes_before, sizes_after):
        assert row == {"layer": row["layer"], **{k: f"{old[k]} -> {new[k]}" for k in row if k != "layer"}}
    assert len(plan["plan"]) == len(sizes_before)
    for entry, old, new in zip(plan["plan"], sizes_before, sizes_after):
        kinds = [key for key in entry if key != "layer"]
        assert kinds, entry
        assert {k: entry[k]["before"] for k in kinds} == {k: old[k] for k in kinds}
        assert {k: entry[k]["after"] for k in kinds} == {k: new[k] for k in kinds}, (plan["layers"], sizes_after)


def _check_totals(plan: dict, run: dict, exact_after: bool = True) -> None:
    totals = plan["totals"]
    assert totals["parameters_before"] == run["before"]["parameters"]
    if exact_after:  # a refit may add biases the plan does not count
        assert totals["parameters_after"] == run["after"]["parameters"]
        assert totals["sparsity"] == pytest.approx(run["after"]["sparsity achieved"], abs=1e-12)


# ---- uniform allocation: the config alone ----------------------------------------------------------------------------

UNIFORM = {
    "llama": ["--sparsity", "0.3", "--round-to", "2"],
    "llama-query-heads-protected-overridden": [
        "--sparsity",
        "0.4",
        "--structures",
        "query_heads",
        "ffn_channels",
        "--protect-layers",
        "0",
        "--layer-overrides",
        '{"2": {"sparsity": 0.1}}',
    ],
    "bert": ["--sparsity", "0.4"],
}


@pytest.mark.parametrize("case", list(UNIFORM))
def test_uniform_dry_run_reads_only_the_config_and_matches_the_run(work, tmp_path, capsys, monkeypatch, case):
    family = case.split("-")[0]
    recipe = [*TASK[family], *UNIFORM[case], "--reconstruction", "none"]
    # The default criterion (activation) ranks channels on data, but the uniform plan does not depend on it: no
    # --dataset is needed, and a folder without weights or tokenizer will do.
    plan = _dry_run(capsys, ["-m", str(work.config_only[family]), *recipe], tmp_path / "never")
    assert plan["reads"] == ["config"] and plan["allocation"] == "uniform"
    # ... and the run itself, which ranks by activation, would need --dataset: the dry run says so.
    assert any("The run itself needs --dataset" in note for note in plan["notes"])

    # With --dataset given, the data is still not read.
    import optimum_prune.data.calibration as calibration

    def refuse(*_args, **_kwargs):
        raise AssertionError("a uniform dry run read the calibration data")

    monkeypatch.setattr(calibration, "load_texts", refuse)
    dataset = ["--dataset", str(work.data[family]), *DATA]
    again = _dry_run(capsys, ["-m", str(work.config_only[family]), *recipe, *dataset], tmp_path / "never")
    assert again["plan"] == plan["plan"] and again["notes"] == []
    monkeypatch.undo()

    output = tmp_path / "pruned"
    run = _run(capsys, ["-m", str(work.folders[family]), *recipe, *dataset], output)
    _check_structured(plan, family, work.folders[family], output)
    _check_totals(plan, run)


def test_uniform_dry_run_with_a_refit_plans_the_same_units(work, tmp_path, capsys):
    # The default recipe (activation, liar): the refit may add biases, which the totals say they leave out.
    arguments = ["-m", str(work.folders["llama"]), "--sparsity", "0.25"]
    plan = _dry_run(capsys, arguments, tmp_path / "never")
    output = tmp_path / "pruned"
    run = _run(capsys, [*arguments, "--dataset", str(work.data["llama"]), *DATA], output)
    _check_structured(plan, "llama", work.folders["llama"], output)
    _check_totals(plan, run, exact_after=False)


# ---- global allocation with a calibration-free criterion: the weights -------------------------------------------------

GLOBAL = {
    "llama-magnitude": ("llama", ["--criterion", "magnitude", "--sparsity", "0.3"]),
    "llama-random": ("llama", ["--criterion", "random", "--sparsity", "0.3", "--seed", "3"]),
    "bert-magnitude": ("bert", ["--criterion", "magnitude", "--sparsity", "0.35"]),
}


@pytest.mark.parametrize("case", list(GLOBAL))
def test_global_dry_run_with_a_weight_criterion_matches_the_run(work, tmp_path, capsys, monkeypatch, case):
    family, recipe = GLOBAL[case]
    arguments = ["-m", str(work.folders[family]), *TASK[family], *recipe, "--allocation", "global"]
    plan = _dry_run(capsys, arguments, tmp_path / "never")
    output = tmp_path / "pruned"
    run = _run(capsys, arguments, output)  # no --dataset: no refit (reconstruction none)
    _check_structured(plan, family, work.folders[family], output)
    _check_totals(plan, run)
    assert plan["reads"] == ["config", "weights"] and plan["allocation"] == "global"
    # Not the uniform plan in disguise: the ranking moves units between layers.
    assert len({json.dumps(entry["ffn_channels"]) for entry in plan["plan"]}) > 1

    # With --dataset given, the same plan, the data unread, and no warning about a missing dataset.
    import optimum_prune.data.calibration as calibration

    monkeypatch.setattr(calibration, "load_texts", lambda *_a, **_k: pytest.fail("read the calibration data"))
    capsys.readouterr()
    dataset = ["--dataset", str(work.data[family]), *DATA]
    assert main([*arguments, *dataset, "--dry-run", "--json", "--no-progress", str(tmp_path / "never")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["plan"] == plan["plan"]
    assert "warning" not in captured.err, captured.err


# ---- plans that depend on calibration data ----------------------------------------------------------------------------

NEEDS_DATA = {
    "flap": ["--allocation", "flap", "--criterion", "magnitude"],
    "obs": ["--allocation", "obs", "--criterion", "magnitude"],
    "global-activation": ["--allocation", "global", "--criterion", "activation"],
    "depth": ["--structures", "layers", "--criterion", "magnitude"],
    "shortgpt": ["--recipe", "shortgpt"],
    "owl": ["--target", "unstructured", "--allocation", "owl", "--method", "magnitude"],
}


@pytest.mark.parametrize("case", list(NEEDS_DATA))
def test_data_driven_dry_run_without_dataset_is_one_line(work, tmp_path, capsys, case):
    capsys.readouterr()
    output = tmp_path / "never"
    arguments = ["-m", str(work.folders["llama"]), "--sparsity", "0.3", *NEEDS_DATA[case]]
    assert main([*arguments, "--dry-run", "--no-progress", str(output)]) == 1
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("optimum-prune: error: --dry-run: this plan depends on calibration data (")
    assert "pass --dataset" in lines[0]
    named = {"depth": "depth pruning", "shortgpt": "depth pruning"}.get(case, f"allocation '{case.split('-')[0]}'")
    assert named in lines[0]
    assert captured.out == "" and not output.exists()


WITH_DATA = {
    # FLAP as its recipe has it (the bias refit may add biases: units only).
    "flap": (["--recipe", "flap", "--sparsity", "0.3"], False),
    "flap-no-refit": (["--allocation", "flap", "--criterion", "fluctuation", "--reconstruction", "none"], True),
    # With --evaluate, the run calibrates on the first 80% of --dataset: so does the dry run.
    "flap-evaluated": (
        ["--allocation", "flap", "--criterion", "fluctuation", "--reconstruction", "none", "--evaluate", "ppl"],
        True,
    ),
    "obs": (["--recipe", "obs", "--sparsity", "0.3"], False),
    "global-activation": (["--allocation", "global", "--criterion", "activation", "--reconstruction", "none"], True),
    "shortgpt": (["--recipe", "shortgpt", "--sparsity", "0.3"], True),
    "shortgpt-linear": (["--recipe", "shortgpt_linear", "--sparsity", "0.3"], True),
}


def _blocks_removed(original: Path, pruned: Path) -> tuple[list[int], list[list[int]]]:
    """(original indices of the removed blocks, the blocks each bridge replaces), from the two checkpoints."""
    before = AutoModelForCausalLM.from_pretrained(original).model.layers
    after = AutoModelForCausalLM.from_pretrained(pruned).model.layers
    kept, bridges = [], []
    for layer in after:
        if isinstance(layer, LinearBridge):
            bridges.append(list(layer.replaced))
            continue
        weight = layer.self_attn.q_proj.weight
        kept += [i for i, old in enumerate(before) if torch.equal(old.self_attn.q_proj.weight, weight)]
    return sorted(set(range(len(before))) - set(kept)), bridges


@pytest.mark.parametrize("case", list(WITH_DATA))
def test_data_driven_dry_run_with_dataset_matches_the_run(work, tmp_path, capsys, case):
    recipe, exact_after = WITH_DATA[case]
    arguments = ["-m", str(work.folders["llama"]), *recipe, "--dataset", str(work.data["llama"]), *DATA]
    plan = _dry_run(capsys, arguments, tmp_path / "never")
    output = tmp_path / "pruned"
    run = _run(capsys, arguments, output)
    if case.startswith("shortgpt"):
        removed, bridges = _blocks_removed(work.folders["llama"], output)
        assert removed, "the run removed no block"
        assert [entry["layer"] for entry in plan["plan"] if not entry["kept"]] == removed
        assert [entry["bridge"] for entry in plan["plan"] if "bridge" in entry] == bridges
        assert bool(bridges) == (case == "shortgpt-linear")
    else:
        _check_structured(plan, "llama", work.folders["llama"], output)
    _check_totals(plan, run, exact_after)
    assert plan["reads"] == ["config", "weights", "data"]


# ---- unstructured and N:M sparsity -------------------------------------------------------------------------------------

SPARSITY = {
    "llama-unstructured": (
        "llama",
        [
            "--target",
            "unstructured",
            "--sparsity",
            "0.5",
            "--module-sparsity",
            '{"down_proj": 0.3}',
            "--layer-overrides",
            '{"1": {"sparsity": 0.2}}',
        ],
    ),
    "llama-2:4": ("llama", ["--target", "2:4"]),
    "bert-unstructured": ("bert", ["--target", "unstructured", "--sparsity", "0.45"]),
}


@pytest.mark.parametrize("case", list(SPARSITY))
def test_sparsity_dry_run_targets_match_the_run(work, tmp_path, capsys, case):
    family, recipe = SPARSITY[case]
    arguments = ["-m", str(work.folders[family]), *TASK[family], *recipe, "--method", "magnitude"]
    plan = _dry_run(capsys, ["-m", str(work.config_only[family]), *arguments[2:]], tmp_path / "never")
    output = tmp_path / "pruned"
    run = _run(capsys, arguments, output)
    _check_totals(plan, run)
    assert plan["reads"] == ["config"]
    modules = json.loads((output / "config.json").read_text())["pruning"]["modules"]
    planned = {
        f"{entry['block']}.{name}": fraction for entry in plan["plan"] for name, fraction in entry["modules"].items()
    }
    assert planned.keys() == modules.keys()
    for name, fraction in planned.items():
        assert modules[name] == pytest.approx(fraction, abs=1e-12), name
    assert len(set(planned.values())) > 1 or case == "llama-2:4" or case.startswith("bert")


@pytest.mark.parametrize("allocation", ["owl", "obs"])
def test_unstructured_allocation_dry_run_with_dataset_matches_the_run(work, tmp_path, capsys, allocation):
    recipe = ["--target", "unstructured", "--sparsity", "0.5", "--allocation", allocation, "--method", "wanda"]
    arguments = ["-m", str(work.folders["llama"]), *recipe, "--dataset", str(work.data["llama"]), *DATA]
    plan = _dry_run(capsys, arguments, tmp_path / "never")
    output = tmp_path / "pruned"
    run = _run(capsys, arguments, output)
    _check_totals(plan, run)
    assert plan["reads"] == ["config", "weights", "data"] and plan["allocation"] == allocation
    modules = json.loads((output / "config.json").read_text())["pruning"]["modules"]
    planned = {
        f"{entry['block']}.{name}": fraction for entry in plan["plan"] for name, fraction in entry["modules"].items()
    }
    assert planned.keys() == modules.keys()
    for name, fraction in planned.items():
        assert modules[name] == pytest.approx(fraction, abs=1e-12), name
    # The allocation gave the blocks different sparsities.
    assert len({round(fraction, 6) for fraction in planned.values()}) > 1
