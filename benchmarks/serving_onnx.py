"""ONNX Runtime latency of the MiniLM sentiment classifier, dense and structurally pruned (issue 22, item 6).

Each row: the fixture classifier (`fixtures/sentiment_classifier.py`) pruned with activation + LIAR (attention heads
and FFN channels, uniform: quality.md's classifier rows) at 50 / 60 / 70%, saved, reloaded with plain
`AutoModelForSequenceClassification` (with the plugin imported), exported with torch's exporter
(`torch.onnx.export(..., dynamo=True)`, dynamic batch and length) and run in ONNX Runtime on the CPU. Columns: dev
accuracy in ONNX Runtime (the whole dev split, batched by length), the largest |logit| difference between ONNX
Runtime and PyTorch, the parameter ratio (the physical bound of the speed-up), and the median latency of one batch of
1 and of 32 dev sentences padded to 64 tokens, with ONNX Runtime's intra-op threads set by `--threads`.

    python benchmarks/serving_onnx.py                  # ~10 minutes on 2 shared cores
    python benchmarks/serving_onnx.py --sparsities 0.5 --repeats 20
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import MarkdownReport, default_output, log  # noqa: E402
from fixtures import sentiment_classifier as fixture  # noqa: E402

from optimum_prune import PrunerForSequenceClassification, PruningConfig  # noqa: E402

NUM_SAMPLES = 512  # quality.md's classifier calibration
BATCHES = (1, 32)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.5, 0.6, 0.7])
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op and torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per latency (default 30, median)")
    parser.add_argument("--output", default=None, help="default benchmarks/results/serving_onnx.md")
    return parser


def export(model: torch.nn.Module, sample: dict[str, torch.Tensor], path: str) -> None:
    """torch.onnx.export with dynamic batch and sequence axes (input_ids, attention_mask -> logits)."""
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    torch.onnx.export(
        model,
        (),
        path,
        kwargs={"input_ids": sample["input_ids"], "attention_mask": sample["attention_mask"]},
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_shapes={"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
        dynamo=True,
    )


def median_seconds(run, repeats: int) -> float:
    run()  # warm-up: the first run allocates
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> MarkdownReport:
    import onnxruntime as ort
    from transformers import AutoModelForSequenceClassification

    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    model, tokenizer, train_rows, dev_rows, metadata = fixture.load_or_build()
    calibration = [row["sentence"] for row in train_rows]
    sentences = [row["sentence"] for row in dev_rows]
    labels = np.array([row["label"] for row in dev_rows])
    timing_batches = {
        size: tokenizer(
            sentences[:size], padding="max_length", truncation=True, max_length=fixture.MAX_LENGTH, return_tensors="pt"
        )
        for size in BATCHES
    }
    # Accuracy batches: sorted by length so padding stays small, as the fixture's own accuracy does.
    order = sorted(range(len(sentences)), key=lambda i: len(tokenizer(sentences[i]).input_ids))
    accuracy_batches = [order[i : i + 64] for i in range(0, len(order), 64)]
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    dense_parameters = sum(p.numel() for p in model.parameters())
    dense_block_parameters = sum(p.numel() for p in model.bert.encoder.parameters())
    report = MarkdownReport(
        path=args.output or default_output("serving_onnx", False),
        title="MiniLM sentiment classifier in ONNX Runtime: dense and structurally pruned",
        intro=(
            "Structured activation + LIAR (attention heads and FFN channels, uniform), saved, reloaded with "
            "`AutoModelForSequenceClassification`, exported with `torch.onnx.export(..., dynamo=True)` and run in "
            "ONNX Runtime on the CPU. Max |diff| = the largest logit difference between ONNX Runtime and PyTorch on "
            "the 32-sentence batch. Latency = median of the timed runs of one batch, padded to "
            f"{fixture.MAX_LENGTH} tokens; speed-up = dense latency / pruned latency; parameter ratio = pruned / "
            "dense parameters, all of them (the word embeddings, 11.7M of 22.7M, are looked up, not multiplied, and "
            "not pruned); block ratio = the same for the encoder blocks, whose matrices are the work: 1 / block ratio "
            "is the speed-up bound."
        ),
        protocol={
            "model": f"all-MiniLM-L6-v2 sentiment fixture (dev accuracy at build {metadata['dev_accuracy']:.4f})",
            "calibration": f"{NUM_SAMPLES} training-split sentences, at most {fixture.MAX_LENGTH} tokens, seed 0",
            "runtime": f"onnxruntime {ort.__version__}, CPUExecutionProvider, {args.threads} intra-op thread(s); "
            f"torch {torch.__version__}",
            "timing": f"{args.repeats} runs after one warm-up, median",
        },
        float_format=".4f",
        planned=1 + len(args.sparsities),
    )
    log(f"writing {report.path}")
    dense_latency: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for sparsity in [0.0, *args.sparsities]:
            name = "dense" if sparsity == 0.0 else f"{sparsity:.0%} activation + liar"
            log(f"{name}: pruning, saving, reloading, exporting")
            checkpoint = os.path.join(scratch, f"model-{sparsity}")
            pruner = PrunerForSequenceClassification(copy.deepcopy(model), tokenizer)
            if sparsity:
                config = PruningConfig(
                    target="structured",
                    sparsity=sparsity,
                    criterion="activation",
                    reconstruction="liar",
                    structures=["attention_heads", "ffn_channels"],
                    num_samples=NUM_SAMPLES,
                    seqlen=fixture.MAX_LENGTH,
                    seed=0,
                )
                pruner.prune(config, dataset=calibration, show_progress=False)
                pruner.save_pretrained(checkpoint)
            else:
                pruner.model.save_pretrained(checkpoint)
            reloaded = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
            path = os.path.join(scratch, f"model-{sparsity}.onnx")
            export(reloaded, timing_batches[32], path)
            session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

            def feed(batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
                return {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}

            with torch.no_grad():
                reference = reloaded(**timing_batches[32]).logits.numpy()
            difference = float(np.abs(session.run(None, feed(timing_batches[32]))[0] - reference).max())
            correct = 0
            for indices in accuracy_batches:
                batch = tokenizer(
                    [sentences[i] for i in indices],
                    padding=True,
                    truncation=True,
                    max_length=fixture.MAX_LENGTH,
                    return_tensors="pt",
                )
                predictions = session.run(None, feed(batch))[0].argmax(-1)
                correct += int((predictions == labels[indices]).sum())
            row = {
                "parameters (M)": sum(p.numel() for p in reloaded.parameters()) / 1e6,
                "parameter ratio": sum(p.numel() for p in reloaded.parameters()) / dense_parameters,
                "block ratio": sum(p.numel() for p in reloaded.bert.encoder.parameters()) / dense_block_parameters,
                "ORT dev accuracy": correct / len(sentences),
                "max |diff|": difference,
            }
            for size in BATCHES:
                inputs = feed(timing_batches[size])
                latency = median_seconds(lambda run=session.run, inputs=inputs: run(None, inputs), args.repeats)
                if sparsity == 0.0:
                    dense_latency[size] = latency
                row[f"batch {size} ms"] = latency * 1e3
                row[f"batch {size} speed-up"] = dense_latency[size] / latency
            report.add(name, row)
            log(f"{name}: {row}")
            del pruner, reloaded, session
    report.finish()
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
