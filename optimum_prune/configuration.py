"""`PruningConfig`: the whole recipe of one pruning run, serialisable to `pruning_config.json`.

`PruningConfig` holds what every method shares (target, sparsity budget, calibration data, seed, ...); each method has
its config, a subclass with its own fields (`PRUNING_CONFIGS`: `StructuredConfig`, `DepthConfig`, `PruneNetConfig`,
`SparsityConfig`), and `PruningConfig(...)` builds the one its arguments ask for. A sparsity method's solver options
are typed too (`SOLVER_OPTIONS`). This module imports only the standard library at import time: the command line
builds its options from these fields without importing torch (commands/prune.py).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

STRUCTURED_TARGET = "structured"
UNSTRUCTURED_TARGET = "unstructured"
_N_M_PATTERN = re.compile(r"^(\d+):(\d+)$")

#: Structured targets: how the removed units are split across layers.
STRUCTURED_ALLOCATIONS = ("uniform", "global", "flap", "obs")
#: Unstructured targets: how the removed weights are split across blocks (N:M patterns are always uniform).
UNSTRUCTURED_ALLOCATIONS = ("uniform", "owl", "obs")
ALLOCATIONS = tuple(dict.fromkeys(STRUCTURED_ALLOCATIONS + UNSTRUCTURED_ALLOCATIONS))
STRUCTURE_KINDS = (
    "attention_heads",
    "ffn_channels",
    "mamba_inner",
    "query_heads",
    "expert_channels",
    "ssm_heads",
    "layers",
)
OVERRIDE_KEYS = ("sparsity", "num_heads", "ffn_channels")
#: criterion="taylor": LLM-Pruner's element-wise importance estimates (its `--taylor` argument).
TAYLOR_VARIANTS = ("param_first", "param_mix", "param_second", "vectorize")

CONFIG_NAME = "pruning_config.json"


def _known(name: str, value: str, choices: tuple[str, ...] | list[str]) -> None:
    if value not in choices:
        raise ValueError(f"Unknown {name} {value!r}. Choose one of: {', '.join(sorted(choices))}.")


# ---- sparsity solvers' options --------------------------------------------------------------------------------------
@dataclass(eq=False)
class SolverOptions(Mapping):
    """The options of one sparsity solver (`PruningConfig.solver_options`), typed, each with its help.

    The defaults are the solver's own (tests/test_configuration_split.py compares them with the solver's signature;
    the solvers import nothing from here). As a mapping it reads as the options set away from their defaults: what the
    solver is given on top of its defaults, and what `pruning_config.json` records (`{}` when none is set). This base
    class is the solvers without options (magnitude, wanda).
    """

    #: Whether the solver has a `mask_scope` (set through `PruningConfig.mask_scope`, not here).
    has_mask_scope: ClassVar[bool] = False

    def _set(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}

    def __getitem__(self, name: str) -> Any:
        return self._set()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._set())

    def __len__(self) -> int:
        return len(self._set())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self._set().items())})"


@dataclass(eq=False, repr=False)
class SparseGPTOptions(SolverOptions):
    """method='sparsegpt'."""

    has_mask_scope: ClassVar[bool] = True
    blocksize: int = field(
        default=128,
        metadata={"help": "Columns per block; the mask is chosen inside each block as the sweep reaches it."},
    )
    dtype: Any = field(default=None, metadata={"help": "torch dtype of the solver's arithmetic (None: float32)."})


@dataclass(eq=False, repr=False)
class ADMMOptions(SolverOptions):
    """method='admm'."""

    has_mask_scope: ClassVar[bool] = True
    rho: float = field(default=1.0, metadata={"help": "ADMM penalty parameter (> 0)."})
    iterations: int = field(default=20, metadata={"help": "ADMM steps."})
    prune_iterations: int = field(
        default=15,
        metadata={"help": "Steps over which the mask is re-chosen on a cubic schedule (0: chosen once, Wanda score)."},
    )
    refit: str | bool = field(
        default="none",
        metadata={
            "help": "Least-squares refit on the final mask: 'none' (the reference's), 'cg' (conjugate gradients), "
            "'exact' (direct per-row solve); True / False are the old 'exact' / 'none'."
        },
    )
    refit_method: str | None = field(default=None, metadata={"help": "refit=True: the direct solve's method."})
    cg_tol: float = field(default=1e-3, metadata={"help": "refit='cg': relative residual to stop at."})
    cg_max_iter: int = field(default=100, metadata={"help": "refit='cg': the most steps."})
    dtype: Any = field(default=None, metadata={"help": "torch dtype of the solver's arithmetic (None: float32)."})


@dataclass(eq=False, repr=False)
class OBSMultiOptions(SolverOptions):
    """method='obs_multi'."""

    blocksize: int = field(default=128, metadata={"help": "Columns per block of deferred updates."})
    groupsize: int | None = field(
        default=None, metadata={"help": "Columns pruned jointly per group (None: blocksize)."}
    )
    allocation: str = field(
        default="row",
        metadata={
            "help": "'row': each row's weights ranked up front decide each group's count (rows end exactly at the "
            "target); 'uniform': the same share from every group."
        },
    )
    refit: str = field(
        default="cg", metadata={"help": "Refit on the final mask: 'cg' (default), 'exact' or 'none' (APT alone)."}
    )
    cg_tol: float = field(default=1e-3, metadata={"help": "refit='cg': relative residual to stop at."})
    dtype: Any = field(default=None, metadata={"help": "torch dtype of the solver's arithmetic (None: float32)."})


#: Each sparsity method's options class (a method missing here takes none).
SOLVER_OPTIONS: dict[str, type[SolverOptions]] = {
    "magnitude": SolverOptions,
    "wanda": SolverOptions,
    "sparsegpt": SparseGPTOptions,
    "admm": ADMMOptions,
    "obs_multi": OBSMultiOptions,
}


def solver_options(method: str, options: Mapping[str, Any] | None) -> SolverOptions:
    """`options` (a dict, or another method's options) as `method`'s typed options; ValueError naming an option
    the method does not have, with the ones it has."""
    options_class = SOLVER_OPTIONS.get(method, SolverOptions)
    if isinstance(options, options_class):
        return options
    if not isinstance(options, Mapping):
        raise ValueError(f"solver_options must be a dict of solver keyword options, got {options!r}.")
    known = [f.name for f in fields(options_class)]
    for name in options:
        if name not in known:
            raise ValueError(f"method={method!r} has no option {name!r}; its options: {sorted(known)}")
    return options_class(**options)


_TARGET_METADATA = {
    "help": "What to remove: 'structured' (attention heads, FFN channels, Mamba inner channels; the model gets "
    "physically smaller), 'unstructured' (individual weights), or an N:M pattern such as '2:4'."
}


# ---- the configs: common fields, and one config per method ---------------------------------------------------------
def _default(spec: Any) -> Any:
    return spec.default_factory() if spec.default is MISSING else spec.default


class _ByMethod(type):
    """`PruningConfig(...)` builds the config of the method its arguments ask for (`config_class`), without the
    fields of other methods' configs that are given at their defaults (they change nothing); any other value of such
    a field is one ValueError naming the method it belongs to."""

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        if cls is not PruningConfig:  # a method's own class is built as it is
            return super().__call__(*args, **kwargs)
        given = {**dict(zip((f.name for f in fields(cls)), args)), **kwargs}
        chosen = config_class(**{k: given[k] for k in _DISPATCH_FIELDS if k in given})
        own = {f.name for f in fields(chosen)}
        for spec in config_fields():
            if spec.name in given and spec.name not in own:
                if given[spec.name] != _default(spec):
                    owner = next(c for c in PRUNING_CONFIGS.values() if spec.name in {f.name for f in fields(c)})
                    raise ValueError(
                        f"{spec.name}={given[spec.name]!r} is an option of {owner.describes}; this config is for "
                        f"{chosen.describes}."
                    )
                del given[spec.name]
        return chosen(**given)


@dataclass
class PruningConfig(metaclass=_ByMethod):
    """Recipe for one pruning run: the fields every method shares, and the base of each method's config.

    Constructing `PruningConfig` gives the config of the method the arguments ask for (`config_class`):
    `StructuredConfig` for target='structured' (`PruneNetConfig` with a PruneNet criterion, `DepthConfig` with
    structures=['layers']), `SparsityConfig` for 'unstructured' and N:M targets; each is a PruningConfig. A field of
    another method's config, set to anything but its default, raises one ValueError naming the method it belongs
    to; read on a config without it, such a field gives its default (code that reads it whatever the method, as
    before the split). Each method's fields, with their help, are in `PRUNING_CONFIGS`.

    Example:
        >>> PruningConfig(target="structured", sparsity=0.2, criterion="activation", reconstruction="liar")
    """

    #: What the config is for, in the error about another method's field.
    describes: ClassVar[str] = "any method"

    target: str = field(default=STRUCTURED_TARGET, metadata=_TARGET_METADATA)
    sparsity: float = field(
        default=0.5,
        metadata={
            "help": "Fraction in [0, 1) to remove: of the prunable block parameters for 'structured', of each "
            "pruned Linear's weights for 'unstructured'. Ignored for N:M patterns, where N/M is the sparsity."
        },
    )
    allocation: str = field(
        default="uniform",
        metadata={
            "help": "How the budget is split across layers. Structured targets: 'uniform' (same fraction in every "
            "layer), 'global' (one ranking across layers under the total budget, the criterion's scores standardised "
            "per kind), 'flap' (the same, with channel scores standardised within each layer, as FLAP does; needs "
            "calibration data and a channel criterion) or 'obs' (the same, ranked by the error each removal leaves "
            "after the refit; needs calibration data); the ranked ones keep at least `min_keep_fraction` of every "
            "layer. Unstructured targets: 'uniform', 'owl' (outlier-weighted layerwise "
            "sparsity, arXiv 2310.05175: blocks with more activation outliers keep more weights; see owl_m, "
            "owl_lambda), 'obs' (each block's sparsity chosen so the summed predicted OBS output error, weighed by "
            "the block's update against the residual stream, is smallest under the budget, within "
            "max_layer_deviation of `sparsity`). N:M targets: 'uniform' only (the pattern "
            "is the hardware's).",
            "choices": ALLOCATIONS,
        },
    )
    allow_sparsity_shortfall: bool = field(
        default=False,
        metadata={
            "help": "Accept a plan that removes clearly less than `sparsity`. Structured targets: every layer keeps "
            "at least one unit of each kind; round_to and min_keep_fraction set the steps. Unstructured: every row "
            "loses floor(sparsity x its length) weights, so keeps at least one. Off: such a request is refused "
            "before any weight changes."
        },
    )
    layer_overrides: dict[str, dict[str, Any]] = field(
        default_factory=dict,
        metadata={
            # The examples are JSON as well as Python: the command line takes the same text.
            "help": 'Per-layer settings keyed by layer index, e.g. {"0": {"sparsity": 0.0}} or '
            '{"3": {"num_heads": 6, "ffn_channels": 1024}}. Keys must name layers of the model.'
        },
    )
    dataset: Any = field(
        default=None,
        metadata={
            "help": "Calibration data: a list of strings, a datasets.Dataset, a local file (.txt/.json/.jsonl/.csv/"
            ".parquet) or a folder of files of one such type (read in sorted order), a dataset name ('wikitext2', "
            "'c4', 'ptb'), or 'random-tokens' (uniformly random token ids: "
            "data-driven criteria and refits without any data); these need the pruner's tokenizer. Or token ids, "
            "as llm-compressor's oneshot takes them, which need none: a LongTensor [n, seqlen], a list of 1-D "
            "tensors or of lists of ints, or a datasets.Dataset (or a tokenizer's output) with an input_ids column "
            "(positions its attention_mask masks are dropped); ids must be below the model's vocab_size. Language "
            "models draw num_samples windows of seqlen tokens from the joined data, encoders take one sequence per "
            "text or row. Not saved to JSON unless it is a string."
        },
    )
    num_samples: int = field(default=128, metadata={"help": "Number of calibration sequences."})
    seqlen: int = field(
        default=512,
        metadata={"help": "Tokens per calibration sequence (and per perplexity window when evaluating after it)."},
    )
    damp: float = field(
        default=0.01,
        metadata={"help": "Ridge damping, as a fraction of the mean diagonal of the input Gram matrix."},
    )
    seed: int = field(
        default=0, metadata={"help": "Seed for calibration sampling, the random criterion and PruneNet's policy."}
    )

    def __post_init__(self) -> None:
        self.validate()

    def __getattr__(self, name: str) -> Any:
        # Only for attributes not found: another method's field reads as its default.
        for spec in config_fields():
            if spec.name == name:
                return _default(spec)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ---- validation -------------------------------------------------------------------------------------------
    @property
    def is_structured(self) -> bool:
        return self.target == STRUCTURED_TARGET

    @property
    def n_m(self) -> tuple[int, int] | None:
        """`(n, m)` for an N:M target, else None."""
        match = _N_M_PATTERN.match(self.target)
        return (int(match.group(1)), int(match.group(2))) if match else None

    def validate(self) -> None:
        if self.target not in (STRUCTURED_TARGET, UNSTRUCTURED_TARGET) and self.n_m is None:
            raise ValueError(
                f"Unknown target {self.target!r}: use 'structured', 'unstructured' or an N:M pattern like '2:4'."
            )
        if self.n_m is not None:
            n, m = self.n_m
            if not 0 < n < m:
                raise ValueError(f"N:M target {self.target!r} needs 0 < N < M (N zeros in every M weights).")
        if not isinstance(self.sparsity, (int, float)) or isinstance(self.sparsity, bool):
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity!r}: give the fraction to remove.")
        if not 0.0 <= float(self.sparsity) < 1.0:
            why = (
                "it is the fraction to remove, not a negative" if self.sparsity < 0 else "1.0 would remove everything"
            )
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity!r}: {why}.")
        self.sparsity = float(self.sparsity)
        _known("allocation", self.allocation, ALLOCATIONS)
        if self.is_structured and self.allocation not in STRUCTURED_ALLOCATIONS:
            raise ValueError(
                f"allocation={self.allocation!r} applies to unstructured targets; structured targets take "
                f"{', '.join(STRUCTURED_ALLOCATIONS)}."
            )
        if not self.is_structured:
            if self.n_m is not None and self.allocation != "uniform":
                raise ValueError(
                    f"allocation={self.allocation!r} cannot apply to the N:M target {self.target!r}: every block "
                    "keeps the pattern the hardware accelerates; use allocation='uniform' or an unstructured target."
                )
            if self.allocation not in UNSTRUCTURED_ALLOCATIONS:
                raise ValueError(
                    f"allocation={self.allocation!r} applies to structured targets; unstructured targets take "
                    f"{', '.join(UNSTRUCTURED_ALLOCATIONS)}."
                )
        if int(self.num_samples) < 1 or int(self.seqlen) < 2:
            raise ValueError("num_samples must be >= 1 and seqlen >= 2.")
        if self.damp < 0:
            raise ValueError(f"damp must be >= 0, got {self.damp!r}.")
        normalised: dict[str, dict[str, Any]] = {}
        for key, override in (self.layer_overrides or {}).items():
            if not str(key).isdigit():
                raise ValueError(f"layer_overrides key {key!r} is not a layer index (use '0', '1', ...).")
            if not isinstance(override, dict) or not override:
                raise ValueError(f"layer_overrides[{key!r}] must be a non-empty dict of {OVERRIDE_KEYS}.")
            for name, value in override.items():
                _known(f"layer_overrides[{key!r}] key", name, OVERRIDE_KEYS)
                if name == "sparsity" and not 0.0 <= float(value) < 1.0:
                    raise ValueError(f"layer_overrides[{key!r}]['sparsity'] must be in [0, 1), got {value!r}.")
                if name != "sparsity" and (not isinstance(value, int) or value < 1):
                    raise ValueError(f"layer_overrides[{key!r}][{name!r}] must be a positive int, got {value!r}.")
            normalised[str(int(key))] = dict(override)
        self.layer_overrides = normalised

    def check_layers(self, num_layers: int) -> None:
        """Raise when an override or a protected index names a layer the model does not have."""
        missing = sorted(int(k) for k in self.layer_overrides if int(k) >= num_layers)
        if missing:
            raise ValueError(
                f"layer_overrides name layers {missing}, but the model has {num_layers} layers (0..{num_layers - 1})."
            )
        for index in self.protect_layers:
            if not -num_layers <= index < num_layers:
                raise ValueError(
                    f"protect_layers names layer {index}, but the model has {num_layers} layers "
                    f"(0..{num_layers - 1}, or -{num_layers}..-1 from the end)."
                )

    # ---- serialisation ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """This config's fields (not other methods'), as `pruning_config.json` records them."""
        # Calibration data may be a large in-memory object: never copy it.
        data = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self) if f.name != "dataset"}
        if "solver_options" in data:
            data["solver_options"] = dict(data["solver_options"])
        # Only a name or path says where calibration data came from; in-memory data is not recorded.
        data["dataset"] = self.dataset if isinstance(self.dataset, str) else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningConfig:
        """The config `data` describes. Files written before the per-method split record every field of every
        method: the fields of other methods than the file's never applied to its run, and are dropped."""
        known = {f.name for f in config_fields()}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown PruningConfig fields {unknown}; known fields: {sorted(known)}.")
        chosen = config_class(**{k: data[k] for k in _DISPATCH_FIELDS if k in data}) if cls is PruningConfig else cls
        own = {f.name for f in fields(chosen)}
        return chosen(**{key: value for key, value in data.items() if key in own})

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_json_file(self, path: str | os.PathLike) -> None:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(self.to_json_string())

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> PruningConfig:
        with open(path, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> PruningConfig:
        """Read `pruning_config.json` from a saved pruned checkpoint folder."""
        return cls.from_json_file(os.path.join(folder, CONFIG_NAME))


@dataclass
class StructuredConfig(PruningConfig):
    """target='structured': whole attention heads, channels or blocks removed, the model gets smaller."""

    describes: ClassVar[str] = "structured pruning (target='structured')"

    criterion: str = field(
        default="activation",
        metadata={
            "help": "Structured ranking of heads and channels: 'magnitude' (weight norm), 'activation' "
            "(|W| x input-activation norm, Wanda style), 'fluctuation' (FLAP: input variance x squared column "
            "norm), 'random' (baseline), 'prunenet' (calibration-free: the PruneNet reference implementation's "
            "policy learnt from the weights, see the prunenet_* fields), 'prunenet_invariant' (the same idea with "
            "a rotation-invariant policy), 'obs' (the output error a unit's removal leaves after the least-squares "
            "refit, chosen greedily: structured Optimal Brain Surgeon), 'taylor' (LLM-Pruner: |w x dL/dw| summed "
            "over every weight of the unit, L the loss of the whole unpruned model on the calibration data, see "
            "taylor_variant; not for offloaded models)."
        },
    )
    reconstruction: str = field(
        default="liar",
        metadata={
            "help": "How the layer that consumes pruned channels is refit: 'none', 'bias' (FLAP bias "
            "compensation), 'liar' (least-squares interpolation of the pruned channels from the kept ones), "
            "'liar_dense' (the same refit to the dense model's outputs), 'admm' (the same least-squares refit by "
            "ADMM iterations)."
        },
    )
    structures: list[str] | None = field(
        default=None,
        metadata={
            "help": "Structured kinds to prune, any of 'attention_heads' (whole KV groups), 'query_heads' (query "
            "heads inside KV groups, the same number kept in every group of a layer), 'ffn_channels', "
            "'expert_channels' (each routed MoE expert's channels), 'mamba_inner', 'ssm_heads' (Mamba2 heads), or "
            "'layers' (whole blocks: depth pruning). None means the architecture's default kinds (all but "
            "'query_heads' and 'layers'; where every layer has a single KV group, which cannot be removed, "
            "'query_heads' instead of 'attention_heads', said in a warning and in the pruning summary).",
            "choices": STRUCTURE_KINDS,
        },
    )
    round_to: int = field(
        default=1,
        metadata={
            "help": "Round kept FFN / inner channel counts to a multiple of this (e.g. 8 or 64) for fast kernels."
        },
    )
    min_keep_fraction: float = field(
        default=0.05,
        metadata={
            "help": "With a ranked allocation ('global', 'flap', 'obs'), the least fraction of each layer's units "
            "that is kept."
        },
    )
    allocation_samples: int | None = field(
        default=None,
        metadata={
            "help": "With a ranked allocation ('global', 'flap', 'obs'), how many calibration samples (the first "
            "ones) its scoring pass reads; None (default): all; recipe='obs' sets half of num_samples. On "
            "SmolLM2-135M with 64 x 512 calibration tokens, recipe='obs' with 32 took 13-15% less CPU time than with "
            "all 64 at perplexities within 1% either way (2-core AMD EPYC; benchmarks/results/structured_alloc32.md); "
            "with 16 (Intel Xeon), 11% "
            "(20% budget) and 21% (30%) less for 1.1% and 0.5% higher perplexity "
            "(benchmarks/results/structured_allocation_samples.md)."
        },
    )
    taylor_variant: str = field(
        default="param_first",
        metadata={
            "help": "criterion='taylor': the importance of one weight w, with g = dL/dw and F = the mean squared "
            "per-sample gradient (the Fisher diagonal), as LLM-Pruner's --taylor: 'param_first' (|w g|), "
            "'param_mix' (|w g - w^2 F / 2|, the second-order expansion), 'param_second' (w^2 F), 'vectorize' "
            "(|sum of w g| over each row or column of a unit, then summed). A unit's score sums it over the unit's "
            "weights.",
            "choices": TAYLOR_VARIANTS,
        },
    )
    protect_layers: list[int] = field(
        default_factory=list,
        metadata={
            "help": "Structured: layers left dense, e.g. 0 and -1 for the first and the last (negative indices count "
            "from the end); the other layers remove more so the total budget still holds."
        },
    )
    serving: str | None = field(
        default=None,
        metadata={
            "help": "Structured: restrict the plan to what a serving engine loads at the pruned size, and save in its "
            "layout. 'vllm': vLLM's heterogeneous LLaMA layout (DeciLM), per-layer FFN widths and whole blocks; "
            "attention heads stay, since that layout keeps every layer's query heads (structures default to "
            "['ffn_channels']). 'llama.cpp': the same layout for its converter (deci), FFN widths in multiples of "
            "256 (round_to becomes 256). Families: llama, mistral, qwen2. A plan the engine cannot load is refused "
            "before any weight changes."
        },
    )
    recipe: str | None = field(
        default=None,
        metadata={
            "help": "A published method's settings (see optimum_prune.recipes): 'flap', 'liar', 'shortgpt', "
            "'shortgpt_linear', 'prunenet', 'obs'. They fill the fields left at their defaults; fields you set win."
        },
    )

    def __post_init__(self) -> None:
        if self.recipe is not None:
            from .recipes import apply_recipe

            apply_recipe(self)
        super().__post_init__()

    def validate(self) -> None:
        from .criteria import CRITERIA
        from .reconstruction import RECONSTRUCTIONS

        super().validate()
        if not self.is_structured:
            raise ValueError(f"{type(self).__name__} is for target='structured', not {self.target!r}.")
        _known("criterion", self.criterion, list(CRITERIA))
        _known("reconstruction", self.reconstruction, list(RECONSTRUCTIONS))
        _known("taylor_variant", self.taylor_variant, TAYLOR_VARIANTS)
        if self.structures is not None:
            if isinstance(self.structures, str):
                self.structures = [self.structures]
            for kind in self.structures:
                _known("structure kind", kind, STRUCTURE_KINDS)
            if not self.structures:
                raise ValueError("structures is empty: name at least one kind, or None for all.")
            if {"attention_heads", "query_heads"} <= set(self.structures):
                raise ValueError(
                    "structures has both 'attention_heads' (whole KV groups) and 'query_heads' (query heads inside "
                    "the groups): choose one."
                )
        if self.serving is not None:
            from .serialization.serving import check_config, default_round_to, default_structures

            check_config(
                self.serving,
                self.structures,
                self.reconstruction,
                round_to=self.round_to,
                layer_overrides=self.layer_overrides,
            )
            if self.structures is None:
                self.structures = default_structures(self.serving)
            self.round_to = default_round_to(self.serving, self.round_to)
        if not isinstance(self.protect_layers, list) or any(type(i) is not int for i in self.protect_layers):
            raise ValueError(f"protect_layers must be a list of layer indices, got {self.protect_layers!r}.")
        if int(self.round_to) < 1:
            raise ValueError(f"round_to must be a positive integer, got {self.round_to!r}.")
        self.round_to = int(self.round_to)
        if not 0.0 < self.min_keep_fraction <= 1.0:
            raise ValueError(f"min_keep_fraction must be in (0, 1], got {self.min_keep_fraction!r}.")
        if self.allocation_samples is not None and (
            isinstance(self.allocation_samples, bool)
            or not isinstance(self.allocation_samples, int)
            or self.allocation_samples < 1
        ):
            raise ValueError(
                f"allocation_samples must be a positive integer or None, got {self.allocation_samples!r}."
            )


@dataclass
class DepthConfig(StructuredConfig):
    """structures=['layers']: whole blocks removed (ShortGPT); the structured fields, no others."""

    describes: ClassVar[str] = "depth pruning (structures=['layers'])"


@dataclass
class PruneNetConfig(StructuredConfig):
    """criterion='prunenet' or 'prunenet_invariant': a channel-ranking policy learnt from the weights alone."""

    describes: ClassVar[str] = "PruneNet (criterion='prunenet' or 'prunenet_invariant')"

    prunenet_episodes: int = field(
        default=20,
        metadata={"help": "PruneNet: REINFORCE episodes; each draws every layer's kept channels and steps per layer."},
    )
    prunenet_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "PruneNet: learning rate of the policy's optimizer. None: 1e-3 (AdamW, the reference's) for "
            "'prunenet', 1e-2 (Adam) for 'prunenet_invariant'."
        },
    )
    prunenet_train_sparsity: float | None = field(
        default=None,
        metadata={
            "help": "PruneNet: fraction of each layer's channels removed while the policy learns. None uses "
            "`sparsity` (0.5 when that is 0). The learnt policy ranks channels for any sparsity."
        },
    )
    prunenet_policy_path: str | None = field(
        default=None,
        metadata={"help": "PruneNet: load this saved policy (a .safetensors file) instead of training one."},
    )
    prunenet_save_policy: str | None = field(
        default=None,
        metadata={"help": "PruneNet: write the policy used in this run to this .safetensors file, for reuse."},
    )

    def validate(self) -> None:
        super().validate()
        if type(self.prunenet_episodes) is not int or self.prunenet_episodes < 1:
            raise ValueError(f"prunenet_episodes must be a positive int, got {self.prunenet_episodes!r}.")
        if self.prunenet_learning_rate is not None and (
            not isinstance(self.prunenet_learning_rate, (int, float)) or not self.prunenet_learning_rate > 0
        ):
            raise ValueError(f"prunenet_learning_rate must be > 0 or None, got {self.prunenet_learning_rate!r}.")
        if self.prunenet_train_sparsity is not None and not 0.0 < float(self.prunenet_train_sparsity) < 1.0:
            raise ValueError(
                f"prunenet_train_sparsity must be in (0, 1) or None, got {self.prunenet_train_sparsity!r}."
            )
        for name in ("prunenet_policy_path", "prunenet_save_policy"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, (str, os.PathLike)):
                raise ValueError(f"{name} must be a file path or None, got {value!r}.")
            setattr(self, name, os.fspath(value) if value is not None else None)


