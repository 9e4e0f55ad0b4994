"""First-order Taylor importance as LLM-Pruner computes it (`criterion="taylor"`).

Ma, Fang and Wang, "LLM-Pruner: On the Structural Pruning of Large Language Models", NeurIPS 2023; reference
implementation github.com/horseee/LLM-Pruner (`LLMPruner/pruner/hf_llama_pruner.py`, `TaylorImportance`, and
`hf_prune.py`, which takes one gradient of the language-model loss before pruning).

Removing a weight `w` changes the loss `L` by about `-w g + w^2 H / 2` (g = dL/dw, H the Hessian diagonal). The
element-wise estimates are the reference's `--taylor` choices (`PruningConfig.taylor_variant`):

    param_first    |w g|                         (what the reference's block-wise examples run)
    param_mix      |w g - w^2 F / 2|             (the paper's second-order expansion, H ~ F)
    param_second   w^2 F
    vectorize      |sum of w g over a row or column|, then summed over the unit's rows and columns

with `F` the Fisher diagonal: the mean over the calibration samples of the squared per-sample gradient. A unit's score
sums the estimate over every weight the unit owns, as the adapter lists them (`ArchitectureAdapter.unit_parameters`:
the producers' rows with their biases, the consumers' columns, Mamba's per-channel vectors), which is the
reference's block-wise grouping (q/k/v rows and o_proj columns of a head; gate/up rows and the down_proj column of
an FFN channel) with the group reduction "sum".

The loss `L` is that of the whole unpruned model, averaged over the calibration samples (one sample at a time, so
memory does not grow with their number; for windows of equal length, as causal LMs calibrate on, this is the
reference's batch loss):

- causal LMs: the language-model loss with labels = input ids (the reference's `model(x, labels=x).loss`);
- sequence classification and question answering: calibration text has no labels, so the target is the model's
  own prediction (the argmax class; the argmax start and end positions), a standard label-free proxy of the Fisher
  (the gradient of the cross-entropy to the predicted label). Multi-label heads take every logit above 0 as
  predicted; a regression head (one output) has no such target and is refused.

Every score is computed in `prepare`, on the dense model, before the pipeline prunes any block; `score_units` only
reads them. Gradients are taken with `torch.autograd.grad` for the weights of the pruned unit kinds only (the other
parameters do not require grad during the pass), summed into one float32 buffer per such parameter (two for the
variants that read F) and reduced to per-unit scores at the end: the model's `.grad`, `requires_grad` flags and
train/eval modes are as they were afterwards. Peak memory beyond the model: the pruned kinds' weights twice over in
float32 (three times with F) and one sample's activations for backward. The pass needs the whole model on its
devices: offloaded models (accelerate with CPU or disk offload) are refused.

What differs from the reference: the loss is computed one sample at a time and averaged (not one padded batch);
biases, convolution filters and Mamba's per-channel vectors of a unit count too (LLaMA has none, so there it is the
same sum); estimates are computed in float32 and summed in float64 (the reference multiplies in the model's dtype).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..pipeline.statistics import InputStatistics
from .base import Criterion

if TYPE_CHECKING:
    from ..architectures import ArchitectureAdapter, UnitGroup, UnitSlice
    from ..configuration import PruningConfig

logger = logging.getLogger(__name__)

#: Variants that read the Fisher diagonal (mean squared per-sample gradient).
SECOND_ORDER = ("param_mix", "param_second")


# ---- the loss -------------------------------------------------------------------------------------------------------
def is_causal_lm(model: nn.Module) -> bool:
    """Whether `model` predicts the next token (its loss is the language-model loss with labels = input ids)."""
    if type(model).__name__.endswith(("ForCausalLM", "LMHeadModel")):
        return True
    can_generate = getattr(model, "can_generate", None)  # transformers' generation mixin: next-token models
    return bool(callable(can_generate) and can_generate() and not getattr(model.config, "is_encoder_decoder", False))


def calibration_loss(model: nn.Module, sample: dict[str, torch.Tensor]) -> torch.Tensor:
    """The loss whose gradient ranks the units, on one calibration sample (see the module docstring).

    Raises:
        ValueError: a regression head, or an output without logits.
    """
    mask = sample.get("attention_mask")
    if is_causal_lm(model):
        labels = sample["input_ids"].clone()
        if mask is not None:
            labels[mask == 0] = -100
        return model(**sample, labels=labels).loss
    outputs = model(**sample)
    start, end = getattr(outputs, "start_logits", None), getattr(outputs, "end_logits", None)
    if start is not None and end is not None:  # question answering: the predicted span
        return (predicted_label_loss(start, None) + predicted_label_loss(end, None)) / 2
    logits = getattr(outputs, "logits", None)
    if logits is None:
        raise ValueError(f"criterion='taylor' needs logits to take a loss of, and {type(model).__name__} gave none.")
    problem = getattr(model.config, "problem_type", None)
    if logits.dim() == 2 and (problem == "regression" or logits.shape[-1] == 1):
        raise ValueError(
            "criterion='taylor' takes the gradient of the loss to the model's own predicted label, and a regression "
            "head (one output) has none: use criterion='activation'."
        )
    if problem == "multi_label_classification":
        logits = logits.float()
        return F.binary_cross_entropy_with_logits(logits, (logits > 0).to(logits.dtype))
    # Sequence classification; per token for token-level heads (padding left out).
    return predicted_label_loss(logits, mask if logits.dim() == 3 else None)


def predicted_label_loss(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of `logits` [..., classes] to their own argmax (entries where `mask` is 0 left out)."""
    logits = logits.float().reshape(-1, logits.shape[-1])
    target = logits.detach().argmax(-1)
    if mask is not None:
        target = target.masked_fill(mask.reshape(-1).to(target.device) == 0, -100)
    return F.cross_entropy(logits, target, ignore_index=-100)


