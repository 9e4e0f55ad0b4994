"""GPU readiness: prune on a GPU and on the CPU, check the GPU results against the CPU's, time both and record the
peak GPU memory; one table, `benchmarks/results/gpu.md`.

Every row prunes the same model twice from the same calibration data: once streamed block by block through
`--device` (`prune(..., execution_device=DEVICE)`, the model itself waiting in CPU memory, as a model larger than
the GPU would), once the ordinary way on the CPU. Both pruned models are then evaluated on `--device`, so the
comparison measures the pruning, not the evaluation. Sections:

* `smollm2`: SmolLM2-135M (the offline GGUF asset, `optimum_prune.assets`), 16 x 512 calibration tokens of the
  Wikipedia split, perplexity on 16 held-out 512-token windows: the dense model evaluated on both devices; the
  solvers given one layer's Gram matrix on both devices ("same Gram": only the solver's arithmetic differs);
  2:4 SparseGPT, the same with the whole model moved to the device first (the CLI's `--device`), 50% Wanda, 50% ADMM
  and structured 20% (`recipe="obs"`) end to end.
* `random1b`: a Llama with Llama-3.2-1B's shapes (1.24B parameters, 16 blocks, hidden 2048, FFN 8192, 32 query /
  8 KV heads, 128k vocabulary) and seeded random weights, built from its config; 4 x 512 random calibration
  tokens; structured 20% (`recipe="liar"`) and 2:4 SparseGPT. Perplexity on random tokens means little; it and
  the relative difference of the two pruned models' logits show that both devices pruned alike.

Checks: perplexity of the device run within 1% of the CPU run's; for SparseGPT and Wanda at least 99% (end to
end) / 99.9% (same Gram) of the weights in the same state, kept or pruned. Masks are not bit-identical across
devices: the calibration activations already differ in their last bits (other kernels, other summation orders),
a weight near its group's threshold can fall either way, and SparseGPT carries each choice along its row. The
share of kept units the two structured runs share is reported, not checked. The script exits with status 1 when
a check fails.

Run here (seconds, on the CPU; tests/test_gpu_check.py runs the same in the fast suite):

    python benchmarks/gpu_check.py --device cpu --quick

On a machine with a GPU the CPU runs are most of the time. About 9 minutes on one H100 and 16 CPU cores (some 2
of them on the GPU, 3.5 for the random model, 5.5 for SmolLM2) is an estimate scaled from this project's 2-core
machine, not a measurement: there, on cores shared with other jobs and 1 x 512 calibration tokens, SmolLM2's CPU
runs took 16 minutes for the obs recipe (two greedy OBS rankings of every unit of every layer) and 7 for 2:4
SparseGPT (its column loop), whatever the token count.

On this workplace's lent GPU machines (`run` of the device tool) at most 64 MiB travel per call, and the SmolLM2
GGUF alone is 94 MB, so the check goes in two calls that share one warm machine. Once, here:

    python benchmarks/gpu_check.py --pack .gpu-check

writes `.gpu-check/a` (the GGUF's first half, the Wikipedia articles, the `gguf` package) and `.gpu-check/b` (the
second half); `.gpu-check/` is git-ignored. Then, with `carry=[".gpu-check/a"]` and `timeout_s=330`:

    export PYTHONUNBUFFERED=1 PYTHONPATH=.:.gpu-check/a/site; timeout 300 python3 benchmarks/gpu_check.py --device cuda --sections random1b --resume --output .gpu-check/out/gpu.md; cp .gpu-check/out/gpu.* "$OUT"/

and, as the next call while that machine is warm (30 s), with `carry=[".gpu-check/b"]` and `timeout_s=450`:

    export PYTHONUNBUFFERED=1 PYTHONPATH=.:.gpu-check/a/site; timeout 420 python3 benchmarks/gpu_check.py --device cuda --sections smollm2 --smollm2 .gpu-check/a/smollm2.gguf.part0 .gpu-check/b/smollm2.gguf.part1 --wikipedia .gpu-check/a/wikipedia.jsonl.gz --resume --output .gpu-check/out/gpu.md; cp .gpu-check/out/gpu.* "$OUT"/

The calls stop at 300 s and 420 s (about 3.5 and 5.5 minutes of work are expected) and keep their finished rows:
the same command again (`--resume`) runs only what is missing, and the 15 minutes of device time leave room for
about one row's rerun (the obs row, the longest, comes last). Copy the returned gpu.md and gpu.json to
`benchmarks/results/`. Other options: `--sections`, `--num-samples`, `--eval-windows` (smaller runs of the same
code), `--threads` (CPU threads; default: torch's).
"""