@dataclass
class SparsityConfig(PruningConfig):
    """target='unstructured' or an N:M pattern: individual weights zeroed, every shape kept."""

    describes: ClassVar[str] = "unstructured and N:M sparsity (target='unstructured' or an N:M pattern such as '2:4')"

    target: str = field(default=UNSTRUCTURED_TARGET, metadata=_TARGET_METADATA)
    method: str = field(
        default="sparsegpt",
        metadata={
            "help": "Solver for unstructured and N:M targets: 'magnitude', 'wanda', 'sparsegpt', 'admm', 'obs_multi'."
        },
    )
    mask_scope: str | None = field(
        default=None,
        metadata={
            "help": "Unstructured targets, methods 'sparsegpt' and 'admm': 'row' removes the same number of weights "
            "from every output row (every row ends at exactly `sparsity`); 'layer' ranks the whole layer at once "
            "(same total, uneven rows), as the SparseGPT reference and llm-compressor do within each column block "
            "and the ADMM reference does over the matrix ('block' and 'matrix' are accepted as the old names). None "
            "(default) is 'row', which measured better end to end on SmolLM2-135M at 50% for both methods "
            "(benchmarks/results/quality.md). N:M targets always choose per group of M; setting it for a method "
            "without a scope raises ValueError."
        },
    )
    solver_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": 'Unstructured targets: options of the sparsity solver, e.g. {"refit": "cg", "iterations": 30} '
            'for ADMM or {"refit": "cg"} for obs_multi (each method\'s typed options: SOLVER_OPTIONS in '
            "optimum_prune.configuration). Checked against the method when the config is made; `damp` and "
            "`mask_scope` have their own fields."
        },
    )
    owl_m: float = field(
        default=5.0,
        metadata={
            "help": "allocation='owl': a Wanda score |W_ij| ||X_j|| counts as an outlier above this multiple of its "
            "block's mean score (the paper's M)."
        },
    )
    owl_lambda: float = field(
        default=0.08,
        metadata={
            "help": "allocation='owl': block sparsities span [sparsity - owl_lambda, sparsity + owl_lambda] (the "
            "paper's lambda; 0.08 is its LLaMA setting)."
        },
    )
    max_layer_deviation: float = field(
        default=0.1,
        metadata={
            "help": "allocation='obs' for unstructured targets: the largest difference between a block's sparsity "
            "and `sparsity`."
        },
    )
    module_sparsity: dict[str, float] = field(
        default_factory=dict,
        metadata={
            "help": "Unstructured targets: sparsity per module, keyed by a substring of the module name inside a "
            'block, e.g. {"down_proj": 0.3}. The last matching key wins over layer and global sparsity.'
        },
    )
    modules_to_not_prune: list[str] = field(
        default_factory=lambda: ["lm_head", "embed", "classifier", "qa_outputs", "pooler"],
        metadata={"help": "Module-name substrings that unstructured pruning leaves dense."},
    )
    sequential_targets: list[str] | None = field(
        default=None,
        metadata={
            "help": "Unstructured and N:M targets: the repeated blocks to sparsify, one after the other, as class "
            "names (e.g. 'LlamaDecoderLayer') or 're:<regex>' module-name patterns (llm-compressor's convention). "
            "None uses the model's `_no_split_modules` (as accelerate and llm-compressor do), else its largest "
            "module list."
        },
    )

    def validate(self) -> None:
        from .mask_scope import canonical_mask_scope
        from .sparsity import SPARSITY_METHODS

        super().validate()
        if self.is_structured:
            raise ValueError("SparsityConfig is for target='unstructured' or an N:M pattern, not 'structured'.")
        _known("method", self.method, list(SPARSITY_METHODS))
        if not (isinstance(self.owl_m, (int, float)) and self.owl_m > 0):
            raise ValueError(f"owl_m must be > 0, got {self.owl_m!r}.")
        if not (isinstance(self.owl_lambda, (int, float)) and 0 <= self.owl_lambda < 1):
            raise ValueError(f"owl_lambda must be in [0, 1), got {self.owl_lambda!r}.")
        if not (isinstance(self.max_layer_deviation, (int, float)) and 0 <= self.max_layer_deviation < 1):
            raise ValueError(f"max_layer_deviation must be in [0, 1), got {self.max_layer_deviation!r}.")
        if not isinstance(self.solver_options, Mapping) or "damp" in self.solver_options:
            raise ValueError(
                f"solver_options must be a dict of solver keyword options (not damp), got {self.solver_options!r}."
            )
        if self.mask_scope is not None:
            self.mask_scope = canonical_mask_scope(self.mask_scope)
        if "mask_scope" in self.solver_options:
            scope = canonical_mask_scope(self.solver_options["mask_scope"])
            if self.mask_scope not in (None, scope):
                raise ValueError(
                    f"mask_scope={self.mask_scope!r} and solver_options['mask_scope']={scope!r} disagree; set one."
                )
            self.mask_scope = scope
            self.solver_options = {k: v for k, v in self.solver_options.items() if k != "mask_scope"}
        self.solver_options = solver_options(self.method, self.solver_options)
        if self.sequential_targets is not None:
            if isinstance(self.sequential_targets, str):
                self.sequential_targets = [self.sequential_targets]
            if not self.sequential_targets or not all(isinstance(t, str) and t for t in self.sequential_targets):
                raise ValueError(
                    f"sequential_targets must be a non-empty list of class names or 're:<regex>' patterns, got "
                    f"{self.sequential_targets!r}."
                )
        for name, value in (self.module_sparsity or {}).items():
            if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
                raise ValueError(f"module_sparsity[{name!r}] must be in [0, 1), got {value!r}.")


