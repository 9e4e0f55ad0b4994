"""Checks shared by the tests that load pruned checkpoints under a quantizer at load time (issue 22, item 4).

bitsandbytes 0.50.2's CPU backend, on CPUs with AVX512-BF16 (the development machine's), repacks each 4-bit weight at
its first inference forward; that path takes only layers whose input width is a multiple of the quantization block
(64) and whose output width is a multiple of 32, for dense models as for pruned ones, so the 4-bit tests use such
shapes (a plan with `round_to=64` keeps them). The same version also writes wrong 4-bit weights when a model is saved
after such a forward (a dense tiny Llama's reloaded logits moved from 0.16 to 0.37 off the float32 ones), so the 4-bit
round trips save before the first forward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

#: 4-bit tiny models: head size 64 and widths in multiples of 64 (see the module docstring).
BNB_4BIT_SHAPE = dict(
    hidden_size=128, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, head_dim=64
)


def close_to_unquantized(actual: torch.Tensor, expected: torch.Tensor, share: float = 0.05) -> None:
    """int8 weights: the logits move by a few percent of their range, never more."""
    difference = (actual - expected).abs().max().item()
    assert difference <= share * expected.abs().max().item(), (difference, expected.abs().max().item())


def dequantized_reference(quantized: torch.nn.Module, folder: str | Path, **load: Any) -> torch.nn.Module:
    """The unquantized checkpoint with each 4-bit weight replaced by its dequantized value: what the 4-bit model must
    compute, up to its kernel's rounding. Call it before the 4-bit model's first forward (which repacks the weights)."""
    import bitsandbytes.functional as bnb_functional

    reference = AutoModelForCausalLM.from_pretrained(folder, **load).eval()
    replaced = 0
    for name, module in quantized.named_modules():
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is None:
            continue
        target = reference.get_submodule(name)
        dequantized = bnb_functional.dequantize_4bit(module.weight.data, state)
        assert dequantized.shape == target.weight.shape, (name, dequantized.shape, target.weight.shape)
        with torch.no_grad():
            target.weight.copy_(dequantized.to(target.weight.dtype))
        replaced += 1
    assert replaced, "no 4-bit layer found"
    return reference
