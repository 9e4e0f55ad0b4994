"""Layer-wise solvers on SmolLM2-135M's real layers: solver time against the calibration floor, and layer errors.

For one decoder layer (all 30 of SmolLM2 have the same shapes) the input Gram matrix of every Linear is captured from
`--num-samples` x `--seqlen` calibration tokens (first 80% of the Wikipedia split), plus a second Gram matrix from
`--heldout-samples` windows drawn with another seed: the held-out layer error ``trace(dW G_heldout dW^T)`` shows
what a solver's choices (e.g. damping) do on tokens it did not fit. Every solver configuration then prunes the
layer's seven Linears; its solver time is reported beside the calibration floor, the wall time of one layer's
forward passes with Gram accumulation, which no Gram-based solver can go under. Times are single-threaded by
default (``--threads``) and measured on a shared machine: compare rows of one run, not across runs.

    python benchmarks/solvers.py                       # the table in benchmarks/results/solvers.md
    python benchmarks/solvers.py --quick               # smoke test: 4 x 128 tokens, two configurations
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from typing import Any

import torch
from common import MarkdownReport, default_output, load_workload, log

from optimum_prune.data.calibration import sample_token_windows
from optimum_prune.layerwise import BlockStreamer
from optimum_prune.sparsity import SPARSITY_METHODS, SparsityPattern, layer_reconstruction_error
from optimum_prune.statistics import InputStatistics
from optimum_prune.unstructured import prunable_linears

CACHE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")


def capture_layer_grams(
    workload: Any, layer_index: int, num_samples: int, seqlen: int, seed: int
) -> tuple[dict[str, torch.Tensor], float]:
    """Input Gram matrices (float64) of every Linear of one layer, and the seconds of that layer's forward passes."""
    samples = sample_token_windows(workload.calibration, workload.tokenizer, num_samples, seqlen, seed)
    model = workload.model
    layers = model.model.layers
    streamer = BlockStreamer(model)
    with torch.no_grad():
        inputs = streamer.capture(layers[0], samples)
        for index in range(layer_index):
            inputs = streamer.run(layers[index], inputs)
        linears = prunable_linears(layers[layer_index], [])
        stats = {name: InputStatistics(m.in_features, with_gram=True) for name, m in linears.items()}
        handles = [
            m.register_forward_pre_hook(lambda _m, args, s=stats[name]: s.update(args[0]))
            for name, m in linears.items()
        ]
        start = time.perf_counter()
        try:
            streamer.run(layers[layer_index], inputs, keep_outputs=False)
        finally:
            for handle in handles:
                handle.remove()
        seconds = time.perf_counter() - start
    return {name: s.gram for name, s in stats.items()}, seconds


def cached_grams(args: argparse.Namespace) -> dict[str, Any]:
    key = f"smollm2-layer{args.layer}-{args.num_samples}x{args.seqlen}-heldout{args.heldout_samples}.pt"
    path = os.path.join(CACHE_DIR, key)
    if os.path.exists(path):
        return torch.load(path, weights_only=False)
    workload = load_workload()
    grams, floor = capture_layer_grams(workload, args.layer, args.num_samples, args.seqlen, seed=0)
    heldout, _ = capture_layer_grams(workload, args.layer, args.heldout_samples, args.seqlen, seed=12345)
    layer = workload.model.model.layers[args.layer]
    weights = {name: m.weight.detach().clone() for name, m in prunable_linears(layer, []).items()}
    record = {"grams": grams, "heldout": heldout, "weights": weights, "floor_seconds": floor}
    os.makedirs(CACHE_DIR, exist_ok=True)
    torch.save(record, path)
    return record
