"""PruneNet with a rotation-invariant policy (`criterion="prunenet_invariant"`): this package's variant.

PruneNet (Sengupta et al., ICLR 2025, "You Only Prune Once") learns, from the weights alone, which channels to keep.
`criterion="prunenet"` (`optimum_prune.criteria.prunenet`) is the reference implementation's policy; this module is the
variant this package had first, kept under its own name. For every FFN group (and Mamba's inner channels) the policy
reads the rows of the matrix that produces the channels (LLaMA `gate_proj`, BERT `intermediate.dense`, the x half of
Mamba's `in_proj`) and gives each channel a keep logit. While it learns, channels are drawn without replacement from
those logits (Plackett-Luce, by Gumbel-top-k) and the reward is how well the kept rows preserve the matrix's spectrum:
1 / the Kolmogorov-Smirnov distance between the singular values of the kept rows and those of the whole matrix.
REINFORCE trains it; no calibration data is read.

Where this differs from the reference implementation, and why:

- The reference policy (`prunenet`) projects the raw rows (a Linear(hidden, intermediate) and a learnt vector), which
  ties it to one matrix shape. The spectrum is unchanged by any rotation of the input space, so this policy reads rotation-
  invariant per-row features instead (log row norm; log leverage in the top 100%, 50% and 12.5% of the singular
  subspace), standardised within the layer. One small MLP then serves every layer, every layer size, and a model
  that an earlier run already pruned.
- The log-probability of a draw is the exact Plackett-Luce log-probability of the drawn order, and the baseline is
  the mean reward of the layer's other draws in the episode (the reference uses no baseline and discounts rewards
  over layers, which are independent decisions).
- Pruning keeps the channels with the top-k logits (the policy's mode) rather than drawing once more, so a given
  policy always prunes the same way, at any compression ratio: a saved policy is reused without retraining.

Measured limit (benchmarks/results/ffn_criteria.md, ffn_scores.md): on SmolLM2-135M the policy ranks FFN channels
worse than chance (20% of FFN channels, no refit: perplexity 4,260 vs 170 for a random choice and 27.7 for the
activation criterion). No per-row weight statistic tried there tracks how much output a channel carries in that
model; the policy faithfully keeps the spectrum of gate_proj, which is not what the next layer needs. Prefer
`activation` with real text when any is available.

Attention heads are not scored by the policy (the authors report that slicing attention this way hurts): they fall
back to `magnitude` (squared norm of the consumer columns), which needs no data either.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..pipeline.statistics import InputStatistics
from .base import Criterion
from .magnitude import MAGNITUDE
from .prunenet import POLICY_FORMAT as REFERENCE_POLICY_FORMAT
from .prunenet import (
    POLICY_KINDS,
    POLICY_METADATA_KEY,
    check_policy_fits_offloaded,
    ks_distance,
    read_policy_settings,
    sample_without_replacement,
    singular_values,
    train_from_config,
    training_matrices,
)

if TYPE_CHECKING:
    from ..architectures import ArchitectureAdapter, UnitGroup
    from ..configuration import PruningConfig

logger = logging.getLogger(__name__)

#: Fractions (by rank) of the singular subspace in which each row's leverage is a feature.
LEVERAGE_FRACTIONS = (1.0, 0.5, 0.125)
FEATURE_NAMES = ("log_row_norm", *(f"log_leverage_top_{fraction:g}" for fraction in LEVERAGE_FRACTIONS))
#: Draws per layer and episode: the others' mean reward is each draw's baseline.
SAMPLES_PER_LAYER = 4
#: The KS distance is floored here so the reward of a (near) perfect draw stays finite.
MIN_DISTANCE = 1e-3
POLICY_FORMAT = "optimum-prune/prunenet-policy/1"
#: Adam learning rate when `PruningConfig.prunenet_learning_rate` is None.
DEFAULT_LEARNING_RATE = 0.01


# ---- features and reward ------------------------------------------------------------------------------------------
@torch.no_grad()
def channel_features(weight: torch.Tensor) -> torch.Tensor:
    """Per-row features of a producer matrix `[rows, in]`, standardised over its rows: `[rows, F]` float32 on CPU."""
    w = weight.detach().double()
    eigenvalues, eigenvectors = torch.linalg.eigh(w.T @ w)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    rank = int((eigenvalues > eigenvalues[0].clamp_min(1e-300) * 1e-12).sum())
    # Rows of U from the SVD W = U S V^T, computed through the small Gram matrix: U = W V S^-1.
    left = (w @ eigenvectors[:, :rank]) / eigenvalues[:rank].sqrt()
    energy = left.pow(2)
    columns = [w.norm(dim=1).clamp_min(1e-30).log()]
    for fraction in LEVERAGE_FRACTIONS:
        top = max(1, round(fraction * rank))
        columns.append(energy[:, :top].sum(1).clamp_min(1e-30).log())
    features = torch.stack(columns, 1)
    std = features.std(0) if features.shape[0] > 1 else torch.zeros(features.shape[1], dtype=features.dtype)
    standardised = (features - features.mean(0)) / std.clamp_min(1e-12)
    # A feature that is the same for every row (e.g. full-rank leverage of a wide matrix) carries no information.
    standardised[:, std < 1e-6] = 0.0
    return standardised.float().cpu()


def spectral_reward(weight: torch.Tensor, keep: torch.Tensor, reference: torch.Tensor | None = None) -> float:
    """1 / KS distance between the singular values of `weight[keep]` and of `weight` (`reference`, if precomputed)."""
    if reference is None:
        reference = singular_values(weight)
    distance = float(ks_distance(reference, singular_values(weight, keep)).cpu())
    return 1.0 / max(distance, MIN_DISTANCE)


# ---- policy ---------------------------------------------------------------------------------------------------------
class PolicyNetwork(nn.Module):
    """Two-layer MLP from a channel's features to its keep logit, shared by every layer."""

    def __init__(
        self, num_features: int = len(FEATURE_NAMES), hidden_size: int = 16, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        self.hidden = nn.Linear(num_features, hidden_size)
        self.output = nn.Linear(hidden_size, 1)
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        with torch.no_grad():
            # A small output layer starts the policy close to uniform, so the first episodes explore.
            for linear, gain in ((self.hidden, 1.0), (self.output, 0.1)):
                bound = gain / math.sqrt(linear.in_features)
                linear.weight.uniform_(-bound, bound, generator=generator)
                linear.bias.zero_()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Keep logits `[rows]` for features `[rows, F]`."""
        return self.output(torch.tanh(self.hidden(features))).squeeze(-1)


def plackett_luce_log_prob(logits: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """Log-probability of drawing `order` (in that order, without replacement) from softmax(logits)."""
    chosen = logits[order]
    left_out = torch.ones_like(logits, dtype=torch.bool)
    left_out[order] = False
    rest = torch.logsumexp(logits[left_out], 0) if left_out.any() else logits.new_tensor(-math.inf)
    # Before draw j the pool holds the not-yet-drawn chosen channels (j..end) and the ones never drawn.
    pool = torch.logaddexp(torch.logcumsumexp(chosen.flip(0), 0).flip(0), rest)
    return (chosen - pool).sum()


# ---- the criterion --------------------------------------------------------------------------------------------------
class InvariantPruneNet(Criterion):
    """Calibration-free criterion: a REINFORCE-trained policy scores channels from the producer weights.

    The registered instance holds no policy; `prepare` returns a new one holding a trained (or loaded) policy.

    Example:
        >>> config = PruningConfig(criterion="prunenet_invariant", reconstruction="none", sparsity=0.3, prunenet_episodes=20)
        >>> PrunerForCausalLM(model, tokenizer).prune(config)
    """

    name = "prunenet_invariant"
    needs_calibration = False

    def __init__(self, policy: PolicyNetwork | None = None, settings: dict[str, Any] | None = None) -> None:
        self.policy = policy
        self.settings: dict[str, Any] = dict(settings or {})
        #: Mean reward over the layers' draws, per training episode.
        self.history: list[float] = list(self.settings.get("reward_history", []))
        #: Optimizer steps taken by this instance (0 for a loaded policy).
        self.training_steps = 0

    @classmethod
    def untrained(cls, seed: int = 0, hidden_size: int = 16) -> InvariantPruneNet:
        """A fresh policy, initialised from `seed` alone."""
        policy = PolicyNetwork(hidden_size=hidden_size, generator=torch.Generator().manual_seed(seed))
        return cls(policy, {"hidden_size": hidden_size, "seed": seed})

    # ---- Criterion API ------------------------------------------------------------------------------------------
    def check_offloaded(self, config: PruningConfig) -> None:
        check_policy_fits_offloaded(config)

    def prepare(
        self,
        adapter: ArchitectureAdapter,
        config: PruningConfig,
        show_progress: bool = True,
        samples: list[dict[str, torch.Tensor]] | None = None,
    ) -> InvariantPruneNet:
        """Load `config.prunenet_policy_path`, or train a policy on this model's weights; save it if asked."""
        if config.prunenet_policy_path:
            criterion = InvariantPruneNet.load_policy(config.prunenet_policy_path)
            logger.info("PruneNet: reusing the policy in %s, no training", config.prunenet_policy_path)
        else:
            criterion = InvariantPruneNet.untrained(seed=config.seed)
            matrices = training_matrices(adapter, config)
            train_from_config(criterion, matrices, config, DEFAULT_LEARNING_RATE, show_progress)
        if config.prunenet_save_policy:
            criterion.save_policy(config.prunenet_save_policy)
        return criterion

    def score_units(
        self,
        adapter: ArchitectureAdapter,
        layer: nn.Module,
        group: UnitGroup,
        stats: dict[str, InputStatistics] | None,
        generator: torch.Generator,
    ) -> torch.Tensor:
        """Policy logits for FFN / Mamba inner channels; `magnitude` scores for attention heads."""
        if group.kind not in POLICY_KINDS:
            return MAGNITUDE.score_units(adapter, layer, group, None, generator)
        weight = adapter.producer_weight(layer, group)
        scores = self.channel_scores(weight).to(weight.device)
        return scores.reshape(group.num_units, group.channels_per_unit).sum(1)

    # ---- policy -------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def channel_scores(self, weight: torch.Tensor) -> torch.Tensor:
        """Keep logits (float64, CPU) of the rows of a producer matrix; higher = keep."""
        if self.policy is None:
            raise RuntimeError("This PruneNet criterion has no policy: use prepare(), untrained() or load_policy().")
        self.policy.eval()
        return self.policy(channel_features(weight)).double()

    def train(
        self,
        matrices: Sequence[torch.Tensor],
        *,
        episodes: int,
        learning_rate: float,
        sparsity: float,
        seed: int = 0,
        samples_per_layer: int = SAMPLES_PER_LAYER,
        show_progress: bool = True,
    ) -> list[float]:
        """REINFORCE on producer matrices: each episode draws `samples_per_layer` keep sets per matrix at
        `sparsity` (fraction of rows removed), and steps once per matrix. Returns the mean reward per episode."""
        if self.policy is None:
            raise RuntimeError("No policy to train: build one with InvariantPruneNet.untrained().")
        if samples_per_layer < 2:
            raise ValueError("samples_per_layer must be >= 2: each draw's baseline is the others' mean reward.")
        generator = torch.Generator().manual_seed(seed)
        features = [channel_features(w) for w in matrices]
        references = [singular_values(w) for w in matrices]
        optimizer = torch.optim.Adam(self.policy.parameters(), lr=learning_rate)
        self.policy.train()
        for _ in tqdm(range(episodes), desc="PruneNet policy", disable=not show_progress):
            episode_rewards = []
            for weight, layer_features, reference in zip(matrices, features, references):
                rows = weight.shape[0]
                keep_count = min(max(round((1.0 - sparsity) * rows), 1), rows - 1)
                with torch.enable_grad():
                    logits = self.policy(layer_features)
                    orders = [
                        sample_without_replacement(logits, keep_count, generator) for _ in range(samples_per_layer)
                    ]
                    rewards = torch.tensor(
                        [spectral_reward(weight, o, reference) for o in orders], dtype=torch.float64
                    )
                    baseline = (rewards.sum() - rewards) / (samples_per_layer - 1)
                    # Per-layer scaling: layers differ in how hard their spectrum is to keep, not in importance.
                    advantage = ((rewards - baseline) / rewards.std().clamp_min(1e-12)).float()
                    log_probs = torch.stack([plackett_luce_log_prob(logits, o) for o in orders])
                    loss = -(advantage * log_probs).mean() / keep_count
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                self.training_steps += 1
                episode_rewards.append(float(rewards.mean()))
            self.history.append(sum(episode_rewards) / len(episode_rewards))
        self.policy.eval()
        self.settings.update(
            episodes=self.settings.get("episodes", 0) + episodes,
            learning_rate=learning_rate,
            train_sparsity=sparsity,
            samples_per_layer=samples_per_layer,
            reward_history=self.history,
        )
        return self.history

    # ---- persistence --------------------------------------------------------------------------------------------
    def save_policy(self, path: str | os.PathLike) -> None:
        """Write the policy to one safetensors file; its settings go in the file's metadata as JSON."""
        if self.policy is None:
            raise RuntimeError("No policy to save.")
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        settings = {**self.settings, "format": POLICY_FORMAT, "features": list(FEATURE_NAMES)}
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in self.policy.state_dict().items()}
        save_file(tensors, path, metadata={POLICY_METADATA_KEY: json.dumps(settings, sort_keys=True)})

    @classmethod
    def load_policy(cls, path: str | os.PathLike) -> InvariantPruneNet:
        """Read a policy written by `save_policy`; it scores channels at any compression ratio without training."""
        path = os.fspath(path)
        settings = read_policy_settings(path)
        if settings.get("format") == REFERENCE_POLICY_FORMAT:
            raise ValueError(
                f"{path!r} holds a policy of criterion='prunenet' (the reference implementation's); load it with "
                "criterion='prunenet', or train a 'prunenet_invariant' policy."
            )
        if settings.get("format") != POLICY_FORMAT or settings.get("features") != list(FEATURE_NAMES):
            raise ValueError(
                f"{path!r} holds a PruneNet policy of format {settings.get('format')!r} with features "
                f"{settings.get('features')}; this version reads {POLICY_FORMAT!r} with {list(FEATURE_NAMES)}."
            )
        policy = PolicyNetwork(hidden_size=int(settings["hidden_size"]))
        policy.load_state_dict(load_file(path))
        policy.eval()
        return cls(policy, settings)


PRUNENET_INVARIANT = InvariantPruneNet()
