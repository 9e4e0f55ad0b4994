"""Scale (issue 28): an 8B-shaped model pruned end to end on this machine, and the cost model that projects it.

A random LLaMA of the chosen shape (default `8b`: Llama-3-8B's shapes) is written once to a cache folder as bf16
safetensors shards, built tensor by tensor (never the whole model in memory). Each job runs in its own process
(so its peak RSS is its own), loads it with ``device_map="auto"``, a CPU memory cap and an offload folder, in
``--dtype`` (float32 by default, the cost model's fit; bfloat16 as Llama-3-8B ships), and prunes it on 4 x 512 tokens
of the Wikipedia calibration split:

- ``structured``: 20% of attention KV groups and FFN channels, activation criterion + LIAR refit;
- ``2:4``: SparseGPT.

Before pruning, the job prints the cost model's projection for the plan (`optimum_prune.cost`, coefficients from
``benchmarks/results/cost_model.json`` when it exists, else the package's shipped ones); the table puts it beside the
measured time. The job records per-block wall and CPU seconds (`pipeline.block_timings`) and bytes read and written
(/proc/self/io), the peak RSS, then logits of one greedy generation step on a fixed prompt, and saves the pruned
model. A fresh process reloads it (the same placement) and compares the argmax token and the largest |logit
difference| with the in-memory logits. Results: ``benchmarks/results/scale.md`` (and ``scale.json``).

    python benchmarks/scale.py --threads 2 --cpu-memory 10GiB   # the 8B jobs (projection_8b.md: hours of CPU)
    python benchmarks/scale.py --dtype bfloat16 --jobs "structured 20% activation+liar" --cpu-memory 8GiB   # half the disk and memory
    python benchmarks/scale.py --shape s1024        # one of SHAPES
    python benchmarks/scale.py --quick              # the tiny shape, in a temp folder: a smoke run in under a minute
    python benchmarks/scale.py --fit                # the cost model's fit on the small shapes -> cost_model.json
    python benchmarks/scale.py --project --shape 70b --output benchmarks/results/projection_70b.md

Disk: the 8B checkpoint takes 16 GB (bf16) in --cache. A float32 job then writes, in --workdir, the float32 weights
of the offloaded blocks as it prunes them (the offload folder: about 20 GB with a 10 GiB cap) and a float32
checkpoint (about 27 GB structured, 32 GB 2:4), so about 50 GB at its peak besides the cache; a bfloat16 job reads
the offloaded weights from the checkpoint itself, writes only the pruned ones, and saves half as much; it checks the free space of
--workdir first and stops with the figure when it is short. Memory: the CPU cap, plus a block's statistics and
solver (LIAR's float64 system of 11,469 kept FFN channels and its Gram matrix: about 6 GB at 8B), plus the
interpreter and the calibration activations (about 2 GB).

Timings of the fit are CPU seconds of a process with one torch thread: the machine may be shared, and CPU time is
what another run's contention changes least. The workers are this script run with ``--worker SPEC.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import torch
from common import MarkdownReport, launch_worker_process, log, machine_info, reset_peak_rss, status_kb

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "optimum-prune-scale")
COST_MODEL = os.path.join(RESULTS_DIR, "cost_model.json")
#: Generous characters per token of English Wikipedia with SmolLM2's tokenizer (about 4.2), and slack: the
#: calibration text is cut to this many times the tokens drawn, so tokenizing it stays out of the measurement.
CHARACTERS_PER_TOKEN, CALIBRATION_SLACK = 5, 8
PROMPT = "The history of the city begins in the"

#: name -> LLaMA shape. `8b` is Llama-3-8B (untied, vocabulary 128256); the rest use SmolLM2's vocabulary (49152)
#: and FFN = 3.5 x hidden (Llama 3's ratio), 4 query heads per KV head; `tiny` (hidden 256, 32-dim heads, 4 layers)
#: is --quick's.
SHAPES: dict[str, dict[str, Any]] = {
    "8b": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    },
    #: Llama-3-70B's shapes: for --project only (140 GB in bf16 is not built here).
    "70b": {
        "hidden_size": 8192,
        "num_hidden_layers": 80,
        "intermediate_size": 28672,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "vocab_size": 128256,
        "tie_word_embeddings": False,
        "max_position_embeddings": 8192,
        "rope_theta": 500000.0,
    },
    "tiny": {"hidden_size": 256, "num_hidden_layers": 4, "intermediate_size": 896, "num_attention_heads": 8},
    "s512": {"hidden_size": 512, "num_hidden_layers": 3, "intermediate_size": 1792, "num_attention_heads": 8},
    "s768": {"hidden_size": 768, "num_hidden_layers": 2, "intermediate_size": 2688, "num_attention_heads": 12},
    "s1024": {"hidden_size": 1024, "num_hidden_layers": 2, "intermediate_size": 3584, "num_attention_heads": 16},
}
#: Shapes too large to build on this machine: `--project` only.
PROJECT_ONLY = ("70b",)
for _name, _shape in SHAPES.items():
    if _name not in ("8b", "70b"):
        _shape.update(
            num_key_value_heads=max(1, _shape["num_attention_heads"] // 4),
            head_dim=_shape["hidden_size"] // _shape["num_attention_heads"],
            vocab_size=49152,
            tie_word_embeddings=True,
            max_position_embeddings=2048,
        )
#: The shapes the cost model is fitted on (`--fit`).
FIT_SHAPES = ("s512", "s768", "s1024")

JOBS: dict[str, dict[str, Any]] = {
    "structured 20% activation+liar": {"sparsity": 0.2, "criterion": "activation", "reconstruction": "liar"},
    "2:4 sparsegpt": {"target": "2:4", "method": "sparsegpt"},
}


#: One 80 GB H100 (SXM) as a roofline: no GPU has run this project's code yet (issue 28), so a GPU projection is
#: the plan's FLOPs and bytes at the vendor's published dense peak rates times an assumed efficiency, not a fit.
#: Rates (NVIDIA H100 datasheet, SXM, dense): bf16 tensor cores 989e12 FLOP/s (the calibration forward of a bf16
#: model); fp32 67e12 (Gram statistics and SparseGPT run in float32; torch leaves TF32 off for matmuls by default);
#: fp64 tensor cores 67e12 (LIAR's float64 solves). Efficiency: 0.5 of peak for the forward's large matmuls, 0.3 for
#: the statistics and the solvers (factorisations and narrow updates reach less). I/O: weights that do not fit in
#: the GPU's memory are streamed from host RAM each block (read, and written back when pruned) at 25 GB/s (PCIe 5.0
#: x16 with pageable memory); `block`: 0.05 s of launches and Python per block.
GPU_PROFILES: dict[str, dict[str, Any]] = {
    "h100-80gb": {
        "memory_bytes": 80e9,
        "seconds": {
            "block": 0.05,
            "forward": 1 / (989e12 * 0.5),
            "statistics": 1 / (67e12 * 0.3),
            "solve_liar": 1 / (67e12 * 0.3),
            "solve_sparsegpt": 1 / (67e12 * 0.3),
            "solve_default": 1 / (67e12 * 0.3),
            "io": 1 / 25e9,
        },
        "machine": "one NVIDIA H100 80 GB (SXM), roofline at assumed efficiencies",
        "source": "benchmarks/scale.py GPU_PROFILES (datasheet peak rates x assumed efficiency; not a fit)",
    }
}


# ---- the random checkpoint ------------------------------------------------------------------------------------
def build_checkpoint(folder: str, shape: dict[str, Any], tokenizer: Any, shard_bytes: int = 2 * 2**30) -> None:
    """Write a random LLaMA of `shape` to `folder` as bf16 safetensors shards, one tensor at a time.

    benchmarks/speed.py's `build_random_llama` materialises the whole model in float32 (32 GB at 8B, more than
    this machine's memory) and ties the embeddings; here only the tensor being generated and the shard being
    written are in memory. Matrices ~ N(0, 0.02), norms 1; the names are those of a meta-device LlamaForCausalLM.
    """
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **shape,
    )
    config.dtype = torch.bfloat16
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    staging = folder + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    generator = torch.Generator().manual_seed(0)
    weight_map: dict[str, str] = {}
    shard: dict[str, torch.Tensor] = {}
    size = total = 0

    def flush() -> None:
        nonlocal shard, size
        if shard:
            file_name = f"model-{len(set(weight_map.values())) + 1:05d}.safetensors"
            save_file(shard, os.path.join(staging, file_name), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(shard, file_name))
        shard, size = {}, 0

    for name, parameter in model.named_parameters():  # tied weights appear once
        if parameter.ndim >= 2:
            tensor = torch.empty(parameter.shape, dtype=torch.float32).normal_(0.0, 0.02, generator=generator)
            tensor = tensor.to(torch.bfloat16)
        else:
            tensor = torch.ones(parameter.shape, dtype=torch.bfloat16)
        if size + tensor.numel() * 2 > shard_bytes:
            flush()
        shard[name] = tensor
        size += tensor.numel() * 2
        total += tensor.numel() * 2
    flush()
    with open(os.path.join(staging, "model.safetensors.index.json"), "w", encoding="utf-8") as handle:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, handle, indent=2)
    config.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(staging, folder)


def ensure_checkpoint(name: str, cache: str) -> str:
    """The cached checkpoint of shape `name`, built on first use."""
    folder = os.path.join(cache, name)
    if os.path.exists(os.path.join(folder, "model.safetensors.index.json")):
        return folder
    from transformers import AutoTokenizer

    from optimum_prune.assets import smollm2_path

    tokenizer_folder, gguf = smollm2_path()
    log(f"building the random {name} checkpoint in {folder} (bf16 safetensors)")
    os.makedirs(cache, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, gguf_file=gguf)
    start = time.perf_counter()
    build_checkpoint(folder, SHAPES[name], tokenizer)
    log(f"built in {time.perf_counter() - start:.0f}s")
    return folder


def calibration_file(cache: str, tokens: int) -> str:
    """The first characters of the calibration split, enough for `tokens` tokens with slack, as a text file."""
    from optimum_prune.assets import wikipedia_split

    path = os.path.join(cache, f"calibration-{tokens}.txt")
    if not os.path.exists(path):
        calibration, _ = wikipedia_split()
        text = "\n\n".join(calibration)[: CHARACTERS_PER_TOKEN * CALIBRATION_SLACK * tokens]
        os.makedirs(cache, exist_ok=True)
        with open(path + ".tmp", "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(path + ".tmp", path)
    return path


def folder_bytes(folder: str) -> int:
    total = 0
    for root, _dirs, files in os.walk(folder):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


# ---- the workers ----------------------------------------------------------------------------------------------
def proc_io() -> dict[str, int]:
    """This process's /proc/self/io counters (read_bytes / write_bytes: what reached storage); {} off Linux."""
    try:
        with open("/proc/self/io", encoding="utf-8") as handle:
            return {key: int(value) for key, value in (line.split(":") for line in handle)}
    except OSError:
        return {}


