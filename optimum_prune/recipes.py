"""`PruningConfig(recipe=...)`: the settings of published structured pruning methods, by name.

Each recipe fills the `PruningConfig` fields that are still at their defaults, so `recipe="flap", sparsity=0.3`
is FLAP at 30% and any field set explicitly to a non-default value wins (a field set to its default value cannot be
told from one left alone, and takes the recipe's).

- `flap` (An et al., AAAI 2024, "Fluctuation-based Adaptive Structured Pruning"): the fluctuation metric (input
  variance x squared consumer column norm), one ranking of heads and FFN channels across all layers with the
  metric standardised per layer and kind and units weighed by their size (structure "AL-AM" of the reference
  code), and bias compensation of the pruned channels' mean.
- `liar`: activation (Wanda-style) ranking, the same fraction in every layer, and LIAR's least-squares
  interpolation of the pruned channels from the kept ones (this package's default).
- `obs`: units ranked greedily by the structured OBS cost (the error left after the refit, ZipLM / SlimGPT), the
  budget spread across layers and kinds by that cost, and LIAR's refit. The refit to the dense model's outputs
  (`reconstruction="liar_dense"`) is left out: on SmolLM2-135M it raised perplexity at every budget measured
  (benchmarks/results/structured.md). The allocation's pass over the unpruned model reads the first half of the
  calibration samples (`allocation_samples`): on SmolLM2-135M at 20% and 30%, two seeds each, it cost 13-15% less
  CPU time than reading all of them (2-core AMD EPYC), at perplexities within 1% either way on Wikipedia and news
  (benchmarks/results/structured_alloc32.md). For the allocation on every sample, set `allocation_samples` to
  `num_samples`.
- `shortgpt` (Men et al. 2024, "ShortGPT"): whole blocks removed, lowest block influence (1 - cos between a
  block's input and output hidden states) first, nothing refit.
- `shortgpt_linear`: ShortGPT's blocks, each removed run replaced by one least-squares linear map of the hidden
  state fitted on calibration data (needs the plugin to reload).
- `prunenet` (Sengupta et al., ICLR 2025): FFN channels only, drawn from the reference implementation's policy (a
  linear map of the raw `gate_proj` / `fc1` rows, trained by REINFORCE on the spectrum's KS distance with rewards
  discounted over layers; `optimum_prune.criteria.prunenet`), no data read and nothing refit. The package's earlier
  rotation-invariant policy is `criterion="prunenet_invariant"`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .configuration import PruningConfig


def _half_the_calibration(config: PruningConfig) -> int:
    return max(1, config.num_samples // 2)


#: recipe -> field -> value, or a function of the config giving the value (fields that scale with others).
RECIPES: dict[str, dict[str, Any | Callable[[PruningConfig], Any]]] = {
    "flap": {"criterion": "fluctuation", "reconstruction": "bias", "allocation": "flap"},
    "liar": {"criterion": "activation", "reconstruction": "liar", "allocation": "uniform"},
    "obs": {
        "criterion": "obs",
        "reconstruction": "liar",
        "allocation": "obs",
        "allocation_samples": _half_the_calibration,
    },
    "shortgpt": {"structures": ["layers"], "reconstruction": "none"},
    "shortgpt_linear": {"structures": ["layers"], "reconstruction": "liar"},
    "prunenet": {"criterion": "prunenet", "structures": ["ffn_channels"], "reconstruction": "none"},
}


def apply_recipe(config: PruningConfig) -> None:
    """Fill the fields of `config` still at their defaults from `RECIPES[config.recipe]`, in place."""
    if config.recipe not in RECIPES:
        raise ValueError(f"Unknown recipe {config.recipe!r}. Choose one of: {', '.join(sorted(RECIPES))}.")
    defaults = {
        f.name: (f.default if f.default is not MISSING else f.default_factory())  # type: ignore[misc]
        for f in fields(config)
        if f.default is not MISSING or f.default_factory is not MISSING
    }
    for name, value in RECIPES[config.recipe].items():
        if getattr(config, name) == defaults[name]:
            value = value(config) if callable(value) else value
            setattr(config, name, list(value) if isinstance(value, list) else value)
