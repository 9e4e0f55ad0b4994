"""`prune`'s run: check the arguments, then load, (evaluate,) prune, (evaluate,) save and (publish), or plan a dry
run; prune_report.py prints the results.

At module level it imports the standard library and the package's light modules only (no torch): the checks made
before anything is read answer at once, and torch, transformers and the pruning code are imported once they passed.
It imports the package itself, so optimum-cli loads it only when `prune` runs (see prune.py).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from ..assets import CALIBRATION_FRACTION
from ..tasks import TASKS
from .prune import CLIError, _build_config
from .prune_report import dataset_label, one_line, progress_bars, report_plan, report_results, time_left_lines

__all__ = ["prune_from_args", "run_prune", "split_for_evaluation"]

#: Below this many texts the 80/20 split of --evaluate ppl (calibration on the first CALIBRATION_FRACTION of the
#: --dataset text, evaluation on the rest, as in optimum_prune.assets) cuts the joined text by characters instead.
MIN_TEXTS_TO_SPLIT_BY_TEXT = 10


def run_prune(args: argparse.Namespace, prog: str = "optimum-prune") -> int:
    """Run `prune` for parsed arguments; return the exit status (0 on success).

    Errors are printed on stderr as one line, `PROG: error: ...`; an error found before pruning leaves OUTPUT as it
    was (a checkpoint is only written, all at once, after pruning succeeded).
    """

    def show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
        print(f"{prog}: warning: {one_line(message)}", file=sys.stderr)

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
        print(f"{prog}: error: {one_line(err)}", file=sys.stderr)
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
        print(f"{prog}: error: {type(err).__name__}: {one_line(err)} (--traceback shows where)", file=sys.stderr)
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
    with progress_bars(enabled=not args.no_progress):
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

    loaded = []
    for spec in _evaluations(args):
        name = split = None
        if spec.kind == "ppl" and not args.eval_dataset:
            source, name, split = [held_out], dataset_label(args.dataset), f"last {1 - CALIBRATION_FRACTION:.0%}"
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
            raise _cli_error(err, f"--evaluate {spec}", f"Cannot read the data of --evaluate {spec}") from err
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
        with time_left_lines(log):
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

    try:
        pruner.save_pretrained(output, repo_id=args.push_to_hub)
    except (OSError, ValueError) as err:
        raise CLIError(f"Cannot save to {output!r}: {err}") from err

    try:
        source = (model_path, gguf_file)
        results = report_results(pruner, config, args.model, source, output, prune_seconds, evaluation, log)
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
    import torch

    import optimum_prune

    pruner_class = getattr(optimum_prune, TASKS[args.task].pruner)
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    try:
        pruner = pruner_class.from_pretrained(model_path, gguf_file=gguf_file, dtype=dtype, **hub_options)
        if args.device:
            pruner.model.to(args.device)
    except Exception as err:
        if isinstance(err, ConnectionError):  # HubUnreachableError: already one line
            raise _cli_error(err, None, f"Cannot load {args.model!r} for --task {args.task}") from err
        raise CLIError(f"Cannot load {args.model!r} for --task {args.task}: {err}") from err
    return pruner


def _cli_error(err: BaseException, unreachable: str | None, otherwise: str) -> CLIError:
    """`otherwise: err`; where the Hub could not be reached, `unreachable: err` (or `err` alone): the
    HubUnreachableError it then is names what was asked for and what to do."""
    from optimum_prune.offline import is_hub_unreachable

    if is_hub_unreachable(err):
        return CLIError(f"{unreachable}: {err}" if unreachable else str(err))
    return CLIError(f"{otherwise}: {err}")


# ---- checks made before anything heavy is loaded --------------------------------------------------------------------

#: A Hub repository id, `name` or `owner/name` (so never a path that starts with "." or "~", nor one with two "/").
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
    if not _HUB_ID.match(model):
        raise CLIError(f"Model path {model!r} does not exist.")
    return model, gguf_file  # a Hub id; loading says whether it can be reached


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


def _load(load_texts: Callable[..., list[str]], source: str, column: str | None, flag: str):
    try:
        return load_texts(source, text_column=column)
    except Exception as err:  # a missing file, an unknown name, no text column, the Hub out of reach
        raise _cli_error(err, flag, f"Cannot read {flag} {source!r}") from err


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
            + (f" and --dataset {dataset_label(args.dataset)} to compute it." if needs.data else " to compute it.")
        )
        if needs.data:
            calibration = _read_texts(args)[0]
        pruner = _load_pruner(args, model_path, gguf_file, hub_options)
    else:
        import torch
        import transformers

        auto_class = getattr(transformers, TASKS[args.task].auto_class)
        try:
            with torch.device("meta"):
                model = auto_class.from_config(model_config, trust_remote_code=args.trust_remote_code)
        except Exception as err:
            raise CLIError(f"Cannot build {args.model!r} for --task {args.task} from its config: {err}") from err
        pruner = getattr(optimum_prune, TASKS[args.task].pruner)(model)
    try:
        plan = pruner.plan(config, dataset=calibration, show_progress=not args.no_progress)
    except (ValueError, FloatingPointError) as err:
        raise CLIError(str(err)) from err
    return report_plan(pruner.model, plan, config, args.model, model_config.model_type, run_needs_data, log)


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
            if _HUB_ID.match(source):
                continue
            raise CLIError(
                f"Cannot read --eval-dataset {source!r}: it is neither a local file or folder nor a Hub dataset id."
            )
        raise CLIError(
            f"Cannot read {flag} {source!r}: it is neither a local file or folder nor a known dataset name "
            f"({', '.join(sorted(NAMED_DATASETS))})."
        )


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
