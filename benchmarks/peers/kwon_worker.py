"""Kwon et al.'s post-training pruning framework (github.com/WoosukKwon/retraining-free-pruning; "A Fast
Post-Training Pruning Framework for Transformers", NeurIPS 2022) on a BERT sequence classifier, for
`benchmarks/encoder_peers.py`.

Runs inside its own virtual environment (torch, transformers 4.x, which still takes ``head_mask``; numpy, scipy,
tqdm), with its source folder named by ``$OPTIMUM_PRUNE_KWON_SOURCE``:

    python benchmarks/peers/kwon_worker.py --job mac-50 --checkpoint DIR --data FILE --threads 1

- ``--job``: ``dense`` (no pruning: the unpruned classifier in this environment) or ``mac-<percent>``: its
  ``main.py`` pipeline with ``--metric mac --constraint <percent>/100``; ``mac-<percent>-converged``: the same with
  LSMR allowed ten times its default iterations (not its code's setting: a variant that shows what its rescaling
  gives where its default stops early).
- ``--checkpoint``: a ``BertForSequenceClassification`` folder.
- ``--data``: a ``torch.save`` dict: ``calibration`` and ``dev`` (lists of ``{"input_ids": [...],
  "token_type_ids": [...], "label": int}``), ``pad_token_id``.

What runs is the body of its ``main.py`` for a GLUE task, step by step, with its functions: Fisher gradients of the
head and neuron masks (``prune.fisher.collect_mask_grads``), the MAC-constrained mask search for the teacher (its
two-step schedule) and the student (``prune.search.search_mac``), mask rearrangement (``prune.rearrange``), and the
layer-wise least-squares mask rescaling (``prune.rescale.rescale_mask``, ``classification_task=True``). Adaptations
(`ADAPTATIONS`, listed on the results page), each needed to run it here:

1. The CPU instead of a CUDA GPU: ``Tensor.cuda`` / ``Module.cuda`` and ``.to("cuda")`` keep tensors on the CPU,
   and its CuPy least-squares solver (``cupyx.scipy.sparse.linalg.lsmr``) is SciPy's ``lsmr``, the same algorithm
   with the same arguments (``damp=1``), on NumPy arrays.
2. The calibration sentences of the data file (this benchmark's, with their training labels: its Fisher
   information needs the task loss) instead of 2048 random GLUE training examples; batches of 32 as its GLUE
   setting, padded to the longest sentence of each batch (its ``DataCollatorWithPadding``).
3. The MAC model's sequence length is the mean token count of this benchmark's dev sentences instead of its
   per-task GLUE table (``avg_seq_length``).
4. ``attn_implementation="eager"``: transformers 4.41's default SDPA attention expands the attention mask to
   [batch, 1, query, key], where its code reads the [batch, 1, 1, key] mask of the transformers it was written for.
5. Accuracy on the data file's dev sentences with its masks applied as its ``test_accuracy`` applies them
   (``head_mask=`` and the neuron-mask hooks), and again after the masks are folded into the weights and the masked
   heads and neurons removed (sliced query / key / value / output and FFN matrices): the table counts that model's
   parameters.

Prints ``PEER_STAGE <what it is doing>`` lines and one final ``PEER_RESULT <json>`` line; on failure the JSON is
``{"status": "failed: ..."}``. `accuracy`, `fold_and_remove` and `census` do not need its source; the tests run them
in this repository's environment.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import types
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from worker_common import report_result, source_commit, stage, worker_parser  # noqa: E402  (beside this file, torch only)

SOURCE_ENV = "OPTIMUM_PRUNE_KWON_SOURCE"
#: Its main.py: `--seed 0`, a sample batch of 32 for GLUE tasks (12 for SQuAD), `get_pruning_schedule(num_iter=2)`.
DEFAULT_SEED = 0
BATCH_SIZE = 32
#: ``mac-<percent>-converged``: LSMR's iteration limit times this (its rescaling stops at the first block whose
#: solve reports no convergence; on the MiniLM classifier a 11 x 11 head system needs 14 iterations of the 11 allowed).
CONVERGED_MAXITER_FACTOR = 10
ADAPTATIONS = (
    "the CPU instead of a CUDA GPU: .cuda() / .to('cuda') keep tensors on the CPU; its CuPy lsmr solver is "
    "SciPy's lsmr with the same arguments (damp=1)",
    "its Fisher gradients and rescaling on this benchmark's calibration sentences with their training labels "
    "instead of 2048 random GLUE training examples; batches of 32 padded per batch as its collator does",
    "the MAC model's sequence length is the mean token count of the dev sentences, not its GLUE table",
    "attn_implementation='eager' (transformers 4.41's SDPA path expands the attention mask its code reads)",
    "accuracy with its masks applied as its test_accuracy does, and again after folding the masks into the weights "
    "and removing masked heads and neurons; the parameters are that model's",
)


# ---- pieces that need neither its source nor a GPU (tested in this repository's environment) ------------------
def batches(examples: Sequence[dict[str, Any]], batch_size: int, pad_token_id: int) -> Iterator[dict[str, Any]]:
    """Padded batches of `examples` in order: input_ids, token_type_ids, attention_mask [b, longest] and labels."""
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        longest = max(len(example["input_ids"]) for example in chunk)
        ids = torch.full((len(chunk), longest), pad_token_id, dtype=torch.long)
        types_ = torch.zeros((len(chunk), longest), dtype=torch.long)
        mask = torch.zeros((len(chunk), longest), dtype=torch.long)
        for row, example in enumerate(chunk):
            n = len(example["input_ids"])
            ids[row, :n] = torch.tensor(example["input_ids"])
            types_[row, :n] = torch.tensor(example.get("token_type_ids") or [0] * n)
            mask[row, :n] = 1
        labels = torch.tensor([int(example["label"]) for example in chunk])
        yield {"input_ids": ids, "token_type_ids": types_, "attention_mask": mask, "labels": labels}


class Batches:
    """A re-iterable view of `batches` (its code walks the sample loader once per step, as a DataLoader allows)."""

    def __init__(self, examples: Sequence[dict[str, Any]], batch_size: int, pad_token_id: int) -> None:
        self.examples, self.batch_size, self.pad_token_id = examples, batch_size, pad_token_id

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return batches(self.examples, self.batch_size, self.pad_token_id)

    def __len__(self) -> int:
        return -(-len(self.examples) // self.batch_size)


@torch.no_grad()
def accuracy(
    model: torch.nn.Module,
    examples: Sequence[dict[str, Any]],
    pad_token_id: int,
    head_mask: torch.Tensor | None = None,
    neuron_mask: torch.Tensor | None = None,
    batch_size: int = 64,
) -> float:
    """Fraction of `examples` whose argmax logit is the label; sentences batched by length (padding only changes
    the order of the sums). With masks, they are applied as its ``evaluate/nlp.py`` does: ``head_mask=`` and a
    pre-hook that multiplies each FFN output layer's input by its neuron mask."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i]["input_ids"]))
    ordered = [examples[i] for i in order]
    handles = []
    if neuron_mask is not None:
        for index, layer in enumerate(model.bert.encoder.layer):
            row = neuron_mask[index]
            handles.append(
                layer.output.register_forward_pre_hook(lambda _, inputs, row=row: (inputs[0] * row, *inputs[1:]))
            )
    correct = 0
    try:
        for batch in batches(ordered, batch_size, pad_token_id):
            labels = batch.pop("labels")
            kwargs = {"head_mask": head_mask} if head_mask is not None else {}
            logits = model(**batch, **kwargs).logits
            correct += int((logits.argmax(-1) == labels).sum())
    finally:
        for handle in handles:
            handle.remove()
    return correct / len(examples)


