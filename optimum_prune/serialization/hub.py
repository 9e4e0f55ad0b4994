"""Publishing a pruned checkpoint folder to the Hugging Face Hub, with a model card that says what was removed.

Two public entry points:

- `create_model_card` builds a `huggingface_hub.ModelCard` (YAML metadata + text) from the pruning recipe and the
  pruning summary, optionally with evaluation results in the Hub's `model-index` form;
- `push_folder_to_hub` creates the repository if needed and uploads a saved folder as it is, turning the
  `huggingface_hub` / transport errors that users actually hit (bad token, wrong endpoint, lost connection) into a
  `HubPublishError` whose message says what to do.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shlex
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

from ..configuration import config_fields
from ..tasks import DEFAULT_TASK, TASKS, auto_class_for_pipeline, task_for_pipeline

__all__ = [
    "BASE_MODEL_RELATION",
    "EVAL_RESULT_KEYS",
    "HubPublishError",
    "create_model_card",
    "push_folder_to_hub",
]

# The Hub documents exactly four values for `base_model_relation`: "adapter", "merge", "quantized" and "finetune"
# (https://huggingface.co/docs/hub/model-cards#specifying-a-base-model). `ModelCardData` in huggingface_hub 2.4 does
# not validate the field at all (it lands in **kwargs), so "pruned" would be written without complaint, but the Hub
# would not recognise it. "finetune" is the closest accepted value: it is the Hub's relation for a full set of weights
# derived from the base model, and what the Hub itself infers for such a checkpoint. "quantized" would list the model
# among the base model's quantizations, where people look for GGUF/GPTQ/AWQ files. The "pruned" tag carries the rest.
BASE_MODEL_RELATION = "finetune"

# Keys accepted in one evaluation entry of `create_model_card(eval_results=...)`; see `_eval_entries`.
EVAL_RESULT_KEYS = (
    "value",
    "dataset",
    "dataset_name",
    "dataset_config",
    "split",
    "task",
    "metric",
    "metric_name",
    "base_value",
)

_LIBRARY_TAGS = ["pruned", "optimum-prune"]

# Kept as templates in one place so the card follows the public API if its spelling changes.
_PYTHON_RECIPE = """\
from optimum_prune import PruningConfig, {pruner_class}

pruning_config = PruningConfig(
{config_kwargs}
)
pruner = {pruner_class}.from_pretrained({load_arguments})
pruner.prune(pruning_config)
pruner.save_pretrained({output_dir!r})  # weights, per-layer sizes, pruning_config.json, tokenizer, card"""

_CLI_RECIPE = "optimum-cli prune \\\n    --model {base_model} \\\n{options}    {output_dir}"

_LOAD_SNIPPET = """\
import optimum_prune  # noqa: F401  (registers optimum-prune's loading support with transformers)
from transformers import {auto_class}

model = {auto_class}.from_pretrained({repo_id!r})"""


