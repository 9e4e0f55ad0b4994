"""Peak memory of storing eager-attention calibration inputs: one attention mask per sample, or one in all.

With ``attn_implementation="eager"`` a LLaMA block receives a float ``[1, 1, seqlen, seqlen]`` attention mask (16 MiB
at 2048 tokens) that is the same for every sample. This script captures the first block's inputs of a small random
LLaMA (hidden size 64, 2 layers, so the model itself weighs little) for `--num-samples` samples of `--seqlen` tokens
with `activations_dir` set, runs the first block over them once, and reports the process's peak resident memory
(``ru_maxrss``) in a fresh subprocess. Run it against two checkouts to compare (the code imported is whatever
``optimum_prune`` resolves to), e.g.:

    python benchmarks/calibration_memory.py                    # writes benchmarks/results/calibration_memory.md
    python benchmarks/calibration_memory.py --num-samples 8    # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from common import MarkdownReport, default_output, log

CHILD = r"""
import json, resource, sys, tempfile, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from optimum_prune.layerwise import BlockStreamer
import optimum_prune

num_samples, seqlen = int(sys.argv[1]), int(sys.argv[2])
torch.manual_seed(0)
config = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=seqlen,
                     attn_implementation="eager")
model = LlamaForCausalLM(config).eval()
samples = [{"input_ids": torch.randint(0, 256, (1, seqlen))} for _ in range(num_samples)]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with tempfile.TemporaryDirectory() as folder:
    streamer = BlockStreamer(model, activations_dir=folder)
    start = time.perf_counter()
    inputs = streamer.capture(model.model.layers[0], samples)
    outputs = streamer.run(model.model.layers[0], inputs)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    masks = {id(item.kwargs.get("attention_mask")) for item in inputs if item.kwargs.get("attention_mask") is not None}
print(json.dumps({"peak_rss_mib": peak / 1024, "rss_before_mib": before / 1024, "seconds": seconds,
                  "distinct_masks": len(masks), "package": optimum_prune.__file__}))
"""


def measure(num_samples: int, seqlen: int) -> dict:
    # A neutral working directory, so the package imported is the one PYTHONPATH (or the install) names.
    with tempfile.TemporaryDirectory() as cwd:
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(num_samples), str(seqlen)],
            capture_output=True,
            text=True,
            check=True,
            cwd=cwd,
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> MarkdownReport:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=2048)
    parser.add_argument("--label", default="this checkout", help="row name (e.g. 'before' / 'after')")
    parser.add_argument("--output", default=None, help="default benchmarks/results/calibration_memory.md")
    args = parser.parse_args(argv)
    output = args.output or default_output("calibration_memory", False)
    report = MarkdownReport(
        path=output,
        title="Peak memory of eager-attention calibration inputs",
        intro=__doc__.split("\n\n")[0],
        protocol={"samples": args.num_samples, "seqlen": args.seqlen, "activations_dir": "a temporary folder"},
        row_header="code",
        float_format=".1f",
    )
    report.resume()
    log(f"measuring {args.label}: {args.num_samples} x {args.seqlen} tokens")
    row = measure(args.num_samples, args.seqlen)
    report.add(
        args.label,
        {
            "peak RSS (MiB)": row["peak_rss_mib"],
            "RSS after model load (MiB)": row["rss_before_mib"],
            "distinct masks stored": row["distinct_masks"],
            "capture + one block (s)": row["seconds"],
            "package": row["package"].rsplit("optimum_prune", 1)[0].rstrip("/").rsplit("/", 1)[-1],
        },
    )
    report.finish()
    log(f"{args.label}: {row}")
    return report


if __name__ == "__main__":
    os.environ.setdefault("TMPDIR", tempfile.gettempdir())
    main()
