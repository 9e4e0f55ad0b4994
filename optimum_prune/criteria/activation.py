"""Activation-aware (Wanda-style): ||W[:, j]||_2 * ||X_j||_2, the size of the channel's contribution to the output."""

from .base import ChannelCriterion, column_sq_norms

ACTIVATION = ChannelCriterion(
    "activation",
    lambda weight, stats, generator: column_sq_norms(weight).sqrt() * stats.norm.to(weight),
    needs_calibration=True,
)
