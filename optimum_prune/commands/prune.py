"""`optimum-cli prune` and `optimum-prune`: prune a Transformers checkpoint from the command line.

    optimum-cli prune -m MODEL --task causal-lm --target structured --sparsity 0.2 --criterion activation \\
        --reconstruction liar --dataset calibration.txt --num-samples 128 --evaluate ppl OUTPUT

optimum-cli imports this module whenever it starts, for every one of its commands, to build the `prune` sub-parser.
So at module level it imports only the standard library and optimum's CLI base classes, and to build the parser it
reads only the two package modules that import nothing else (configuration.py for the recipe's options, tasks.py for
--task); torch, transformers and the pruning code are imported by `prune_from_args`, once the arguments have been
read. The recipe's options are made from PruningConfig's fields: their names, types, defaults and help.

The command is three modules: this one, its arguments (the parser, and the PruningConfig they give); prune_run.py,
the run (checks, loading, pruning, saving, the dry run); prune_report.py, what the run prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import json
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo

__all__ = [
    "CONFIG_OPTIONS",
    "CLIError",
    "ConfigOption",
    "PruneCommand",
    "add_prune_arguments",
    "config_options",
]

#: --dtype choices; "auto" keeps the dtype the checkpoint was saved in.
DTYPES = ("float32", "bfloat16", "float16", "auto")

DESCRIPTION = """\
Prune a Transformers model without retraining and save it as a checkpoint that reloads with
`import optimum_prune` + `AutoModelFor*.from_pretrained(OUTPUT)`.

Structured pruning (--target structured) removes attention heads and FFN / Mamba channels, so the
model gets smaller; unstructured and N:M targets (--target unstructured, --target 2:4) zero weights.
Calibration text comes from --dataset. Without it, a calibration-free setup still works: --criterion
magnitude, prunenet or random (reconstruction falls back to none), or --target unstructured with
--method magnitude.
"""

EPILOG = """\
examples:
  # offline, on the SmolLM2-135M and the Wikipedia text the install ships (see `python -m optimum_prune.assets`):
  python -m optimum_prune.assets wikipedia wiki.jsonl
  {prog} -m "$(python -m optimum_prune.assets smollm2)" --sparsity 0.2 --criterion activation \\
      --reconstruction liar --dataset wiki.jsonl --num-samples 16 --evaluate ppl --eval-windows 8 smollm2-pruned
  # from the Hub:
  {prog} -m HuggingFaceTB/SmolLM2-135M --sparsity 0.2 --dataset wikitext2 --evaluate ppl ./smollm2-pruned
  {prog} -m ./minilm --task sequence-classification --criterion prunenet --sparsity 0.3 ./minilm-pruned
  # accuracy kept, on local rows with GLUE's columns (sentence,label), into the summary and the model card:
  {prog} -m ./minilm-sst2 --task sequence-classification --criterion magnitude --sparsity 0.3 \\
      --evaluate glue:sst2 --eval-dataset sst2.csv ./minilm-sst2-pruned
  {prog} -m ./llama --target 2:4 --method sparsegpt --dataset c4 ./llama-2of4
