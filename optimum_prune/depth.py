"""Depth pruning (`structures=["layers"]`): remove whole blocks, optionally bridging each gap with a linear map.

Blocks are ranked as ShortGPT does (Men et al. 2024, "ShortGPT: Layers in Large Language Models are More Redundant
Than You Expect"): the block influence BI_i = 1 - E_tokens[cos(h_in, h_out)] of block i on calibration data of the
unpruned model, and the blocks with the lowest BI go. `sparsity` is the fraction of the blocks' prunable parameters
removed, so SmolLM2-135M (30 equal blocks) loses 6 blocks at 20%.

With a reconstruction other than "none", each maximal run of removed blocks is replaced by one `LinearBridge`,
h -> h M^T + c, fitted by ridge-regularised least squares (towards the identity, i.e. towards plain removal) on
the calibration hidden states: the LIAR idea at block scale. "liar" maps the dense model's input of the run to the
dense output of the run; "liar_dense" maps the pruned model's input (after the earlier gaps) to the dense output,
which also corrects the earlier gaps. `config.num_hidden_layers` shrinks to the number of blocks left (bridges
count as blocks); a model with bridges needs the plugin to reload.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence

import torch
from torch import nn

from .allocation import protected_layers
from .architectures import ArchitectureAdapter
from .configuration import PruningConfig
from .pipeline import Block, BlockMethod, Calibration, run_blocks
from .pipeline.layerwise import BlockInput, BlockStreamer
from .planning import PruningResult

logger = logging.getLogger(__name__)


class LinearBridge(nn.Module):
    """Stands in for a run of removed decoder blocks: `hidden_states @ weight.T + bias`, other arguments ignored.

    Returns the hidden states as a decoder block of transformers 5 does (a tensor), so the model's layer loop
    runs it like any block; they are read in the bridge's dtype (Mamba's blocks pass a float32 residual stream
    between bfloat16 blocks). `replaced` records which original blocks it replaces.
    """

    def __init__(
        self,
        hidden_size: int,
        replaced: list[int] | None = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, hidden_size, bias=True, device=device, dtype=dtype)
        self.replaced = list(replaced or [])

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return self.proj(hidden_states.to(self.proj.weight.dtype))


def block_influence(inputs: torch.Tensor, outputs: torch.Tensor) -> float:
    """ShortGPT's BI: 1 - mean over tokens of cos(h_in, h_out); hidden states [..., hidden]."""
    return float(_influence(inputs, outputs))


def _influence(inputs: torch.Tensor, outputs: torch.Tensor) -> torch.Tensor:
    """`block_influence` as a 0-dim float64 tensor where the hidden states are (nothing read back to the host)."""
    cos = nn.functional.cosine_similarity(inputs.double(), outputs.to(inputs.device).double(), dim=-1)
    return 1.0 - cos.mean()


def blocks_to_remove(adapter: ArchitectureAdapter, config: PruningConfig, influence: list[float]) -> list[int]:
    """The lowest-influence blocks whose prunable parameters come closest to `sparsity` of all of them."""
    layers = adapter.layers()
    sizes = [sum(g.num_units * g.params_per_unit for g in adapter.groups(layer)) for layer in layers]
    budget = config.sparsity * sum(sizes)
    protected = protected_layers(config, len(layers))
    order = sorted((i for i in range(len(layers)) if i not in protected), key=lambda i: influence[i])
    removed, chosen = 0.0, []
    for index in order:
        if abs(removed + sizes[index] - budget) >= abs(removed - budget):
            break
        chosen.append(index)
        removed += sizes[index]
    return sorted(chosen)