def _io_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after.get(key, 0) - before.get(key, 0) for key in ("read_bytes", "write_bytes", "rchar", "wchar")}


def _load_options(spec: dict[str, Any], offload_folder: str) -> dict[str, Any]:
    return {
        "device_map": "auto",
        "max_memory": {"cpu": spec["cpu_memory"]},
        "offload_folder": offload_folder,
        "dtype": getattr(torch, spec.get("dtype", "float32")),
    }


def _prompt_logits(model: torch.nn.Module, tokenizer: Any) -> torch.Tensor:
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.inference_mode():
        return model(ids, logits_to_keep=1).logits[0, -1].float().cpu()


class TermClock:
    """CPU and wall seconds spent inside the statistics updates and the solver calls, summed since the start: what
    `fit` attributes to those terms, the rest of a block's time being its passes, its I/O and a fixed overhead.

    `patched(method, reconstruction)` wraps `InputStatistics.update` ("statistics"), the sparsity solver
    (`unstructured.solve_checked`) and the structured refit (`RECONSTRUCTIONS[reconstruction].refit`) for the
    duration of a run; the calls do not nest.
    """

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    def _wrap(self, function: Any, term: str) -> Any:
        self.cpu.setdefault(term, 0.0)
        self.wall.setdefault(term, 0.0)

        def timed(*args: Any, **kwargs: Any) -> Any:
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.cpu[term] += time.process_time() - cpu
                self.wall[term] += time.perf_counter() - wall

        return timed

    def snapshot(self) -> dict[str, float]:
        return {**{f"{k} cpu": v for k, v in self.cpu.items()}, **{f"{k} wall": v for k, v in self.wall.items()}}

    @contextlib.contextmanager
    def patched(self, solver_term: str, reconstruction: str | None) -> Iterator[None]:
        import dataclasses

        import optimum_prune.unstructured as unstructured
        from optimum_prune.pipeline.statistics import InputStatistics
        from optimum_prune.reconstruction import RECONSTRUCTIONS

        update, solve = InputStatistics.update, unstructured.solve_checked
        refit = RECONSTRUCTIONS.get(reconstruction) if reconstruction else None
        InputStatistics.update = self._wrap(update, "statistics")
        unstructured.solve_checked = self._wrap(solve, solver_term)
        if refit is not None:
            RECONSTRUCTIONS[reconstruction] = dataclasses.replace(refit, refit=self._wrap(refit.refit, solver_term))
        try:
            yield
        finally:
            InputStatistics.update, unstructured.solve_checked = update, solve
            if refit is not None:
                RECONSTRUCTIONS[reconstruction] = refit