from __future__ import annotations

import argparse
import copy
import gc
import gzip
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from common import MarkdownReport, default_output, log, machine_info, stopwatch
from torch import nn

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.data.calibration import RANDOM_TOKENS, window_prefix
from optimum_prune.evaluation import perplexity
from optimum_prune.pipeline.blocks import find_blocks
from optimum_prune.sparsity import SPARSITY_METHODS, SparsityPattern

SECTIONS = ("smollm2", "random1b")
#: The table's columns, in order (a row leaves out what it does not measure).
COLUMNS = (
    "device run (s)",
    "CPU run (s)",
    "peak GPU memory (MiB)",
    "ppl, device run",
    "ppl, CPU run",
    "ppl diff (%)",
    "masks / units equal (%)",
    "weights rel. diff",
    "logits rel. diff",
    "check",
)
#: Perplexity of the device run may differ from the CPU run's by this fraction.
PERPLEXITY_TOLERANCE = 0.01
#: Least share of weights in the same state (kept or pruned) on both devices, end to end and with the same Gram.
MASK_AGREEMENT = {"sparsegpt": 0.99, "wanda": 0.99}
SAME_GRAM_AGREEMENT = {"sparsegpt": 0.999, "wanda": 0.999}

#: Llama-3.2-1B's shapes (head size 64, tied embeddings); weights are random.
LLAMA_1B = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=2048,
    rope_theta=500000.0,
    tie_word_embeddings=True,
)
#: --quick stand-ins: tiny random Llamas, one per section (the second with 4 query heads per KV head, as the 1B).
QUICK_SMOLLM2 = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
QUICK_1B = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)

#: (row, PruningConfig fields, how the two runs are compared: "units" kept or weight "masks", and whether the
#: model is moved to the device first, as the CLI's --device does, instead of streamed through it).
#: The obs recipe comes last: its CPU run is the longest of the section (a greedy OBS ranking of every unit of
#: every layer, twice), so a call cut short by its timeout has the others done.
SMOLLM2_RUNS = (
    ("2:4 sparsegpt", dict(target="2:4", method="sparsegpt"), "masks", False),
    ("2:4 sparsegpt, model on the device", dict(target="2:4", method="sparsegpt"), "masks", True),
    ("50% wanda", dict(target="unstructured", method="wanda", sparsity=0.5), "masks", False),
    ("50% admm", dict(target="unstructured", method="admm", sparsity=0.5), "masks", False),
    ("structured 20% obs", dict(recipe="obs", sparsity=0.2), "units", False),
)
RANDOM_RUNS = (
    ("structured 20% liar", dict(recipe="liar", sparsity=0.2), "units", False),
    ("2:4 sparsegpt", dict(target="2:4", method="sparsegpt"), "masks", False),
)
#: Solvers given one layer's Gram matrix on both devices.
SAME_GRAM_RUNS = (("sparsegpt", "2:4"), ("wanda", "2:4"), ("admm", "unstructured"))

QUICK_TEXT = (
    "Pruning removes heads, channels or single weights from a trained network. The calibration text shows which "
    "of them matter: a channel that never fires can go, one that carries the signal must stay. Least squares then "
    "puts back what the kept channels can predict of the removed ones. "
)


# ---- what is pruned --------------------------------------------------------------------------------------------
@dataclass
class Subject:
    """A model (pristine, on the CPU), its tokenizer, calibration data and evaluation tokens."""

    name: str
    model: nn.Module
    tokenizer: Any
    dataset: Any
    num_samples: int
    seqlen: int
    eval_ids: torch.Tensor
    eval_seqlen: int
    eval_windows: int
    load_seconds: float
    #: Input Gram matrices by module name, computed once (`layer_gram`).
    grams: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    #: CPU runs by configuration (`cpu_reference`).
    cpu_runs: dict[str, tuple[PrunerForCausalLM, float]] = field(default_factory=dict)


