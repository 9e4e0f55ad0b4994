"""Reconstruction methods for structured pruning: one file each, one registry line each."""

from .admm import ADMM
from .base import Reconstruction
from .bias import BIAS
from .liar import LIAR
from .none import NONE

RECONSTRUCTIONS: dict[str, Reconstruction] = {r.name: r for r in (NONE, BIAS, LIAR, ADMM)}

__all__ = ["RECONSTRUCTIONS", "Reconstruction"]