def run_prune_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Load, project, prune (per-block times), keep the prompt's logits, save; what the row shows."""
    from optimum_prune import PrunerForCausalLM, PruningConfig
    from optimum_prune.cost import DEFAULT_COEFFICIENTS, CostCoefficients, describe_minutes, plan_cost
    from optimum_prune.pipeline import block_timings
    from optimum_prune.pipeline.offload import is_offloaded

    result: dict[str, Any] = {}
    io_start = proc_io()
    start = time.perf_counter()
    pruner = PrunerForCausalLM.from_pretrained(spec["model"], **_load_options(spec, spec["offload_folder"]))
    result["load_s"] = time.perf_counter() - start
    result["offloaded"] = is_offloaded(pruner.model)
    with open(spec["dataset"], encoding="utf-8") as handle:
        texts = [handle.read()]
    config = PruningConfig(dataset=texts, num_samples=spec["samples"], seqlen=spec["seqlen"], **spec["config"])

    # The projection, before any weight changes, from the plan the run executes.
    coefficients = CostCoefficients.load(spec["coefficients"]) if spec.get("coefficients") else DEFAULT_COEFFICIENTS
    cost = plan_cost(pruner.model, pruner.plan(config, show_progress=False), config)
    projected = cost.seconds(coefficients)
    result["projected_s"] = sum(projected)
    result["projected_flops"] = cost.flops
    result["coefficients"] = coefficients.source or coefficients.machine
    print(
        f"PROJECTION {spec['label']}: about {describe_minutes(sum(projected))} of one CPU core "
        f"({cost.flops:.3g} FLOPs, {len(projected)} blocks; coefficients: {result['coefficients']})",
        flush=True,
    )

    blocks: list[dict[str, Any]] = []
    last_io = [proc_io()]
    clock = TermClock()
    solver_term = cost.blocks[0].solver_term
    last_terms = [clock.snapshot()]

    def record(timing: Any) -> None:
        if not timing.changes_weights:
            return
        now = proc_io()
        delta = _io_delta(last_io[0], now)
        last_io[0] = now
        terms = clock.snapshot()
        spent = {key: value - last_terms[0].get(key, 0.0) for key, value in terms.items()}
        last_terms[0] = terms
        blocks.append(
            {
                "index": timing.index,
                "wall_s": timing.wall_seconds,
                "cpu_s": timing.cpu_seconds,
                "projected_s": projected[timing.index] if timing.index < len(projected) else None,
                "read_bytes": delta["read_bytes"],
                "write_bytes": delta["write_bytes"],
                "features": cost.blocks[timing.index].features() if timing.index < len(cost.blocks) else {},
                "statistics_cpu_s": spent.get("statistics cpu", 0.0),
                "solver_cpu_s": spent.get(f"{solver_term} cpu", 0.0),
                "statistics_wall_s": spent.get("statistics wall", 0.0),
                "solver_wall_s": spent.get(f"{solver_term} wall", 0.0),
            }
        )

    reset = reset_peak_rss()
    io_prune = proc_io()
    wall, cpu = time.perf_counter(), time.process_time()
    with block_timings(record), clock.patched(solver_term, spec["config"].get("reconstruction")):
        pruner.prune(config, show_progress=False)
    result["prune_s"] = time.perf_counter() - wall
    result["prune_cpu_s"] = time.process_time() - cpu
    prune_io = _io_delta(io_prune, proc_io())
    result["prune_read_gb"] = prune_io["read_bytes"] / 1e9
    result["prune_written_gb"] = prune_io["write_bytes"] / 1e9
    peak = status_kb("VmHWM")
    result["peak_rss_prune_gb"] = peak / 2**20 if reset and peak else None
    result["blocks"] = blocks
    result["sparsity_achieved"] = pruner.summary["sparsity_achieved"]

    logits = _prompt_logits(pruner.model, pruner.tokenizer)
    torch.save(logits, spec["logits"])
    io_save = proc_io()
    start = time.perf_counter()
    pruner.save_pretrained(spec["output"])
    result["save_s"] = time.perf_counter() - start
    result["save_written_gb"] = _io_delta(io_save, proc_io())["write_bytes"] / 1e9
    result["offload_folder_gb"] = folder_bytes(spec["offload_folder"]) / 1e9
    result["output_gb"] = folder_bytes(spec["output"]) / 1e9
    total_io = _io_delta(io_start, proc_io())
    result["job_read_gb"], result["job_written_gb"] = total_io["read_bytes"] / 1e9, total_io["write_bytes"] / 1e9
    return result