def char_tokenizer() -> Any:
    """A character-level tokenizer (no download): the random models' ids are drawn, not read from text."""
    import string

    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    characters = string.ascii_letters + string.digits + string.punctuation + " \n"
    vocab = {"[PAD]": 0, "[UNK]": 1, **{c: i + 2 for i, c in enumerate(characters)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]")


def random_llama(shapes: dict[str, Any], seed: int = 0) -> nn.Module:
    """A Llama with `shapes` and seeded random weights (transformers' initialisation), float32, eval mode."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**shapes)).eval()


def read_articles(path: str) -> list[str]:
    """The texts of a JSON-lines file (gzip-compressed if it ends in .gz), one {"text": ...} per line."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line)["text"] for line in handle if line.strip()]


def smollm2_subject(args: argparse.Namespace) -> Subject:
    """SmolLM2-135M and the Wikipedia split: from the installed assets, or from `--smollm2` / `--wikipedia` files."""
    from optimum_prune.assets import CALIBRATION_FRACTION, SMOLLM2_GGUF

    start = time.perf_counter()
    if args.quick:
        model, tokenizer = random_llama(QUICK_SMOLLM2), char_tokenizer()
        calibration, held_out = [QUICK_TEXT * 8] * 4, QUICK_TEXT * 6
    else:
        scratch = None
        if args.smollm2:
            parts = args.smollm2
            scratch = tempfile.mkdtemp(prefix="gpu-check-")
            folder, gguf = scratch, SMOLLM2_GGUF
            with open(os.path.join(folder, gguf), "wb") as joined:
                for part in parts:  # a GGUF split to travel in pieces (--pack) is joined again here
                    with open(part, "rb") as piece:
                        shutil.copyfileobj(piece, joined)
        else:
            from optimum_prune.assets import smollm2_path

            folder, gguf = smollm2_path()
        try:
            pruner = PrunerForCausalLM.from_pretrained(folder, gguf_file=gguf)
        finally:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
        model, tokenizer = pruner.model, pruner.tokenizer
        if args.wikipedia:
            articles = read_articles(args.wikipedia)
            cut = int(len(articles) * CALIBRATION_FRACTION)
            calibration, held_out = articles[:cut], "\n\n".join(articles[cut:])
        else:
            from optimum_prune.assets import wikipedia_split

            calibration, held_out = wikipedia_split()
    eval_ids = tokenizer(held_out, return_tensors="pt", add_special_tokens=False).input_ids
    return Subject(
        name="SmolLM2-135M" if not args.quick else "tiny Llama (for SmolLM2)",
        model=model,
        tokenizer=tokenizer,
        dataset=calibration,
        num_samples=args.num_samples or (4 if args.quick else 16),
        seqlen=32 if args.quick else 512,
        eval_ids=eval_ids,
        eval_seqlen=64 if args.quick else 512,
        eval_windows=args.eval_windows or (4 if args.quick else 16),
        load_seconds=time.perf_counter() - start,
    )


def random_subject(args: argparse.Namespace) -> Subject:
    start = time.perf_counter()
    shapes = QUICK_1B if args.quick else LLAMA_1B
    model = random_llama(shapes, seed=1)
    seqlen = 32 if args.quick else 512
    windows = args.eval_windows or (2 if args.quick else 4)
    generator = torch.Generator(device="cpu").manual_seed(2)
    eval_ids = torch.randint(0, shapes["vocab_size"], (1, windows * seqlen + 1), generator=generator, device="cpu")
    parameters = sum(p.numel() for p in model.parameters())
    return Subject(
        name=f"random Llama, {parameters / 1e9:.2f}B" if not args.quick else "tiny random Llama (for 1B)",
        model=model,
        tokenizer=char_tokenizer(),
        dataset=RANDOM_TOKENS,
        num_samples=args.num_samples or 4,
        seqlen=seqlen,
        eval_ids=eval_ids,
        eval_seqlen=seqlen,
        eval_windows=windows,
        load_seconds=time.perf_counter() - start,
    )


# ---- measuring -------------------------------------------------------------------------------------------------
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def prune_copy(
    subject: Subject, fields: dict[str, Any], device: torch.device | None, resident: bool = False
) -> tuple[PrunerForCausalLM, float]:
    """A pruned deep copy of the subject's model (back on the CPU) and the seconds `prune` took: streamed through
    `device` (the model stays in CPU memory), or with `resident` moved to `device` first and pruned where it is
    (what the CLI's --device does), or on the CPU the ordinary way when `device` is None."""
    pruner = PrunerForCausalLM(copy.deepcopy(subject.model), subject.tokenizer)
    config = PruningConfig(num_samples=subject.num_samples, seqlen=subject.seqlen, **fields)
    placement = {"execution_device": device} if device is not None and not resident else {}
    if device is not None:
        if resident:
            pruner.model.to(device)
        synchronize(device)
    with stopwatch() as timer:
        pruner.prune(config, dataset=subject.dataset, show_progress=False, **placement)
        if device is not None:
            synchronize(device)
    pruner.model.to("cpu")
    return pruner, timer["seconds"]


def cpu_reference(subject: Subject, fields: dict[str, Any]) -> tuple[PrunerForCausalLM, float]:
    """`prune_copy` on the CPU, once per configuration (rows that differ only in the device run share it)."""
    key = json.dumps(fields, sort_keys=True)
    if key not in subject.cpu_runs:
        subject.cpu_runs[key] = prune_copy(subject, fields, None)
    return subject.cpu_runs[key]


def evaluate(model: nn.Module, subject: Subject, device: torch.device, logits: bool = False) -> tuple[float, Any]:
    """Perplexity of `model` on the subject's evaluation windows, computed on `device` (the model goes back to the
    CPU afterwards), and with `logits` its logits on the first window (left on `device`), else None."""
    model.to(device)
    try:
        ppl = perplexity(
            model,
            input_ids=subject.eval_ids,
            seqlen=subject.eval_seqlen,
            max_windows=subject.eval_windows,
            show_progress=False,
            prefix=window_prefix(subject.tokenizer),
        )["perplexity"]
        first = None
        if logits:
            with torch.no_grad():
                first = model(subject.eval_ids[:, : subject.eval_seqlen].to(device)).logits.float()
        return ppl, first
    finally:
        model.to("cpu")


def pruned_linears(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, weight) of every Linear inside the model's repeated blocks (what unstructured pruning touches)."""
    return [
        (f"{block_name}.{name}", module.weight.detach())
        for block_name, block in find_blocks(model, None)
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear)
    ]