# ---- gradients ------------------------------------------------------------------------------------------------------
def accumulate_gradients(
    model: nn.Module,
    parameters: Sequence[nn.Parameter],
    samples: Sequence[dict[str, torch.Tensor]],
    fisher: bool = False,
    show_progress: bool = False,
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None, float]:
    """Mean gradient of `calibration_loss` over `samples` for each of `parameters` (float32, their devices), the mean
    squared per-sample gradient too with `fisher`, and the mean loss.

    One sample at a time in eval mode (no dropout); only `parameters` require grad during the pass. The model's
    `requires_grad` flags and train/eval modes are restored afterwards, and no `.grad` is written.
    """
    from ..pipeline.layerwise import no_cache
    from ..pipeline.offload import execution_device

    device = execution_device(model)
    gradients = [torch.zeros_like(p, dtype=torch.float32) for p in parameters]
    squares = [torch.zeros_like(p, dtype=torch.float32) for p in parameters] if fisher else None
    tracked = {id(p) for p in parameters}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    modes = [(m, m.training) for m in model.modules()]
    total = 0.0
    try:
        model.eval()
        for param, _ in flags:
            param.requires_grad_(id(param) in tracked)
        with torch.enable_grad(), no_cache(model):
            for sample in tqdm(samples, desc="Taylor gradients", disable=not show_progress):
                loss = calibration_loss(model, {key: value.to(device) for key, value in sample.items()})
                grads = torch.autograd.grad(loss, list(parameters), allow_unused=True)
                total += float(loss.detach())
                del loss
                for index, grad in enumerate(grads):
                    if grad is None:  # a weight the loss does not reach
                        continue
                    grad = grad.float()
                    gradients[index].add_(grad)
                    if squares is not None:
                        squares[index].addcmul_(grad, grad)
                del grads
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)
        for module, training in modes:
            module.training = training
    count = len(samples)
    for buffer in gradients + (squares or []):
        buffer.div_(count)
    return gradients, squares, total / count


def position_importance(
    weight: torch.Tensor, gradient: torch.Tensor, square: torch.Tensor | None, dim: int, variant: str
) -> torch.Tensor:
    """The variant's importance of every position along `dim` of `weight` (a row, a column, one entry of a vector),
    summed over the other dimensions: float64, [weight.shape[dim]], on CPU."""
    w = weight.detach().float()
    if variant == "param_second":
        salience = w.square() * square
    elif variant == "param_mix":
        salience = w * gradient - 0.5 * w.square() * square
    else:
        salience = w * gradient
    positions = salience.movedim(dim, 0).reshape(salience.shape[dim], -1)
    if variant == "vectorize":
        return positions.sum(1, dtype=torch.float64).abs().cpu()
    return positions.abs().sum(1, dtype=torch.float64).cpu()