@torch.no_grad()
def fold_and_remove(model: torch.nn.Module, head_mask: torch.Tensor, neuron_mask: torch.Tensor) -> None:
    """Make `model` compute what it computes under the (rescaled) masks, with the masked units gone.

    A head's mask value scales that head's context, so it scales the attention output matrix's columns of the head;
    a neuron's value scales its activation, so it scales the FFN output matrix's column. Then the query / key /
    value rows and output columns of heads whose value is 0 go, as do FFN neurons whose value is 0 (transformers
    5 has no ``prune_heads``, so the slicing is written out here, the same in both environments).
    """
    for index, layer in enumerate(model.bert.encoder.layer):
        self_attention, output = layer.attention.self, layer.attention.output
        size = self_attention.attention_head_size
        head_values = head_mask[index].to(output.dense.weight.dtype)
        output.dense.weight *= head_values.repeat_interleave(size)[None, :]
        kept_heads = torch.nonzero(head_values).flatten()
        columns = (kept_heads[:, None] * size + torch.arange(size)[None, :]).flatten()
        for name in ("query", "key", "value"):
            setattr(self_attention, name, _linear_rows(getattr(self_attention, name), columns))
        output.dense = _linear_columns(output.dense, columns)
        self_attention.num_attention_heads = int(kept_heads.numel())
        self_attention.all_head_size = int(columns.numel())
        neuron_values = neuron_mask[index].to(layer.output.dense.weight.dtype)
        layer.output.dense.weight *= neuron_values[None, :]
        kept = torch.nonzero(neuron_values).flatten()
        layer.intermediate.dense = _linear_rows(layer.intermediate.dense, kept)
        layer.output.dense = _linear_columns(layer.output.dense, kept)