def mask_agreement(a: nn.Module, b: nn.Module) -> float:
    """Share of the blocks' weights that are zero in both models or in neither."""
    same = total = 0
    for (name_a, weight_a), (name_b, weight_b) in zip(pruned_linears(a), pruned_linears(b), strict=True):
        assert name_a == name_b and weight_a.shape == weight_b.shape, (name_a, name_b)
        same += int(((weight_a == 0) == (weight_b.to(weight_a.device) == 0)).sum())
        total += weight_a.numel()
    return same / max(total, 1)


def kept_rows(original: torch.Tensor, pruned: torch.Tensor) -> set[int]:
    """Which rows of `original` the rows of `pruned` are (structured pruning keeps a producer's rows unchanged)."""
    width = min(32, original.shape[1])
    index = {}
    for position, row in enumerate(original[:, :width].tolist()):
        index.setdefault(tuple(row), position)
    return {index.get(tuple(row), -1 - position) for position, row in enumerate(pruned[:, :width].tolist())}


def unit_agreement(original: nn.Module, a: nn.Module, b: nn.Module) -> float:
    """Share of the kept attention rows (q_proj) and FFN channels (gate_proj) that both pruned Llamas kept."""
    shared = kept = 0
    for layer_o, layer_a, layer_b in zip(original.model.layers, a.model.layers, b.model.layers, strict=True):
        for producer in ("self_attn.q_proj", "mlp.gate_proj"):
            weight = layer_o.get_submodule(producer).weight
            rows_a = kept_rows(weight, layer_a.get_submodule(producer).weight)
            rows_b = kept_rows(weight, layer_b.get_submodule(producer).weight)
            shared += len(rows_a & rows_b)
            kept += max(len(rows_a), len(rows_b))
    return shared / max(kept, 1)


