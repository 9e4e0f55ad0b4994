"""SliceGPT (microsoft/TransformerCompression) as a peer row of the structured-pruning comparison (issue 23).

Runs inside SliceGPT's own virtual environment (transformers 4.41, as its pyproject pins), with this repository's
root on ``PYTHONPATH`` and SliceGPT's source folder in ``OPTIMUM_PRUNE_SLICEGPT_SOURCE``::

    python benchmarks/peers/slicegpt_worker.py --job slice-20 --checkpoint DIR --data FILE --threads 1

``--job`` is ``dense`` (the loaded model, measured as it is) or ``slice-<percent>``: the procedure of SliceGPT's
``experiments/run_slicegpt.py`` with ``--sparsity <percent>/100`` and its other defaults (``--round-interval 8``,
``--final-orientation random``, ``--cal-batch-size 16``): ``layernorm_fusion.replace_layers``, ``fuse_modules``,
then ``rotate.rotate_and_slice`` with a ``ConstSlicingScheduler`` of the rounded-down new embedding dimension.
What differs from that script is listed in the result's ``adaptations``.

``--data`` is a ``torch.save`` dict: ``calibration`` (LongTensor [n, seqlen], the windows every peer calibrates on),
``eval_ids`` (the evaluation token stream), ``eval_prefix`` (ids put before each evaluation window) and optionally
``eval_seqlen`` (default 512). Perplexity is this repository's `optimum_prune.evaluation.perplexity`, the code that
measures every other row. The worker prints ``PEER_STAGE <text>`` lines as it goes and ends with one
``PEER_RESULT {json}`` line (see `main`).

The census and layer summary below need only torch, so the tests check them in this library's environment.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import time
import types
from collections.abc import Mapping
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from worker_common import report_result, source_commit, stage, worker_parser  # noqa: E402  (beside this file; torch only, no optimum_prune)

SOURCE_ENV = "OPTIMUM_PRUNE_SLICEGPT_SOURCE"
#: run_slicegpt.py's defaults that this worker keeps.
ROUND_INTERVAL = 8
CAL_BATCH_SIZE = 16
FINAL_ORIENTATION = "random"
SEED = 42
EVAL_SEQLEN = 512
#: run_slicegpt.py's default calibration, replaced by the caller's windows.
SLICEGPT_CALIBRATION = "wikitext2, 128 samples of 2048 tokens"


# ---- what needs only torch (tested in this library's environment) ---------------------------------------------
def parameter_census(model: torch.nn.Module) -> dict[str, Any]:
    """Every parameter element of `model`, counted once per tensor: a tied LM head is the embedding table and is
    counted once, SliceGPT's shortcut matrices (``attn_shortcut_Q`` / ``mlp_shortcut_Q``, registered parameters)
    are counted. ``parameters_without_embeddings`` leaves out the input embeddings and the LM head (once, when it
    is untied: SliceGPT unties it). ``zeros`` counts the elements equal to zero over all of them."""
    embeddings = model.get_input_embeddings().weight
    head_module = model.get_output_embeddings()
    head = head_module.weight if head_module is not None else None
    left_out = {id(embeddings)} | ({id(head)} if head is not None else set())
    total = without = zeros = 0
    for parameter in model.parameters():  # yields a shared tensor once
        count = parameter.numel()
        total += count
        zeros += int((parameter.detach() == 0).sum())
        if id(parameter) not in left_out:
            without += count
    return {
        "parameters": total,
        "parameters_without_embeddings": without,
        "zeros": zeros,
        "lm_head_tied": head is not None and head is embeddings,
    }


def _shape(value: Any) -> list[int] | None:
    return list(value.shape) if isinstance(value, torch.Tensor) else None


def layer_summary(model: torch.nn.Module) -> dict[str, Any]:
    """The dimensions a Llama-style model works in after slicing, so the caller can see what SliceGPT did.

    Per decoder layer: the input width of q/k/v (``attn_in``), o_proj's output width (``attn_out``), gate/up's input
    width (``mlp_in``), down_proj's output width (``mlp_out``) and the shortcut matrices' shapes (None before
    slicing). ``distinct`` lists each different layer once with the indices that have it."""
    layers = []
    for layer in model.model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        layers.append(
            {
                "attn_in": attention.q_proj.in_features,
                "attn_out": attention.o_proj.out_features,
                "mlp_in": mlp.gate_proj.in_features,
                "mlp_out": mlp.down_proj.out_features,
                "intermediate": mlp.gate_proj.out_features,
                "attn_shortcut": _shape(getattr(layer, "attn_shortcut_Q", None)),
                "mlp_shortcut": _shape(getattr(layer, "mlp_shortcut_Q", None)),
            }
        )
    distinct: list[dict[str, Any]] = []
    for index, layer in enumerate(layers):
        for seen in distinct:
            if seen["dims"] == layer:
                seen["layers"].append(index)
                break
        else:
            distinct.append({"dims": layer, "layers": [index]})
    head = model.get_output_embeddings()
    return {
        "hidden_size": model.config.hidden_size,
        "embedding_dim": model.get_input_embeddings().weight.shape[1],
        "head_in": head.weight.shape[1] if head is not None else None,
        "num_layers": len(layers),
        "distinct": distinct,
    }


def parse_job(job: str) -> float | None:
    """``"dense"`` -> None, ``"slice-20"`` -> 0.2 (SliceGPT's ``--sparsity``)."""
    if job == "dense":
        return None
    kind, _, percent = job.partition("-")
    try:
        sparsity = float(percent) / 100
    except ValueError:
        sparsity = math.nan
    if kind != "slice" or not 0 <= sparsity < 1:
        raise ValueError(f"unknown job {job!r}: use 'dense' or 'slice-<percent>' with 0 <= percent < 100")
    return sparsity


def new_embedding_dimension(hidden_size: int, sparsity: float, round_interval: int = ROUND_INTERVAL) -> int:
    """run_slicegpt.py's rounding: ``int((1 - sparsity) * hidden)``, rounded down to a multiple of the interval."""
    dimension = int((1 - sparsity) * hidden_size)
    return dimension - dimension % round_interval


def config_for_transformers_4(config: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A config.json written by transformers 5 as transformers 4.41 reads it, and what was changed.

    Transformers 5 keeps RoPE's settings in ``rope_parameters``; 4.41 reads ``rope_theta`` (and ``rope_scaling``)
    and would silently fall back to a theta of 10000 without them."""
    config = dict(config)
    changes = []
    rope = config.get("rope_parameters")
    if isinstance(rope, Mapping) and "rope_theta" not in config:
        config["rope_theta"] = rope["rope_theta"]
        changes.append(f"rope_theta={rope['rope_theta']} written out from rope_parameters")
        if rope.get("rope_type", "default") != "default":
            config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
            changes.append("rope_scaling written out from rope_parameters")
    if "dtype" in config and "torch_dtype" not in config:
        config["torch_dtype"] = config["dtype"]
    return config, changes


# ---- what needs SliceGPT's environment --------------------------------------------------------------------------
def _source_folder() -> str:
    source = os.environ.get(SOURCE_ENV)
    if not source or not os.path.isdir(os.path.join(source, "src", "slicegpt")):
        raise RuntimeError(f"{SOURCE_ENV} must name SliceGPT's source folder (the one with src/slicegpt)")
    return os.path.abspath(source)


def _perplexity_function() -> Any:
    """This library's perplexity, the code every row is measured with, imported without running the package's
    ``__init__`` files: `optimum_prune` registers a checkpoint loader with transformers' quantizer registry that
    transformers 4.41 cannot take, and `optimum_prune.evaluation` imports extras (scipy, ...) that this environment
    lacks. The module needs torch and tqdm, and at call time `optimum_prune.data` and `optimum_prune.pipeline`
    (both import here), so it is imported under bare stand-ins of its two parent packages."""
    spec = importlib.util.find_spec("optimum_prune")  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("optimum_prune is not importable: put this repository's root on PYTHONPATH")
    if "optimum_prune" in sys.modules:
        raise RuntimeError("optimum_prune was imported before the worker could load it without its loader hook")
    folder = list(spec.submodule_search_locations)[0]
    for name, path in (("optimum_prune", folder), ("optimum_prune.evaluation", os.path.join(folder, "evaluation"))):
        package = types.ModuleType(name)
        package.__path__ = [path]
        package.__package__ = name
        sys.modules[name] = package
    return importlib.import_module("optimum_prune.evaluation.perplexity").perplexity


def _adapted_checkpoint(checkpoint: str, scratch: str) -> tuple[str, list[str]]:
    """A folder that transformers 4.41 loads: the config adapted (`config_for_transformers_4`), every other file a
    link to the original (the checkpoint itself is never written)."""
    with open(os.path.join(checkpoint, "config.json"), encoding="utf-8") as handle:
        config, changes = config_for_transformers_4(json.load(handle))
    with open(os.path.join(scratch, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle, indent=2)
    for name in os.listdir(checkpoint):
        if name != "config.json" and os.path.isfile(os.path.join(checkpoint, name)):
            os.symlink(os.path.abspath(os.path.join(checkpoint, name)), os.path.join(scratch, name))
    return scratch, changes


def _load(checkpoint: str) -> Any:
    """What run_slicegpt.py gets from ``hf_utils.get_model_and_tokenizer`` for a Llama, in float32, without the
    tokenizer: the model in a `LlamaModelAdapter`, eval mode, no KV cache, pad id = eos id (``post_init``)."""
    from slicegpt import hf_utils
    from slicegpt.adapters.llama_adapter import LlamaModelAdapter
    from transformers import LlamaForCausalLM

    @hf_utils.do_not_initialize
    def load() -> Any:
        model = LlamaForCausalLM.from_pretrained(checkpoint, torch_dtype=torch.float32, local_files_only=True)
        model.config.torch_dtype = torch.float32
        return LlamaModelAdapter(model)

    adapter = load()
    adapter.model.seqlen = adapter.model.config.max_position_embeddings
    adapter.model.eval()
    adapter.use_cache = False
    eos = adapter.config.eos_token_id
    adapter.config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    return adapter


def _slice(adapter: Any, sparsity: float, calibration: torch.Tensor) -> int:
    """run_slicegpt.py from ``replace_layers`` to ``rotate_and_slice``, on `calibration`'s windows."""
    import numpy
    from slicegpt import layernorm_fusion, rotate
    from slicegpt.slicing_scheduler import ConstSlicingScheduler

    batches = [
        {"input_ids": chunk, "attention_mask": torch.ones_like(chunk)} for chunk in calibration.split(CAL_BATCH_SIZE)
    ]
    stage("fusing layernorms (replace_layers, fuse_modules)")
    layernorm_fusion.replace_layers(adapter)
    layernorm_fusion.fuse_modules(adapter)
    dimension = new_embedding_dimension(adapter.hidden_size, sparsity)
    stage(f"rotating and slicing to dimension {dimension} of {adapter.hidden_size}")
    torch.manual_seed(SEED)
    numpy.random.seed(SEED)
    rotate.rotate_and_slice(adapter, batches, ConstSlicingScheduler(dimension), final_orientation=FINAL_ORIENTATION)
    return dimension


def run(job: str, checkpoint: str, data_path: str, threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    source = _source_folder()
    sys.path.insert(0, os.path.join(source, "src"))
    import slicegpt
    import transformers
    from slicegpt.config import config as slicegpt_config

    if not os.path.abspath(slicegpt.__file__).startswith(os.path.join(source, "src")):
        raise RuntimeError(f"slicegpt was imported from {slicegpt.__file__}, not from {SOURCE_ENV}")
    slicegpt_config.device = torch.device("cpu")
    perplexity = _perplexity_function()
    sparsity = parse_job(job)

    stage("loading the model")
    data = torch.load(data_path)
    calibration = data["calibration"]
    eval_seqlen = int(data.get("eval_seqlen", EVAL_SEQLEN))
    adaptations = [
        "float32 on the CPU (run_slicegpt.py: --dtype fp16 by default, cuda when there is one)",
        "LlamaForCausalLM loaded and wrapped in LlamaModelAdapter directly: run_slicegpt.py picks that adapter only "
        "for meta-llama/Llama-2 and Meta-Llama-3 model names; no tokenizer loaded (the caller gives token ids), "
        "pad_token_id = eos as LlamaModelAdapter.post_init sets it",
        f"perplexity by optimum_prune.evaluation.perplexity on the caller's {eval_seqlen}-token windows, not "
        "SliceGPT's gpu_utils.evaluate_ppl on wikitext2's test split",
        "SliceGPT installed without its [experiment] extra: wandb logging and lm-eval are not used",
    ]
    with tempfile.TemporaryDirectory(prefix="slicegpt-checkpoint-") as scratch:
        folder, changes = _adapted_checkpoint(checkpoint, scratch)
        adaptations += [f"config.json for transformers 4.41: {change}" for change in changes]
        adapter = _load(folder)
    model = adapter.model
    before = parameter_census(model)
    dimension = None
    start, cpu_start = time.perf_counter(), time.process_time()
    if sparsity is not None:
        n, seqlen = calibration.shape
        adaptations += [
            f"calibrated on the caller's {n} windows of {seqlen} tokens, in batches of {CAL_BATCH_SIZE} with "
            f"all-ones attention masks, instead of data_utils.prepare_dataloader ({SLICEGPT_CALIBRATION})",
            f"torch and numpy seeded with {SEED} before rotate_and_slice, so the random final orientation is "
            "reproducible (run_slicegpt.py seeds torch through its dataloader and numpy not at all)",
        ]
        dimension = _slice(adapter, sparsity, calibration)
    prune_seconds, prune_cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    model.eval()
    census = parameter_census(model)
    layers = layer_summary(model)
    layers["new_embedding_dimension"] = dimension
    stage(f"evaluating perplexity (pruning took {prune_seconds:.0f} s, {census['parameters']:,} parameters)")
    ppl = perplexity(
        model,
        input_ids=data["eval_ids"],
        seqlen=eval_seqlen,
        show_progress=False,
        prefix=list(data.get("eval_prefix", [])),
    )
    value = ppl["perplexity"]
    return {
        "status": "ok",
        "perplexity": value if math.isfinite(value) else float("nan"),
        "eval_tokens": ppl["tokens"],
        "parameters": census["parameters"],
        "parameters without embeddings": census["parameters_without_embeddings"],
        "zeros": census["zeros"],
        "lm_head_tied": census["lm_head_tied"],
        "parameters_before": before["parameters"],
        "parameters_without_embeddings_before": before["parameters_without_embeddings"],
        "prune s": prune_seconds if sparsity is not None else None,
        "prune cpu s": prune_cpu_seconds if sparsity is not None else None,
        "sparsity": sparsity,
        "layers": layers,
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "SliceGPT": source_commit(source),
        },
        "adaptations": adaptations,
    }


def main(argv: list[str] | None = None) -> int:
    parser = worker_parser(
        __doc__.splitlines()[0],
        "dense or slice-<percent>, e.g. slice-20",
        "a Llama checkpoint folder (config.json, safetensors)",
        "torch.save dict: calibration, eval_ids, eval_prefix",
    )
    args = parser.parse_args(argv)
    return report_result(lambda: run(args.job, args.checkpoint, args.data, args.threads))


if __name__ == "__main__":
    sys.exit(main())
