"""Structured pruning criteria: one file each, one registry line each."""

from .activation import ACTIVATION
from .base import ChannelCriterion, Criterion
from .fluctuation import FLUCTUATION
from .magnitude import MAGNITUDE
from .obs import OBS
from .prunenet import PRUNENET
from .prunenet_invariant import PRUNENET_INVARIANT
from .random import RANDOM
from .taylor import TAYLOR

CRITERIA: dict[str, Criterion] = {
    c.name: c for c in (MAGNITUDE, ACTIVATION, FLUCTUATION, RANDOM, PRUNENET, OBS, PRUNENET_INVARIANT, TAYLOR)
}

__all__ = ["CRITERIA", "ChannelCriterion", "Criterion"]
