"""`optimum-cli prune` and `optimum-prune`: the installed commands, their options, their output and their errors.

Two runs go through the installed console scripts as subprocesses (the optimum-cli plugin discovery and the exit
status are only real there); the many bad-input cases call `optimum_prune.cli.main` in this process, which is the
same code without the seconds a fresh `import torch` costs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import TEXT, make_tokenizer, tiny_llama
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.cli import build_parser, main
from optimum_prune.commands.prune import CONFIG_OPTIONS
from optimum_prune.commands.prune_run import split_for_evaluation
from optimum_prune.configuration import config_fields

INPUT_IDS = torch.tensor([[2, 20, 11, 8, 4, 60, 30, 21, 22, 5, 9, 70, 40, 3]])
# A structured run small enough for seconds: 4 calibration windows of 32 characters.
RECIPE = ["--sparsity", "0.3", "--criterion", "activation", "--reconstruction", "liar", "--round-to", "2"]
DATA = ["--num-samples", "4", "--seqlen", "32"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _script(name: str) -> str:
    """The console script installed next to this interpreter (the venv's bin/), else the one on PATH."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    assert found, f"{name} is not installed: run `pip install -e .` first"
    return found


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # One thread, as in this process (see one_thread): seconds instead of minutes on a busy machine, same numbers.
    env = dict(
        os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1"
    )
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


#: Appended to the code `_imports_in_fresh_python` runs: which of the heavy packages it imported, as JSON.
_REPORT_IMPORTS = (
    "\nimport json, sys\n"
    "print('IMPORTED', json.dumps([m for m in ('torch', 'transformers', 'optimum_prune') if m in sys.modules]))"
)


def _imports_in_fresh_python(code: str, cwd: Path) -> tuple[list[str] | None, subprocess.CompletedProcess]:
    """Run `code` in a fresh interpreter; return which of torch, transformers and optimum_prune it imported
    (None if it never got to the end) and the finished process."""
    done = _run([sys.executable, "-c", code + _REPORT_IMPORTS], cwd=cwd)
    lines = [line for line in done.stdout.splitlines() if line.startswith("IMPORTED ")]
    return (json.loads(lines[-1].removeprefix("IMPORTED ")) if lines else None), done


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """A saved tiny LLaMA with its character tokenizer, a calibration text file, and a GPT-2 (unsupported)."""
    root = tmp_path_factory.mktemp("cli")
    model = root / "tiny-llama"
    tiny_llama().save_pretrained(model)
    make_tokenizer().save_pretrained(model)
    gpt2 = root / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=128)).save_pretrained(gpt2)
    make_tokenizer().save_pretrained(gpt2)
    text = root / "calibration.txt"
    text.write_text(TEXT, encoding="utf-8")
    (root / "latin1.txt").write_bytes("Café au lait, crème brûlée. ".encode("latin-1") * 50)
    return SimpleNamespace(root=root, model=model, gpt2=gpt2, text=text)


def _logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(INPUT_IDS).logits


# ---- the installed commands ------------------------------------------------------------------------------------


def test_optimum_cli_finds_prune_and_help_lists_the_options(work):
    listing = _run([_script("optimum-cli"), "--help"], cwd=work.root)
    assert "prune" in listing.stdout, listing.stdout + listing.stderr

    done = _run([_script("optimum-cli"), "prune", "--help"], cwd=work.root)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: optimum-cli prune")
    for flag in ["--model", "--task", "--gguf-file", "--dataset", "--evaluate", "--eval-dataset", "--push-to-hub"]:
        assert flag in done.stdout
    for option in CONFIG_OPTIONS:
        assert option.flag in done.stdout
    assert "OUTPUT" in done.stdout


def test_optimum_cli_startup_does_not_import_torch(work):
    # optimum-cli imports every registered plugin for every command: `prune` must not make them all pay for torch.
    code = (
        "import sys\n"
        "sys.argv = ['optimum-cli', 'prune', '--help']\n"
        "from optimum.commands.optimum_cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass"
    )
    imported, done = _imports_in_fresh_python(code, cwd=work.root)
    assert imported == [], done.stdout[-500:] + done.stderr


