"""Zero-shot multiple-choice accuracy of an in-memory model through EleutherAI's lm-evaluation-harness.

lm-eval is an optional extra (``pip install "optimum-prune[zeroshot]"``, which pins ``lm-eval[hf]==0.4.13``): it
pulls in a dozen packages that the pruning library itself does not need. The model is handed to lm-eval's ``HFLM``
as an object, so a structurally pruned model (whose per-layer sizes ``from_pretrained`` cannot reload) is evaluated
exactly as it sits in memory.

Tasks are lm-eval task names (``"piqa"``, ``"arc_easy"``: these download their data from the Hub), paths to local
task YAML files, inline config dicts, or the names of tasks, groups and tags in folders of task YAML files given as
``include_path`` (``benchmarks/zeroshot/`` holds three such tasks built from text that installs offline). A local
task reads its data offline with ``dataset_path: json`` and ``dataset_kwargs: {data_files: ...}``; relative data
files are resolved against the YAML file's folder, whether the task is given by its path or by its name::

    task: my_mc
    dataset_path: json
    dataset_kwargs:
      data_files:
        test: my_mc.jsonl
    test_split: test
    output_type: multiple_choice
    doc_to_text: "{{question}}"
    doc_to_choice: "{{choices}}"
    doc_to_target: label
    metric_list:
      - metric: acc
      - metric: acc_norm
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from .perplexity import model_device

logger = logging.getLogger(__name__)

__all__ = ["LM_EVAL_INSTALL_HINT", "evaluate_zero_shot", "folder_task_names", "load_task_config"]

LM_EVAL_INSTALL_HINT = (
    "Zero-shot evaluation needs lm-eval, an optional extra: "
    'pip install "optimum-prune[zeroshot]" (or pip install "lm-eval[hf]==0.4.13").'
)

_YAML_SUFFIXES = (".yaml", ".yml")


def _import_lm_eval() -> tuple[Any, Any, Any]:
    """(simple_evaluate, HFLM, TaskManager), or an ImportError that says how to install the extra."""
    try:
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise ImportError(f"{LM_EVAL_INSTALL_HINT} ({error})") from error
    return simple_evaluate, HFLM, TaskManager


def _resolve_data_files(data_files: Any, base_dir: Path) -> Any:
    """Make relative local data file paths absolute against the YAML's folder (str, list or split -> files dict)."""
    if isinstance(data_files, str):
        if "://" in data_files or os.path.isabs(os.path.expanduser(data_files)):
            return os.path.expanduser(data_files)
        return str(base_dir / data_files)
    if isinstance(data_files, Mapping):
        return {split: _resolve_data_files(files, base_dir) for split, files in data_files.items()}
    if isinstance(data_files, Sequence):
        return [_resolve_data_files(files, base_dir) for files in data_files]
    return data_files


def load_task_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a local lm-eval task YAML into an inline config dict, with its data files resolved against its folder.

    lm-eval itself hands ``data_files`` to ``datasets.load_dataset`` as written, i.e. relative to the current working
    directory; resolving them here lets a task folder be moved or run from anywhere. ``include:`` and ``!function``
    tags are handled by lm-eval's own YAML loader.

    Raises:
        ImportError: when lm-eval is not installed.
        ValueError: when the file is not a single-task config (it has no ``task`` key).
    """
    _import_lm_eval()
    from lm_eval.tasks._yaml_loader import load_yaml

    path = Path(path).expanduser().resolve()
    config = load_yaml(path, resolve_func=True)
    if "task" not in config:
        raise ValueError(f"{path} is not a task config: it has no 'task' key (groups and tags: pass them by name)")
    dataset_kwargs = config.get("dataset_kwargs")
    if isinstance(dataset_kwargs, Mapping) and "data_files" in dataset_kwargs:
        config["dataset_kwargs"] = {
            **dataset_kwargs,
            "data_files": _resolve_data_files(dataset_kwargs["data_files"], path.parent),
        }
    return config


def folder_task_names(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(every task, group and tag name defined in `folder`'s YAML files, its tasks alone), sorted.

    Raises:
        ImportError: when lm-eval is not installed.
    """
    _, _, TaskManager = _import_lm_eval()
    manager = TaskManager(include_path=os.fspath(folder), include_defaults=False)
    return list(manager.all_tasks), list(manager.all_subtasks)


