"""Saving, loading and publishing pruned checkpoints."""

from .layout import LAYOUT_KEY, QUANT_METHOD, apply_layout, record_layout, record_sparsity
from .save import save_pruned_checkpoint

__all__ = ["LAYOUT_KEY", "QUANT_METHOD", "apply_layout", "record_layout", "record_sparsity", "save_pruned_checkpoint"]