def run_reload_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """A fresh process: load the saved pruned model (plain transformers with the plugin imported), one step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import optimum_prune  # noqa: F401 - the plugin's loader for pruned checkpoints

    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(spec["output"], **_load_options(spec, spec["offload_folder"]))
    load_s = time.perf_counter() - start
    tokenizer = AutoTokenizer.from_pretrained(spec["output"])
    logits = _prompt_logits(model, tokenizer)
    expected = torch.load(spec["logits"])
    return {
        "reload_s": load_s,
        "same_next_token": int(logits.argmax()) == int(expected.argmax()),
        "max_logit_diff": float((logits - expected).abs().max()),
        "peak_rss_reload_gb": (status_kb("VmHWM") or 0) / 2**20,
    }


def run_worker(spec_path: str) -> None:
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    torch.set_num_threads(spec["threads"])
    result = run_reload_worker(spec) if spec["kind"] == "reload" else run_prune_worker(spec)
    print("RESULT " + json.dumps(result), flush=True)


def launch(spec: dict[str, Any], workdir: str, timeout: float) -> dict[str, Any]:
    """Run one worker; its result, or {'error': ...} (its PROJECTION line is echoed as it arrives)."""
    return launch_worker_process(__file__, spec, workdir, timeout, echo="PROJECTION ")


# ---- one shape ------------------------------------------------------------------------------------------------
def run_shape(
    name: str,
    args: argparse.Namespace,
    workdir: str,
    report: MarkdownReport | None,
    save_and_reload: bool = True,
) -> list[dict[str, Any]]:
    """Every job on shape `name`; each row goes to `report` as soon as it is measured."""
    if name in PROJECT_ONLY:
        raise SystemExit(f"--shape {name} is for --project only: it is too large to build on this machine.")
    checkpoint = ensure_checkpoint(name, args.cache)
    tokens = args.samples * args.seqlen
    dataset = calibration_file(args.cache, tokens)
    # The checkpoint is bf16 on disk; in memory the weights take DTYPE_BYTES[--dtype] / 2 times that.
    weights = folder_bytes(checkpoint) * DTYPE_BYTES[args.dtype] // 2
    cpu_memory = args.cpu_memory or max(int(weights * args.cpu_fraction), 1)
    coefficients = args.coefficients if args.coefficients and os.path.exists(args.coefficients) else None
    results = []
    for job in args.jobs:
        label = f"{name}, {job}"
        offload, output = os.path.join(workdir, "offload"), os.path.join(workdir, "pruned")
        reload_offload = os.path.join(workdir, "offload-reload")
        for path in (offload, output, reload_offload):
            shutil.rmtree(path, ignore_errors=True)
        spec = {
            "kind": "prune",
            "label": label,
            "threads": args.threads,
            "model": checkpoint,
            "dataset": dataset,
            "samples": args.samples,
            "seqlen": args.seqlen,
            "config": JOBS[job],
            "cpu_memory": cpu_memory,
            "offload_folder": offload,
            "output": output,
            "logits": os.path.join(workdir, "logits.pt"),
            "coefficients": coefficients,
            "dtype": args.dtype,
        }
        needed, free = disk_needed(weights, _bytes(cpu_memory)), shutil.disk_usage(workdir).free
        if needed > free and not args.skip_disk_check:
            result = {"error": f"needs about {needed / 1e9:.0f} GB free in {workdir}, has {free / 1e9:.0f} GB"}
            log(f"{label}: {result['error']} (--workdir elsewhere, a larger --cpu-memory, or --skip-disk-check)")
        else:
            log(
                f"{label}: pruning ({args.samples} x {args.seqlen} tokens, cpu cap {cpu_memory}, weights "
                f"{weights / 2**30:.2f} GiB in {args.dtype})"
            )
            result = launch(spec, workdir, args.timeout)
        shutil.rmtree(offload, ignore_errors=True)
        if "error" not in result and save_and_reload:
            log(f"{label}: reloading in a fresh process")
            result.update(launch({**spec, "kind": "reload", "offload_folder": reload_offload}, workdir, args.timeout))
        for path in (output, reload_offload):
            shutil.rmtree(path, ignore_errors=True)
        result.update(shape=name, job=job, cpu_cap_gb=_bytes(cpu_memory) / 2**30)
        results.append(result)
        if report is not None:
            report.add(label, table_row(result))
            report.notes = block_tables(report_rows(report))
            report.write()
        if "error" not in result:
            log(
                f"{label}: projected {result['projected_s']:.1f}s, measured {result['prune_s']:.1f}s wall / "
                f"{result['prune_cpu_s']:.1f}s CPU"
            )
    return results


_BLOCKS: dict[str, list[dict[str, Any]]] = {}
#: Bytes per weight of each --dtype.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2}


def _bytes(memory: int | str) -> int:
    """accelerate's memory sizes ("8GiB", "500MB", bytes) in bytes."""
    from accelerate.utils import convert_file_size_to_int

    return convert_file_size_to_int(memory)


