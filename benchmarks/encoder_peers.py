"""Structured pruning of an encoder classifier side by side with a peer, at the same parameter count (issue 23).

The model is the all-MiniLM-L6-v2 sentiment classifier of ``fixtures/sentiment_classifier.py``. Neither LLM-Pruner
nor SliceGPT runs on BERT (``structured_peers.py`` has them on SmolLM2); the peer here is the post-training
pruning framework of Kwon et al. (NeurIPS 2022, github.com/WoosukKwon/retraining-free-pruning), the reference for
pruning a fine-tuned BERT's heads and FFN neurons without retraining: Fisher information of head / neuron masks,
a MAC-constrained search, mask rearrangement, and a layer-wise least-squares rescaling of the kept masks. It runs
with its own code in its own virtual environment through ``peers/kwon_worker.py``, at its paper's setting of half
the MACs (``--constraints 50``), and this library prunes the same classifier to the parameter count it left:
with the default recipe (activation ranking, LIAR refit, the same fraction in every block) and with
``recipe="obs"``. Every row's calibration is the same 512 training sentences (the ones this library's sampler
draws with the seed; the peer also reads their labels, which its Fisher information needs), and every row's
accuracy is counted by the same function (``kwon_worker.accuracy``) on the fixture's 1000 dev sentences.

    # once: its environment and source (python -m venv; pip install torch==2.13.0 transformers==4.41.0 "numpy<2"
    # scipy tqdm; its source exported from GitHub with the commit in a COMMIT file)
    export OPTIMUM_PRUNE_KWON_PYTHON=<venv>/bin/python OPTIMUM_PRUNE_KWON_SOURCE=<retraining-free-pruning>
    python benchmarks/encoder_peers.py --threads 1            # the table (about 15 minutes on 2 cores)
    python benchmarks/encoder_peers.py --quick                # a tiny random BERT, seconds, no peer needed
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import torch

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCHMARKS_DIR)
if BENCHMARKS_DIR not in sys.path:
    sys.path.insert(0, BENCHMARKS_DIR)

from common import default_output, log, machine_info, shown_arguments, stopwatch  # noqa: E402
from fixtures import sentiment_classifier as fixture  # noqa: E402
from peers import kwon_worker  # noqa: E402
from structured_peers import PeersReport, _status_text, match_sparsity, run_length, run_worker  # noqa: E402

OURS = "optimum-prune"
PEER = "Kwon et al."
PYTHON_ENV, SOURCE_ENV = "OPTIMUM_PRUNE_KWON_PYTHON", kwon_worker.SOURCE_ENV
OUR_VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("default (activation + liar)", {}),
    ("obs", {"recipe": "obs"}),
)
COLUMNS = (
    "tool / env",
    "dev accuracy",
    "retention",
    "accuracy with its masks",
    "parameters (M)",
    "encoder parameters (M)",
    "parameters - peer's",
    "MAC ratio",
    "blocks rescaled",
    "prune wall s",
    "prune CPU s",
    "heads per block",
    "FFN width per block",
    "status",
)


def table_row(counted: Mapping[str, Any] | None, **columns: Any) -> dict[str, Any]:
    """A row with every column in order; the census's exact numbers under "_census" (JSON only)."""
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    if counted and "parameters" in counted:
        row["parameters (M)"] = counted["parameters"] / 1e6
        row["encoder parameters (M)"] = counted["encoder parameters"] / 1e6
        row["heads per block"] = run_length(counted["attention heads"])
        row["FFN width per block"] = run_length(counted["ffn widths"])
        row["_census"] = {
            k: counted[k] for k in ("parameters", "encoder parameters", "zeros", "attention heads", "ffn widths")
        }
    row.update(columns)
    return row


# ---- the workload -----------------------------------------------------------------------------------------------
def quick_workload() -> tuple[Any, Any, list[dict], list[dict], str]:
    """A tiny random BERT classifier, a word-level tokenizer and made-up labelled sentences."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefgh") for _ in range(rng.randint(2, 5))) for _ in range(60)]
    vocab = {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, **{w: i + 4 for i, w in enumerate(sorted(set(words)))}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
        max_position_embeddings=64, num_labels=2, pad_token_id=0,
    )  # fmt: skip
    model = BertForSequenceClassification(config).eval()

    def rows(count: int) -> list[dict]:
        return [
            {"sentence": " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))), "label": rng.randrange(2)}
            for _ in range(count)
        ]

    return model, tokenizer, rows(96), rows(40), "a tiny random BERT classifier (2 blocks, hidden 32, 4 heads)"


def sentiment_workload() -> tuple[Any, Any, list[dict], list[dict], str]:
    """The fixture's classifier, tokenizer, training and dev rows, and its description."""
    model, tokenizer, train_rows, dev_rows, metadata = fixture.load_or_build()
    described = (
        "all-MiniLM-L6-v2 + classification head fine-tuned by `benchmarks/fixtures/sentiment_classifier.py` "
        f"({metadata['epochs']} epoch(s), {metadata['train_examples']} training snippets, dev accuracy at build "
        f"{metadata['dev_accuracy']:.4f}); 6 blocks, 12 heads, FFN 1536"
    )
    return model, tokenizer, train_rows, dev_rows, described


