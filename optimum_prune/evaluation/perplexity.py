"""Perplexity over a text with fixed-length windows (the usual wikitext2 protocol)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


def model_device(model: nn.Module) -> torch.device:
    """Where `model`'s first parameter is (the CPU for a model without parameters): where the GLUE, SQuAD and
    lm-eval evaluations put their inputs."""
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.no_grad()
def perplexity(
    model: nn.Module,
    tokenizer: Any | None = None,
    text: str | None = None,
    *,
    input_ids: torch.Tensor | None = None,
    seqlen: int = 512,
    stride: int | None = None,
    max_windows: int | None = None,
    show_progress: bool = True,
    prefix: Sequence[int] | None = None,
) -> dict[str, float]:
    """Perplexity of `model` on `text` (or pre-tokenized `input_ids`, a stream without special tokens).

    Every window starts as the tokenizer starts a text: with the ids it puts before one (`prefix`; by default read
    off `tokenizer`, see `data.calibration.window_prefix`: Gemma's and Llama 3's BOS, nothing for SmolLM2 or
    GPT-2), then `seqlen - len(prefix)` tokens of the stream. A model trained with a BOS is measured far off its
    distribution without it. Pass `tokenizer` (or `prefix`) with `input_ids` too; without either, the windows are
    plain slices of `input_ids`.

    With `stride=None` the windows do not overlap, each token is predicted once with the context of its own
    window (the SparseGPT / Wanda protocol); without a prefix the first token of each window is context only. A
    `stride < seqlen` gives the sliding-window variant, where only the last `stride` tokens of each window are
    scored and earlier tokens serve as context. Prefix tokens are never scored.
    """
    from ..data.calibration import window_prefix
    from ..pipeline.offload import execution_device

    if input_ids is None:
        if tokenizer is None or text is None:
            raise ValueError("Give `input_ids`, or a tokenizer and a text.")
        input_ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    ids = input_ids.reshape(-1)
    head = torch.tensor(
        list(window_prefix(tokenizer) if prefix is None else prefix), dtype=ids.dtype, device=ids.device
    )
    body = seqlen - head.numel()  # stream tokens per window
    if body < 1:
        raise ValueError(f"seqlen={seqlen} leaves no room for text after the {head.numel()}-token prefix.")
    stride = body if stride in (None, seqlen) else stride  # stride=seqlen: non-overlapping, as without a prefix
    if not 0 < stride <= body:
        raise ValueError(f"stride must be in (0, {body}] (seqlen={seqlen} less the prefix), got {stride}.")
    if ids.numel() < body + 1 and stride == body:
        raise ValueError(f"The text has {ids.numel()} tokens, too few for one window of {seqlen}.")
    # Where the model computes: its accelerate hooks' device when dispatched (offloaded weights sit on "meta").
    device = execution_device(model)
    starts = list(range(0, ids.numel() - body + 1, stride))
    if max_windows is not None:
        starts = starts[:max_windows]
    # Every stream token of a window is scored except a first one without a prefix before it (nothing predicts it).
    per_window = body - (0 if head.numel() else 1)
    # Summed where the logits are, read once at the end: no host synchronisation per window.
    total_nll, total_tokens = torch.zeros((), dtype=torch.float64, device=device), 0
    for start in tqdm(starts, desc="Perplexity", disable=not show_progress):
        window = torch.cat([head, ids[start : start + body]])[None, :].to(device)
        logits = model(window).logits[0, :-1].float()
        targets = window[0, 1:]
        # Non-overlapping windows score every predicted stream token; sliding ones only the new tail.
        scored = per_window if (stride == body or start == 0) else stride
        nll = nn.functional.cross_entropy(logits[-scored:], targets[-scored:], reduction="sum")
        total_nll = total_nll + nll.to(total_nll.device, torch.float64)
        total_tokens += scored
    mean_nll = total_nll.item() / total_tokens
    return {"perplexity": math.exp(mean_nll), "nll": mean_nll, "tokens": total_tokens, "windows": len(starts)}