def _read_data_files_beside_yaml(task_manager: Any, folders: Sequence[str | os.PathLike]) -> None:
    """Make `task_manager` resolve the relative ``data_files`` of the task YAML files in `folders` against each
    file's folder, as `load_task_config` does for a task given by its path.

    lm-eval hands ``data_files`` to ``datasets`` as written, i.e. relative to the working directory, so a task
    folder would only run from one place. Its ``TaskFactory`` reads every task config (named directly, or as a
    member of a group or tag) through ``_load_full_config``, which is wrapped here; an lm-eval without it keeps its
    own behaviour (the pinned 0.4.13 has it).
    """
    factory = getattr(task_manager, "_factory", None)
    load = getattr(factory, "_load_full_config", None)
    if load is None:
        logger.warning(
            "This lm-eval reads relative data_files from the working directory; run from the task folder or write "
            "absolute paths."
        )
        return
    roots = [Path(folder).expanduser().resolve() for folder in folders]

    def load_full_config(entry: Any, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        config = load(entry, overrides)
        path = getattr(entry, "yaml_path", None)
        dataset_kwargs = config.get("dataset_kwargs")
        if path is None or not isinstance(dataset_kwargs, Mapping) or "data_files" not in dataset_kwargs:
            return config
        path = Path(path).expanduser().resolve()
        if any(root == path.parent or root in path.parents for root in roots):
            config["dataset_kwargs"] = {
                **dataset_kwargs,
                "data_files": _resolve_data_files(dataset_kwargs["data_files"], path.parent),
            }
        return config

    factory._load_full_config = load_full_config


def _task_specs(tasks: str | os.PathLike | Mapping[str, Any] | Sequence[Any]) -> list[str | dict[str, Any]]:
    if isinstance(tasks, (str, os.PathLike, Mapping)):
        tasks = [tasks]
    specs: list[str | dict[str, Any]] = []
    for task in tasks:
        if isinstance(task, Mapping):
            specs.append(dict(task))
        elif isinstance(task, (str, os.PathLike)):
            text = os.fspath(task)
            if text.lower().endswith(_YAML_SUFFIXES):
                if not os.path.isfile(os.path.expanduser(text)):
                    raise FileNotFoundError(f"Task file {text!r} does not exist")
                specs.append(load_task_config(text))
            else:
                specs.append(text)
        else:
            raise TypeError(f"A task must be a name, a YAML path or a config dict, got {type(task).__name__}")
    if not specs:
        raise ValueError("No task given")
    return specs


def _prefix_token_id(tokenizer: Any, prefix_token_id: int | None) -> int | None:
    """The token lm-eval puts before an empty context: BOS, else EOS, else (tokenizers with neither) CLS or PAD.

    lm-eval only knows BOS and EOS and fails on a tokenizer that has neither; any fixed token will do there, since it
    is only a common first position for every choice.
    """
    if prefix_token_id is not None:
        return prefix_token_id
    for name in ("bos_token_id", "eos_token_id", "cls_token_id", "pad_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return None if name in ("bos_token_id", "eos_token_id") else int(value)
    return 0


def _metrics(task_results: Mapping[str, Any], num_samples: int | None) -> dict[str, float]:
    """``{"acc,none": 0.5, "acc_stderr,none": "N/A", "alias": ...}`` -> ``{"acc": 0.5}`` (numbers only)."""
    metrics: dict[str, float] = {}
    for key, value in task_results.items():
        name, _, filter_name = key.partition(",")
        if not filter_name or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        # A task scored through several filters keeps each under its own name; "none" is the usual single filter.
        metrics[name if filter_name == "none" else f"{name},{filter_name}"] = float(value)
    if num_samples is not None:
        metrics["num_samples"] = num_samples
    return metrics


def evaluate_zero_shot(
    model: torch.nn.Module,
    tokenizer: Any,
    tasks: str | os.PathLike | Mapping[str, Any] | Sequence[str | os.PathLike | Mapping[str, Any]],
    *,
    num_fewshot: int = 0,
    batch_size: int = 8,
    limit: int | float | None = None,
    max_length: int | None = None,
    include_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    include_default_tasks: bool | None = None,
    prefix_token_id: int | None = None,
    add_bos_token: bool | None = None,
    bootstrap_iters: int = 0,
    seed: int = 1234,
    return_raw: bool = False,
) -> dict[str, Any]:
    """Zero-shot (or few-shot) accuracy of an in-memory causal language model on lm-eval tasks.

    Args:
        model: a ``*ForCausalLM`` model (pruned or not); evaluated on the device its parameters are on, put in eval
            mode for the run and its previous mode restored afterwards.
        tokenizer: the matching tokenizer.
        tasks: one or several of: an lm-eval task, group or tag name (built-in tasks fetch their data from the Hub),
            a path to a local task ``.yaml`` (relative ``dataset_kwargs.data_files`` are resolved against the file's
            folder, see ``load_task_config``), or an inline task config dict.
        num_fewshot: in-context examples per question (0: zero-shot).
        batch_size: sequences per forward pass.
        limit: score only the first ``limit`` documents of each task (a fraction when below 1).
        max_length: longest context in tokens (default: the model's ``max_position_embeddings`` or 2048).
        include_path: extra folders of task YAML files whose task, group and tag names may then be used in
            ``tasks``; relative ``data_files`` in them are resolved against each YAML file's folder.
        include_default_tasks: index lm-eval's ~15k built-in task configs (about 15 s). ``None``: only when some
            task name is not already provided by ``include_path`` or given as a file / dict.
        prefix_token_id: token put before an empty context; by default the BOS token, else EOS, else CLS or PAD.
        add_bos_token: prepend BOS to every request (lm-eval's default: what the tokenizer does by itself).
        bootstrap_iters: bootstrap resamples for the standard errors (0: none, the fast default).
        seed: seed of lm-eval's python, numpy, torch and few-shot sampling generators.
        return_raw: return lm-eval's whole result dict (configs, versions, samples counts...) instead.

    Returns:
        ``{task_name: {"acc": ..., "acc_norm": ..., "num_samples": n, ...}}`` with fractions (``0.71``) for every
        task that was scored (groups included, with their aggregate), metric names without lm-eval's ``",none"``
        filter suffix and non-numeric entries (``"N/A"`` standard errors) left out.

    Raises:
        ImportError: when lm-eval is not installed (the message says how to install it).
        FileNotFoundError: for a task YAML path that does not exist.
    """
    simple_evaluate, HFLM, TaskManager = _import_lm_eval()
    specs = _task_specs(tasks)

    paths: list[str | os.PathLike] = []
    if include_path is not None:
        paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path)
    names = [spec for spec in specs if isinstance(spec, str)]
    if include_default_tasks is None:
        # Indexing the built-in tasks reads ~15k YAML files; skip it when every task is local.
        include_default_tasks = bool(names)
        if names and paths:
            local = TaskManager(include_path=[os.fspath(p) for p in paths], include_defaults=False)
            include_default_tasks = any(name not in local.all_tasks for name in names)
    task_manager = TaskManager(
        include_path=[os.fspath(p) for p in paths] or None, include_defaults=include_default_tasks
    )
    if paths:
        _read_data_files_beside_yaml(task_manager, paths)

    hf_kwargs: dict[str, Any] = {}
    prefix = _prefix_token_id(tokenizer, prefix_token_id)
    if prefix is not None:
        hf_kwargs["prefix_token_id"] = prefix
    if add_bos_token is not None:
        hf_kwargs["add_bos_token"] = add_bos_token
    device = model_device(model)
    was_training = model.training
    model.eval()
    try:
        lm = HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            device=str(device),
            batch_size=batch_size,
            max_length=max_length,
            **hf_kwargs,
        )
        with torch.no_grad():
            raw = simple_evaluate(
                model=lm,
                tasks=specs,
                num_fewshot=num_fewshot,
                limit=limit,
                bootstrap_iters=bootstrap_iters,
                log_samples=False,
                task_manager=task_manager,
                random_seed=seed,
                numpy_random_seed=seed,
                torch_random_seed=seed,
                fewshot_random_seed=seed,
            )
    finally:
        model.train(was_training)
    if raw is None:  # only non-zero ranks of a distributed run get nothing back
        return {}
    if return_raw:
        return raw
    samples = raw.get("n-samples", {})
    return {
        name: _metrics(values, samples.get(name, {}).get("effective"))
        for name, values in raw.get("results", {}).items()
    }