def _fit_bridge(
    sources: list[torch.Tensor], targets: list[torch.Tensor], damp: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, c) minimising sum ||h_src M^T + c - h_tgt||^2 + lambda ||M - I||^2 (lambda relative, as LIAR's).

    Accumulated and solved in float64 where the hidden states are (the execution device, or the CPU when the
    activations wait there)."""
    hidden = sources[0].shape[-1]
    device = sources[0].device
    gram = torch.zeros(hidden + 1, hidden + 1, dtype=torch.float64, device=device)
    cross = torch.zeros(hidden + 1, hidden, dtype=torch.float64, device=device)
    for source, target in zip(sources, targets):
        x = source.reshape(-1, hidden).to(device=device, dtype=torch.float64)
        x = torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=device)], dim=1)
        y = target.reshape(-1, hidden).to(device=device, dtype=torch.float64)
        gram += x.T @ x
        cross += x.T @ y
    ridge = damp * torch.diagonal(gram[:hidden, :hidden]).mean().clamp_min(1e-12)
    gram[:hidden, :hidden] += ridge * torch.eye(hidden, dtype=gram.dtype, device=device)
    cross[:hidden] += ridge * torch.eye(hidden, dtype=gram.dtype, device=device)
    solution = torch.linalg.solve(gram, cross)
    return solution[:hidden].T, solution[hidden]


def _home_device(layer: nn.Module) -> torch.device:
    """Where `layer`'s weights live outside its turn in the stream; the CPU for an offloaded layer (meta weights)."""
    return next((t.device for t in layer.parameters() if not t.is_meta), torch.device("cpu"))


def _hidden(items) -> list[torch.Tensor]:
    return [item.hidden_states for item in items]


def _check_depth_config(config: PruningConfig) -> None:
    if config.structures is not None and len(config.structures) > 1:
        raise ValueError("structures=['layers'] (depth pruning) cannot be combined with other kinds in one run.")
    if config.reconstruction not in ("none", "liar", "liar_dense"):
        raise ValueError(
            f"Depth pruning bridges removed blocks with reconstruction 'liar' or 'liar_dense', or 'none'; "
            f"got {config.reconstruction!r}."
        )


@torch.no_grad()
def _rank_blocks(
    adapter: ArchitectureAdapter,
    config: PruningConfig,
    samples: list[dict[str, torch.Tensor]] | None,
    streamer: BlockStreamer,
    show_progress: bool,
):
    """(blocks to remove, the calibration streamed): ShortGPT's ranking of the unpruned model, what `plan_depth`
    returns and `prune_depth` goes on with."""
    _check_depth_config(config)
    if not samples:
        raise ValueError("Depth pruning ranks blocks on calibration data, and none was given.")
    layers = adapter.layers()
    config.check_layers(len(layers))
    # Blocks of different kinds (sliding-window / global attention) get their own masks and position embeddings.
    calibration = Calibration.capture(streamer, layers, samples)
    ranking = _BlockInfluence()
    run_blocks(ranking, streamer, layers, calibration, show_progress)
    influence = ranking.influence
    removed = blocks_to_remove(adapter, config, influence)
    logger.info("depth pruning: removing blocks %s (block influence %s)", removed, [round(b, 4) for b in influence])
    return removed, calibration


class _BlockInfluence(BlockMethod):
    """ShortGPT's block influence of every block of the unpruned model, from one pass per block."""

    changes_weights = False
    reads_outputs = True
    description = "Block influence"

    def __init__(self) -> None:
        self.influence: list[float] = []

    def step(self, block: Block, observed: None) -> None:
        pairs = zip(block.inputs, block.outputs)
        # One read per block (the mean over samples), not one per sample.
        self.influence.append(
            float(sum(_influence(a.hidden_states, b.hidden_states) for a, b in pairs) / len(block.inputs))
        )


def plan_depth(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    config: PruningConfig,
    samples: list[dict[str, torch.Tensor]] | None,
    show_progress: bool = False,
    *,
    execution_device: torch.device | str | None = None,
    activations_device: torch.device | str | None = None,
    activations_dir: str | None = None,
) -> list[int]:
    """The original indices of the blocks a `prune_depth` run removes (the same ranking); nothing is changed."""
    streamer = BlockStreamer(model, execution_device, activations_device, activations_dir)
    return _rank_blocks(adapter, config, samples, streamer, show_progress)[0]


@torch.no_grad()
def consecutive_runs(indices: list[int]) -> list[list[int]]:
    """Sorted block indices grouped into runs of neighbours: [2, 3, 7] -> [[2, 3], [7]] (one bridge per run)."""
    runs: list[list[int]] = []
    for index in indices:
        if runs and runs[-1][-1] == index - 1:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def prune_depth(
    model: nn.Module,
    adapter: ArchitectureAdapter,
    config: PruningConfig,
    samples: list[dict[str, torch.Tensor]] | None,
    streamer: BlockStreamer,
    show_progress: bool = True,
) -> PruningResult:
    """Remove blocks from `model` in place (see the module docstring); the result has one empty dict per block
    left."""
    removed, calibration = _rank_blocks(adapter, config, samples, streamer, show_progress)
    layers = adapter.layers()
    runs = consecutive_runs(removed)
    bridges: dict[int, LinearBridge] = {}
    if config.reconstruction != "none" and runs:
        # The bridge lives where the block it replaces lives between turns (an offloaded block's meta weights: the
        # CPU), read before the stream materialises the block on its execution device.
        homes = {run[0]: _home_device(layers[run[0]]) for run in runs}
        from_pruned = config.reconstruction == "liar_dense"
        fitting = _FitBridges(
            model.config.hidden_size, runs, from_pruned, config.damp, calibration.first_inputs, homes
        )
        run_blocks(fitting, streamer, layers, calibration, show_progress)
        bridges = fitting.bridges
    gone = set(removed)
    new_layers: list[nn.Module] = []
    origins: list[int] = []
    for index, layer in enumerate(layers):
        if index in bridges:
            new_layers.append(bridges[index])
        elif index not in gone:
            new_layers.append(layer)
        else:
            continue
        origins.append(index)
    _replace_layers(model, adapter.layers(), new_layers, origins)
    return PruningResult(kept_units=[{} for _ in adapter.layers()])


class _FitBridges(BlockMethod):
    """One pass through the unpruned blocks that fits a `LinearBridge` over each run of removed blocks.

    The pipeline streams the dense model; this method carries the pruned model's stream beside it (through the
    kept blocks and the bridges fitted so far), which "liar_dense" maps from (`from_pruned`).
    """

    changes_weights = False
    reads_outputs = True
    description = "Fitting bridges"

    def __init__(
        self,
        hidden_size: int,
        runs: list[list[int]],
        from_pruned: bool,
        damp: float,
        first_inputs: Sequence[BlockInput],
        homes: dict[int, torch.device] | None = None,
    ) -> None:
        self.hidden_size, self.from_pruned, self.damp = hidden_size, from_pruned, damp
        self.homes = homes or {}  # run start -> the device its bridge is created on
        self.run_of = {index: run for run in runs for index in run}
        self.pruned: Sequence[BlockInput] = first_inputs
        self.run_inputs: Sequence[BlockInput] | None = None  # the dense input of the run being crossed
        self.run_dtype = torch.float32
        self.bridges: dict[int, LinearBridge] = {}

    def step(self, block: Block, observed: None) -> None:
        run = self.run_of.get(block.index)
        if run is None:  # a kept block: the pruned stream runs through it
            if not block.is_last:
                self.pruned = block.run(inputs=block.bind(self.pruned))
            return
        if block.index == run[0]:
            self.run_inputs = block.inputs
            # The bridge computes in the dtype of the first block it replaces: its input norm's, else its weights'
            # (what `layout.apply_layout` rebuilds it in on reload). Not the stream's: Mamba's blocks keep the
            # residual stream in float32 (`residual_in_fp32`) whatever their weights' dtype.
            norm = getattr(block.module, "input_layernorm", None)
            reference = norm.weight if norm is not None else next(block.module.parameters(), None)
            self.run_dtype = reference.dtype if reference is not None else torch.float32
        if block.index != run[-1]:
            return
        source = self.pruned if self.from_pruned else self.run_inputs
        weight, bias = _fit_bridge(_hidden(source), _hidden(block.outputs), self.damp)
        dtype = self.run_dtype
        home = self.homes.get(run[0], torch.device("cpu"))
        bridge = LinearBridge(self.hidden_size, replaced=run, device=home, dtype=dtype)
        bridge.proj.weight.data.copy_(weight.to(dtype))
        bridge.proj.bias.data.copy_(bias.to(dtype))
        self.bridges[run[0]] = bridge
        # The bridged stream is computed where its hidden states wait (not where the bridge lives).
        self.pruned = [
            BlockInput(
                nn.functional.linear(
                    item.hidden_states.to(dtype),
                    weight.to(item.hidden_states.device, dtype),
                    bias.to(item.hidden_states.device, dtype),
                ),
                item.args,
                item.kwargs,
            )
            for item in self.pruned
        ]


def _replace_layers(model: nn.Module, layers: nn.ModuleList, new_layers: list[nn.Module], origins: list[int]) -> None:
    """Install the shortened block list; renumber the cache slots and shrink the config to match.

    `layers` is the model's block list, refilled in place wherever the family keeps it (OPT: `decoder.layers`).
    `origins[i]` is the original index of new block i (for a bridge, the first block it replaces).
    """
    config = model.config
    old_count = len(layers)
    # Read before `num_hidden_layers` changes: some configs (Mamba, FalconMamba, Mamba2) derive `layer_types` from it.
    layer_types = getattr(config, "layer_types", None)
    new_types = None
    if isinstance(layer_types, list) and len(layer_types) == old_count:
        new_types = [layer_types[i] for i in origins]
    derived = new_types is not None and not _settable(config, "layer_types")
    if derived:
        # A read-only property follows the config's other fields: it must come out as the kept blocks' kinds.
        config.num_hidden_layers = len(new_layers)
        follows = list(config.layer_types) == new_types
        if not follows:
            config.num_hidden_layers = old_count
            raise ValueError(
                f"{type(config).__name__} derives `layer_types` from other fields and cannot describe the blocks "
                f"left ({new_types}): this family cannot be depth-pruned."
            )
    del layers[:]
    layers.extend(new_layers)
    for position, layer in enumerate(new_layers):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = position  # KV-cache slot
    config.num_hidden_layers = len(new_layers)
    if new_types is not None and not derived:
        config.layer_types = new_types


def _settable(obj: object, name: str) -> bool:
    """Whether `obj.name = value` can be written (false for a property without a setter, such as
    `MambaConfig.layer_types`, which is `["linear_attention"] * num_hidden_layers`)."""
    attribute = inspect.getattr_static(type(obj), name, None)
    return not (isinstance(attribute, property) and attribute.fset is None)
