"""What every peer worker of `benchmarks/structured_peers.py` shares, and this library's rows too: the census of a
model and the perplexity function. Torch only (and this repository's perplexity module), so it runs in any peer's
virtual environment; a worker run as a script finds it beside itself (``import worker_common``), the parent and the
tests as ``peers.worker_common``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def stage(text: str) -> None:
    """Tell the parent what the worker is doing (it logs these lines, and a timeout row says the last one)."""
    print(f"PEER_STAGE {text}", flush=True)


def worker_parser(doc: str, job_help: str, checkpoint_help: str, data_help: str) -> argparse.ArgumentParser:
    """The arguments every worker takes from `structured_peers.run_worker`'s command line: ``--job``,
    ``--checkpoint``, ``--data`` and ``--threads``; a worker adds its own."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--job", required=True, help=job_help)
    parser.add_argument("--checkpoint", required=True, help=checkpoint_help)
    parser.add_argument("--data", required=True, help=data_help)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    return parser


def report_result(job: Callable[[], dict[str, Any]]) -> int:
    """Run a worker's job and print its one ``PEER_RESULT <json>`` line; any failure becomes
    ``{"status": "failed: <error>"}``, which the parent makes a table row of. Returns the exit code (0: ok)."""
    try:
        result = job()
    except Exception as error:
        traceback.print_exc()
        result = {"status": " ".join(f"failed: {type(error).__name__}: {error}".split())[:300]}
    print("PEER_RESULT " + json.dumps(result, default=str), flush=True)
    return 0 if result.get("status") == "ok" else 1


def source_commit(folder: str) -> str:
    """A peer's source commit: `git rev-parse HEAD` in a clone, else the COMMIT file written beside an export
    (``git archive`` keeps no history)."""
    try:
        out = subprocess.run(["git", "-C", folder, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=30)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    path = os.path.join(folder, "COMMIT")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            return handle.read().strip()
    return "unknown"


def finite(value: float) -> float | None:
    """`value`, or None (JSON null) for an infinite or NaN perplexity."""
    return value if math.isfinite(value) else None


def load_perplexity() -> Any:
    """This repository's `optimum_prune.evaluation.perplexity.perplexity`, the function every row is scored with.

    The package's `evaluation/__init__` imports the GLUE and SQuAD metrics (scipy, scikit-learn, datasets), which a
    peer's environment need not have; there the module file is loaded on its own (`perplexity_from_file`).
    """
    if REPO_ROOT not in sys.path:
        sys.path.insert(0, REPO_ROOT)
    try:
        from optimum_prune.evaluation.perplexity import perplexity

        return perplexity
    except ImportError:
        return perplexity_from_file()


def perplexity_from_file() -> Any:
    """`perplexity` from the module file itself, without `optimum_prune.evaluation`'s `__init__`: the same source,
    its relative imports (`data.calibration`, `pipeline.offload`: torch only) resolved inside the package."""
    import optimum_prune  # noqa: F401  (the light package __init__, the root of the relative imports)

    path = os.path.join(REPO_ROOT, "optimum_prune", "evaluation", "perplexity.py")
    spec = importlib.util.spec_from_file_location("optimum_prune_peer_perplexity", path)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "optimum_prune.evaluation"
    spec.loader.exec_module(module)
    return module.perplexity


def census(model: torch.nn.Module) -> dict[str, Any]:
    """Parameters of a LLaMA-like causal LM, counted the same way for every row.

    ``parameters``: every unique tensor once (a tied LM head is the embedding table); ``parameters without
    embeddings``: less the input embeddings and an untied LM head; ``zeros``: exact zeros in all of them;
    ``ffn widths`` / ``attention heads`` / ``kv heads``: per decoder block, read off the weight shapes (what a
    pruner really left, whatever the config says).
    """
    parameters = {id(p): p for p in model.parameters()}
    total = sum(p.numel() for p in parameters.values())
    embeddings = model.get_input_embeddings().weight
    outside = {id(embeddings): embeddings.numel()}
    head = model.get_output_embeddings()
    if head is not None:
        outside.setdefault(id(head.weight), head.weight.numel())
    on_meta = any(p.device.type == "meta" for p in parameters.values())  # shapes only: no values to count
    zeros = None if on_meta else sum(int((p.detach() == 0).sum()) for p in parameters.values())
    config = model.config
    ffn, heads, kv_heads = [], [], []
    for layer in model.model.layers:
        attention = layer.self_attn
        head_dim = getattr(attention, "head_dim", None) or config.hidden_size // config.num_attention_heads
        ffn.append(int(layer.mlp.gate_proj.out_features))
        heads.append(int(attention.q_proj.out_features // head_dim))
        kv_heads.append(int(attention.k_proj.out_features // head_dim))
    return {
        "parameters": total,
        "parameters without embeddings": total - sum(outside.values()),
        "zeros": zeros,
        "tied embeddings": head is not None and len(outside) == 1,
        "ffn widths": ffn,
        "attention heads": heads,
        "kv heads": kv_heads,
    }


def evaluate(model: torch.nn.Module, data: dict[str, Any]) -> dict[str, Any]:
    """Perplexity of `model` on the evaluation stream of a peers' data file (see `structured_peers.write_data`)."""
    perplexity = load_perplexity()
    return perplexity(
        model,
        input_ids=data["eval_ids"],
        seqlen=int(data["eval_seqlen"]),
        show_progress=False,
        prefix=list(data["eval_prefix"]),
    )
