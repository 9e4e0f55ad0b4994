"""How much each layer keeps.

`structured`: units (heads, channels) kept per layer, uniform or under one global budget. `unstructured`: the
sparsity of each block for unstructured targets (uniform, OWL, or the OBS-error allocation).
"""

from .structured import (
    Budget,
    BudgetError,
    LayerPlan,
    global_plan,
    protected_layers,
    round_kept,
    uniform_layer_plan,
    uniform_plan,
)
from .unstructured import (
    LayerSparsities,
    allocate_by_error,
    obs_error_curve,
    outlier_ratio,
    owl_sparsities,
)

__all__ = [
    "Budget",
    "BudgetError",
    "LayerPlan",
    "LayerSparsities",
    "allocate_by_error",
    "global_plan",
    "obs_error_curve",
    "outlier_ratio",
    "owl_sparsities",
    "protected_layers",
    "round_kept",
    "uniform_layer_plan",
    "uniform_plan",
]
