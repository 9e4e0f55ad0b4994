"""vLLM generation throughput of checkpoints, run in vLLM's own environment: one JSON line per checkpoint.

    python vllm_throughput.py --new-tokens 64 --repeats 3 CHECKPOINT [CHECKPOINT ...]

Per checkpoint (fp32, eager, one engine at a time), best of `--repeats`:
- prefill: one 256-token prompt, one new token: prompt tokens per second;
- generation at batch 1 and 8: 32-token prompts, `--new-tokens` new tokens each (EOS ignored): new tokens per second
  over the whole call, as a user of `LLM.generate` sees it.
"""

from __future__ import annotations

import argparse
import json
import time


def _best(call, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def _measure(llm, sampling_params, prompts, args) -> dict[str, float]:
    one = sampling_params(temperature=0.0, max_tokens=1, ignore_eos=True)
    many = sampling_params(temperature=0.0, max_tokens=args.new_tokens, ignore_eos=True)
    llm.generate(prompts(1, 32), many, use_tqdm=False)  # warm-up
    prefill = _best(lambda: llm.generate(prompts(1, 256), one, use_tqdm=False), args.repeats)
    batch1 = _best(lambda: llm.generate(prompts(1, 32), many, use_tqdm=False), args.repeats)
    batch8 = _best(lambda: llm.generate(prompts(8, 32), many, use_tqdm=False), args.repeats)
    return {
        "prefill_tokens_per_s": round(256 / prefill, 1),
        "batch1_tokens_per_s": round(args.new_tokens / batch1, 2),
        "batch8_tokens_per_s": round(8 * args.new_tokens / batch8, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-fraction", type=float, default=0.25)
    args = parser.parse_args()
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    def prompts(count: int, length: int) -> list:
        return [
            TokensPrompt(prompt_token_ids=[(17 * i + 31 * j) % 1000 + 100 for j in range(length)])
            for i in range(count)
        ]

    for checkpoint in args.checkpoints:
        start = time.perf_counter()
        llm = LLM(
            model=checkpoint,
            dtype="float32",
            max_model_len=512,
            enforce_eager=True,
            trust_remote_code=True,
            gpu_memory_utilization=args.memory_fraction,
            enable_prefix_caching=False,
        )
        loaded = time.perf_counter() - start
        speeds = _measure(llm, SamplingParams, prompts, args)
        print(
            json.dumps(
                {
                    "checkpoint": checkpoint,
                    "architecture": llm.llm_engine.model_config.architectures,
                    "load_seconds": round(loaded, 1),
                    **speeds,
                }
            ),
            flush=True,
        )
        del llm


if __name__ == "__main__":
    main()