# ---- the criterion --------------------------------------------------------------------------------------------------
class TaylorCriterion(Criterion):
    """criterion="taylor": keep the units whose weights' Taylor estimate of the loss change is largest.

    The registered instance holds no scores; `prepare` returns one holding the scores of every unit of the pruned
    kinds, computed from the gradients of the unpruned model on the calibration samples.

    Example:
        >>> config = PruningConfig(sparsity=0.2, criterion="taylor", reconstruction="liar")
        >>> PrunerForCausalLM(model, tokenizer).prune(config, dataset="wikitext2")
    """

    name = "taylor"
    needs_calibration = True

    def __init__(
        self,
        scores: dict[tuple[int, str, tuple[str, ...]], torch.Tensor] | None = None,
        layer_index: dict[int, int] | None = None,
        variant: str = "param_first",
        loss: float | None = None,
    ) -> None:
        #: Per (layer index, unit kind, consumers): one score per unit, float64 on CPU.
        self.scores = scores
        self.layer_index = layer_index or {}
        self.variant = variant
        #: The mean calibration loss of the unpruned model.
        self.loss = loss

    def check_offloaded(self, config: PruningConfig) -> None:
        raise ValueError(
            "criterion='taylor' backpropagates through the whole model at once, which an offloaded model (weights "
            "on CPU or disk, loaded block by block) cannot do: load the model fully on its devices, or use "
            "criterion='activation'."
        )

    def prepare(
        self,
        adapter: ArchitectureAdapter,
        config: PruningConfig,
        show_progress: bool = True,
        samples: list[dict[str, torch.Tensor]] | None = None,
    ) -> TaylorCriterion:
        """Take the gradients of the unpruned model on `samples` and score every unit of the kinds this run prunes.

        Raises:
            ValueError: no samples, or a model without a label-free loss (`calibration_loss`).
        """
        from ..structured import resolve_kinds

        if not samples:
            raise ValueError("criterion='taylor' takes gradients on calibration data, and none was given.")
        variant = config.taylor_variant
        kinds = resolve_kinds(adapter, config)
        layers = adapter.layers()
        groups: list[tuple[int, UnitGroup, list[UnitSlice]]] = [
            (index, group, adapter.unit_parameters(layer, group))
            for index, layer in enumerate(layers)
            for group in adapter.groups(layer)
            if group.kind in kinds
        ]
        parameters: dict[int, nn.Parameter] = {}
        for index, _group, slices in groups:
            for piece in slices:
                param = layers[index].get_parameter(piece.parameter)
                parameters.setdefault(id(param), param)
        tracked = list(parameters.values())
        if not tracked:  # nothing of these kinds in this model
            return TaylorCriterion({}, {}, variant, None)
        gradients, squares, loss = accumulate_gradients(
            adapter.model, tracked, samples, fisher=variant in SECOND_ORDER, show_progress=show_progress
        )
        position = {id(param): index for index, param in enumerate(tracked)}
        cache: dict[tuple[int, int | None, int], torch.Tensor] = {}
        scores: dict[tuple[int, str, tuple[str, ...]], torch.Tensor] = {}
        for index, group, slices in groups:
            total = torch.zeros(group.num_units, dtype=torch.float64)
            for piece in slices:
                param = layers[index].get_parameter(piece.parameter)
                key = (id(param), piece.expert, piece.dim)
                if key not in cache:
                    at = position[id(param)]
                    gradient, square = gradients[at], squares[at] if squares is not None else None
                    weight = param
                    if piece.expert is not None:
                        weight, gradient = weight[piece.expert], gradient[piece.expert]
                        square = square[piece.expert] if square is not None else None
                    cache[key] = position_importance(weight, gradient, square, piece.dim, variant)
                total += cache[key][piece.index].sum(1)
            scores[index, group.kind, group.consumers] = total
        logger.info("taylor (%s): mean calibration loss %.4f over %d samples", variant, loss, len(samples))
        return TaylorCriterion(scores, {id(layer): index for index, layer in enumerate(layers)}, variant, loss)

    def score_units(
        self,
        adapter: ArchitectureAdapter,
        layer: nn.Module,
        group: UnitGroup,
        stats: dict[str, InputStatistics] | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """The scores `prepare` computed for this layer's group on the unpruned model."""
        if self.scores is None:
            raise RuntimeError("criterion 'taylor' scores units from gradients taken in prepare(): call it first.")
        key: tuple[Any, ...] = (self.layer_index.get(id(layer)), group.kind, group.consumers)
        scores = self.scores.get(key)  # type: ignore[arg-type]
        if scores is None or scores.numel() != group.num_units:
            raise RuntimeError(
                f"criterion 'taylor' has no scores for the {group.num_units} {group.kind} units of this layer: the "
                "model changed after prepare()."
            )
        return scores.clone()


TAYLOR = TaylorCriterion()