def _empty_linear(in_features: int, out_features: int, bias: bool) -> torch.nn.Linear:
    """A Linear whose values are about to be replaced: not initialised (no warning about zero-element tensors for a
    layer left with no head)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Initializing zero-element tensors")
        return torch.nn.utils.skip_init(torch.nn.Linear, in_features, out_features, bias=bias)


def _linear_rows(linear: torch.nn.Linear, rows: torch.Tensor) -> torch.nn.Linear:
    """`linear` keeping output features `rows`."""
    new = _empty_linear(linear.in_features, rows.numel(), linear.bias is not None)
    new.weight = torch.nn.Parameter(linear.weight.data[rows].clone(), requires_grad=False)
    if linear.bias is not None:
        new.bias = torch.nn.Parameter(linear.bias.data[rows].clone(), requires_grad=False)
    return new


def _linear_columns(linear: torch.nn.Linear, columns: torch.Tensor) -> torch.nn.Linear:
    """`linear` keeping input features `columns`."""
    new = _empty_linear(columns.numel(), linear.out_features, linear.bias is not None)
    new.weight = torch.nn.Parameter(linear.weight.data[:, columns].clone(), requires_grad=False)
    if linear.bias is not None:
        new.bias = torch.nn.Parameter(linear.bias.data.clone(), requires_grad=False)
    return new


def census(model: torch.nn.Module) -> dict[str, Any]:
    """Parameters of a BERT classifier: all (each tensor once), the encoder blocks', and per-block heads / FFN width
    read off the weight shapes."""
    parameters = {id(p): p for p in model.parameters()}
    encoder = model.bert.encoder
    heads, ffn = [], []
    for layer in encoder.layer:
        self_attention = layer.attention.self
        heads.append(int(self_attention.query.out_features // self_attention.attention_head_size))
        ffn.append(int(layer.intermediate.dense.out_features))
    return {
        "parameters": sum(p.numel() for p in parameters.values()),
        "encoder parameters": sum(p.numel() for p in encoder.parameters()),
        "zeros": sum(int((p.detach() == 0).sum()) for p in parameters.values()),
        "attention heads": heads,
        "ffn widths": ffn,
    }


# ---- running its code ------------------------------------------------------------------------------------------
def install_cpu_shims(maxiter_factor: int | None = None) -> None:
    """Its code on the CPU: CUDA moves are no-ops, CuPy's lsmr is SciPy's (adaptation 1). With `maxiter_factor`,
    LSMR may run that many times its default iteration limit (min(m, n), CuPy's and SciPy's alike): not its code's
    setting, a variant that shows what its rescaling gives when every block's solve converges."""
    import numpy
    import scipy.sparse.linalg

    cupy = types.ModuleType("cupy")
    cupy.asarray = numpy.asarray
    cupy.asnumpy = numpy.asarray
    modules = {"cupy": cupy}
    for name in ("cupyx", "cupyx.scipy", "cupyx.scipy.sparse", "cupyx.scipy.sparse.linalg"):
        modules[name] = types.ModuleType(name)
    lsmr = scipy.sparse.linalg.lsmr
    if maxiter_factor:

        def lsmr(A: Any, b: Any, **kwargs: Any) -> Any:  # noqa: N803  (SciPy's names)
            return scipy.sparse.linalg.lsmr(A, b, maxiter=maxiter_factor * min(A.shape), **kwargs)

    modules["cupyx.scipy.sparse.linalg"].lsmr = lsmr
    sys.modules.update(modules)

    to = torch.Tensor.to

    def cpu_to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        args = tuple("cpu" if _is_cuda(a) else a for a in args)
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        return to(self, *args, **kwargs)

    torch.Tensor.to = cpu_to
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    torch.nn.Module.cuda = lambda self, *args, **kwargs: self


def _is_cuda(value: Any) -> bool:
    return (isinstance(value, str) and value.startswith("cuda")) or (
        isinstance(value, torch.device) and value.type == "cuda"
    )


