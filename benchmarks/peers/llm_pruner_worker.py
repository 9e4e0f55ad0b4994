"""LLM-Pruner (github.com/horseee/LLM-Pruner) on a LLaMA checkpoint, for `benchmarks/structured_peers.py`.

Runs inside LLM-Pruner's own virtual environment (torch, transformers, sentencepiece; see the parent script's
docstring for the recipe), with the LLM-Pruner source folder named by ``$OPTIMUM_PRUNE_LLMPRUNER_SOURCE`` and this
repository on the path (for the perplexity function every row of the table uses):

    python benchmarks/peers/llm_pruner_worker.py --job ffn-20 --checkpoint DIR --data FILE --threads 1

- ``--job``: ``dense`` (no pruning: the unpruned model in this environment) or ``ffn-<percent>``: LLM-Pruner's
  block-wise pruning with ``--pruning_ratio <percent>/100`` on the FFN (MLP) blocks ``--mlp-start`` to
  ``--mlp-end`` (exclusive; SmolLM2's defaults 4 and 28: blocks 0-3 and 28-29 untouched, as its LLaMA scripts leave
  the first four and the last two of 32) and no attention block.
- ``--checkpoint``: a float32 safetensors ``LlamaForCausalLM`` folder.
- ``--data``: a ``torch.save`` dict: ``calibration`` (LongTensor [n, seqlen]: the windows LLM-Pruner computes its
  gradients on), ``eval_ids`` (the evaluation stream, [1, T] or [T]), ``eval_prefix`` (ids each evaluation window
  starts with) and ``eval_seqlen``.

What it runs is LLM-Pruner's ``llama3.py``, the script its README gives for grouped-query-attention models (Llama 3,
TinyLlama; ``hf_prune.py`` loads the model with its own copy of the old LLaMA modeling file, which has no
``num_key_value_heads`` and cannot hold SmolLM2's 3 KV heads), block-wise branch, step by step:
``--block_wise --pruner_type taylor --taylor param_first`` with its defaults (``TaylorImportance``,
``group_reduction="sum"``, one iterative step, no global pruning, ``k_proj`` consecutive groups of ``head_dim``, its
RMSNorm pruner, ``--seed 42`` through its ``set_random_seed``). Adaptations (`ADAPTATIONS`, listed in the table's
introduction), each needed to run it here:

1. FFN blocks only (``block_attention_layer_start = end``): at 20% its attention pruning asks each block for fewer
   rows than one KV head has (SmolLM2: 39 of k_proj's 3 x 64), selects no head, and its ``MetaPruner`` fails with
   ``torch.cat(): expected a non-empty list of Tensors``.
2. Its gradients on the data file's calibration windows (this benchmark's protocol, the windows of our rows) instead
   of ``get_examples('bookcorpus', tokenizer, 10, seq_len=64)``.
3. Its one forward / backward of the mean loss over all windows, summed over micro-batches of ``--batch-size``
   windows, each loss weighted by its share of the windows: the same gradient (one batch of 64 x 512 tokens would
   hold 12 GiB of SmolLM2's logits and their gradient).
4. Float32 on the CPU (its ``--device cpu``) instead of ``torch_dtype=torch.float16, device_map="auto"``; no
   generation, no saving; perplexity with this repository's function (``worker_common.evaluate``).
5. No KV cache in the model's outputs while its dependency graph is traced: transformers 5 returns a
   ``DynamicCache`` object there, which its ``flatten_as_list`` cannot walk (the graph is traced back from the
   logits either way). Its example prompt (two LLaMA-1 token lists) is taken modulo the vocabulary size, which
   changes nothing on SmolLM2 (49152 tokens) and lets a tiny test model trace it.

Prints ``PEER_STAGE <what it is doing>`` lines and one final ``PEER_RESULT <json>`` line; on failure the JSON is
``{"status": "failed: ..."}``. The census and the perplexity (`worker_common`) do not need LLM-Pruner; the tests
run them in this repository's environment.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from worker_common import census, evaluate, finite, report_result, source_commit, stage, worker_parser  # noqa: E402  (beside this file, torch only)

SOURCE_ENV = "OPTIMUM_PRUNE_LLMPRUNER_SOURCE"
#: SmolLM2's block range (30 blocks): LLM-Pruner's LLaMA scripts leave blocks 0-3 and the last two dense.
DEFAULT_MLP_START, DEFAULT_MLP_END = 4, 28
#: llama3.py's defaults: `--seed 42`, `--taylor param_first`, `--grouping_strategy sum`, `--iterative_steps 1`.
DEFAULT_SEED = 42
ADAPTATIONS = (
    "FFN blocks only: at 20% its attention pruning selects no KV head on SmolLM2 (39 of 192 k_proj rows asked) and "
    "its MetaPruner fails (`torch.cat(): expected a non-empty list of Tensors`)",
    "its Taylor gradients on this benchmark's calibration windows instead of 10 bookcorpus samples of 64 tokens",
    "its one backward of the mean loss over all windows summed over micro-batches (the same gradient)",
    "float32 on the CPU instead of float16 with device_map='auto'; this repository's perplexity function",
    "use_cache=False while its dependency graph is traced (transformers 5's DynamicCache output); its example prompt "
    "taken modulo the vocabulary (unchanged on SmolLM2)",
)
#: llama3.py's example input, "only for building the dependency graph" (its comment).
FORWARD_PROMPTS = [
    [1, 306, 4658, 278, 6593, 310, 2834, 338],
    [1, 3439, 17632, 1925, 29892, 278, 6368, 310],
]


def parse_job(job: str) -> float | None:
    """``"dense"`` -> None, ``"ffn-20"`` -> 0.2 (LLM-Pruner's ``--pruning_ratio``)."""
    if job == "dense":
        return None
    kind, _, percent = job.partition("-")
    if kind != "ffn" or not percent.isdigit() or not 0 < int(percent) < 100:
        raise ValueError(f"unknown job {job!r}: expected 'dense' or 'ffn-<percent>', e.g. 'ffn-20'")
    return int(percent) / 100


def source_folder() -> str:
    folder = os.environ.get(SOURCE_ENV)
    if not folder or not os.path.isfile(os.path.join(folder, "llama3.py")):
        raise RuntimeError(
            f"${SOURCE_ENV} must name the LLM-Pruner source folder (the one with llama3.py and LLMPruner/), "
            f"got {folder!r}"
        )
    return folder


# ---- LLM-Pruner ------------------------------------------------------------------------------------------------
def set_random_seed(seed: int) -> None:
    """llama3.py's `set_random_seed`."""
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def accumulate_gradients(model: torch.nn.Module, calibration: torch.Tensor, batch_size: int) -> float:
    """``loss = model(examples, labels=examples).loss; loss.backward()`` over all windows, in micro-batches: each
    micro-batch's mean loss weighted by its share of the windows (equal lengths: the same mean, the same gradient).
    Returns that loss."""
    total = calibration.shape[0]
    loss_sum = 0.0
    for start in range(0, total, batch_size):
        batch = calibration[start : start + batch_size]
        loss = model(batch, labels=batch).loss * (batch.shape[0] / total)
        loss.backward()
        loss_sum += float(loss.detach())
        stage(f"gradients: windows {start + batch.shape[0]}/{total}")
    return loss_sum


def prune_llm_pruner(
    model: torch.nn.Module,
    calibration: torch.Tensor,
    ratio: float,
    mlp_start: int,
    mlp_end: int,
    batch_size: int,
    seed: int,
) -> dict[str, Any]:
    """llama3.py's ``--block_wise --pruner_type taylor --taylor param_first`` branch on the MLP blocks
    [mlp_start, mlp_end), no attention block (see the module docstring). Returns what its log reports."""
    import LLMPruner.torch_pruning as tp
    from LLMPruner.pruner import hf_llama_pruner as llama_pruner
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    set_random_seed(seed)
    attention_start = attention_end = mlp_start  # adaptation 1: no attention block
    for param in model.parameters():
        param.requires_grad_(True)
    before = sum(p.numel() for p in model.parameters() if p.requires_grad)
    forward_prompts = torch.tensor(FORWARD_PROMPTS) % model.config.vocab_size  # adaptation 5
    imp = llama_pruner.TaylorImportance(group_reduction="sum", taylor="param_first")
    layers = model.model.layers
    kwargs = {
        "importance": imp,
        "global_pruning": False,
        "iterative_steps": 1,
        "ch_sparsity": ratio,
        "ignored_layers": [],
        "channel_groups": {},
        "consecutive_groups": {layer.self_attn.k_proj: layer.self_attn.head_dim for layer in layers},
        "customized_pruners": {LlamaRMSNorm: llama_pruner.hf_rmsnorm_pruner},
        "root_module_types": None,
        "root_instances": [layers[i].self_attn.k_proj for i in range(attention_start, attention_end)]
        + [layers[i].mlp.gate_proj for i in range(mlp_start, mlp_end)],
    }
    stage(f"building LLM-Pruner's dependency graph (MetaPruner), MLP blocks {mlp_start}-{mlp_end - 1}")
    # Adaptation 5: no KV cache in the outputs while it traces (transformers 5 returns a DynamicCache object there,
    # which its `flatten_as_list` cannot walk; the graph is traced back from the logits either way).
    use_cache, model.config.use_cache = model.config.use_cache, False
    pruner = tp.pruner.MetaPruner(model, forward_prompts, **kwargs)
    model.zero_grad()
    stage(f"Taylor gradients on {calibration.shape[0]} windows x {calibration.shape[1]} tokens")
    loss = accumulate_gradients(model, calibration, batch_size)
    stage("pruner.step()")
    pruner.step()
    after = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for layer in layers:  # llama3.py's "modify inference-related attributes"
        layer.self_attn.num_heads = layer.self_attn.q_proj.weight.data.shape[0] // layer.self_attn.head_dim
        layer.self_attn.num_key_value_heads = layer.self_attn.k_proj.weight.data.shape[0] // layer.self_attn.head_dim
    model.zero_grad()
    for name, param in model.named_parameters():
        if "weight" in name:
            param.grad = None
    del pruner
    model.config.use_cache = use_cache
    return {"calibration loss": loss, "its #param before": before, "its #param after": after}


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    ratio = parse_job(args.job)
    # The dense row runs none of LLM-Pruner's code (its model class is transformers'): no source folder needed.
    folder = source_folder() if ratio is not None else os.environ.get(SOURCE_ENV)
    if folder and folder not in sys.path:
        sys.path.insert(0, folder)
    import transformers
    from transformers import LlamaForCausalLM  # llama3.py's model class (transformers' own modeling)

    stage("loading the model")
    data = torch.load(args.data)
    model = LlamaForCausalLM.from_pretrained(args.checkpoint, dtype=torch.float32)  # adaptation 4
    num_layers = len(model.model.layers)
    if ratio is not None and not 0 <= args.mlp_start < args.mlp_end <= num_layers:
        raise ValueError(f"--mlp-start {args.mlp_start} / --mlp-end {args.mlp_end}: the model has {num_layers} blocks")
    result: dict[str, Any] = {
        "versions": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "LLM-Pruner": source_commit(folder) if folder else "not used",
        },
        "seed": args.seed,
        "adaptations": list(ADAPTATIONS),
    }
    prune_seconds = prune_cpu_seconds = None
    if ratio is not None:
        calibration = data["calibration"].long()
        start, cpu_start = time.perf_counter(), time.process_time()
        result.update(
            prune_llm_pruner(model, calibration, ratio, args.mlp_start, args.mlp_end, args.batch_size, args.seed)
        )
        prune_seconds, prune_cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        result["pruned blocks"] = f"MLP {args.mlp_start}-{args.mlp_end - 1} of {num_layers}, no attention"
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    stage("evaluating perplexity" + (f" (pruning took {prune_seconds:.0f} s)" if prune_seconds else ""))
    ppl = evaluate(model, data)
    result.update(census(model))
    result.update(
        {
            "perplexity": finite(ppl["perplexity"]),
            "eval tokens": ppl["tokens"],
            "prune s": prune_seconds,
            "prune cpu s": prune_cpu_seconds,
            "status": "ok",
        }
    )
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = worker_parser(
        __doc__,
        "'dense' or 'ffn-<percent>' (e.g. ffn-20)",
        "float32 safetensors LlamaForCausalLM folder",
        "torch.save file with calibration and evaluation ids",
    )
    parser.add_argument("--mlp-start", type=int, default=DEFAULT_MLP_START, help="first MLP block pruned (default 4)")
    parser.add_argument(
        "--mlp-end", type=int, default=DEFAULT_MLP_END, help="MLP block after the last one pruned (default 28)"
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="llama3.py's --seed (default 42)")
    parser.add_argument(
        "--batch-size", type=int, default=4, help="calibration windows per forward / backward (default 4)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_result(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
