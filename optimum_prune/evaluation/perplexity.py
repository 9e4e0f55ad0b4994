"""Perplexity over a text with fixed-length windows (the usual wikitext2 protocol)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


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
) -> dict[str, float]:
    """Perplexity of `model` on `text` (or pre-tokenized `input_ids`).

    With `stride=None` the windows do not overlap, each token is predicted once with the context of its own
    window (the SparseGPT / Wanda protocol). A `stride < seqlen` gives the sliding-window variant, where only the
    last `stride` tokens of each window are scored and earlier tokens serve as context.
    """
    if input_ids is None:
        if tokenizer is None or text is None:
            raise ValueError("Give `input_ids`, or a tokenizer and a text.")
        input_ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    ids = input_ids.reshape(-1)
    stride = seqlen if stride is None else stride
    if not 0 < stride <= seqlen:
        raise ValueError(f"stride must be in (0, seqlen={seqlen}], got {stride}.")
    if ids.numel() < seqlen + 1 and stride == seqlen:
        raise ValueError(f"The text has {ids.numel()} tokens, too few for one window of {seqlen}.")
    device = next(model.parameters()).device
    starts = list(range(0, ids.numel() - seqlen + 1, stride))
    if max_windows is not None:
        starts = starts[:max_windows]
    total_nll, total_tokens = 0.0, 0
    for start in tqdm(starts, desc="Perplexity", disable=not show_progress):
        window = ids[start : start + seqlen][None, :].to(device)
        logits = model(window).logits[0, :-1].float()
        targets = window[0, 1:]
        # Non-overlapping windows score every predicted token; sliding ones only the new tail.
        scored = seqlen - 1 if (stride == seqlen or start == 0) else stride
        nll = nn.functional.cross_entropy(logits[-scored:], targets[-scored:], reduction="sum")
        total_nll += nll.item()
        total_tokens += scored
    mean_nll = total_nll / total_tokens
    return {"perplexity": math.exp(mean_nll), "nll": mean_nll, "tokens": total_tokens, "windows": len(starts)}