def table_row(result: dict[str, Any]) -> dict[str, Any]:
    if "error" in result:
        return {"error": result["error"]}
    blocks = result.get("blocks", [])
    _BLOCKS[f"{result['shape']}, {result['job']}"] = blocks
    walls = [b["wall_s"] for b in blocks] or [float("nan")]
    cpus = [b["cpu_s"] for b in blocks] or [float("nan")]
    return {
        "blocks": len(blocks),
        "offloaded": result.get("offloaded"),
        "projected (CPU s)": result["projected_s"],
        "prune wall (s)": result["prune_s"],
        "prune CPU (s)": result["prune_cpu_s"],
        "block wall first / mean / max (s)": f"{walls[0]:.2f} / {sum(walls) / len(walls):.2f} / {max(walls):.2f}",
        "block CPU mean (s)": sum(cpus) / len(cpus),
        "peak RSS prune (GiB)": result.get("peak_rss_prune_gb"),
        "disk read / written, prune (GB)": f"{result['prune_read_gb']:.2f} / {result['prune_written_gb']:.2f}",
        "offload folder (GB)": result.get("offload_folder_gb"),
        "save (s)": result.get("save_s"),
        "saved (GB)": result.get("output_gb"),
        "reload (s)": result.get("reload_s"),
        "same next token": result.get("same_next_token"),
        "max |logit diff|": result.get("max_logit_diff"),
    }


