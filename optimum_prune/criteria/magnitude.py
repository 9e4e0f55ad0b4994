"""Magnitude: squared L2 norm of the consumer columns a channel writes through (needs no calibration data)."""

from .base import ChannelCriterion, column_sq_norms

MAGNITUDE = ChannelCriterion(
    "magnitude", lambda weight, stats, generator: column_sq_norms(weight), needs_calibration=False
)
