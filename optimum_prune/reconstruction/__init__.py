"""Reconstruction methods for structured pruning: one file each, one registry line each."""

from .admm import ADMM
from .base import Reconstruction
from .bias import BIAS
from .liar import LIAR, LIAR_DENSE
from .none import NONE

RECONSTRUCTIONS: dict[str, Reconstruction] = {r.name: r for r in (NONE, BIAS, LIAR, LIAR_DENSE, ADMM)}

__all__ = ["RECONSTRUCTIONS", "Reconstruction"]
