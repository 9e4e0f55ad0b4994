"""Structured pruning criteria: one file each, one registry line each."""

from .activation import ACTIVATION
from .base import ChannelCriterion, Criterion
from .fluctuation import FLUCTUATION
from .magnitude import MAGNITUDE
from .obs import OBS
from .prunenet import PRUNENET
from .random import RANDOM

CRITERIA: dict[str, Criterion] = {c.name: c for c in (MAGNITUDE, ACTIVATION, FLUCTUATION, RANDOM, PRUNENET, OBS)}

__all__ = ["CRITERIA", "ChannelCriterion", "Criterion"]