"""


class CLIError(Exception):
    """Bad input or a failed step: the message is printed as one line, without a traceback."""


def _light_module(name: str) -> types.ModuleType:
    """`optimum_prune.<name>`, one of the package modules that import only the standard library (configuration,
    tasks).

    optimum-cli loads this command module from its file without running the package's `__init__` (see
    commands/plugin/optimum/commands/register/optimum_prune_prune.py); these modules are then loaded the same way,
    under their own names, so that the package, once `prune` runs and imports it, uses these very modules."""
    module_name = f"optimum_prune.{name}"
    if module_name in sys.modules or "optimum_prune" in sys.modules:
        return importlib.import_module(module_name)
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), f"{name}.py")
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[module_name]
        raise
    return module


@dataclass(frozen=True)
class ConfigOption:
    """One command-line option that sets the `PruningConfig` field of the same name (made by `config_options`).

    `default` is only what --help shows: an option that is not given is not passed, so PruningConfig's own
    default applies.
    """

    field: str
    type: Callable[[str], Any]
    default: Any
    help: str
    nargs: str | None = None
    metavar: str | None = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        # default=None throughout: an option not given leaves the field at PruningConfig's default.
        if self.type is bool:  # --flag / --no-flag
            parser.add_argument(self.flag, action=argparse.BooleanOptionalAction, default=None, help=self.help)
            return
        parser.add_argument(
            self.flag, type=self.type, nargs=self.nargs, default=None, metavar=self.metavar, help=self.help
        )


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f'expected a JSON object such as \'{{"0": {{"sparsity": 0.0}}}}\': {text!r}')
    return value


def _number(text: str) -> int | float:
    """The type of an `int | float` field: an int where the text is one."""
    try:
        return int(text)
    except ValueError:
        return float(text)


#: PruningConfig fields with an option of their own rather than a generated one: --dataset is read here (a path or a
#: name, split for --evaluate ppl), not handed to the pruner as given.
_OWN_OPTIONS = ("dataset",)


def config_options() -> tuple[ConfigOption, ...]:
    """One option per field of `PruningConfig` and of each method's config (`configuration.config_fields`; but
    `dataset`), made from the field itself: --field-name, parsed as its
    annotation says (bool: a --flag / --no-flag pair; list: one or more values, or none where the field cannot be
    None; dict: a JSON object; int, float, else text), with its `metadata["help"]` and its default; the choices of a
    single value (`metadata["choices"]`, or a Literal annotation) are its metavar. PruningConfig checks the values,
    as it does in Python, so a bad one is refused in the same words.

    The model card's "From the command line" recipe writes one of these flags per recorded field, so it runs as
    printed."""
    configuration = _light_module("configuration")
    hints: dict[str, Any] = {}
    for config_class in (configuration.PruningConfig, *configuration.PRUNING_CONFIGS.values()):
        hints.update(typing.get_type_hints(config_class))
    return tuple(
        _config_option(field, hints[field.name])
        for field in configuration.config_fields()
        if field.name not in _OWN_OPTIONS
    )


def _config_option(field: dataclasses.Field, annotation: Any) -> ConfigOption:
    default = field.default_factory() if field.default is dataclasses.MISSING else field.default  # type: ignore[misc]
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = [member for member in typing.get_args(annotation) if member is not type(None)]
        optional = len(members) < len(typing.get_args(annotation))
        annotation = members[0] if len(members) == 1 else _number if set(members) == {int, float} else str
    nargs = metavar = None
    choices = field.metadata.get("choices")
    if typing.get_origin(annotation) is typing.Literal:
        choices = typing.get_args(annotation)
        annotation = type(choices[0])
    if typing.get_origin(annotation) is list:
        (annotation,) = typing.get_args(annotation) or (str,)
        # A field that may be None names at least one item when it is given; a plain list may be emptied.
        nargs = "+" if optional else "*"
    elif annotation is dict or typing.get_origin(annotation) is dict:
        annotation, metavar = _json_object, "JSON"
    elif choices:
        metavar = "{" + ",".join(map(str, choices)) + "}"
    if annotation not in (bool, int, float, _number, _json_object):
        annotation = str
    text = " ".join(field.metadata.get("help", "").split()).replace("%", "%%")  # argparse formats help with %
    if isinstance(default, (dict, list)) and default:
        text += f" (default: {json.dumps(default) if isinstance(default, dict) else ' '.join(map(str, default))})"
    elif default is not None and not isinstance(default, (bool, dict, list)):
        text += f" (default: {default})"
    return ConfigOption(field.name, annotation, default, text, nargs, metavar)


CONFIG_OPTIONS: tuple[ConfigOption, ...] = config_options()


def _evaluation(text: str) -> Any:
    """--evaluate's type: an `EvaluationSpec` (this imports the evaluation package, only when --evaluate is given)."""
    from optimum_prune.evaluation.specs import EvaluationInputError, parse_evaluation

    try:
        return parse_evaluation(text)
    except EvaluationInputError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_prune_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the options of `prune` to `parser` (shared by `optimum-cli prune` and `optimum-prune`); return it."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG.format(prog=parser.prog)
    # The sub-parser optimum-cli creates has the default formatter, which would reflow the description.
    parser.formatter_class = argparse.RawDescriptionHelpFormatter

    model = parser.add_argument_group("model")
    model.add_argument(
        "-m",
        "--model",
        required=True,
        help="model folder, a .gguf file, or a Hub id (needs the Hub or its cache); offline, `python -m "
        "optimum_prune.assets smollm2` prints the path of the SmolLM2-135M .gguf the install ships",
    )
    tasks = _light_module("tasks")
    model.add_argument(
        "--task",
        choices=list(tasks.TASKS),
        default=tasks.DEFAULT_TASK,
        help=f"which head to load the model with (default: {tasks.DEFAULT_TASK})",
    )
    model.add_argument("--gguf-file", default=None, metavar="FILE", help="GGUF file inside the --model folder")
    model.add_argument(
        "--dtype",
        choices=DTYPES,
        default="float32",
        help="load, prune and save in this dtype; auto keeps the checkpoint's own (default: float32)",
    )
    model.add_argument(
        "--device",
        default=None,
        metavar="DEVICE",
        help="compute on this device, e.g. cuda or cuda:1 (default: cpu)",
    )
    model.add_argument("--revision", default=None, help="Hub branch, tag or commit of --model")
    model.add_argument("--token", default=None, help="Hub token for --model and --push-to-hub (default: HF_TOKEN)")
    model.add_argument(
        "--trust-remote-code", action="store_true", help="allow --model's own modeling code from the Hub to run"
    )

    # One group per config (PruningConfig's shared fields, then each method's own), in `config_fields` order.
    configuration = _light_module("configuration")
    groups: dict[type, Any] = {}
    for option in CONFIG_OPTIONS:
        owner = next(
            c
            for c in (configuration.PruningConfig, *configuration.PRUNING_CONFIGS.values())
            if option.field in {f.name for f in dataclasses.fields(c)}
        )
        if owner not in groups:
            groups[owner] = parser.add_argument_group(
                "pruning recipe, every method (PruningConfig's fields and defaults)"
                if owner is configuration.PruningConfig
                else f"pruning recipe, {owner.describes} ({owner.__name__}; refused for other methods)"
            )
        option.add_to(groups[owner])

    data = parser.add_argument_group("calibration and evaluation data")
    data.add_argument(
        "--dataset",
        default=None,
        metavar="FILE_OR_NAME",
        help="calibration text: a .txt/.json/.jsonl/.csv/.parquet file or a folder of such files (one type, read in "
        "sorted order), or wikitext2, c4, ptb (need the Hub), or random-tokens (uniformly random token ids: no data "
        "at all); offline, `python -m optimum_prune.assets wikipedia wiki.jsonl` writes the Wikipedia articles the "
        "install ships",
    )
    data.add_argument("--text-column", default=None, help="text column of a json/csv/parquet --dataset")
    data.add_argument(
        "--evaluate",
        action="append",
        type=_evaluation,
        default=None,
        metavar="KIND",
        help="score the model before and after pruning (repeat for several): ppl (causal-lm: perplexity on "
        "--eval-dataset, else on the last 20%% of --dataset's text, which is then kept out of calibration); "
        "glue:TASK (sequence-classification; TASK: cola, sst2, mrpc, qqp, stsb, mnli, mnli_matched, "
        "mnli_mismatched, qnli, rte, wnli, ax); squad, squad_v2 (question-answering); lm-eval:TASK[,TASK...] "
        "(causal-lm: lm-eval task names or task .yaml files, through lm-eval's Python API; needs the zeroshot "
        "extra), lm-eval:FOLDER[:TASK,...] (the tasks, groups or tags of a folder of task YAML files, e.g. "
        "benchmarks/zeroshot; all of them without :TASK). The values before and after, their retention (after / before) and the time go to the summary, "
        "--json and the model card's model-index",
    )
    data.add_argument(
        "--eval-dataset",
        default=None,
        metavar="FILE_OR_NAME",
        help="data for --evaluate: ppl reads text as --dataset does; glue and squad read a csv/json/jsonl/parquet "
        "file or a folder of them with the task's columns (GLUE: sentence, or sentence1 and sentence2, question "
        "and sentence, premise and hypothesis, question1 and question2, with label; SQuAD: question, context, "
        "answers, optionally id), or a Hub dataset id (default: nyu-mll/glue or rajpurkar/squad[_v2] from the Hub)",
    )
    data.add_argument(
        "--eval-split",
        default=None,
        metavar="SPLIT",
        help="split of a Hub --eval-dataset (default: the task's validation split; wikitext2, c4, ptb: their "
        "evaluation split); local files are read whole",
    )
    data.add_argument(
        "--eval-samples", type=int, default=None, metavar="N", help="--evaluate: score the first N examples"
    )
    data.add_argument(
        "--eval-windows", type=int, default=None, metavar="N", help="ppl: score at most N windows (default: all)"
    )

    out = parser.add_argument_group("output")
    out.add_argument("output", metavar="OUTPUT", help="folder to save the pruned model to")
    out.add_argument("--overwrite", action="store_true", help="write into OUTPUT even if it is a non-empty folder")
    out.add_argument(
        "--push-to-hub",
        default=None,
        metavar="REPO",
        help="also upload OUTPUT to this Hub repository (token: HF_TOKEN or `hf auth login`; endpoint: HF_ENDPOINT)",
    )
    out.add_argument("--private", action="store_true", help="create the --push-to-hub repository as private")
    out.add_argument(
        "--dry-run",
        action="store_true",
        help="print the per-layer plan the run executes, with parameter totals, and write nothing: from the config "
        "alone for a uniform allocation or sparsity; a global allocation reads the weights, and flap / obs allocations, "
        "data-driven global ones and depth pruning need --dataset (read with the weights)",
    )
    out.add_argument("--json", action="store_true", help="print the summary as one JSON object on stdout")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    out.add_argument("--traceback", action="store_true", help="show the traceback of an unexpected error")

    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")

    # Bad arguments get the same one-line `PROG: error: ...` as every other failure (argparse adds a usage block).
    def one_line_error(message: str) -> None:
        print(f"{parser.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)

    parser.error = one_line_error  # type: ignore[method-assign]
    return parser


def _build_config(args: argparse.Namespace) -> Any:
    """The PruningConfig of the recipe options given (the others keep PruningConfig's defaults)."""
    from optimum_prune import PruningConfig

    given = {o.field: getattr(args, o.field) for o in CONFIG_OPTIONS if getattr(args, o.field) is not None}
    try:
        return PruningConfig(**given)
    except (ValueError, TypeError) as err:
        raise CLIError(str(err)) from err


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("optimum-prune")
    except PackageNotFoundError:
        return "unknown"


class PruneCommand(BaseOptimumCLICommand):
    """`optimum-cli prune`: registered by optimum/commands/register/optimum_prune_prune.py (see pyproject.toml)."""

    COMMAND = CommandInfo(name="prune", help="Prune a Transformers model without retraining (optimum-prune).")

    @staticmethod
    def parse_args(parser: argparse.ArgumentParser) -> None:
        add_prune_arguments(parser)

    def run(self) -> None:
        from .prune_run import run_prune

        # optimum-cli ignores run()'s return value, so a failure has to leave through sys.exit to set the status.
        status = run_prune(self.args, prog=self.parser.prog)
        if status:
            sys.exit(status)