class HubPublishError(RuntimeError):
    """Publishing a folder to the Hub failed; the message says why and what to do, the cause is chained.

    Attributes:
        endpoint: The Hub endpoint that was contacted.
        status_code: The HTTP status the Hub answered with, or None when no answer came back.
    """

    def __init__(self, message: str, *, endpoint: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status_code = status_code


# ---------------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------------


def create_model_card(
    *,
    base_model: str | None,
    pipeline_tag: str | None,
    pruning_config: Mapping[str, Any],
    summary: Mapping[str, Any],
    eval_results: Mapping[str, Any] | None = None,
    model_name: str | None = None,
    language: str | list[str] | None = None,
    license: str | None = None,
    repo_id: str | None = None,
    cli_options: Sequence[str] = (),
    recipe_note: str | None = None,
) -> ModelCard:
    """Build the model card of a pruned checkpoint.

    Args:
        base_model: Hub id of the model that was pruned (written as `base_model` metadata), or None if unknown.
        pipeline_tag: Hub pipeline tag, e.g. "text-generation"; also picks the auto class shown in "How to load".
        pruning_config: The recipe, as in `PruningConfig.to_dict()` (the content of `pruning_config.json`).
        summary: What the pruning did (as in `BasePruner.summary`): "parameters_before" and "parameters_after"
            (ints, required); "layers" (a list of dicts, one per layer, e.g. {"layer": 0, "num_heads": 6,
            "num_key_value_heads": 2, "intermediate_size": 1024}: every key present is rendered; structured runs
            only), "model_type" (str), and optionally "prunable_parameters_before"/"prunable_parameters_after",
            "sparsity_requested" and "sparsity_achieved" (fractions in [0, 1]).
        eval_results: Evaluation results, keyed by metric id (the Hub's `metric.type`, e.g. "perplexity").
            Each value is one entry or a list of entries (same metric on several datasets). An entry is a dict with
            "value" (required) and "dataset" (required: Hub dataset id, e.g. "wikitext"), and optionally
            "dataset_name" (pretty name, defaults to "dataset"), "dataset_config" (e.g. "wikitext-2-raw-v1"),
            "split" (e.g. "test"), "task" (task type, defaults to `pipeline_tag` or "text-generation"),
            "metric" (metric id overriding the key), "metric_name" (pretty name) and "base_value" (the unpruned
            model's score, shown in the card's table only). Example:
            `{"perplexity": {"value": 21.3, "dataset": "wikitext", "dataset_config": "wikitext-2-raw-v1",
            "split": "test", "base_value": 18.9}}`. The entries go to the card's `model-index` metadata.
        model_name: Name shown as the card title and in `model-index`; defaults to "<base name>-pruned".
        language: Language code(s) for the metadata.
        license: License id for the metadata (a pruned model usually keeps its base model's license).
        repo_id: Where the card will live; used in the loading snippet. Defaults to `model_name`.
        cli_options: Extra command-line arguments the run used beyond the recipe (e.g. ["--evaluate", "ppl"], which
            also keeps the last 20% of --dataset out of calibration), appended to the command-line recipe.
        recipe_note: A sentence shown under the recipe (e.g. how the calibration data was split).

    A `base_model` that is a local path (not a Hub id) is shown by its folder name only, in the text and in the
    recipe, which then runs from the folder that holds the model. So is a recipe's local calibration file or folder
    (`dataset`, and PruneNet's policy files), the inputs with the sha256 of their content; dataset names are kept.

    Returns:
        A `ModelCard` whose `data` holds base_model, base_model_relation, tags, library_name, pipeline_tag (and
        model-index when `eval_results` is given); `card.save(folder / "README.md")` writes it.

    Raises:
        ValueError: If `summary` lacks a required key or an evaluation entry is malformed.
    """
    for key in ("parameters_before", "parameters_after"):
        if key not in summary:
            raise ValueError(f"summary is missing {key!r}; parameters_before and parameters_after are required.")
    config = dict(pruning_config)
    # Local files are named by their base name (a reader cannot use this machine's path, and it may name the user's
    # home); inputs get a content hash, so a reader can tell whether their copy is the same data.
    local_paths = {
        key: config[key] for key in _PATH_FIELDS if isinstance(config.get(key), str) and _is_local_path(config[key])
    }
    config.update({key: _local_name(path) for key, path in local_paths.items()})
    hub_base = base_model if base_model and _is_hub_id(base_model) else None
    base_model = hub_base or _shown_base_model(base_model)
    if model_name is None:
        model_name = f"{base_model.rstrip('/').split('/')[-1]}-pruned" if base_model else "pruned-model"
    entries = _eval_entries(eval_results, default_task=pipeline_tag or "text-generation")

    card_data = ModelCardData(
        base_model=hub_base,
        base_model_relation=BASE_MODEL_RELATION if hub_base else None,
        library_name="transformers",
        pipeline_tag=pipeline_tag,
        tags=[*_LIBRARY_TAGS, *_method_tags(config)],
        language=language,
        license=license,
        model_name=model_name,
        eval_results=[entry["result"] for entry in entries] or None,
    )
    if not entries:
        # Without eval results the name would be written as a stray `model_name` key; the title carries it.
        card_data.model_name = None

    text = "\n\n".join(
        part
        for part in (
            _intro(model_name, base_model, hub_base, summary),
            _removed_section(config, summary),
            _recipe_section(config, base_model, model_name, pipeline_tag, cli_options, recipe_note, local_paths),
            _load_section(repo_id or model_name, pipeline_tag),
            _eval_section(entries),
        )
        if part
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{text}\n")


def _method_tags(config: Mapping[str, Any]) -> list[str]:
    """Hub tags that let people filter by pruning method, e.g. structured-pruning, criterion-activation."""
    target = str(config.get("target") or "")
    tags: list[str] = []
    if target in ("structured", "unstructured"):
        tags.append(f"{target}-pruning")
    elif ":" in target:
        # Tags stay within [a-z0-9-], like the Hub's own: "2:4" becomes "2-4-sparsity".
        tags += ["n-m-sparsity", f"{target.replace(':', '-')}-sparsity"]
    if target == "structured":
        for key in ("criterion", "reconstruction", "allocation"):
            value = config.get(key)
            if value and value != "none":
                tags.append(f"{key}-{value}")
    elif target:
        if config.get("method"):
            tags.append(f"method-{config['method']}")
    return [tag.lower().replace("_", "-").replace(" ", "-") for tag in tags]


def _eval_entries(eval_results: Mapping[str, Any] | None, *, default_task: str) -> list[dict[str, Any]]:
    """Validate the eval dict format (see `create_model_card`) and pair each entry with its `EvalResult`."""
    if not eval_results:
        return []
    entries = []
    for key, raw in eval_results.items():
        for entry in raw if isinstance(raw, (list, tuple)) else [raw]:
            if not isinstance(entry, Mapping):
                raise ValueError(
                    f"eval_results[{key!r}] must be a dict like {{'value': 21.3, 'dataset': 'wikitext'}} "
                    f"(or a list of them), got {type(entry).__name__}."
                )
            unknown = sorted(set(entry) - set(EVAL_RESULT_KEYS))
            if unknown:
                raise ValueError(
                    f"eval_results[{key!r}] has unknown keys {unknown}; allowed: {list(EVAL_RESULT_KEYS)}."
                )
            missing = [name for name in ("value", "dataset") if entry.get(name) is None]
            if missing:
                raise ValueError(f"eval_results[{key!r}] is missing {missing}; 'value' and 'dataset' are required.")
            metric = str(entry.get("metric") or key)
            dataset = str(entry["dataset"])
            dataset = _local_name(dataset) if _is_local_path(dataset) else dataset
            result = EvalResult(
                task_type=str(entry.get("task") or default_task),
                dataset_type=dataset,
                dataset_name=str(entry.get("dataset_name") or dataset),
                dataset_config=entry.get("dataset_config"),
                dataset_split=entry.get("split"),
                metric_type=metric,
                metric_value=entry["value"],
                metric_name=entry.get("metric_name"),
            )
            entries.append({"result": result, "base_value": entry.get("base_value")})
    return entries


def _is_hub_id(name: str) -> bool:
    """Whether `name` can be a Hub model id; a local folder or "repo/file.gguf" cannot be `base_model` metadata."""
    if os.path.exists(name):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _intro(model_name: str, base_model: str | None, hub_base: str | None, summary: Mapping[str, Any]) -> str:
    if hub_base:
        origin = f"a pruned version of [{hub_base}](https://huggingface.co/{hub_base})"
    elif base_model:
        origin = f"a pruned version of {_code(base_model)}"
    else:
        origin = "a pruned model"
    if summary.get("model_type"):
        origin += f" ({_text(summary['model_type'])} architecture)"
    return (
        f"# {_text(model_name)}\n\n"
        f"This is {origin}, made with optimum-prune without retraining. "
        "The sections below say what was removed, how to reproduce it and how to load it."
    )


def _removed_section(config: Mapping[str, Any], summary: Mapping[str, Any]) -> str:
    before, after = int(summary["parameters_before"]), int(summary["parameters_after"])
    removed = before - after
    fraction = removed / before if before else 0.0
    target = str(config.get("target") or "")
    layers = list(summary.get("layers") or [])
    if target == "structured":
        what = (
            "Whole attention heads and feed-forward channels were removed, so the weight matrices are smaller and "
            "the checkpoint has fewer parameters."
            + (" Layers can differ in size: see the table below." if layers else "")
        )
    elif target == "unstructured":
        what = (
            "Individual weights were set to zero inside the pruned linear layers; tensor shapes, and so the "
            "parameter count, are unchanged. The zeros are stored explicitly."
        )
    elif ":" in target:
        n, _, m = target.partition(":")
        what = (
            f"In every group of {m} consecutive weights of the pruned linear layers, {n} are zero ({target} sparsity); "
            "tensor shapes, and so the parameter count, are unchanged."
        )
    else:
        what = "Parameters were removed as described by the recipe below."
    rows = [
        "| | Parameters |",
        "|---|---:|",
        f"| Before | {_count(before)} |",
        f"| After | {_count(after)} |",
        f"| Removed | {_count(removed)}, {fraction:.1%} of the model |",
    ]
    if summary.get("prunable_parameters_before") is not None and summary.get("prunable_parameters_after") is not None:
        rows.append(f"| Prunable block parameters, before | {_count(int(summary['prunable_parameters_before']))} |")
        rows.append(f"| Prunable block parameters, after | {_count(int(summary['prunable_parameters_after']))} |")
    if summary.get("sparsity_requested") is not None:
        rows.append(f"| Sparsity requested | {float(summary['sparsity_requested']):.1%} |")
    if summary.get("sparsity_achieved") is not None:
        rows.append(
            f"| Sparsity achieved (share of prunable block parameters removed or zeroed) | "
            f"{float(summary['sparsity_achieved']):.1%} |"
        )
    section = f"## What was removed\n\n{what}\n\n" + "\n".join(rows)
    section += _sparsity_exceptions(summary)
    section += _block_sparsity(summary)
    if layers:
        section += "\n\n### Per-layer sizes\n\n" + _layers_table(layers)
    return section


def _block_sparsity(summary: Mapping[str, Any]) -> str:
    """Unstructured / N:M: each block's sparsity counted from the weights, beside the allocation's plan."""
    achieved = list(summary.get("layer_sparsity") or [])
    if not achieved:
        return ""
    allocation = str(summary.get("allocation") or "uniform")
    planned = list(summary.get("planned_layer_sparsity") or [])
    measures = {
        "owl_outlier_ratio": "outlier ratio (%)",
        "obs_predicted_error": "predicted relative error",
    }
    measure_key = next((key for key in measures if summary.get(key)), None)
    header = ["Block", "Sparsity (counted from the weights)"]
    header += ["Planned"] if planned else []
    header += [measures[measure_key]] if measure_key else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for index, value in enumerate(achieved):
        cells = [str(index), f"{value:.2%}"]
        cells += [f"{planned[index]:.2%}"] if planned else []
        cells += [f"{summary[measure_key][index]:.4g}"] if measure_key else []
        lines.append("| " + " | ".join(cells) + " |")
    return f"\n\n### Per-block sparsity (allocation: {allocation})\n\n" + "\n".join(lines)


def _sparsity_exceptions(summary: Mapping[str, Any]) -> str:
    """Matrices of the blocks that unstructured / N:M pruning left dense or could not calibrate, with why."""
    lines = []
    for name, why in (summary.get("skipped") or {}).items():
        lines.append(f"- {_code(name)} left dense: {_text(why)}")
    for name, why in (summary.get("data_free") or {}).items():
        lines.append(f"- {_code(name)}: {_text(why)}")
    return "\n\nExceptions:\n\n" + "\n".join(lines) if lines else ""


def _layers_table(layers: Sequence[Mapping[str, Any]]) -> str:
    columns: list[str] = []
    for layer in layers:
        columns += [key for key in layer if key not in columns]
    if "layer" in columns:
        columns.insert(0, columns.pop(columns.index("layer")))
    lines = [
        "| " + " | ".join(_cell(column) for column in columns) + " |",
        "|" + "|".join("---:" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(layer.get(column)) for column in columns) + " |" for layer in layers]
    return "\n".join(lines)


def _shown_base_model(base_model: str | None) -> str | None:
    """A Hub id as it is; a local path (no one else has it, and it may name the user's home) by its last parts."""
    if not base_model or _is_hub_id(base_model):
        return base_model
    path = os.path.normpath(os.path.expanduser(base_model))
    if path.endswith(".gguf"):  # "folder/model.gguf": the recipe needs the folder and the file
        return "/".join([os.path.basename(os.path.dirname(path)), os.path.basename(path)])
    return os.path.basename(path) or base_model


def _recipe_section(
    config: Mapping[str, Any],
    base_model: str | None,
    model_name: str,
    pipeline_tag: str | None,
    cli_options: Sequence[str] = (),
    recipe_note: str | None = None,
    local_paths: Mapping[str, str] | None = None,
) -> str:
    base = base_model or "<base-model-id>"
    output_dir = model_name.split("/")[-1]
    kwargs = "\n".join(f"    {key}={value!r}," for key, value in config.items() if value is not None)
    # A pipeline tag no pruner is made for gets the causal-LM recipe, as does no tag.
    task = task_for_pipeline(pipeline_tag) or TASKS[DEFAULT_TASK]
    pruner_class = task.pruner
    arguments = [] if task.name == DEFAULT_TASK else [f"--task {task.name}"]
    cli_model, load_arguments = base, repr(base)
    if base.endswith(".gguf") and "/" in base:
        cli_model, gguf_file = base.rsplit("/", 1)
        arguments.append(f"--gguf-file {shlex.quote(gguf_file)}")
        load_arguments = f"{cli_model!r}, gguf_file={gguf_file!r}"
    python = _PYTHON_RECIPE.format(
        pruner_class=pruner_class, config_kwargs=kwargs, load_arguments=load_arguments, output_dir=output_dir
    )
    arguments += [_cli_option(key, value) for key, value in config.items() if value is not None]
    arguments += [" ".join(shlex.quote(str(option)) for option in cli_options)] if cli_options else []
    options = "".join(f"    {argument} \\\n" for argument in arguments if argument)
    cli = _CLI_RECIPE.format(base_model=shlex.quote(cli_model), options=options, output_dir=shlex.quote(output_dir))
    note = ""
    if "dataset" in config and config.get("dataset") is None:
        note = (
            "\n\nThe calibration data was passed in memory and is not recorded in the recipe: pass the same data as "
            "`dataset` to reproduce the result exactly."
        )
    for key, path in (local_paths or {}).items():
        if key in _INPUT_PATH_FIELDS:
            note += "\n\n" + _local_input_note(key, path, str(config[key]))
    if recipe_note:
        note += f"\n\n{_one_line(recipe_note)}"
    saved = (
        "The recipe, as in `pruning_config.json` in this repository, with local files named by their base name:"
        if local_paths
        else "The recipe, as saved in `pruning_config.json` in this repository:"
    )
    return (
        "## How to reproduce\n\n"
        f"{saved}\n\n"
        f"{_fenced('json', json.dumps(dict(config), indent=2, sort_keys=True))}\n\n"
        f"With Python:\n\n{_fenced('python', python)}\n\n"
        f"From the command line:\n\n{_fenced('bash', cli)}{note}"
    )


def _cli_option(key: str, value: Any) -> str:
    flag = "--" + key.replace("_", "-")
    if isinstance(value, bool):  # the command line's --flag / --no-flag pair: a field at its default needs neither
        default = next((f.default for f in config_fields() if f.name == key), False)
        return "" if value is default else flag if value else f"--no-{flag[2:]}"
    if isinstance(value, (list, tuple)):
        return " ".join([flag, *(shlex.quote(str(item)) for item in value)])
    if isinstance(value, Mapping):
        return f"{flag} {shlex.quote(json.dumps(value, sort_keys=True))}"
    return f"{flag} {shlex.quote(str(value))}"


def _load_section(repo_id: str, pipeline_tag: str | None) -> str:
    auto_class = auto_class_for_pipeline(pipeline_tag)
    return (
        "## How to load\n\n"
        f"{_fenced('python', _LOAD_SNIPPET.format(auto_class=auto_class, repo_id=repo_id))}\n\n"
        "`import optimum_prune` comes first: it registers the loader that rebuilds layers of different sizes from "
        "the per-layer sizes saved in `config.json`."
    )


def _eval_section(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return ""
    with_base = any(entry["base_value"] is not None for entry in entries)
    header = "| Metric | Dataset | Split | Pruned |" + (" Base model |" if with_base else "")
    rule = "|---|---|---|---:|" + ("---:|" if with_base else "")
    lines = ["## Evaluation", "", header, rule]
    for entry in entries:
        result: EvalResult = entry["result"]
        dataset = result.dataset_name + (f" ({result.dataset_config})" if result.dataset_config else "")
        row = (
            f"| {_cell(result.metric_name or result.metric_type)} | {_cell(dataset)} | {_cell(result.dataset_split)} "
            f"| {_cell(result.metric_value)} |"
        )
        if with_base:
            row += f" {_cell(entry['base_value'])} |"
        lines.append(row)
    return "\n".join(lines)


def _count(value: int) -> str:
    for scale, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value:,} ({value / scale:.2f}{suffix})"
    return f"{value:,}"


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, (list, tuple)):
        text = ", ".join(str(item) for item in value)
    else:
        text = str(value)
    # A pipe would end the table cell early, a line break the table.
    return _text(text)


# ---- text that cannot break the markdown around it -------------------------------------------------------------------

#: Recipe fields that may hold a local path (see `_local_name`), and those of them that the run read.
_PATH_FIELDS = ("dataset", "prunenet_policy_path", "prunenet_save_policy")
_INPUT_PATH_FIELDS = ("dataset", "prunenet_policy_path")

# What could start markdown structure inside a line of text: code spans, emphasis, links, raw HTML, table cells,
# heading markers. Underscores are left alone (intraword `_` is never emphasis, and column names such as
# num_heads read better without escapes).
_MARKDOWN_SPECIALS = re.compile(r"([\\`*\[\]<>|#!~])")


def _one_line(text: object) -> str:
    """`text` on one line: line breaks and other control characters written as escapes (\\n, \\r, \\x1b)."""
    return "".join(
        ascii(char)[1:-1] if unicodedata.category(char) in ("Cc", "Zl", "Zp") else char for char in str(text)
    )


def _text(text: object) -> str:
    """`text` as literal markdown text on one line: nothing in it can start a heading, a block, a link or HTML."""
    return _MARKDOWN_SPECIALS.sub(r"\\\1", _one_line(text))


def _code(text: object) -> str:
    """`text` as an inline code span on one line, whatever backticks it holds."""
    text = _one_line(text)
    ticks = "`" * (max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def _fenced(info: str, body: str) -> str:
    """A fenced code block whose fence is longer than any backtick run in `body`, so nothing in it can close it."""
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", body)), default=0) + 1)
    return f"{fence}{info}\n{body}\n{fence}"


def _is_local_path(value: str) -> bool:
    """Whether a recipe value names a local file or folder (one that exists here, or is written as a path)."""
    return os.path.exists(value) or os.path.isabs(value) or value.startswith(("~", "./", "../", ".\\", "..\\"))


def _local_name(path: str) -> str:
    """The base name of a local path: what a reader can recreate beside the recipe."""
    return os.path.basename(os.path.normpath(os.path.expanduser(path))) or path


def _local_input_note(key: str, path: str, name: str) -> str:
    what = "calibration data" if key == "dataset" else "PruneNet policy"
    path = os.path.expanduser(path)
    if os.path.isdir(path):
        digest = _folder_sha256(path)
        kind = "folder"
        how = "the sha256 of the lines `<sha256>  <path in the folder>` of the files it was read from, in sorted order"
    elif os.path.isfile(path):
        digest, kind, how = _file_sha256(path), "file", "the sha256 of the file"
    else:
        return (
            f"The {what} was the local path {_code(name)} (only its base name is shown), which is not part of this "
            "repository."
        )
    return (
        f"The {what} was the local {kind} {_code(name)}, not part of this repository; its content hash ({how}) is "
        f"`sha256:{digest}`. The recipes name it by its base name: run them beside a copy."
    )


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_sha256(path: str) -> str:
    """sha256 of `sha256sum`-style lines for the files a calibration folder is read from, in their order."""
    from ..data.calibration import CalibrationDataError, calibration_files

    try:
        files = calibration_files(path)
    except CalibrationDataError:  # not (or no longer) a calibration folder: every file it holds
        files = sorted(
            (os.path.join(root, name) for root, _, names in os.walk(path) for name in names),
            key=lambda file: os.path.relpath(file, path),
        )
    listing = "".join(f"{_file_sha256(file)}  {os.path.relpath(file, path)}\n" for file in files)
    return hashlib.sha256(listing.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------------------------
# Upload
# ---------------------------------------------------------------------------------------------------------------------


def push_folder_to_hub(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
) -> str:
    """Create `repo_id` on the Hub if needed and upload every file of `folder` to it.

    The folder is only read: nothing in it is modified, created or deleted, whether the upload succeeds or fails.
    A `.git` folder and `.cache/huggingface` are skipped, as `HfApi.upload_folder` always does. A checkpoint folder
    (well under 256 files) goes up as a single commit.

    Args:
        folder: The saved checkpoint folder (config, weights, `pruning_config.json`, README.md, ...).
        repo_id: "namespace/name" of the model repository.
        token: Hub token with write access; defaults to the saved login (`hf auth login`) or `HF_TOKEN`.
        private: Visibility when the repository is created; ignored if it already exists.
        commit_message: Defaults to "Upload pruned model with optimum-prune".
        revision: Branch to commit to (created from the default branch if missing); defaults to the default branch.
        create_pr: Open a pull request against the default branch instead of committing to it.

    Returns:
        The URL of the commit, or of the pull request when `create_pr` is set. When no file differs from the Hub
        copy, no commit (or pull request) is made and the URL of the branch's current commit is returned.

    Raises:
        NotADirectoryError: If `folder` is not a directory.
        ValueError: If `create_pr` is combined with a `revision` other than the default branch.
        HubPublishError: If the Hub refused the request or could not be reached; the original error is chained.
    """
    path = Path(folder)
    if not path.is_dir():
        raise NotADirectoryError(f"Cannot publish {str(path)!r}: it is not a directory.")
    if create_pr and revision not in (None, "main"):
        raise ValueError(
            f"create_pr=True opens a pull request against the default branch; do not also pass revision={revision!r}."
        )
    api = HfApi(token=token)
    endpoint = api.endpoint
    step = "creating the repository"
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision not in (None, "main") and not str(revision).startswith("refs/pr/"):
            step = f"creating the branch {revision!r} in"
            api.create_branch(repo_id, branch=str(revision), repo_type="model", exist_ok=True)
        step = "uploading the folder to"
        info = api.upload_folder(
            repo_id=repo_id,
            folder_path=path,
            repo_type="model",
            commit_message=commit_message or "Upload pruned model with optimum-prune",
            revision=revision,
            create_pr=create_pr,
        )
    except HfHubHTTPError as err:
        raise _http_error(err, endpoint=endpoint, step=step, repo_id=repo_id) from err
    except OfflineModeIsEnabled as err:
        raise HubPublishError(
            f"Cannot publish {repo_id!r}: offline mode is on (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set). "
            "Unset it to upload.",
            endpoint=endpoint,
        ) from err
    except _transport_errors() as err:
        raise _transport_error(err, endpoint=endpoint, step=step, repo_id=repo_id) from err
    except ValueError as err:
        # Arguments were checked above, so a ValueError from here on is the Hub refusing the content (e.g. invalid
        # README metadata, which the client checks with the Hub before uploading) or a malformed answer.
        raise HubPublishError(
            f"The Hub endpoint {endpoint} did not accept the upload to {repo_id!r}: {err}", endpoint=endpoint
        ) from err
    return str(info.pr_url or info.commit_url)


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Connection-level exception types of the HTTP client that huggingface_hub uses (httpx2 in 2.x, httpx in 1.x)."""
    types: list[type[BaseException]] = []
    for module_name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        types.append(module.TransportError)
    # Socket-level failures that escape the client's own wrapping still mean "no usable connection".
    types.append(ConnectionError)
    return tuple(types)


def _http_error(err: HfHubHTTPError, *, endpoint: str, step: str, repo_id: str) -> HubPublishError:
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    namespace = repo_id.split("/")[0] if "/" in repo_id else "your account"
    server = f" The Hub said: {err.server_message.strip()}" if getattr(err, "server_message", None) else ""
    if status == 401:
        message = (
            f"The Hub endpoint {endpoint} rejected the token (HTTP 401) while {step} {repo_id!r}: the token is "
            "missing, invalid or expired. Log in with `hf auth login` (or set the HF_TOKEN environment variable, or "
            f"pass token=...) using a token with write access to {namespace!r}.{server}"
        )
    elif status == 403:
        message = (
            f"The Hub endpoint {endpoint} refused write access (HTTP 403) while {step} {repo_id!r}: the token is valid "
            f"but cannot write to {namespace!r}. Use a token with the 'write' role (a fine-grained token needs write "
            f"access to this namespace) and log in again with `hf auth login`.{server}"
        )
    elif status == 404:
        message = (
            f"Not found (HTTP 404) while {step} {repo_id!r} at {endpoint}: the repository or namespace {namespace!r} "
            "does not exist or is not visible to this token, or the endpoint is not a Hugging Face Hub (check "
            f"HF_ENDPOINT).{server}"
        )
    else:
        code = f"HTTP {status}" if status is not None else "an HTTP error"
        message = f"The Hub endpoint {endpoint} answered {code} while {step} {repo_id!r}: {err}"
    return HubPublishError(message, endpoint=endpoint, status_code=status)


def _transport_error(err: BaseException, *, endpoint: str, step: str, repo_id: str) -> HubPublishError:
    detail = f"{type(err).__name__}: {err}"
    if type(err).__name__ in ("ConnectError", "ConnectTimeout") or isinstance(err, ConnectionRefusedError):
        message = (
            f"Cannot reach the Hub endpoint {endpoint} while {step} {repo_id!r} ({detail}). Check the network "
            "connection, proxy settings and the HF_ENDPOINT environment variable."
        )
    else:
        message = (
            f"Lost the connection to the Hub endpoint {endpoint} while {step} {repo_id!r} ({detail}), after the "
            "client's retries; the commit may not have been created. Nothing was changed locally, and running the "
            "upload again is safe: files already on the Hub unchanged are skipped."
        )
    return HubPublishError(message, endpoint=endpoint)
