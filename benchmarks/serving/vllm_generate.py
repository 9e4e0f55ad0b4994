"""Greedy generation with vLLM, run in vLLM's own environment: prints one JSON line per checkpoint.

    python vllm_generate.py --prompt-ids '[[1, 2, 3]]' --max-tokens 8 CHECKPOINT [CHECKPOINT ...]

Each line: {"checkpoint": ..., "token_ids": [[...], ...], "logprobs": [[...], ...], "load_seconds": ...,
"architecture": ...}; `logprobs` are vLLM's log-probabilities of the generated tokens (natural log, before any
sampling transform), one per token. vLLM's CPU build must run it under `if __name__ == "__main__":` (it starts worker
processes).
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--prompt-ids", required=True, help="JSON list of token-id lists")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--max-model-len", type=int, default=128)
    # On the CPU backend this is the fraction of the machine's memory vLLM reserves (KV cache included).
    parser.add_argument("--memory-fraction", type=float, default=0.25)
    args = parser.parse_args()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    prompts = [TokensPrompt(prompt_token_ids=ids) for ids in json.loads(args.prompt_ids)]
    # logprobs=0: the log-probability of each generated token only.
    params = SamplingParams(temperature=0.0, max_tokens=args.max_tokens, ignore_eos=True, logprobs=0)
    for checkpoint in args.checkpoints:
        start = time.perf_counter()
        llm = LLM(
            model=checkpoint,
            dtype="float32",
            max_model_len=args.max_model_len,
            enforce_eager=True,
            trust_remote_code=True,
            gpu_memory_utilization=args.memory_fraction,
        )
        loaded = time.perf_counter() - start
        outputs = llm.generate(prompts, params, use_tqdm=False)
        architecture = llm.llm_engine.model_config.architectures
        print(
            json.dumps(
                {
                    "checkpoint": checkpoint,
                    "token_ids": [list(o.outputs[0].token_ids) for o in outputs],
                    "logprobs": [
                        [step[token].logprob for step, token in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)]
                        for o in outputs
                    ],
                    "load_seconds": round(loaded, 1),
                    "architecture": architecture,
                }
            ),
            flush=True,
        )
        del llm


if __name__ == "__main__":
    main()