#: Each method's config by key (as peft's PEFT_TYPE_TO_CONFIG_MAPPING); `config_class` picks the key.
PRUNING_CONFIGS: dict[str, type[PruningConfig]] = {
    "structured": StructuredConfig,
    "layers": DepthConfig,
    "prunenet": PruneNetConfig,
    "sparsity": SparsityConfig,
}
PRUNENET_CRITERIA = ("prunenet", "prunenet_invariant")
#: The fields `config_class` reads.
_DISPATCH_FIELDS = ("target", "criterion", "structures", "recipe")


def config_class(
    target: str = STRUCTURED_TARGET, criterion: str | None = None, structures: Any = None, recipe: str | None = None
) -> type[PruningConfig]:
    """The config class of a run with these settings: 'sparsity' for unstructured and N:M targets; for structured
    ones 'layers' when `structures` names them, 'prunenet' for a PruneNet criterion, else 'structured' (a `recipe`
    fills `criterion` and `structures` where they are left at their defaults, as `PruningConfig(recipe=...)` does)."""
    if target != STRUCTURED_TARGET:
        return PRUNING_CONFIGS["sparsity"]
    from .recipes import RECIPES

    preset = RECIPES.get(recipe, {}) if isinstance(recipe, str) else {}
    defaults = {f.name: _default(f) for f in fields(StructuredConfig)}
    criterion = preset.get("criterion", criterion) if criterion in (None, defaults["criterion"]) else criterion
    structures = preset.get("structures", structures) if structures in (None, defaults["structures"]) else structures
    if "layers" in ([structures] if isinstance(structures, str) else structures or ()):
        return PRUNING_CONFIGS["layers"]
    return PRUNING_CONFIGS["prunenet" if criterion in PRUNENET_CRITERIA else "structured"]


def config_fields() -> list[Any]:
    """Every field of every method's config, each once: the common ones first (the command line's options)."""
    seen: dict[str, Any] = {}
    for cls in (PruningConfig, *PRUNING_CONFIGS.values()):
        for spec in fields(cls):
            seen.setdefault(spec.name, spec)
    return list(seen.values())