def layer_gram(subject: Subject, module_name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight of `module_name` and its input Gram matrix (float64) over the calibration samples, on the CPU."""
    if module_name in subject.grams:
        return subject.grams[module_name]
    pruner = PrunerForCausalLM(subject.model, subject.tokenizer)
    config = PruningConfig(num_samples=subject.num_samples, seqlen=subject.seqlen, dataset=subject.dataset)
    samples = pruner.calibration_samples(config)
    module = subject.model.get_submodule(module_name)
    gram = torch.zeros(module.in_features, module.in_features, dtype=torch.float64, device="cpu")

    def accumulate(_module, args):
        x = args[0].detach().reshape(-1, module.in_features).double()
        gram.add_(x.T @ x)

    handle = module.register_forward_pre_hook(accumulate)
    try:
        with torch.no_grad():
            for sample in samples:
                subject.model(**sample)
    finally:
        handle.remove()
    subject.grams[module_name] = module.weight.detach().clone(), gram
    return subject.grams[module_name]


# ---- rows ------------------------------------------------------------------------------------------------------
def verdict(failures: list[str]) -> str:
    return "pass" if not failures else "FAIL: " + "; ".join(failures)


def perplexity_failures(device_ppl: float, cpu_ppl: float) -> tuple[float, list[str]]:
    difference = (device_ppl - cpu_ppl) / cpu_ppl
    if not abs(difference) <= PERPLEXITY_TOLERANCE:  # NaN fails too
        return 100 * difference, [f"perplexity differs by {100 * difference:.2f}%"]
    return 100 * difference, []


def dense_row(subject: Subject, device: torch.device) -> dict[str, Any]:
    with stopwatch() as on_device:
        device_ppl = evaluate(subject.model, subject, device)[0]
        synchronize(device)
    with stopwatch() as on_cpu:
        cpu_ppl = evaluate(subject.model, subject, torch.device("cpu"))[0]
    difference, failures = perplexity_failures(device_ppl, cpu_ppl)
    return {
        "device run (s)": on_device["seconds"],
        "CPU run (s)": on_cpu["seconds"],
        "ppl, device run": device_ppl,
        "ppl, CPU run": cpu_ppl,
        "ppl diff (%)": difference,
        "check": verdict(failures),
    }


def same_gram_row(subject: Subject, method: str, target: str, device: torch.device, layer: str) -> dict[str, Any]:
    weight, gram = layer_gram(subject, layer)
    pattern = SparsityPattern.parse(target, 0.5)
    solver = SPARSITY_METHODS[method]
    with stopwatch() as on_cpu:
        cpu_weight, cpu_keep = solver(weight, gram, pattern, cache={})
    weight_d, gram_d = weight.to(device), gram.to(device)
    solver(weight_d, gram_d, pattern, cache={})  # warm-up: the first call on a GPU loads its libraries
    synchronize(device)
    with stopwatch() as on_device:
        device_weight, device_keep = solver(weight_d, gram_d, pattern, cache={})
        synchronize(device)
    agreement = float((device_keep.cpu() == cpu_keep).double().mean())
    error = float((device_weight.cpu().double() - cpu_weight.double()).norm() / cpu_weight.double().norm())
    failures = []
    if method in SAME_GRAM_AGREEMENT and not agreement >= SAME_GRAM_AGREEMENT[method]:
        failures.append(f"masks agree on {100 * agreement:.3f}% < {100 * SAME_GRAM_AGREEMENT[method]:g}%")
    return {
        "device run (s)": on_device["seconds"],
        "CPU run (s)": on_cpu["seconds"],
        "masks / units equal (%)": 100 * agreement,
        "weights rel. diff": error,
        "check": verdict(failures),
    }


def pruning_row(
    subject: Subject, fields: dict[str, Any], compare: str, device: torch.device, logits: bool, resident: bool
) -> dict[str, Any]:
    reset_peak(device)
    on_device, device_seconds = prune_copy(subject, fields, device, resident)
    peak = peak_mib(device)
    on_cpu, cpu_seconds = cpu_reference(subject, fields)
    failures = []
    if compare == "masks":
        agreement = mask_agreement(on_device.model, on_cpu.model)
        method = fields.get("method")
        if method in MASK_AGREEMENT and not agreement >= MASK_AGREEMENT[method]:
            failures.append(f"masks agree on {100 * agreement:.2f}% < {100 * MASK_AGREEMENT[method]:g}%")
    else:
        agreement = unit_agreement(subject.model, on_device.model, on_cpu.model)
    device_ppl, device_logits = evaluate(on_device.model, subject, device, logits)
    cpu_ppl, cpu_logits = evaluate(on_cpu.model, subject, device, logits)
    difference, ppl_failures = perplexity_failures(device_ppl, cpu_ppl)
    row = {
        "device run (s)": device_seconds,
        "CPU run (s)": cpu_seconds,
        "peak GPU memory (MiB)": peak,
        "ppl, device run": device_ppl,
        "ppl, CPU run": cpu_ppl,
        "ppl diff (%)": difference,
        "masks / units equal (%)": 100 * agreement,
    }
    if logits:  # ||logits_device_run - logits_cpu_run|| / ||logits_cpu_run|| on the first window
        gap = (device_logits.double() - cpu_logits.double()).norm() / cpu_logits.double().norm()
        row["logits rel. diff"] = float(gap)
    row["check"] = verdict(failures + ppl_failures)
    return row


def section_rows(
    section: str, args: argparse.Namespace, device: torch.device
) -> tuple[Callable[[], Subject], list[tuple[str, Callable[[Subject], dict[str, Any]]]]]:
    """The subject of `section` (built only if a row still has to run) and its rows, in order."""
    if section == "smollm2":
        prefix = "SmolLM2" if not args.quick else "tiny (SmolLM2)"
        rows: list[tuple[str, Callable[[Subject], dict[str, Any]]]] = [
            (f"{prefix}: dense", lambda subject: dense_row(subject, device))
        ]

        def middle_down_proj(subject: Subject) -> str:
            return f"model.layers.{len(subject.model.model.layers) // 2}.mlp.down_proj"

        for method, target in SAME_GRAM_RUNS:
            label = target if target != "unstructured" else "50%"
            rows.append(
                (
                    f"{prefix}: same Gram, {label} {method}",
                    lambda subject, m=method, t=target: same_gram_row(
                        subject, m, t, device, middle_down_proj(subject)
                    ),
                )
            )
        for name, fields, compare, resident in SMOLLM2_RUNS:
            rows.append(
                (
                    f"{prefix}: {name}",
                    lambda subject, f=fields, c=compare, r=resident: pruning_row(subject, f, c, device, False, r),
                )
            )
        return (lambda: smollm2_subject(args)), rows
    prefix = "Llama 1B random" if not args.quick else "tiny (1B)"
    rows = [
        (
            f"{prefix}: {name}",
            lambda subject, f=fields, c=compare, r=resident: pruning_row(subject, f, c, device, True, r),
        )
        for name, fields, compare, resident in RANDOM_RUNS
    ]
    return (lambda: random_subject(args)), rows


# ---- packing for a lent GPU machine ----------------------------------------------------------------------------
#: Bytes of the GGUF in the first part; the rest goes into the second (each call may carry 64 MiB in all).
PART_BYTES = 47 * 2**20


def pack(folder: str) -> None:
    """Write what the two device calls carry (see the module docstring): `a` and `b` under `folder`."""
    import importlib.metadata

    import gguf

    from optimum_prune.assets import smollm2_gguf, wikipedia_articles

    first, second = os.path.join(folder, "a"), os.path.join(folder, "b")
    for path in (first, second):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
    with open(smollm2_gguf(), "rb") as source:
        halves = {os.path.join(first, "smollm2.gguf.part0"): source.read(PART_BYTES)}
        halves[os.path.join(second, "smollm2.gguf.part1")] = source.read()
    for path, data in halves.items():
        with open(path, "wb") as handle:
            handle.write(data)
    with gzip.open(os.path.join(first, "wikipedia.jsonl.gz"), "wt", encoding="utf-8") as handle:
        for article in wikipedia_articles():
            handle.write(json.dumps({"text": article}, ensure_ascii=False) + "\n")
    # transformers reads GGUF files with the `gguf` package (and checks its version in its metadata).
    site = os.path.join(first, "site")
    ignore = shutil.ignore_patterns("__pycache__")
    package = os.path.dirname(gguf.__file__)
    shutil.copytree(package, os.path.join(site, "gguf"), ignore=ignore)
    metadata = os.path.join(os.path.dirname(package), f"gguf-{importlib.metadata.version('gguf')}.dist-info")
    shutil.copytree(metadata, os.path.join(site, os.path.basename(metadata)), ignore=ignore)
    for path in (first, second):
        size = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(path) for name in names)
        log(f"{path}: {size / 2**20:.1f} MiB")


# ---- main ------------------------------------------------------------------------------------------------------
def gpu_machine_info() -> dict[str, str]:
    """common.py's machine description, with the GPU's memory when there is one."""
    info = machine_info()
    if torch.cuda.is_available():
        info["GPU memory"] = f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB"
    return info


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="where the device runs prune (default: cuda)")
    parser.add_argument("--quick", action="store_true", help="tiny random models and data: seconds on a CPU")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--num-samples", type=int, default=None, help="calibration windows (default: 16 / 4)")
    parser.add_argument("--eval-windows", type=int, default=None, help="evaluation windows (default: 16 / 4)")
    parser.add_argument("--smollm2", nargs="+", default=None, metavar="FILE", help="SmolLM2's GGUF, or its parts")
    parser.add_argument("--wikipedia", default=None, metavar="FILE", help="the articles as JSON lines (.gz)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--output", default=None, help="the table (default: benchmarks/results/gpu.md)")
    parser.add_argument("--resume", action="store_true", help="keep the rows of an earlier run of the same protocol")
    parser.add_argument("--pack", default=None, metavar="FOLDER", help="write the device calls' files, then stop")
    return parser


def main(argv: Sequence[str] | None = None) -> MarkdownReport | None:
    args = build_parser().parse_args(argv)
    if args.pack:
        pack(args.pack)
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available here (use --device cpu --quick for the check).")
    quick = " (--quick: tiny random models)" if args.quick else ""
    report = MarkdownReport(
        path=args.output or default_output("gpu", args.quick),
        title=f"GPU readiness: pruning on {device.type} checked against the CPU{quick}",
        intro="\n\n".join(__doc__.split("\n\n")[:4]),
        protocol={
            "device": str(device),
            "device runs": "prune(..., execution_device=device): blocks streamed through the device, the model "
            "in CPU memory; CPU runs: prune() on the CPU",
            "evaluation": "both pruned models evaluated on the device",
            "SmolLM2 calibration": f"{args.num_samples or (4 if args.quick else 16)} x {32 if args.quick else 512} "
            f"tokens, perplexity on {args.eval_windows or (4 if args.quick else 16)} windows",
            "random Llama calibration": f"{args.num_samples or 4} x {32 if args.quick else 512} random tokens",
            "checks": f"perplexity within {100 * PERPLEXITY_TOLERANCE:g}%; same-state weights >= "
            f"{100 * MASK_AGREEMENT['sparsegpt']:g}% end to end, >= {100 * SAME_GRAM_AGREEMENT['sparsegpt']:g}% "
            "with the same Gram (SparseGPT, Wanda)",
            "sections": " ".join(args.sections),
        },
        machine=gpu_machine_info(),
        float_format=".4g",
        selection_keys=("sections",),
    )
    done = set(report.resume()) if args.resume else set()
    plans = [section_rows(section, args, device) for section in args.sections]
    report.planned = len(done | {name for _, rows in plans for name, _ in rows})
    for make_subject, rows in plans:
        todo = [(name, row) for name, row in rows if name not in done]
        if not todo:
            continue
        subject = make_subject()
        log(f"{subject.name}: ready in {subject.load_seconds:.1f} s")
        for name, row in todo:
            log(f"{name} ...")
            measured = row(subject)
            metrics = {column: measured.get(column) for column in COLUMNS}
            report.add(name, metrics)
            log(f"{name}: {metrics}")
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        del subject
        gc.collect()
    failed = [name for name, metrics in report.rows.items() if str(metrics.get("check", "pass")) != "pass"]
    report.notes = ("All checks pass." if not failed else "**Checks failed**: " + ", ".join(failed) + ".") + (
        " Times are wall seconds of `prune` (drawing and tokenizing the calibration windows included; loading and "
        "evaluating the model not). Same-Gram rows time the solver alone, after one warm-up call on the device."
    )
    report.finish()
    log(f"wrote {report.path}")
    if failed:
        log(f"checks failed: {failed}")
    return report


if __name__ == "__main__":
    result = main()
    sys.exit(1 if result is not None and "Checks failed" in result.notes else 0)