def prune(model: Any, calibration: Sequence[dict[str, Any]], pad_token_id: int, constraint: float, seq_len: float):
    """Its main.py from the Fisher gradients to the rescaled masks; returns (head mask, neuron mask, MAC ratio, the
    blocks whose masks its rescaling changed)."""
    from efficiency.mac import compute_mask_mac
    from prune.fisher import collect_mask_grads
    from prune.rearrange import rearrange_mask
    from prune.rescale import rescale_mask
    from prune.search import search_mac
    from utils.schedule import get_pruning_schedule

    config = model.config
    loader = Batches(calibration, BATCH_SIZE, pad_token_id)
    full_head_mask = torch.ones(config.num_hidden_layers, config.num_attention_heads)
    full_neuron_mask = torch.ones(config.num_hidden_layers, config.intermediate_size)
    stage(f"Fisher gradients of the masks on {len(calibration)} sentences")
    head_grads, neuron_grads = collect_mask_grads(model, full_head_mask, full_neuron_mask, loader)
    teacher_constraint = get_pruning_schedule(target=constraint, num_iter=2)[0]
    stage("mask search (MAC constraint)")
    teacher_head_mask, teacher_neuron_mask = search_mac(config, head_grads, neuron_grads, seq_len, teacher_constraint)
    head_mask, neuron_mask = search_mac(config, head_grads, neuron_grads, seq_len, constraint)
    pruned_mac, orig_mac = compute_mask_mac(head_mask, neuron_mask, seq_len, config.hidden_size)
    head_mask = rearrange_mask(head_mask, head_grads)
    neuron_mask = rearrange_mask(neuron_mask, neuron_grads)
    stage("mask rescaling (layer-wise least squares)")
    binary_heads, binary_neurons = head_mask.clone(), neuron_mask.clone()
    head_mask, neuron_mask = rescale_mask(
        model,
        config,
        teacher_head_mask,
        teacher_neuron_mask,
        head_mask,
        neuron_mask,
        loader,
        classification_task=True,
    )
    # Its rescaling stops at the first block whose least-squares solve fails or leaves a scale outside [-10, 10]:
    # the blocks after it keep 0/1 masks. Which blocks it changed says whether it ran to the end.
    rescaled = [
        index
        for index in range(config.num_hidden_layers)
        if not (
            torch.equal(head_mask[index], binary_heads[index])
            and torch.equal(neuron_mask[index], binary_neurons[index])
        )
    ]
    return head_mask, neuron_mask, float(pruned_mac / orig_mac), rescaled


def run(args: argparse.Namespace) -> dict[str, Any]:
    import transformers
    from transformers import AutoModelForSequenceClassification

    torch.set_num_threads(args.threads)
    source = os.environ.get(SOURCE_ENV) or args.source
    versions = {"Kwon et al.": source_commit(source) if source else "unknown"}
    versions.update({"transformers": transformers.__version__, "torch": torch.__version__})
    data = torch.load(args.data, weights_only=False)
    pad = int(data["pad_token_id"])
    stage("loading the classifier")
    model = AutoModelForSequenceClassification.from_pretrained(args.checkpoint, attn_implementation="eager").eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    result: dict[str, Any] = {"versions": versions, "adaptations": list(ADAPTATIONS), "seed": args.seed}
    if args.job == "dense":
        stage("dev accuracy")
        result.update(census(model), accuracy=accuracy(model, data["dev"], pad), status="ok")
        return result
    if not args.job.startswith("mac-"):
        raise ValueError(f"unknown job {args.job!r}: dense, mac-<percent> or mac-<percent>-converged")
    percent, _, variant = args.job[len("mac-") :].partition("-")
    if variant not in ("", "converged"):
        raise ValueError(f"unknown job {args.job!r}: dense, mac-<percent> or mac-<percent>-converged")
    constraint = int(percent) / 100
    if not source:
        raise ValueError(f"no source folder: set ${SOURCE_ENV} or --source")
    sys.path.insert(0, source)
    install_cpu_shims(CONVERGED_MAXITER_FACTOR if variant == "converged" else None)
    transformers.set_seed(args.seed)
    seq_len = sum(len(example["input_ids"]) for example in data["dev"]) / len(data["dev"])
    wall, cpu = time.perf_counter(), time.process_time()
    head_mask, neuron_mask, mac_ratio, rescaled = prune(model, data["calibration"], pad, constraint, seq_len)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    stage("dev accuracy with its masks")
    masked = accuracy(model, data["dev"], pad, head_mask, neuron_mask)
    stage("folding the masks into the weights, removing masked heads and neurons")
    fold_and_remove(model, head_mask, neuron_mask)
    stage("dev accuracy of the pruned model")
    result.update(
        census(model),
        accuracy=accuracy(model, data["dev"], pad),
        **{
            "masked accuracy": masked,
            "mac ratio": mac_ratio,
            "rescaled blocks": rescaled,
            "mac seq_len": seq_len,
            "prune s": wall,
            "prune cpu s": cpu,
            "status": "ok",
        },
    )
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = worker_parser(
        __doc__,
        "dense, mac-<percent> or mac-<percent>-converged (e.g. mac-50)",
        "a BertForSequenceClassification folder",
        "torch.save file with the calibration and dev sentences' token ids and labels",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--source", default=None, help=f"its source folder (default ${SOURCE_ENV})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return report_result(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