def test_optimum_cli_prune_saves_a_model_that_reloads_with_identical_logits(work, tmp_path):
    output = tmp_path / "pruned"
    command = [_script("optimum-cli"), "prune", "-m", str(work.model), *RECIPE, "--dataset", str(work.text), *DATA]
    done = _run([*command, "--no-progress", str(output)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    # The same recipe in this process: the CLI's checkpoint must be exactly that pruned model.
    pruner = PrunerForCausalLM.from_pretrained(work.model)
    config = PruningConfig(
        sparsity=0.3, criterion="activation", reconstruction="liar", round_to=2, num_samples=4, seqlen=32
    )
    pruner.prune(config, dataset=str(work.text), show_progress=False)
    reloaded = AutoModelForCausalLM.from_pretrained(output).eval()
    assert reloaded.num_parameters() == pruner.summary["parameters_after"] < pruner.summary["parameters_before"]
    assert torch.equal(_logits(reloaded), _logits(pruner.model))  # one thread in both processes: same arithmetic

    saved = json.loads((output / "pruning_config.json").read_text())
    assert (saved["criterion"], saved["reconstruction"], saved["sparsity"]) == ("activation", "liar", 0.3)
    assert saved["dataset"] == str(work.text)  # the whole file calibrated, so its name is the recipe's data
    assert "| before |" in done.stdout and "| after |" in done.stdout
    assert f"{pruner.summary['parameters_after']:,}" in done.stdout


def test_optimum_prune_script_runs_calibration_free_and_reports_perplexity(work, tmp_path):
    output = tmp_path / "pruned"
    command = [_script("optimum-prune"), "-m", str(work.model), "--criterion", "magnitude", "--sparsity", "0.25"]
    command += ["--evaluate", "ppl", "--eval-dataset", str(work.text), "--seqlen", "32", "--eval-windows", "3"]
    done = _run([*command, "--no-progress", str(output)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr

    assert "no reconstruction" in done.stdout  # the default liar needs data: dropped, and said so
    header = next(line for line in done.stdout.splitlines() if line.startswith("| model"))
    assert "perplexity" in header and "size on disk (MB)" in header
    saved = json.loads((output / "pruning_config.json").read_text())
    assert (saved["criterion"], saved["reconstruction"], saved["dataset"]) == ("magnitude", "none", None)
    card = (output / "README.md").read_text()
    assert "model-index" in card and "perplexity" in card


def test_optimum_cli_bad_input_exits_non_zero_with_one_line(work, tmp_path):
    output = tmp_path / "never"
    done = _run([_script("optimum-cli"), "prune", "-m", str(tmp_path / "no-such-model"), str(output)], cwd=tmp_path)
    assert done.returncode == 1
    assert _error_lines(done.stderr) == [
        f"optimum-cli prune: error: Model path {str(tmp_path / 'no-such-model')!r} does not exist."
    ]
    assert not output.exists()


# ---- options and their defaults ----------------------------------------------------------------------------------


def test_every_recipe_field_is_an_option_with_pruning_configs_default():
    # The model card's command-line recipe writes one flag per recorded field: each must exist here.
    fields = {f.name: f for f in config_fields()}  # the common fields and each method's config's
    assert {o.field for o in CONFIG_OPTIONS} == set(fields) - {"dataset"}
    for option in CONFIG_OPTIONS:
        field = fields[option.field]
        default = field.default_factory() if field.default is dataclasses.MISSING else field.default
        assert option.default == default, option.field


def test_help_names_every_registered_choice():
    from optimum_prune.configuration import ALLOCATIONS, STRUCTURE_KINDS
    from optimum_prune.criteria import CRITERIA
    from optimum_prune.data.calibration import NAMED_DATASETS
    from optimum_prune.evaluation.specs import EVALUATION_KINDS, GLUE_TASKS
    from optimum_prune.reconstruction import RECONSTRUCTIONS
    from optimum_prune.sparsity import SPARSITY_METHODS

    # The help is written out (optimum-cli must not import the registries to show it); it must not fall behind them.
    text = " ".join(build_parser().format_help().split())
    for name in [*CRITERIA, *RECONSTRUCTIONS, *SPARSITY_METHODS, *STRUCTURE_KINDS, *ALLOCATIONS, *NAMED_DATASETS]:
        assert name in text, name
    for name in [*EVALUATION_KINDS, *GLUE_TASKS]:  # --evaluate's kinds and glue:TASK's tasks
        assert name in text, name


def test_every_config_field_has_help_and_an_option_that_reads_back_what_the_card_writes():
    # The options are made from PruningConfig's fields: a new field needs a help text, and the model card's command
    # line (one flag per recorded field) must give back the same config, whatever the field's type.
    from optimum_prune.commands.prune import _build_config
    from optimum_prune.serialization.hub import _cli_option

    for field in config_fields():
        assert field.metadata.get("help", "").strip(), f"PruningConfig.{field.name} has no metadata['help']"
    text = "".join(build_parser().format_help().split())  # without the line breaks argparse puts anywhere
    for option in CONFIG_OPTIONS:
        assert option.flag in text and "".join(option.help.split()).replace("%%", "%") in text, option.field

    # Every field, in the config of its method (a field of another method's config is refused).
    sparsity = PruningConfig(
        target="unstructured",
        sparsity=0.3,
        method="admm",
        mask_scope="layer",
        allow_sparsity_shortfall=True,
        layer_overrides={"0": {"sparsity": 0.1}},
        module_sparsity={"down_proj": 0.2},
        modules_to_not_prune=[],
        sequential_targets=["LlamaDecoderLayer", "re:model.layers.0"],
        solver_options={"iterations": 5, "refit": "cg"},
        num_samples=4,
        seqlen=32,
        damp=0.02,
        seed=3,
    )
    prunenet = PruningConfig(
        criterion="prunenet",
        structures=["ffn_channels", "attention_heads"],
        allow_sparsity_shortfall=True,
        prunenet_learning_rate=0.1,
        prunenet_train_sparsity=0.4,
        prunenet_policy_path="policy.safetensors",
        protect_layers=[0, -1],
    )
    for config in (sparsity, prunenet):
        written = [_cli_option(key, value) for key, value in config.to_dict().items() if value is not None]
        args = build_parser().parse_args(["out", "-m", "model", *shlex.split(" ".join(written))])
        assert _build_config(args).to_dict() == config.to_dict()
    # An option not given leaves its field at PruningConfig's default.
    assert _build_config(build_parser().parse_args(["-m", "model", "out"])).to_dict() == PruningConfig().to_dict()


def test_each_named_choice_is_in_its_fields_help():
    from optimum_prune.configuration import ALLOCATIONS, STRUCTURE_KINDS
    from optimum_prune.criteria import CRITERIA
    from optimum_prune.recipes import RECIPES
    from optimum_prune.reconstruction import RECONSTRUCTIONS
    from optimum_prune.sparsity import SPARSITY_METHODS

    # The registries import torch, so PruningConfig's help (which --help shows) spells their names out.
    helps = {option.field: option.help for option in CONFIG_OPTIONS}
    for field, names in [
        ("criterion", CRITERIA),
        ("reconstruction", RECONSTRUCTIONS),
        ("method", SPARSITY_METHODS),
        ("allocation", ALLOCATIONS),
        ("structures", STRUCTURE_KINDS),
        ("recipe", RECIPES),
    ]:
        for name in names:
            assert f"'{name}'" in helps[field], (field, name)


def test_the_task_table_is_what_the_pruners_the_command_line_and_the_card_use():
    import transformers

    import optimum_prune
    from optimum_prune.serialization.hub import create_model_card
    from optimum_prune.tasks import DEFAULT_TASK, TASKS

    parser = build_parser()
    assert parser.parse_args(["-m", "model", "out"]).task == DEFAULT_TASK
    for task in TASKS.values():
        pruner = getattr(optimum_prune, task.pruner)
        assert pruner.task is task and pruner.auto_model_class is getattr(transformers, task.auto_class)
        assert (pruner.pipeline_tag, pruner.calibration_format) == (task.pipeline_tag, task.calibration_format)
        assert parser.parse_args(["-m", "model", "--task", task.name, "out"]).task == task.name
        card = create_model_card(
            base_model="org/model",
            pipeline_tag=task.pipeline_tag,
            pruning_config=PruningConfig(criterion="magnitude").to_dict(),
            summary={"parameters_before": 10, "parameters_after": 8, "sparsity_achieved": 0.2},
        ).text
        assert f"{task.pruner}.from_pretrained('org/model')" in card and f"{task.auto_class}.from_pretrained" in card
        assert (f"--task {task.name}" in card) == (task.name != DEFAULT_TASK)


@pytest.mark.parametrize(
    "recipe, need",
    [
        ({"criterion": "magnitude", "reconstruction": "none"}, None),
        ({"criterion": "magnitude", "reconstruction": "liar"}, ("reconstruction", True)),
        ({"criterion": "activation", "reconstruction": "none"}, ("criterion", False)),
        ({"target": "2:4", "method": "magnitude"}, None),
        ({"target": "unstructured", "method": "wanda"}, ("method", False)),
    ],
)
def test_one_rule_for_runs_without_calibration_data(recipe, need):
    from optimum_prune.planning import calibration_need
    from optimum_prune.pruners import _drop_reconstruction_without_data

    config = PruningConfig(**recipe)
    found = calibration_need(config)
    assert (found and (found.field, found.falls_back)) == need
    if config.is_structured:  # prune() falls back, loudly, exactly where the command line does
        falls_back = bool(need and need[1])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ran = _drop_reconstruction_without_data(config)
        assert bool(caught) == falls_back
        assert ran.reconstruction == ("none" if falls_back else config.reconstruction)


def test_split_for_evaluation_keeps_the_last_fifth_out_of_calibration():
    texts = [f"article {i}" for i in range(20)]
    calibration, evaluation = split_for_evaluation(texts)
    assert calibration == texts[:16] and evaluation == "\n\n".join(texts[16:])

    calibration, evaluation = split_for_evaluation(["one two three four five six seven eight nine ten"])
    assert len(calibration) == 1 and calibration[0].endswith("eight") and evaluation == "nine ten"


# ---- bad input: one line on stderr, non-zero status, nothing written --------------------------------------------------


@pytest.mark.parametrize(
    "arguments, status, message",
    [
        (["--criterion", "hessian", "--dataset", "{text}"], 1, "Unknown criterion 'hessian'. Choose one of:"),
        (["--sparsity", "1.0", "--dataset", "{text}"], 1, "sparsity must be in [0, 1), got 1.0"),
        (["--sparsity", "lots"], 2, "argument --sparsity: invalid float value: 'lots'"),
        (["--target", "3:2"], 1, "N:M target '3:2' needs 0 < N < M"),
        (["--layer-overrides", "[1]"], 2, "argument --layer-overrides: expected a JSON object"),
        ([], 1, "--criterion activation ranks channels on calibration data: pass --dataset"),
        (["--criterion", "magnitude", "--reconstruction", "liar"], 1, "--reconstruction liar refits layers on"),
        (["--target", "2:4", "--method", "wanda"], 1, "--method wanda solves each layer on calibration data"),
        (["--dataset", "{root}/missing.txt"], 1, "Cannot read --dataset"),
        (
            ["--dataset", "{text}", "--task", "sequence-classification", "--evaluate", "ppl"],
            1,
            "needs --task causal-lm",
        ),
        (["--evaluate", "ppl", "--criterion", "magnitude"], 1, "--evaluate ppl needs text"),
        (["--gguf-file", "model.gguf", "--criterion", "magnitude"], 1, "--gguf-file 'model.gguf' is not in"),
        (["--dataset", "{text}", "--layer-overrides", '{"9": {"sparsity": 0.1}}'], 1, "name layers [9], but"),
        (["--sparsity", "-0.1", "--dataset", "{text}"], 1, "got -0.1: it is the fraction to remove, not a negative"),
        (
            ["--target", "unstructured", "--method", "obs", "--dataset", "{text}"],
            1,
            "Unknown method 'obs'. Choose one",
        ),
        (["--method", "wanda", "--dataset", "{text}"], 1, "method='wanda' is an option of unstructured and N:M"),
        (["--seqlen", "300", "--dataset", "{text}"], 1, "seqlen=300 is longer than the 256 positions llama models"),
        (["--dataset", "{root}/latin1.txt"], 1, "/latin1.txt' is not UTF-8 text"),
        (["--sparsity", "0.999", "--dataset", "{text}"], 1, "sparsity=0.999 cannot be met"),
        (["--sparsity", "0.999", "--criterion", "magnitude", "--dry-run"], 1, "sparsity=0.999 cannot be met"),
        (["--dtype", "float8"], 2, "argument --dtype: invalid choice: 'float8'"),
    ],
)
def test_bad_recipe(work, tmp_path, capsys, arguments, status, message):
    output = tmp_path / "out"
    arguments = [a.replace("{text}", str(work.text)).replace("{root}", str(work.root)) for a in arguments]
    assert main(["-m", str(work.model), *DATA, *arguments, "--no-progress", str(output)]) == status
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("optimum-prune: error: "), lines
    assert message in lines[0]
    assert list(tmp_path.iterdir()) == []  # no output, no half-written staging folder


def test_missing_model_and_unsupported_architecture(work, tmp_path, capsys):
    output = tmp_path / "out"
    assert main(["-m", str(tmp_path / "nowhere"), "--criterion", "magnitude", str(output)]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert main(["-m", str(work.gpt2), "--criterion", "magnitude", str(output)]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1, lines
    assert lines[0].startswith("optimum-prune: error: optimum_prune does not support model_type 'gpt2'")
    supported = lines[0].split("Supported model types: ")[1]
    assert "bert" in supported and "llama" in supported
    assert list(tmp_path.iterdir()) == []


def test_output_that_is_a_file_or_a_full_folder_is_left_alone(work, tmp_path, capsys):
    as_file = tmp_path / "model.bin"
    as_file.write_bytes(b"keep me")
    assert main(["-m", str(work.model), "--criterion", "magnitude", str(as_file)]) == 1
    assert "is a file" in capsys.readouterr().err
    assert as_file.read_bytes() == b"keep me"

    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    assert main(["-m", str(work.model), "--criterion", "magnitude", str(full)]) == 1
    assert "--overwrite" in capsys.readouterr().err
    assert [p.name for p in full.iterdir()] == ["notes.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "model.bin"]


def test_random_tokens_dataset_runs_a_data_driven_recipe_without_text(work, tmp_path):
    output = tmp_path / "pruned"
    command = [_script("optimum-prune"), "-m", str(work.model), "--sparsity", "0.25", "--criterion", "activation"]
    command += ["--dataset", "random-tokens", "--num-samples", "4", "--seqlen", "32", "--no-progress"]
    done = _run([*command, str(output)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    saved = json.loads((output / "pruning_config.json").read_text())
    assert (saved["criterion"], saved["reconstruction"], saved["dataset"]) == ("activation", "liar", "random-tokens")

    refused = _run([*command, "--evaluate", "ppl", str(tmp_path / "never")], cwd=tmp_path)
    assert refused.returncode == 1
    assert _error_lines(refused.stderr) == [
        "optimum-prune: error: --dataset random-tokens holds no text to evaluate on: pass --eval-dataset with "
        "--evaluate."
    ]
    assert not (tmp_path / "never").exists()


# ---- reliability: input folder, dtype, dry run, JSON, version, card recipe ----------------------------------------------


def test_output_that_is_or_holds_the_input_model_is_refused(work, tmp_path, capsys):
    model = tmp_path / "models" / "tiny"
    shutil.copytree(work.model, model)
    before = sorted(p.name for p in model.iterdir())
    for output in (model, model.parent):
        assert main(["-m", str(model), "--criterion", "magnitude", "--overwrite", str(output)]) == 1
        lines = _error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and "is (or contains) the input model" in lines[0], lines
    assert sorted(p.name for p in model.iterdir()) == before
    assert sorted(p.name for p in tmp_path.rglob("*") if p.parent != model) == ["models", "tiny"]

    # --overwrite replaces a checkpoint as a whole, so a folder of other files is refused before pruning.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["-m", str(model), "--criterion", "magnitude", "--overwrite", str(mine)]) == 1
    assert "holds files but no checkpoint" in capsys.readouterr().err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_seqlen_beyond_berts_positions_is_one_line(tmp_path, capsys, sentences):
    from conftest import tiny_bert

    model = tmp_path / "bert"
    tiny_bert().save_pretrained(model)
    make_tokenizer().save_pretrained(model)
    text = tmp_path / "sentences.txt"
    text.write_text("\n".join(sentences))
    capsys.readouterr()  # the progress bars of the saves above
    arguments = ["-m", str(model), "--task", "sequence-classification", "--dataset", str(text), "--seqlen", "300"]
    assert main([*arguments, str(tmp_path / "out")]) == 1
    lines = _error_lines(capsys.readouterr().err)
    assert lines == [
        "optimum-prune: error: seqlen=300 is longer than the 256 positions bert models of this size have "
        "(max_position_embeddings): use seqlen <= 256."
    ]
    assert not (tmp_path / "out").exists()


def test_dtype_bfloat16_keeps_the_checkpoint_bfloat16(work, tmp_path, capsys):
    from safetensors import safe_open

    output = tmp_path / "bf16"
    arguments = ["-m", str(work.model), "--criterion", "magnitude", "--sparsity", "0.25", "--dtype", "bfloat16"]
    assert main([*arguments, "--no-progress", "--json", str(output)]) == 0
    with safe_open(output / "model.safetensors", "pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}
    assert dtypes == {"BF16"}
    assert json.loads((output / "config.json").read_text())["dtype"] == "bfloat16"
    summary = json.loads(capsys.readouterr().out)  # --json: stdout is the JSON object alone
    assert summary["after"]["parameters"] < summary["before"]["parameters"]
    # 2 bytes a parameter, where float32 would take 4.
    assert summary["after"]["size on disk (MB)"] * 1e6 < 2.5 * summary["after"]["parameters"]

    # auto keeps what the checkpoint holds: here the bfloat16 model just written.
    again = tmp_path / "again"
    arguments = ["-m", str(output), "--criterion", "magnitude", "--sparsity", "0.1", "--dtype", "auto"]
    assert main([*arguments, "--device", "cpu", "--revision", "main", str(again)]) == 0
    assert json.loads((again / "config.json").read_text())["dtype"] == "bfloat16"


def test_dry_run_prints_the_plan_and_writes_nothing(work, tmp_path, capsys):
    output = tmp_path / "never"
    arguments = ["-m", str(work.model), "--criterion", "magnitude", "--sparsity", "0.5", "--round-to", "8"]
    assert main([*arguments, "--dry-run", "--json", str(output)]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] is True and plan["target"] == "structured"
    # Per layer 3 KV groups of 2 heads (2,304 parameters each) and 96 FFN channels (144 each), 20,736 in all: half
    # is 10,368; the allocation rounds the coarse unit down (never overshooting it), so floor(1.5) = 1 group removes
    # 2,304, and the 8,064 left are 56 channels, kept 40 = 5 x 8.
    assert plan["layers"] == [{"layer": i, "attention_heads": "6 -> 4", "ffn_channels": "96 -> 40"} for i in range(3)]
    assert not output.exists() and list(tmp_path.iterdir()) == []

    assert main(["-m", str(work.model), "--target", "2:4", "--method", "magnitude", "--dry-run", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "mlp.down_proj 2:4" in printed and "self_attn.q_proj 2:4" in printed
    assert list(tmp_path.iterdir()) == []


def test_version_and_help_answer_without_loading_torch(work):
    done = _run([_script("optimum-prune"), "--version"], cwd=work.root)
    assert done.returncode == 0 and done.stdout.startswith("optimum-prune "), done.stderr
    code = "from optimum_prune.cli import main\nprint('STATUS', main(['--help']))"
    imported, done = _imports_in_fresh_python(code, cwd=work.root)
    assert "STATUS 0" in done.stdout and imported == ["optimum_prune"], done.stdout[-500:] + done.stderr
    for flag in ["--dtype", "--device", "--trust-remote-code", "--revision", "--token", "--dry-run", "--json"]:
        assert flag in done.stdout


def test_the_cards_command_line_recipe_runs_as_written(work, tmp_path, monkeypatch):
    # Relative paths, as a user types them: the card must not show this machine's absolute paths.
    shutil.copytree(work.model, tmp_path / "tiny-llama")
    shutil.copy(work.text, tmp_path / "wiki.txt")
    monkeypatch.chdir(tmp_path)
    arguments = ["-m", "tiny-llama", *RECIPE, "--dataset", "wiki.txt", *DATA, "--evaluate", "ppl"]
    assert main([*arguments, "--eval-windows", "2", "--no-progress", "first"]) == 0
    card = (tmp_path / "first" / "README.md").read_text()
    assert str(tmp_path) not in card
    command = card.split("```bash\n", 1)[1].split("\n```", 1)[0]
    assert command.startswith("optimum-cli prune \\\n    --model tiny-llama \\\n")
    assert "--dataset wiki.txt" in command and "--evaluate ppl" in command

    # The command as printed, in the folder that holds the model: the same recipe and the very same weights.
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rerun = tmp_path / "tiny-llama-pruned"
    assert json.loads((rerun / "pruning_config.json").read_text()) == json.loads(
        (tmp_path / "first" / "pruning_config.json").read_text()
    )
    assert (rerun / "model.safetensors").read_bytes() == (tmp_path / "first" / "model.safetensors").read_bytes()


def test_ctrl_c_after_the_checkpoint_was_swapped_in_says_it_was_saved(work, tmp_path, capsys, monkeypatch):
    from optimum_prune.serialization import save as save_module

    def interrupt(step):
        if step == "swapped":
            raise KeyboardInterrupt

    monkeypatch.setattr(save_module, "_after_step", interrupt)
    output = tmp_path / "pruned"
    assert main(["-m", str(work.model), "--criterion", "magnitude", "--no-progress", str(output)]) == 130
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and "interrupted" not in lines[0], lines
    assert lines[0].startswith("optimum-prune: stopped by Ctrl-C after the save: ") and str(output) in lines[0]
    AutoModelForCausalLM.from_pretrained(output)  # complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pruned"]
