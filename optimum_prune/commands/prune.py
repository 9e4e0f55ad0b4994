"""`optimum-cli prune` and `optimum-prune`: prune a Transformers checkpoint from the command line.

    optimum-cli prune -m MODEL --task causal-lm --target structured --sparsity 0.2 --criterion activation \\
        --reconstruction liar --dataset calibration.txt --num-samples 128 --evaluate ppl OUTPUT

optimum-cli imports this module whenever it starts, for every one of its commands, to build the `prune` sub-parser.
So at module level it imports only the standard library and optimum's CLI base classes, and to build the parser it
reads only the two package modules that import nothing else (configuration.py for the recipe's options, tasks.py for
--task); torch, transformers and the pruning code are imported by `prune_from_args`, once the arguments have been
read. The recipe's options are made from PruningConfig's fields: their names, types, defaults and help.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import importlib.util
import json
import os
import re
import sys
import time
import types
import typing
import warnings
from collections.abc import Callable, Iterator
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
    "prune_from_args",
    "run_prune",
]

#: --dtype choices; "auto" keeps the dtype the checkpoint was saved in.
DTYPES = ("float32", "bfloat16", "float16", "auto")

#: With --evaluate and no --eval-dataset, calibration uses the first 80% of the --dataset text, evaluation the rest
#: (the protocol of optimum_prune.assets.wikipedia_split).
CALIBRATION_FRACTION = 0.8
#: Below this many texts the 80/20 split cuts the joined text by characters instead of by whole texts.
MIN_TEXTS_TO_SPLIT_BY_TEXT = 10

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


def _tasks() -> dict[str, Any]:
    """--task's values: `optimum_prune.tasks.TASKS`."""
    return _light_module("tasks").TASKS


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
    default_task = _light_module("tasks").DEFAULT_TASK
    model.add_argument(
        "--task",
        choices=list(_tasks()),
        default=default_task,
        help=f"which head to load the model with (default: {default_task})",
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


def run_prune(args: argparse.Namespace, prog: str = "optimum-prune") -> int:
    """Run `prune` for parsed arguments; return the exit status (0 on success).

    Errors are printed on stderr as one line, `PROG: error: ...`; an error found before pruning leaves OUTPUT as it
    was (a checkpoint is only written, all at once, after pruning succeeded).
    """

    def show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        print(f"{prog}: warning: {_one_line(message)}", file=sys.stderr)

    # With --json, stdout carries the JSON object only; the human-readable report goes to stderr.
    as_json = getattr(args, "json", False)
    log: Callable[[str], None] = (lambda line: print(line, file=sys.stderr)) if as_json else print
    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            results = prune_from_args(args, log=log)
        if as_json:
            print(json.dumps(results, default=str))
    except CLIError as err:
        print(f"{prog}: error: {_one_line(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as err:
        saved_to = getattr(err, "saved_to", None)  # set once the new checkpoint is in place (serialization.save)
        if saved_to is None:
            print(f"{prog}: interrupted.", file=sys.stderr)
        else:
            pushing = getattr(args, "push_to_hub", None)
            print(
                f"{prog}: stopped by Ctrl-C after the save: {saved_to} holds the complete pruned checkpoint"
                + (f" (the push to {pushing} may not have finished)." if pushing else "."),
                file=sys.stderr,
            )
        return 130
    except Exception as err:
        if getattr(args, "traceback", False):
            raise
        print(f"{prog}: error: {type(err).__name__}: {_one_line(err)} (--traceback shows where)", file=sys.stderr)
        return 1
    return 0


def prune_from_args(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Load, (evaluate,) prune, (evaluate,) save and (publish) as `args` say; return the results table as a dict.

    Raises:
        CLIError: for bad input (found before anything is written) or a failed load, save or upload.
    """
    output = os.path.abspath(os.path.expanduser(args.output))
    model_path, gguf_file = _resolve_model(args.model, args.gguf_file)
    _check_output_is_not_input(output, model_path)
    _check_output(output, args.overwrite)
    _check_evaluations(args)

    # Everything heavy is imported from here on (see the module docstring).
    with _progress_bars(enabled=not args.no_progress):
        return _prune(args, output, model_path, gguf_file, log)


def _evaluations(args: argparse.Namespace) -> list[Any]:
    """The `EvaluationSpec`s of --evaluate, each once, in the order given."""
    return list(dict.fromkeys(getattr(args, "evaluate", None) or []))


def _evaluates_ppl(args: argparse.Namespace) -> bool:
    return any(spec.kind == "ppl" for spec in _evaluations(args))


def _check_evaluations(args: argparse.Namespace) -> None:
    """--evaluate and its options fit --task and each other (checked before anything is read)."""
    evaluations = _evaluations(args)
    for spec in evaluations:
        if spec.model_task != args.task:
            raise CLIError(
                f"--evaluate {spec} {spec.what_it_scores}: it needs --task {spec.model_task}, not {args.task!r}."
            )
    for flag, value in (("--eval-dataset", args.eval_dataset), ("--eval-split", args.eval_split)):
        if value is not None and not evaluations:
            raise CLIError(f"{flag} is only read with --evaluate.")
    if args.eval_samples is not None and (not evaluations or args.eval_samples < 1):
        raise CLIError(f"--eval-samples {args.eval_samples}: give a number of examples >= 1, with --evaluate.")
    readers = [spec.name for spec in evaluations if spec.reads_dataset]
    if args.eval_dataset and not readers:
        raise CLIError(
            f"--eval-dataset is not read by --evaluate {' '.join(map(str, evaluations))}: lm-eval tasks name their "
            "own data (a task name, or a task YAML file with its data_files)."
        )
    if args.eval_dataset and len(readers) > 1:
        raise CLIError(
            f"--eval-dataset holds the data of one evaluation, and --evaluate {' and '.join(readers)} read theirs: "
            "run them one at a time, or leave out --eval-dataset to read each one's Hub dataset."
        )
    if args.eval_split and args.eval_dataset and os.path.exists(os.path.expanduser(args.eval_dataset)):
        raise CLIError(
            f"--eval-split names a split of a Hub dataset; the local --eval-dataset {args.eval_dataset!r} is read "
            "whole."
        )
    if _evaluates_ppl(args):
        if not (args.dataset or args.eval_dataset):
            raise CLIError("--evaluate ppl needs text: pass --eval-dataset, or --dataset (its last 20% is evaluated).")
        if args.dataset == "random-tokens" and not args.eval_dataset:
            raise CLIError(
                "--dataset random-tokens holds no text to evaluate on: pass --eval-dataset with --evaluate."
            )
        if args.eval_split and not args.eval_dataset:
            raise CLIError("--eval-split: --evaluate ppl without --eval-dataset reads the last 20% of --dataset.")


def _load_evaluations(
    args: argparse.Namespace, model_config: Any, held_out: str | None, log: Callable[[str], None]
) -> list[Any]:
    """Read and check the data of each --evaluate against the model's config, before the weights are loaded."""
    from optimum_prune.evaluation import EvaluationInputError, load_evaluation_data
    from optimum_prune.offline import is_hub_unreachable

    loaded = []
    for spec in _evaluations(args):
        name = split = None
        if spec.kind == "ppl" and not args.eval_dataset:
            source, name, split = [held_out], _dataset_label(args.dataset), f"last {1 - CALIBRATION_FRACTION:.0%}"
        else:
            source, split = (args.eval_dataset if spec.reads_dataset else None), args.eval_split
        if spec.kind in ("glue", "squad", "squad_v2") and source is None:
            task = spec.glue_task.dataset_args if spec.kind == "glue" else ("rajpurkar/" + spec.kind,)
            log(f"--evaluate {spec}: no --eval-dataset, reading {' '.join(task)} from the Hub.")
        try:
            loaded.append(
                load_evaluation_data(
                    spec,
                    source,
                    model_config=model_config,
                    split=split,
                    text_column=args.text_column if spec.kind == "ppl" else None,
                    max_samples=args.eval_samples,
                    dataset_name=name,
                )
            )
        except EvaluationInputError as err:
            raise CLIError(str(err)) from err
        except Exception as err:  # a file datasets cannot parse, the Hub out of reach, an unknown Hub dataset
            if is_hub_unreachable(err):  # HubUnreachableError names the dataset and what to do
                raise CLIError(f"--evaluate {spec}: {err}") from err
            raise CLIError(f"Cannot read the data of --evaluate {spec}: {err}") from err
    return loaded


def _evaluate(pruner: Any, loaded: list[Any], stage: str, args: argparse.Namespace, config: Any) -> Any:
    """Run the evaluations on the model as it is now; bad input (a text too short, a failed lm-eval task) is one
    line, and before pruning nothing has been written."""
    try:
        return pruner.evaluate(
            loaded,
            stage=stage,
            seqlen=config.seqlen,
            max_windows=args.eval_windows,
            show_progress=not args.no_progress,
        )
    except (ValueError, ImportError, OSError) as err:
        raise CLIError(f"--evaluate ({stage} pruning): {err}") from err


def _prune(
    args: argparse.Namespace, output: str, model_path: str, gguf_file: str | None, log: Callable[[str], None]
) -> dict[str, Any]:
    import optimum_prune
    from optimum_prune.evaluation import format_results_table

    config = _build_config(args)
    run_needs_data = None
    if args.dry_run and not args.dataset:
        _check_plan_without_data(config)
    if not args.dataset:
        try:
            config = _check_calibration_free(config, args, log)
        except CLIError as err:
            if not args.dry_run:
                raise
            # The plan may not depend on the data the run reads: the dry run goes on, and says so.
            run_needs_data = str(err)
    if args.dry_run:
        return _dry_run(args, config, model_path, gguf_file, run_needs_data, log)

    calibration, held_out, split_calibration = _read_texts(args)
    hub_options = _hub_options(args)
    model_config = _check_model_config(model_path, gguf_file, optimum_prune.ADAPTERS, config, hub_options)
    _check_seqlen(args, config, model_config)
    evaluations = _load_evaluations(args, model_config, held_out, log)
    pruner = _load_pruner(args, model_path, gguf_file, hub_options)
    show_progress = not args.no_progress

    if evaluations:
        _evaluate(pruner, evaluations, "before", args, config)

    start = time.perf_counter()
    try:
        with _time_left_lines(log):
            pruner.prune(config, dataset=calibration, show_progress=show_progress)
    except (ValueError, FloatingPointError) as err:
        # A bad recipe for this model (layer overrides, GQA groups, short data, an unmet sparsity) or a solve that
        # blew up (checks.NonFiniteWeightsError): nothing is saved.
        raise CLIError(str(err)) from err
    prune_seconds = time.perf_counter() - start
    if args.dataset:
        # Record the name or path as given (not the loaded text), so the card's recipe runs as printed.
        pruner.pruning_config.dataset = args.dataset
        pruner.recipe_cli_options = ["--text-column", args.text_column] if args.text_column else []
        if split_calibration:
            # The recipe's command line repeats --evaluate ppl, which makes the same 80/20 split.
            pruner.recipe_cli_options += ["--evaluate", "ppl"]
            # The card names the data itself (a local path by its base name only): the note does not repeat it.
            pruner.recipe_note = (
                f"Calibration used the first {CALIBRATION_FRACTION:.0%} of the calibration text (the rest was held "
                "out for the perplexity above): the command line, with `--evaluate ppl`, makes the same split; the "
                "Python recipe calibrates on all of it."
            )

    # After pruning, pruner.evaluation holds both sides: the card's model-index is written from it.
    evaluation = _evaluate(pruner, evaluations, "after", args, config) if evaluations else None
    ppl = evaluation["ppl"] if evaluation is not None and "ppl" in evaluation else None

    try:
        pruner.save_pretrained(output, repo_id=args.push_to_hub)
    except (OSError, ValueError) as err:
        raise CLIError(f"Cannot save to {output!r}: {err}") from err

    try:
        summary = pruner.summary
        results: dict[str, dict[str, Any]] = {
            "before": {
                "parameters": summary["parameters_before"],
                "size on disk (MB)": _source_megabytes(model_path, gguf_file),
                "pruning time (s)": None,
                "sparsity achieved": None,
            },
            "after": {
                "parameters": summary["parameters_after"],
                "size on disk (MB)": _source_megabytes(output, None),
                "pruning time (s)": prune_seconds,
                "sparsity achieved": summary["sparsity_achieved"],
            },
        }
        if ppl is not None:
            results["before"]["perplexity"] = ppl["perplexity"].before
            results["after"]["perplexity"] = ppl["perplexity"].after

        log("")
        log(
            f"{config.target} pruning of {args.model} ({summary['model_type']}): "
            f"{summary['sparsity_achieved']:.1%} of the prunable parameters "
            f"{'removed' if config.is_structured else 'zeroed'}"
            + (
                f"; perplexity on {ppl.details_after['windows']} x {ppl.details_after['seqlen']} tokens"
                if ppl is not None
                else ""
            )
        )
        log(format_results_table(_display(results), row_header="model"))
        if evaluation is not None:
            results["evaluation"] = evaluation.to_dict()
            log("")
            log("Evaluation (retention = after / before; perplexity is better lower, the other metrics higher):")
            log(evaluation.to_markdown())
        if gguf_file:
            dtype = str(next(pruner.model.parameters()).dtype).replace("torch.", "")
            log(f"The size before is the quantized {gguf_file}; the pruned model is saved dequantized, in {dtype}.")
        log(f"Saved to {output}")

        if args.push_to_hub:
            from optimum_prune.serialization.hub import HubPublishError

            try:
                url = pruner.push_to_hub(
                    args.push_to_hub, folder=output, private=args.private or None, token=args.token
                )
            except (HubPublishError, ValueError) as err:
                raise CLIError(f"The pruned model is saved in {output}, but publishing it failed: {err}") from err
            results["hub"] = {"url": url}
            log(f"Pushed to {url}")
    except KeyboardInterrupt as err:
        err.saved_to = output  # type: ignore[attr-defined]  # the checkpoint is complete: say so (run_prune)
        raise
    return results


def _read_texts(args: argparse.Namespace) -> tuple[list[str] | str | None, str | None, bool]:
    """(calibration, the text held out of it for --evaluate ppl, whether the calibration is --dataset's first 80%)."""
    from optimum_prune.data.calibration import RANDOM_TOKENS, load_texts

    calibration: list[str] | str | None = None
    held_out: str | None = None
    split_calibration = False
    if args.dataset == RANDOM_TOKENS:
        # No text: the pruner draws the token ids; evaluation needs --eval-dataset.
        calibration = RANDOM_TOKENS
    elif args.dataset:
        texts = _load(load_texts, args.dataset, args.text_column, "--dataset")
        if _evaluates_ppl(args) and not args.eval_dataset:
            calibration, held_out = split_for_evaluation(texts)
            split_calibration = True
        else:
            calibration = texts
    return calibration, held_out, split_calibration


def _check_seqlen(args: argparse.Namespace, config: Any, model_config: Any) -> None:
    # --seqlen is the length of calibration sequences and of perplexity windows, not of GLUE / SQuAD inputs.
    if args.dataset or (args.eval_dataset and _evaluates_ppl(args)):
        from optimum_prune.checks import check_sequence_length

        try:
            check_sequence_length(config.seqlen, model_config)
        except ValueError as err:
            raise CLIError(str(err)) from err


def _load_pruner(args: argparse.Namespace, model_path: str, gguf_file: str | None, hub_options: dict[str, Any]) -> Any:
    import optimum_prune

    pruner_class = getattr(optimum_prune, _tasks()[args.task].pruner)
    try:
        pruner = pruner_class.from_pretrained(
            model_path, gguf_file=gguf_file, dtype=_torch_dtype(args.dtype), **hub_options
        )
        if args.device:
            pruner.model.to(args.device)
    except Exception as err:
        from optimum_prune.offline import is_hub_unreachable

        if isinstance(err, ConnectionError) and is_hub_unreachable(err):  # HubUnreachableError: already one line
            raise CLIError(str(err)) from err
        raise CLIError(f"Cannot load {args.model!r} for --task {args.task}: {err}") from err
    return pruner


# ---- checks made before anything heavy is loaded --------------------------------------------------------------------

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def _check_output(output: str, overwrite: bool) -> None:
    if os.path.exists(output) and not os.path.isdir(output):
        raise CLIError(f"OUTPUT {output!r} is a file; give a folder to save the pruned model to.")
    if os.path.isdir(output) and os.listdir(output) and not overwrite:
        raise CLIError(f"OUTPUT {output!r} is a folder that is not empty; choose another one or pass --overwrite.")
    if os.path.isdir(output) and os.listdir(output) and not _holds_checkpoint(output):
        # Saving replaces the folder as a whole (serialization/save.py refuses the same): say so before pruning.
        raise CLIError(
            f"OUTPUT {output!r} holds files but no checkpoint, and --overwrite replaces the whole folder; choose a "
            "new or empty folder."
        )
    parent = os.path.dirname(output)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise CLIError(f"Cannot create OUTPUT {output!r}: {parent!r} is a file.")


def _holds_checkpoint(folder: str) -> bool:
    """What serialization.save lets a save replace (kept in step with its `_is_checkpoint`)."""
    names = os.listdir(folder)
    markers = ("config.json", "pruning_config.json", "model.safetensors.index.json")
    return any(name in markers or name.endswith(".safetensors") for name in names)


def _resolve_model(model: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(folder or Hub id, GGUF file name or None); a .gguf path is split into its folder and file name."""
    path = os.path.expanduser(model)
    if os.path.isfile(path):
        if path.endswith(".gguf") and gguf_file is None:
            return os.path.dirname(os.path.abspath(path)), os.path.basename(path)
        raise CLIError(f"--model {model!r} is a file; give the model's folder (or a .gguf file), or a Hub id.")
    if os.path.isdir(path):
        if gguf_file and not os.path.isfile(os.path.join(path, gguf_file)):
            raise CLIError(f"--gguf-file {gguf_file!r} is not in the model folder {model!r}.")
        return path, gguf_file
    if not _HUB_ID.match(model) or model.startswith((".", "~")) or model.count("/") > 1:
        raise CLIError(f"Model path {model!r} does not exist.")
    return model, gguf_file  # a Hub id; loading says whether it can be reached


def _build_config(args: argparse.Namespace) -> Any:
    from optimum_prune import PruningConfig

    given = {o.field: getattr(args, o.field) for o in CONFIG_OPTIONS if getattr(args, o.field) is not None}
    try:
        return PruningConfig(**given)
    except (ValueError, TypeError) as err:
        raise CLIError(str(err)) from err


def _check_calibration_free(config: Any, args: argparse.Namespace, log: Callable[[str], None]) -> Any:
    """Without --dataset: refuse a recipe that reads data; drop a default data-driven reconstruction, saying so (the
    rule of `planning.calibration_need`). Returns the config to run."""
    from optimum_prune.planning import calibration_need, without_refit

    need = calibration_need(config)
    if need is None:
        return config
    if need.falls_back and args.reconstruction is None:
        # Only the default was left in place: a calibration-free run is what was asked for.
        log(
            f"No --dataset: pruning with --criterion {config.criterion} and no reconstruction (--reconstruction none)."
        )
        return without_refit(config)
    instead = {
        "method": f"--method {' / '.join(need.instead)}",
        "criterion": f"a calibration-free criterion ({', '.join(need.instead)})",
    }.get(need.field, f"--{need.field} {' / '.join(need.instead)}")
    raise CLIError(
        f"--{need.field} {need.value} {need.reads}: pass --dataset (a text/json/csv/parquet file, or wikitext2, c4, "
        f"ptb), or use {instead}."
    )


def _load(load_texts: Callable[..., list[str]], source: str, column: str | None, flag: str, split: str | None = None):
    try:
        return load_texts(source, text_column=column, split=split)
    except Exception as err:  # a missing file, an unknown name, no text column, the Hub out of reach
        from optimum_prune.offline import is_hub_unreachable

        if is_hub_unreachable(err):  # HubUnreachableError names the dataset and what to do
            raise CLIError(f"{flag}: {err}") from err
        raise CLIError(f"Cannot read {flag} {source!r}: {err}") from err


def _check_model_config(
    model_path: str,
    gguf_file: str | None,
    adapters: dict[str, Any],
    pruning_config: Any,
    hub_options: dict[str, Any] | None = None,
) -> Any:
    """Refuse an unsupported model family, or overrides of layers it lacks, from its config: before reading weights.

    Returns the model's config."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(
            model_path, **({"gguf_file": gguf_file} if gguf_file else {}), **(hub_options or {})
        )
    except Exception as err:
        from optimum_prune.offline import hub_unreachable_error, is_hub_unreachable

        if is_hub_unreachable(err):
            raise CLIError(
                str(
                    hub_unreachable_error(
                        f"model {model_path!r}",
                        f"download it once where the Hub is reachable (`hf download {model_path}`) or pass a local "
                        "folder or .gguf file",
                    )
                )
            ) from err
        raise CLIError(f"Cannot read the model config of {model_path!r}: {err}") from err
    if pruning_config.is_structured and config.model_type not in adapters:  # sparsity works on any model
        raise CLIError(
            f"optimum_prune does not support model_type {config.model_type!r} ({model_path}) for structured pruning. "
            f"Supported model types: {', '.join(sorted(adapters))}; --target unstructured or N:M works on any model."
        )
    num_layers = getattr(config, "num_hidden_layers", None)
    if isinstance(num_layers, int):
        try:
            pruning_config.check_layers(num_layers)
        except ValueError as err:
            raise CLIError(str(err)) from err
    return config


def _check_output_is_not_input(output: str, model_path: str) -> None:
    """Saving replaces OUTPUT as a whole: it may not be the input model's folder, nor a folder that holds it."""
    if not os.path.isdir(model_path):
        return
    real_output, real_model = os.path.realpath(output), os.path.realpath(model_path)
    if real_model == real_output or real_model.startswith(real_output.rstrip(os.sep) + os.sep):
        raise CLIError(
            f"OUTPUT {output!r} is (or contains) the input model {model_path!r}, which saving would replace: choose "
            "another OUTPUT."
        )


def _hub_options(args: argparse.Namespace) -> dict[str, Any]:
    options = {"revision": args.revision, "token": args.token}
    options = {key: value for key, value in options.items() if value is not None}
    if args.trust_remote_code:
        options["trust_remote_code"] = True
    return options


def _torch_dtype(name: str) -> Any:
    import torch

    return name if name == "auto" else getattr(torch, name)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("optimum-prune")
    except PackageNotFoundError:
        return "unknown"


def _dry_run(
    args: argparse.Namespace,
    config: Any,
    model_path: str,
    gguf_file: str | None,
    run_needs_data: str | None,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Print the per-layer plan a run with `args` executes, from the planner the run uses; write nothing.

    What is read depends on what the plan depends on (`planning.plan_inputs`): a uniform allocation and sparsity
    patterns follow from the config (the model is built on the meta device; --dataset is not read), a global
    allocation with a calibration-free criterion reads the weights, and flap / obs allocations, global ones with a
    data-driven criterion and depth pruning read the weights and --dataset (without it: a one-line error).
    `run_needs_data`: why the run itself would refuse to start without --dataset, if it would.
    """
    import optimum_prune
    from optimum_prune.planning import plan_inputs

    hub_options = _hub_options(args)
    model_config = _check_model_config(model_path, gguf_file, optimum_prune.ADAPTERS, config, hub_options)
    needs = plan_inputs(config)
    _check_sources(args)
    _check_seqlen(args, config, model_config)
    calibration = None
    if needs.data or needs.weights:
        log(
            f"Dry run: the plan depends on {'calibration data' if needs.data else 'the weights'} "
            f"({needs.data or needs.weights}): loading the weights of {args.model}"
            + (f" and --dataset {_dataset_label(args.dataset)} to compute it." if needs.data else " to compute it.")
        )
        if needs.data:
            calibration = _read_texts(args)[0]
        pruner = _load_pruner(args, model_path, gguf_file, hub_options)
    else:
        import torch
        import transformers

        auto_class = getattr(transformers, _tasks()[args.task].auto_class)
        try:
            with torch.device("meta"):
                model = auto_class.from_config(model_config, trust_remote_code=args.trust_remote_code)
        except Exception as err:
            raise CLIError(f"Cannot build {args.model!r} for --task {args.task} from its config: {err}") from err
        pruner = getattr(optimum_prune, _tasks()[args.task].pruner)(model)
    try:
        plan = pruner.plan(config, dataset=calibration, show_progress=not args.no_progress)
    except (ValueError, FloatingPointError) as err:
        raise CLIError(str(err)) from err
    read = "the config only" if plan.reads == ["config"] else ", ".join(plan.reads)
    allocation = f", allocation {plan.allocation}" if plan.allocation else ""
    if config.is_structured and plan.allocation is None:
        allocation = ", whole blocks (depth pruning)"
    log(
        f"Dry run: {config.target} pruning of {args.model} ({model_config.model_type}){allocation}; read "
        f"{read}; nothing was written."
    )
    rows = plan.rows()
    for row in rows:
        log("  " + ", ".join(f"{key} {value}" for key, value in row.items()))
    totals = plan.totals()
    if plan.structured:
        depth = config.structures is not None and "layers" in config.structures
        refit = " (before any bias the refit adds)" if config.reconstruction != "none" and not depth else ""
        log(
            f"Parameters: {totals['parameters_before']:,} before, {totals['parameters_after']:,} after{refit}: "
            f"{totals['parameters_removed']:,} removed, {totals['sparsity']:.1%} of the "
            f"{totals['prunable_parameters']:,} prunable."
        )
    else:
        log(
            f"Parameters: {totals['parameters_before']:,} (zeros are stored): {totals['parameters_zeroed']:,} "
            f"zeroed, {totals['sparsity']:.1%} of the {totals['prunable_parameters']:,} in the pruned matrices."
        )
    cost = _projected_cost(pruner.model, plan, config, log)
    notes = []
    if run_needs_data:
        notes.append(f"The run itself needs --dataset: {run_needs_data}")
    for note in notes:
        log(note)
    return {
        "dry_run": True,
        "model_type": model_config.model_type,
        **plan.to_dict(),
        "layers": rows,
        **({"cost": cost} if cost is not None else {}),
        "notes": notes,
    }


def _projected_cost(model: Any, plan: Any, config: Any, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The plan's FLOPs (from the plan object just printed) and a projected time with the shipped coefficients
    (`cost.DEFAULT_COEFFICIENTS`); None where the plan has no per-block cost (depth pruning)."""
    from optimum_prune.cost import DEFAULT_COEFFICIENTS, describe_minutes, plan_cost

    cost = plan_cost(model, plan, config)
    if cost is None:
        return None
    totals = cost.totals()
    seconds = sum(cost.seconds(DEFAULT_COEFFICIENTS))
    log(
        f"Cost: {cost.flops:.3g} FLOPs for {cost.tokens:,} calibration tokens (forward {totals['forward']:.3g}, "
        f"statistics {totals['statistics']:.3g}, solver {totals['solver']:.3g}); projection: about "
        f"{describe_minutes(seconds)} on {DEFAULT_COEFFICIENTS.machine} (not a measurement; see optimum_prune/cost.py)."
    )
    return cost.to_dict(DEFAULT_COEFFICIENTS)


def _check_plan_without_data(config: Any) -> None:
    """A dry run without --dataset: refuse, in one line, a plan that depends on calibration data."""
    from optimum_prune.planning import plan_inputs

    reason = plan_inputs(config).data
    if reason:
        raise CLIError(
            f"--dry-run: this plan depends on calibration data ({reason}): pass --dataset to compute it (the dry run "
            "then loads the weights and the data; it writes nothing)."
        )


def _check_sources(args: argparse.Namespace) -> None:
    """--dataset and --eval-dataset name a known dataset or an existing path (checked without reading them); for
    GLUE and SQuAD, --eval-dataset may also be a Hub dataset id."""
    from optimum_prune.data.calibration import NAMED_DATASETS, RANDOM_TOKENS

    tables = any(spec.kind in ("glue", "squad", "squad_v2") for spec in _evaluations(args))
    for flag, source in (("--dataset", args.dataset), ("--eval-dataset", args.eval_dataset)):
        if not source or source == RANDOM_TOKENS or source in NAMED_DATASETS or os.path.exists(source):
            continue
        if flag == "--eval-dataset" and tables:
            if _HUB_ID.match(source) and not source.startswith((".", "~")) and source.count("/") <= 1:
                continue
            raise CLIError(
                f"Cannot read --eval-dataset {source!r}: it is neither a local file or folder nor a Hub dataset id."
            )
        raise CLIError(
            f"Cannot read {flag} {source!r}: it is neither a local file or folder nor a known dataset name "
            f"({', '.join(sorted(NAMED_DATASETS))})."
        )


# ---- helpers ----------------------------------------------------------------------------------------------------------


def split_for_evaluation(texts: list[str], fraction: float = CALIBRATION_FRACTION) -> tuple[list[str], str]:
    """(calibration texts, evaluation text): the first `fraction` of the texts and the rest, joined.

    With few texts (one .txt file is one text) the joined text is cut by characters, at a whitespace.
    """
    if len(texts) >= MIN_TEXTS_TO_SPLIT_BY_TEXT:
        cut = int(len(texts) * fraction)
        return texts[:cut], "\n\n".join(texts[cut:])
    joined = "\n\n".join(texts)
    cut = int(len(joined) * fraction)
    space = joined.find(" ", cut)
    cut = space if space != -1 else cut
    return [joined[:cut]], joined[cut:].strip()


def _dataset_label(source: str) -> str:
    return os.path.basename(source) if os.path.exists(source) else source


def _source_megabytes(model_path: str, gguf_file: str | None) -> float | None:
    """Size of a checkpoint's weight files (the input's, or the saved output's), when it is a local folder: the
    same files on both sides of the before / after table, tokenizer and config left out."""
    if not os.path.isdir(model_path):
        return None
    if gguf_file:
        return os.path.getsize(os.path.join(model_path, gguf_file)) / 1e6
    weights = [f for f in os.listdir(model_path) if f.endswith((".safetensors", ".bin", ".pt", ".pth"))]
    return sum(os.path.getsize(os.path.join(model_path, f)) for f in weights) / 1e6 if weights else None


def _display(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The results with readable numbers: thousands separators, one-decimal sizes and times, percentages."""
    shown: dict[str, dict[str, Any]] = {}
    for row, values in results.items():
        if row in ("hub", "evaluation"):
            continue
        cells: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                cells[key] = None
            elif key == "parameters":
                cells[key] = f"{value:,}"
            elif key == "sparsity achieved":
                cells[key] = f"{value:.1%}"
            elif key == "perplexity":
                cells[key] = f"{value:.3f}"
            else:
                cells[key] = f"{value:.2f}"
        shown[row] = cells
    return shown


@contextlib.contextmanager
def _time_left_lines(log: Callable[[str], None]) -> Iterator[None]:
    """Print `prune()`'s "about N minutes left on this machine" message (logger ``optimum_prune.cost``) as a line."""
    import logging

    class _Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            log(record.getMessage()[:1].upper() + record.getMessage()[1:] + ".")

    cost_logger = logging.getLogger("optimum_prune.cost")
    handler, level = _Lines(logging.INFO), cost_logger.level
    cost_logger.addHandler(handler)
    cost_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        cost_logger.removeHandler(handler)
        cost_logger.setLevel(level)


@contextlib.contextmanager
def _progress_bars(enabled: bool) -> Iterator[None]:
    """With `enabled=False`, also silence transformers' and huggingface_hub's loading and saving bars (the pruner's
    own follow `show_progress`); the previous state is restored, for callers that run several commands in-process."""
    import datasets
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    if enabled:
        yield
        return
    hub_was_enabled = not are_progress_bars_disabled()
    transformers_was_enabled = transformers_logging.is_progress_bar_enabled()
    datasets_was_enabled = datasets.is_progress_bar_enabled()
    disable_progress_bars()
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if hub_was_enabled:
            enable_progress_bars()
        if transformers_was_enabled:
            transformers_logging.enable_progress_bar()
        if datasets_was_enabled:
            datasets.enable_progress_bars()


def _one_line(message: object) -> str:
    return " ".join(str(message).split())


class PruneCommand(BaseOptimumCLICommand):
    """`optimum-cli prune`: registered by optimum/commands/register/optimum_prune_prune.py (see pyproject.toml)."""

    COMMAND = CommandInfo(name="prune", help="Prune a Transformers model without retraining (optimum-prune).")

    @staticmethod
    def parse_args(parser: argparse.ArgumentParser) -> None:
        add_prune_arguments(parser)

    def run(self) -> None:
        # optimum-cli ignores run()'s return value, so a failure has to leave through sys.exit to set the status.
        status = run_prune(self.args, prog=self.parser.prog)
        if status:
            sys.exit(status)