def report_rows(report: MarkdownReport) -> dict[str, list[dict[str, Any]]]:
    return {label: _BLOCKS.get(label, []) for label in report.rows}


def block_tables(blocks_by_job: dict[str, list[dict[str, Any]]]) -> str:
    """Per job, one line per block: measured wall and CPU seconds (with the statistics' and the solver's share),
    projected seconds, bytes read and written."""
    lines = ["## Per block", ""]
    for label, blocks in blocks_by_job.items():
        if not blocks:
            continue
        lines += [
            f"{label}:",
            "",
            "| block | wall (s) | CPU (s) | of which statistics (CPU s) | of which solver (CPU s) | projected (CPU s) "
            "| read (MB) | written (MB) |",
            "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for b in blocks:
            projected = f"{b['projected_s']:.2f}" if b.get("projected_s") is not None else "-"
            lines.append(
                f"| {b['index']} | {b['wall_s']:.2f} | {b['cpu_s']:.2f} | {b.get('statistics_cpu_s', 0.0):.2f} | "
                f"{b.get('solver_cpu_s', 0.0):.2f} | {projected} | "
                f"{b['read_bytes'] / 1e6:.1f} | {b['write_bytes'] / 1e6:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def disk_needed(weights_fp32: int, cpu_memory: int) -> int:
    """Bytes a job writes at its peak: the offloaded weights (beyond the CPU cap; in bf16, the checkpoint's own dtype,
    transformers maps them into the checkpoint and only the pruned ones are written) and the saved checkpoint (a
    structured run saves less, 2:4 the same; both are counted in full), in the loading dtype."""
    return max(weights_fp32 - cpu_memory, 0) + weights_fp32


def project(args: argparse.Namespace) -> dict[str, float]:
    """The cost model's projection for every job on `args.shape`, from a meta-device model (nothing is loaded or
    built; no I/O term, the placement being unknown)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from optimum_prune import PruningConfig
    from optimum_prune.cost import DEFAULT_COEFFICIENTS, CostCoefficients, describe_minutes, plan_cost
    from optimum_prune.planning import plan_pruning

    gpu = GPU_PROFILES.get(args.device_profile) if args.device_profile else None
    if gpu is not None:
        coefficients = CostCoefficients.from_dict(gpu)
    else:
        coefficients = (
            CostCoefficients.load(args.coefficients)
            if args.coefficients and os.path.exists(args.coefficients)
            else DEFAULT_COEFFICIENTS
        )
    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**SHAPES[args.shape]))
    weight_bytes = DTYPE_BYTES[args.dtype] * sum(p.numel() for p in model.parameters())
    # On the GPU: the whole model stays resident when it fits with a fifth to spare (statistics, activations);
    # otherwise every block is streamed from host RAM (`execution_device="cuda"`), read and written back.
    streamed = gpu is not None and weight_bytes > 0.8 * gpu["memory_bytes"]
    where = "of one CPU core" if gpu is None else f"on {gpu['machine']}"
    projections, lines = {}, []
    for job in args.jobs:
        config = PruningConfig(num_samples=args.samples, seqlen=args.seqlen, **JOBS[job])
        cost = plan_cost(model, plan_pruning(model, config), config)
        if streamed:
            for block, layer in zip(cost.blocks, model.model.layers):
                block.io_bytes = 2 * DTYPE_BYTES[args.dtype] * sum(p.numel() for p in layer.parameters())
        seconds = sum(cost.seconds(coefficients))
        totals = cost.totals()
        projections[job] = seconds
        placement = ""
        if gpu is not None:
            placement = f"; {weight_bytes / 1e9:.0f} GB of {args.dtype} weights, " + (
                f"streamed block by block from host RAM ({totals['io_bytes'] / 1e9:.0f} GB moved)"
                if streamed
                else "resident on the GPU"
            )
        lines.append(
            f"{args.shape}, {job}: {cost.flops:.3g} FLOPs (forward {totals['forward']:.3g}, statistics "
            f"{totals['statistics']:.3g}, solver {totals['solver']:.3g}) on {cost.tokens} tokens; projection: about "
            f"{describe_minutes(seconds)} ({seconds:.0f} s) {where}{placement}"
        )
        print(lines[-1], flush=True)
    if args.output:
        from common import today

        page = [
            f"# Cost-model projection: random {args.shape} LLaMA",
            "",
            f"Made {today()} from the coefficients of {coefficients.source or coefficients.machine} "
            f"({coefficients.machine}), before any run of this shape; `optimum_prune.cost` on a meta-device model, "
            + (
                "no I/O term. A projection, not a measurement."
                if gpu is None
                else "with the I/O of streamed weights. A roofline projection (see GPU_PROFILES in "
                "benchmarks/scale.py for the rates and efficiencies assumed), not a measurement: no GPU has run it."
            ),
            "",
            *[f"- {line}" for line in lines],
            "",
            "Command: `python benchmarks/scale.py " + " ".join(sys.argv[1:]) + "`",
            "",
        ]
        from common import write_text_atomically

        write_text_atomically(args.output, "\n".join(page))
    return projections


# ---- the fit --------------------------------------------------------------------------------------------------
def fit(args: argparse.Namespace, workdir: str) -> dict[str, Any]:
    """Run both jobs (prune only) on every FIT_SHAPES shape and fit the coefficients to the blocks' CPU seconds
    (`fit_by_parts`), then check the fit out of sample: the largest shape projected from the others."""

    rows, seconds, jobs, block_shapes, parts = [], [], [], [], []
    for name in args.fit_shapes:
        for result in run_shape(name, args, workdir, None, save_and_reload=False):
            if "error" in result:
                raise SystemExit(f"fit run {name}, {result['job']} failed: {result['error']}")
            jobs.append(result)
            for block in result["blocks"]:
                rows.append(block["features"])
                block_shapes.append(name)
                seconds.append(block[f"{args.fit_on}_s"])
                parts.append(
                    {"statistics": block[f"statistics_{args.fit_on}_s"], "solver": block[f"solver_{args.fit_on}_s"]}
                )
    terms = sorted({key for row in rows for key in row})
    coefficients = fit_by_parts(rows, seconds, parts, terms)
    info = machine_info()
    record = {
        "seconds": coefficients,
        "machine": f"{info['CPU']}, {args.threads} torch thread(s) ({args.fit_on} seconds)",
        "source": f"benchmarks/scale.py --fit on {', '.join(args.fit_shapes)}, {args.samples} x {args.seqlen} tokens",
        "shapes": {name: SHAPES[name] for name in args.fit_shapes},
        "jobs": [
            {
                "shape": r["shape"],
                "job": r["job"],
                "measured_cpu_s": sum(b["cpu_s"] for b in r["blocks"]),
                "fitted_cpu_s": sum(_predict(coefficients, b["features"]) for b in r["blocks"]),
                "measured_wall_s": sum(b["wall_s"] for b in r["blocks"]),
            }
            for r in jobs
        ],
    }
    # Out of sample: the largest shape projected from a fit on the others (what the 8B projection asks of the fit).
    held_out = args.fit_shapes[-1]
    if len(args.fit_shapes) > 1:
        keep = [i for i, shape in enumerate(block_shapes) if shape != held_out]
        partial = fit_by_parts([rows[i] for i in keep], [seconds[i] for i in keep], [parts[i] for i in keep], terms)
        record["held_out"] = {
            "shape": held_out,
            "fitted_on": [n for n in args.fit_shapes if n != held_out],
            "coefficients": partial,
            "jobs": [
                {
                    "job": r["job"],
                    f"measured_{args.fit_on}_s": sum(b[f"{args.fit_on}_s"] for b in r["blocks"]),
                    "projected_s": sum(_predict(partial, b["features"]) for b in r["blocks"]),
                }
                for r in jobs
                if r["shape"] == held_out
            ],
        }
    record["blocks"] = [
        {"shape": shape, "features": row, "seconds": value} for shape, row, value in zip(block_shapes, rows, seconds)
    ]
    os.makedirs(os.path.dirname(os.path.abspath(args.fit_output)), exist_ok=True)
    with open(args.fit_output, "w", encoding="utf-8") as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")
    log(f"coefficients -> {args.fit_output}: {json.dumps(coefficients)}")
    for job in record["jobs"]:
        log(
            f"  {job['shape']}, {job['job']}: {job['measured_cpu_s']:.2f}s measured, {job['fitted_cpu_s']:.2f}s fitted"
        )
    for job in record.get("held_out", {}).get("jobs", []):
        log(f"  held out {held_out}: {job['job']}: {job['projected_s']:.2f}s projected from the smaller shapes")
    return record


def fit_by_parts(
    rows: list[dict[str, float]], seconds: list[float], parts: list[dict[str, float]], terms: list[str]
) -> dict[str, float]:
    """Least squares per term: the statistics and each solver's coefficient from the seconds measured inside those
    calls (`TermClock`), then the fixed overhead, the forward passes and the I/O from what is left of each block.

    Fitting every term to the block totals at once cannot tell the forward passes from the statistics on these
    shapes (both grow as tokens x width^2), and leaves the solver, a small share of a small block, poorly
    determined; the solver dominates at 8B.
    """
    from optimum_prune.cost import fit_coefficients

    coefficients = dict.fromkeys(terms, 0.0)
    coefficients.update(
        fit_coefficients([{"statistics": r.get("statistics", 0.0)} for r in rows], [p["statistics"] for p in parts])
    )
    for term in [t for t in terms if t.startswith("solve_")]:
        chosen = [i for i, r in enumerate(rows) if r.get(term)]
        if chosen:
            coefficients.update(
                fit_coefficients([{term: rows[i][term]} for i in chosen], [parts[i]["solver"] for i in chosen])
            )
    rest = [total - p["statistics"] - p["solver"] for total, p in zip(seconds, parts)]
    coefficients.update(fit_coefficients([{k: r.get(k, 0.0) for k in ("block", "forward", "io")} for r in rows], rest))
    solvers = [coefficients[t] for t in terms if t.startswith("solve_") and coefficients[t] > 0]
    coefficients["solve_default"] = max(solvers) if solvers else 0.0
    return coefficients


def _predict(coefficients: dict[str, float], features: dict[str, float]) -> float:
    return sum(coefficients.get(term, 0.0) * amount for term, amount in features.items())


# ---- main -----------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="8b", choices=sorted(SHAPES), help="the model shape (default 8b)")
    parser.add_argument("--quick", action="store_true", help="the tiny shape, cache and results in a temp folder")
    parser.add_argument("--fit", action="store_true", help="fit the cost model on --fit-shapes instead")
    parser.add_argument("--fit-shapes", nargs="+", default=list(FIT_SHAPES), choices=sorted(SHAPES))
    parser.add_argument("--fit-output", default=COST_MODEL)
    parser.add_argument(
        "--fit-on",
        choices=("cpu", "wall"),
        default="cpu",
        help="fit to CPU seconds (default: what a shared machine disturbs least) or wall seconds (sees disk waits)",
    )
    parser.add_argument(
        "--project", action="store_true", help="print the cost model's projection for --shape, and run nothing"
    )
    parser.add_argument(
        "--device-profile",
        choices=sorted(GPU_PROFILES),
        default=None,
        help="with --project: project onto this GPU (a roofline from its datasheet rates) instead of the CPU fit",
    )
    parser.add_argument("--skip-disk-check", action="store_true", help="run even if the disk looks too small")
    parser.add_argument("--jobs", nargs="+", default=list(JOBS), choices=list(JOBS))
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument(
        "--cpu-memory",
        default=None,
        help="accelerate's max_memory for the CPU, e.g. 8GiB (default: --cpu-fraction of the weights in --dtype)",
    )
    parser.add_argument(
        "--cpu-fraction", type=float, default=0.4, help="the CPU cap as a fraction of the weights in --dtype"
    )
    parser.add_argument(
        "--dtype",
        choices=sorted(DTYPE_BYTES),
        default="float32",
        help="the dtype the jobs load, prune and save in (default float32, the cost model's fit; bfloat16 is how "
        "Llama-3-8B ships: half the memory and disk, and the checkpoint's offloaded weights are not copied)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each job (default 1)")
    parser.add_argument("--coefficients", default=COST_MODEL, help="the cost model's fit (default cost_model.json)")
    parser.add_argument("--cache", default=CACHE_DIR, help="where random checkpoints and the calibration text live")
    parser.add_argument("--workdir", default=None, help="scratch (offload folders, the pruned model)")
    parser.add_argument("--output", default=None, help="default benchmarks/results/scale.md (--quick: a temp file)")
    parser.add_argument("--timeout", type=float, default=4 * 3600, help="seconds per worker")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> MarkdownReport | dict[str, Any] | None:
    args = build_parser().parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        return None
    if args.project:
        return project(args)
    scratch = tempfile.mkdtemp(prefix="optimum-prune-scale-")
    if args.quick:
        args.shape = "tiny"
        args.cache = os.path.join(scratch, "cache")
        if args.output is None:
            args.output = os.path.join(tempfile.gettempdir(), "scale-quick.md")
    workdir = args.workdir or os.path.join(scratch, "work")
    os.makedirs(workdir, exist_ok=True)
    try:
        if args.fit:
            return fit(args, workdir)
        output = args.output or os.path.join(RESULTS_DIR, "scale.md")
        shape = SHAPES[args.shape]
        report = MarkdownReport(
            path=output,
            title=f"Scale: a random {args.shape} LLaMA pruned end to end on this machine"
            + (" (--quick smoke run: not a result)" if args.quick else ""),
            intro="\n\n".join(__doc__.split("\n\n")[1:4]),
            protocol={
                "shape": json.dumps(shape),
                "calibration": f"{args.samples} x {args.seqlen} tokens of the Wikipedia calibration split",
                "placement": f"device_map='auto', max_memory={{'cpu': cap}}, offload_folder, {args.dtype} weights",
                "torch threads": args.threads,
                "projection": "optimum_prune.cost with "
                # The repository-relative path: a results page names no folder of the machine it ran on.
                + (
                    os.path.relpath(args.coefficients, os.path.dirname(os.path.dirname(RESULTS_DIR)))
                    if os.path.exists(args.coefficients or "")
                    else "the shipped coefficients"
                )
                + " (CPU seconds of one core), made before the job prunes",
                "prompt": PROMPT,
            },
            machine={**machine_info(), "memory": _total_memory()},
            row_header="shape, job",
            float_format=".3g",
            planned=len(args.jobs),
        )
        report.write()
        log(f"writing {output}")
        run_shape(args.shape, args, workdir, report)
        report.finish()
        return report
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _total_memory() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main(sys.argv[1:])
