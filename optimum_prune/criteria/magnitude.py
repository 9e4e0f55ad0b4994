"""Magnitude: squared L2 norm of the consumer columns a channel writes through (needs no calibration data)."""

from .base import Criterion, column_sq_norms

MAGNITUDE = Criterion("magnitude", lambda weight, stats, generator: column_sq_norms(weight), needs_calibration=False)
