"""No reconstruction: the pruned columns are simply dropped."""

from .base import Reconstruction

NONE = Reconstruction(
    "none", lambda linear, stats, kept, pruned, damp: None, needs_calibration=False, needs_gram=False
)
