"""Fluctuation (FLAP, An et al. 2024): Var(X_j) * ||W[:, j]||^2.

A channel whose input barely varies can be replaced by its mean (bias compensation), so its variance, not its
size, is what removing it costs.
"""

from .base import ChannelCriterion, column_sq_norms

FLUCTUATION = ChannelCriterion(
    "fluctuation",
    lambda weight, stats, generator: stats.variance.to(weight) * column_sq_norms(weight),
    needs_calibration=True,
)
