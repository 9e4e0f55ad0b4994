"""`mask_scope`, the one option that several sparsity solvers share, and its accepted spellings.

It lives in a module of its own, which imports nothing, so that the solvers (sparsity/sparsegpt.py, sparsity/admm.py)
and the config that checks it (configuration.py) can both read it without importing each other.
"""

from __future__ import annotations

__all__ = ["MASK_SCOPES", "MASK_SCOPE_ALIASES", "canonical_mask_scope"]

#: `mask_scope` values of every solver that has one: the same count pruned from each output row, or one ranking over
#: the whole layer.
MASK_SCOPES = ("row", "layer")
#: Earlier solver-specific names of the "layer" scope (SparseGPT's "block", ADMM's "matrix"), still accepted.
MASK_SCOPE_ALIASES = {"block": "layer", "matrix": "layer"}


def canonical_mask_scope(value: str) -> str:
    """ "row" or "layer" for any accepted spelling; ValueError (one line) for anything else."""
    scope = MASK_SCOPE_ALIASES.get(value, value) if isinstance(value, str) else value
    if scope not in MASK_SCOPES:
        raise ValueError(f"mask_scope must be one of {MASK_SCOPES}, got {value!r}.")
    return scope
