"""Why weight-only FFN criteria struggle on SmolLM2: how much FFN output each channel score throws away.

For every layer of SmolLM2-135M, the channels a score ranks lowest are removed (20% and 30%, no refit) and the
relative error of the FFN output on real calibration activations is measured exactly:
``||D[:, dropped] A[dropped]|| / ||D A||`` (A: the inputs of down_proj, D: its weight). Scores compared:

* ``activation`` (data-driven, this library's criterion): ||D[:, j]|| * ||A[j]||;
* weight-only scores: ``magnitude`` (||D[:, j]||, this library's criterion), the row norm of gate_proj, of gate_proj
  and up_proj with the RMSNorm scale folded in, and the prunenet_invariant policy's row leverage features (``channel_features``);
* ``activation`` on uniformly random token ids instead of text: what a criterion could learn without any data;
* ``random`` (seeded per layer), the bar that a weight-only score has to clear.

Writes ``benchmarks/results/ffn_scores.md``. A few minutes on one CPU core:

    python benchmarks/ffn_scores.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch
from common import RESULTS_DIR, load_workload, log, machine_info, today

from optimum_prune.criteria.prunenet_invariant import FEATURE_NAMES, channel_features
from optimum_prune.data.calibration import sample_token_windows

ScoreFunction = Callable[[dict[str, torch.Tensor], int], torch.Tensor]


def _leverage(name: str) -> ScoreFunction:
    column = FEATURE_NAMES.index(name)
    return lambda m, layer: m["prunenet_features"][:, column].double()


SCORES: dict[str, ScoreFunction] = {
    "activation (data)": lambda m, layer: m["down"].norm(dim=0) * m["inputs"].norm(dim=0),
    "magnitude: down_proj column": lambda m, layer: m["down"].norm(dim=0),
    "gate_proj row": lambda m, layer: m["gate"].norm(dim=1),
    "gate_proj x up_proj rows, RMSNorm folded": lambda m, layer: (
        (m["gate"] * m["gamma"]).norm(dim=1) * (m["up"] * m["gamma"]).norm(dim=1)
    ),
    "PruneNet feature: leverage, full subspace": _leverage("log_leverage_top_1"),
    "PruneNet feature: leverage, top 12.5%": _leverage("log_leverage_top_0.125"),
    "activation on random token ids (no data)": lambda m, layer: (
        m["down"].norm(dim=0) * m["random_inputs"].norm(dim=0)
    ),
    "random": lambda m, layer: torch.rand(m["down"].shape[1], generator=torch.Generator().manual_seed(layer)).double(),
}


def down_proj_inputs(model: torch.nn.Module, ids: torch.Tensor) -> dict[int, torch.Tensor]:
    """The inputs of every layer's down_proj on `ids` ([windows, tokens]), as [windows * tokens, channels]."""
    layers = model.model.layers
    collected: dict[int, list[torch.Tensor]] = {index: [] for index in range(len(layers))}
    hooks = [
        layer.mlp.down_proj.register_forward_pre_hook(
            lambda module, args_, index=index: collected[index].append(args_[0].reshape(-1, args_[0].shape[-1]))
        )
        for index, layer in enumerate(layers)
    ]
    log(f"collecting down_proj inputs for {ids.numel()} tokens")
    try:
        with torch.no_grad():
            for row in ids:  # one window at a time keeps the forward's peak small
                model(row[None])
    finally:
        for hook in hooks:
            hook.remove()
    return {index: torch.cat(parts) for index, parts in collected.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=8, help="calibration windows (default 8)")
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.2, 0.3])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "ffn_scores.md"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    work = load_workload()
    samples = sample_token_windows(work.calibration, work.tokenizer, args.num_samples, args.seqlen, 0)
    ids = torch.cat([s["input_ids"] for s in samples])
    layers = work.model.model.layers
    random_ids = torch.randint(0, work.model.config.vocab_size, ids.shape, generator=torch.Generator().manual_seed(0))
    inputs = down_proj_inputs(work.model, ids)
    random_inputs = down_proj_inputs(work.model, random_ids)

    errors: dict[tuple[str, float], list[float]] = {}
    with torch.no_grad():
        for index, layer in enumerate(layers):
            matrices = {
                "gate": layer.mlp.gate_proj.weight.double(),
                "up": layer.mlp.up_proj.weight.double(),
                "down": layer.mlp.down_proj.weight.double(),
                "gamma": layer.post_attention_layernorm.weight.double(),
                "inputs": inputs[index].double(),
                "random_inputs": random_inputs[index].double(),
                # PruneNet's features of gate_proj as it acts on the normalised hidden state, once per layer.
                "prunenet_features": channel_features(
                    layer.mlp.gate_proj.weight.double() * layer.post_attention_layernorm.weight.double()
                ),
            }
            total = (matrices["inputs"] @ matrices["down"].T).norm()
            for name, score_function in SCORES.items():
                order = torch.argsort(score_function(matrices, index))
                for sparsity in args.sparsities:
                    dropped = order[: round(sparsity * order.numel())]
                    lost = (matrices["inputs"][:, dropped] @ matrices["down"][:, dropped].T).norm() / total
                    errors.setdefault((name, sparsity), []).append(float(lost))

    header = (
        ["score"] + [f"{s:.0%}: mean" for s in args.sparsities] + [f"{s:.0%}: worst layer" for s in args.sparsities]
    )
    lines = [
        "# FFN channel scores vs the output they throw away (SmolLM2-135M)",
        "",
        f"Generated by `benchmarks/ffn_scores.py` on {today()}. Relative FFN output error "
        "||D[:, dropped] A[dropped]|| / ||D A|| per layer after removing the lowest-scored channels, no refit, on "
        f"{args.num_samples} x {args.seqlen} calibration tokens (first 80% of gensim's Wikipedia); mean over the "
        "30 layers and the worst layer (its index in brackets). Lower is better.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" + "---:|" * (len(header) - 1),
    ]
    for name in SCORES:
        means = [sum(errors[name, s]) / len(errors[name, s]) for s in args.sparsities]
        worst = [max(errors[name, s]) for s in args.sparsities]
        where = [errors[name, s].index(w) for s, w in zip(args.sparsities, worst)]
        cells = [f"{m:.3f}" for m in means] + [f"{w:.3f} [{i}]" for w, i in zip(worst, where)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Machine", ""] + [f"- {k}: {v}" for k, v in machine_info().items()]
    command = " ".join(sys.argv[1:] if argv is None else argv)
    lines += ["", f"Command: `{' '.join(['python benchmarks/ffn_scores.py', command]).strip()}`"]
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    log(f"wrote {args.output}")


if __name__ == "__main__":
    main()