def calibration_rows(train_rows: Sequence[dict], samples: int, seed: int) -> list[dict]:
    """The training rows this library's sampler (`data.calibration.sample_examples`) draws with `seed`:
    `random.Random(seed).sample` picks the same positions whatever the population holds."""
    if len(train_rows) <= samples:
        return list(train_rows)
    return [train_rows[i] for i in random.Random(seed).sample(range(len(train_rows)), samples)]


def tokenized(rows: Sequence[dict], tokenizer: Any, max_length: int) -> list[dict]:
    """`rows` as the worker reads them: input_ids, token_type_ids (truncated as the pruner truncates) and label."""
    out = []
    for row in rows:
        encoded = tokenizer(row["sentence"], truncation=True, max_length=max_length)
        types_ = encoded.get("token_type_ids") or [0] * len(encoded["input_ids"])
        out.append({"input_ids": list(encoded["input_ids"]), "token_type_ids": list(types_), "label": row["label"]})
    return out


# ---- rows -------------------------------------------------------------------------------------------------------
def our_row(
    model: Any,
    tokenizer: Any,
    texts: list[str],
    data: Mapping[str, Any],
    fields: Mapping[str, Any],
    target: int | None,
    dense: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """This library on a copy of the classifier, its budget matched to `target` parameters (None: the dense row)."""
    import transformers

    import optimum_prune
    from optimum_prune import PrunerForSequenceClassification, PruningConfig

    tool = f"{OURS} {optimum_prune.__version__}, transformers {transformers.__version__}, torch {torch.__version__}"
    pad = int(data["pad_token_id"])
    if target is None:
        dev = kwon_worker.accuracy(model, data["dev"], pad)
        return table_row(kwon_worker.census(model), **{"tool / env": tool, "dev accuracy": dev, "retention": 1.0,
                                                        "status": "ok"})  # fmt: skip
    pruner = PrunerForSequenceClassification(copy.deepcopy(model), tokenizer)
    try:
        sparsity, _ = match_sparsity(pruner.model, fields, target)
        config = PruningConfig(target="structured", sparsity=sparsity, **fields)
        with stopwatch() as timer:
            pruner.prune(config, dataset=texts, show_progress=False)
    except Exception as error:  # a row, not the end of the run
        return table_row(
            None, **{"tool / env": tool, "status": _status_text(f"failed: {type(error).__name__}: {error}")}
        )
    counted = kwon_worker.census(pruner.model)
    dev = kwon_worker.accuracy(pruner.model, data["dev"], pad)
    row = table_row(
        counted,
        **{
            "tool / env": tool,
            "dev accuracy": dev,
            "retention": dev / dense["dev accuracy"] if dense and dense.get("dev accuracy") else None,
            "parameters - peer's": counted["parameters"] - target,
            "prune wall s": timer["seconds"],
            "prune CPU s": timer["cpu seconds"],
            "status": "ok",
        },
    )
    row.update({"_sparsity": sparsity, "_target parameters": target})
    return row


def peer_row(job: str, checkpoint: str, data_path: str, threads: int, timeout: float, dense: Any) -> dict[str, Any]:
    """One job of Kwon et al.'s code in its environment, as a table row."""
    python, source = os.environ.get(PYTHON_ENV), os.environ.get(SOURCE_ENV)
    if not python or not source:
        return table_row(None, **{"tool / env": PEER, "status": f"skipped: set ${PYTHON_ENV} and ${SOURCE_ENV}"})
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = os.pathsep.join([REPO_ROOT, source])
    worker = os.path.join(BENCHMARKS_DIR, "peers", "kwon_worker.py")
    command = [
        python,
        worker,
        "--job",
        job,
        "--checkpoint",
        checkpoint,
        "--data",
        data_path,
        "--threads",
        str(threads),
    ]
    result, reason = run_worker(f"{PEER} {job}", command, env, timeout)
    if result is None:
        return table_row(None, **{"tool / env": PEER, "status": _status_text(reason)})
    versions = result.get("versions", {})
    tool = ", ".join(f"{name} {str(version)[:12]}" for name, version in versions.items())
    status = _status_text(result.get("status", "failed: no status"))
    accuracy = result.get("accuracy")
    row = table_row(
        result if status == "ok" else None,
        **{
            "tool / env": tool,
            "dev accuracy": accuracy,
            "retention": accuracy / dense["dev accuracy"] if dense and accuracy is not None else None,
            "accuracy with its masks": result.get("masked accuracy"),
            "MAC ratio": result.get("mac ratio"),
            "blocks rescaled": None
            if result.get("rescaled blocks") is None
            else " ".join(map(str, result["rescaled blocks"])) or "none",
            "prune wall s": result.get("prune s"),
            "prune CPU s": result.get("prune cpu s"),
            "status": status,
        },
    )
    if job == "dense" and accuracy is not None:
        row["retention"] = 1.0
    row["_adaptations"], row["_versions"] = result.get("adaptations", []), versions
    return row


def notes(rows: Mapping[str, Mapping[str, Any]], dev_size: int) -> str:
    """Each peer row against our rows at its parameter count; the dense rows of both environments."""
    lines = []
    for name, row in rows.items():
        if not name.startswith(f"{PEER}: MAC") or not isinstance(row.get("retention"), float):
            continue
        target = row.get("_census", {}).get("parameters")
        ours = [(n, r) for n, r in rows.items() if r.get("_target parameters") == target and r.get("retention")]
        text = ", ".join(
            f"{n.split(': ', 1)[1].split(', at ')[0]} {r['dev accuracy']:.3f} ({r['retention']:.1%})" for n, r in ours
        )
        rescaled = row.get("blocks rescaled")
        stopped = (
            f" Its rescaling changed blocks {rescaled} only: it stops at the first block whose LSMR solve does not "
            "converge within the iteration limit."
            if rescaled is not None and rescaled != " ".join(map(str, range(len(row["_census"]["ffn widths"]))))
            else ""
        )
        lines.append(
            f"- {name}: dev accuracy {row['dev accuracy']:.3f} ({row['retention']:.1%} of its dense) at "
            f"{row['parameters (M)']:.2f}M parameters; ours at that count: {text or 'none ran'}.{stopped}"
        )
    dense = [(n, r["dev accuracy"]) for n, r in rows.items() if "dense" in n and r.get("dev accuracy") is not None]
    if dense:
        lines.append("- Dense rows: " + "; ".join(f"{n} {a:.3f}" for n, a in dense) + ".")
    if lines:
        error = (0.85 * 0.15 / dev_size) ** 0.5  # binomial, at the dense accuracy of about 0.85
        lines.append(
            f"- With {dev_size} dev sentences one accuracy has a standard error of about {error:.1%}: rows closer "
            f"than about twice that are not told apart."
        )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--constraints", nargs="+", type=int, default=[50], help="its MAC constraints, percent")
    parser.add_argument(
        "--converged-variant",
        action="store_true",
        help="also run each constraint with LSMR allowed 10x its default iterations (its rescaling stops at the "
        "first solve that does not converge)",
    )
    parser.add_argument("--samples", type=int, default=512, help="calibration sentences (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="calibration / pruning seed (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, ours and the peer's (default 1)")
    parser.add_argument("--peer-timeout", type=float, default=3600, help="seconds per peer job (default 3600)")
    parser.add_argument("--resume", action="store_true", help="keep the rows of an earlier run (same protocol)")
    parser.add_argument("--output", default=None, help="default benchmarks/results/encoder_peers.md")
    parser.add_argument("--quick", action="store_true", help="smoke test on a tiny random BERT; the peer when set")
    return parser


def main(argv: list[str] | None = None) -> PeersReport:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    output = args.output or default_output("encoder_peers", args.quick)
    model, tokenizer, train_rows, dev_rows, described = quick_workload() if args.quick else sentiment_workload()
    samples = min(args.samples, 16) if args.quick else args.samples
    chosen = calibration_rows(train_rows, samples, args.seed)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    data = {
        "calibration": tokenized(chosen, tokenizer, fixture.MAX_LENGTH),
        "dev": tokenized(dev_rows, tokenizer, fixture.MAX_LENGTH),
        "pad_token_id": pad,
    }
    # The pruner samples `samples` of the texts it is given: given exactly the chosen ones, it takes them all.
    texts = [row["sentence"] for row in chosen]
    base = {"structures": ["attention_heads", "ffn_channels"], "num_samples": samples, "seqlen": fixture.MAX_LENGTH,
            "seed": args.seed}  # fmt: skip

    report = PeersReport(
        path=output,
        title="Structured pruning peers on an encoder classifier at equal parameter counts"
        + (" (--quick smoke run)" if args.quick else ""),
        intro=__doc__.split("\n\n")[1].replace("\n", " ")
        + " `retention` is dev accuracy over the dense row of the same environment; `blocks rescaled` lists the blocks whose masks "
        "its least-squares rescaling changed (it stops at the first block whose solve fails); a row 'its LSMR allowed 10x the iterations' is not its code's "
        "setting: the same run with the solver allowed to converge (`--converged-variant`). `accuracy with its "
        "masks` is the peer's own evaluation (masks applied to the dense weights), `dev accuracy` that of the model with "
        "the masks folded in and the masked units removed, whose parameters are counted (each tensor once, "
        "embeddings and the classifier included). Its adaptations: "
        + "; ".join(f"({i}) {text}" for i, text in enumerate(kwon_worker.ADAPTATIONS, 1))
        + ".",
        protocol={
            "model": described,
            "calibration": f"{len(chosen)} training sentences drawn with seed {args.seed} by this library's sampler "
            f"(at most {fixture.MAX_LENGTH} tokens each), the same for every row",
            "evaluation": f"{len(dev_rows)} dev sentences, argmax accuracy (`kwon_worker.accuracy`)",
            "ours": "target='structured', structures attention_heads + ffn_channels, the budget matched to the "
            "peer row's parameters (`structured_peers.match_sparsity`)",
            "peer": f"its MAC constraints {', '.join(f'{c}%' for c in args.constraints)}, seed "
            f"{kwon_worker.DEFAULT_SEED} (its main.py's)",
            "threads": f"{args.threads} torch thread(s) per process",
        },
        machine=machine_info(),
        row_header="row",
        float_format=".3f",
        planned=2 + len(args.constraints) * (1 + args.converged_variant + len(OUR_VARIANTS)),
    )
    report.shown_command = " ".join(["python", "benchmarks/encoder_peers.py", *shown_arguments(argv)])
    done = report.resume() if args.resume else []
    with tempfile.TemporaryDirectory(prefix="encoder-peers-") as scratch:
        data_path = os.path.join(scratch, "data.pt")
        torch.save(data, data_path)
        checkpoint = os.path.join(scratch, "checkpoint")
        model.save_pretrained(checkpoint)
        tokenizer.save_pretrained(checkpoint)

        def add(name: str, row: dict[str, Any]) -> None:
            report.notes = notes({**report.rows, name: row}, len(dev_rows))
            report.add(name, row)  # writes the page, notes included
            log(f"{name}: {row.get('status')}, dev accuracy {row.get('dev accuracy')}, {row.get('parameters (M)')}M")

        our_dense = f"{OURS}: dense"
        if our_dense not in done:
            add(our_dense, our_row(model, tokenizer, texts, data, base, None, None))
        peer_dense = f"{PEER}: dense (its env)"
        if peer_dense not in done:
            add(peer_dense, peer_row("dense", checkpoint, data_path, args.threads, args.peer_timeout, None))
        for constraint in args.constraints:
            job = f"mac-{constraint}"
            name = f"{PEER}: MAC {constraint}% (Fisher search, rearrangement, rescaling)"
            if name not in done:
                add(name, peer_row(job, checkpoint, data_path, args.threads, args.peer_timeout,
                                   report.rows.get(peer_dense)))  # fmt: skip
            target = report.rows[name].get("_census", {}).get("parameters")
            converged = f"{PEER}: MAC {constraint}%, its LSMR allowed 10x the iterations (not its default)"
            if args.converged_variant and converged not in done:
                add(converged, peer_row(f"{job}-converged", checkpoint, data_path, args.threads, args.peer_timeout,
                                        report.rows.get(peer_dense)))  # fmt: skip
            for variant, fields in OUR_VARIANTS:
                ours = f"{OURS}: {variant}, at {PEER} {job}'s parameters"
                if ours in done:
                    continue
                if target is None:
                    add(ours, table_row(None, **{"status": f"skipped: no parameter count from {PEER} {job}"}))
                else:
                    add(ours, our_row(model, tokenizer, texts, data, {**base, **fields}, target,
                                      report.rows.get(our_dense)))  # fmt: skip
    report.notes = notes(report.rows, len(dev_rows))
    report.finish()
    log(f"done: {output}")
    return report


if __name__ == "__main__":
    main()
