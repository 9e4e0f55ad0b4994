"""PruneNet as its reference implementation does it (`criterion="prunenet"`, `recipe="prunenet"`).

Sengupta, Chaudhary and Chakraborty, "You Only Prune Once: Designing Calibration-Free Model Compression With Policy
Learning", ICLR 2025; reference implementation github.com/LCS2-IIITD/PruneNet (`experiments/prunenet.py`,
`experiments/prunenet_utils.py`, `prunenet/SparsityPredictor.py`). No calibration data is read.

The policy (the reference's `SparsityPredictor`) reads the raw rows of the matrix that produces the FFN channels
(LLaMA `gate_proj`, BERT `intermediate.dense`, OPT `fc1`; here also the x half of Mamba's `in_proj`),
`W: [rows, in]`, and maps them linearly to one keep logit per row:

    z = (W P^T + b) v            P: [rows, in], b: [rows] (a Linear(in, rows)), v: [rows]
    alpha = sigmoid(z)
    p = sigmoid(logit(u) + logit(alpha)),  u ~ Uniform(0, 1) per row   (a relaxed Bernoulli draw, temperature 1)

and `int((1 - r) * rows)` rows are drawn without replacement with probability proportional to `p`
(`torch.multinomial(p, k, replacement=False)`). A layer's reward is 1 / the two-sample Kolmogorov-Smirnov distance
between the singular values of the kept rows and those of the whole matrix (99999 when the distance is 0). In an
episode every layer is drawn in order, then layer `i`'s reward is discounted to `0.99**i * reward_i` and each layer
takes one AdamW step (learning rate 1e-3, weight decay 0.01) on `-sum(log p[kept]) * discounted reward_i`, with `p`
drawn afresh. The policy of the episode with the largest total reward is the one kept and saved. Pruning draws once
more from it, so the kept channels are a sample, not the most likely set.

What differs from the reference, and why:

- Randomness comes from the run's seeded generators, not the global RNG: training from one seeded with
  `PruningConfig.seed`, pruning from the pruner's generator (the one the `random` criterion uses), so one seed and one
  policy give one plan, and a saved policy prunes exactly as the run that trained it. The draw without replacement is
  done as the top-k of `log p + Gumbel noise`, which has the distribution of `torch.multinomial(p, k, replacement=False)`
  and lets the allocation take any `k` from one set of scores.
- `log p` is computed as `logsigmoid(logit(u) + z)`, the same value as the reference's expression (`logit(alpha)` is
  `z`) without its saturation to `log 0` in float16; no autocast or grad scaler (CPU float32, float64 for the SVD).
- The reference calls `clip_grad_norm_` after `zero_grad`, which clips nothing; nothing is clipped here either. Its
  optional KL term (`--use_kld`, off by default) is not offered.
- The reference builds one predictor for `config.intermediate_size` and refuses other shapes. Here each distinct
  producer shape in the run (an FFN and a Mamba mixer, or layers an earlier run left at other widths) gets its own
  predictor, trained on the layers of that shape; the discount still follows the layer order of the whole model.
- How many channels each layer keeps is the allocation's (`uniform` by default: the same fraction in every layer,
  with `round_to`), not the reference's `int((1 - r) * rows)`; training draws `int((1 - r) * rows)` as it does.
- The policy file is safetensors with the settings in its metadata (the reference saves a torch state dict).

Attention heads are not scored by the policy (the reference slices only the FFN; its authors report that slicing
attention this way hurts): they fall back to `magnitude`, which needs no data either. The earlier, rotation-invariant
policy of this package is `criterion="prunenet_invariant"` (`optimum_prune.criteria.prunenet_invariant`).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from ..pipeline.statistics import InputStatistics
from .base import Criterion
from .magnitude import MAGNITUDE

if TYPE_CHECKING:
    from ..architectures import ArchitectureAdapter, UnitGroup
    from ..configuration import PruningConfig

logger = logging.getLogger(__name__)

#: Unit kinds the policy scores; other kinds fall back to `magnitude`.
POLICY_KINDS = ("ffn_channels", "mamba_inner")
#: The reference's reward discount per layer (`_discount_rewards(rewards, gamma=0.99)`).
DISCOUNT = 0.99
#: The reference's reward for a KS distance of exactly 0.
ZERO_DISTANCE_REWARD = 99999.0
#: The reference's AdamW learning rate (`--learning_rate_action`), used when `prunenet_learning_rate` is None.
DEFAULT_LEARNING_RATE = 1e-3
POLICY_FORMAT = "optimum-prune/prunenet-reference-policy/1"
#: The safetensors metadata key under which both PruneNet criteria store a policy's settings (JSON).
POLICY_METADATA_KEY = "prunenet"


# ---- spectrum and sampling (shared with prunenet_invariant) ---------------------------------------------------------
@torch.no_grad()
def singular_values(weight: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Singular values of `weight` (or of its `rows`), ascending, in float64."""
    w = weight.detach().double()
    if rows is not None:
        w = w.index_select(0, rows.to(w.device))
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    return torch.linalg.eigvalsh(gram).clamp_min(0.0).sqrt()


def ks_distance(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Two-sample Kolmogorov-Smirnov statistic of two ascending 1-D samples (scipy's `ks_2samp(...).statistic`)."""
    points = torch.cat([first, second])
    cdf_first = torch.searchsorted(first.contiguous(), points, right=True).double() / first.numel()
    cdf_second = torch.searchsorted(second.contiguous(), points, right=True).double() / second.numel()
    return (cdf_first - cdf_second).abs().max()


def sample_without_replacement(logits: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """`count` indices drawn one at a time, each with probability softmax(logits) over those left, in draw order.

    Gumbel-top-k: the top `count` of logits + Gumbel noise are exactly such a sequential draw. With `logits = log p`
    it is `torch.multinomial(p, count, replacement=False)`.
    """
    return torch.topk(logits.detach().double() + gumbel_noise(logits.shape, generator), count).indices


def gumbel_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Standard Gumbel draws, float64 on CPU."""
    uniform = torch.rand(shape, generator=generator, dtype=torch.float64).clamp_min(1e-300)
    return -torch.log(-torch.log(uniform))


def train_from_config(
    criterion: Any,
    matrices: list[torch.Tensor],
    config: PruningConfig,
    default_learning_rate: float,
    show_progress: bool,
) -> None:
    """Train `criterion`'s policy (either PruneNet variant) on `matrices` with the config's PruneNet fields: the
    training sparsity defaults to the run's (0.5 for a run without one), the learning rate to the variant's own."""
    if not matrices:
        return
    sparsity = config.prunenet_train_sparsity
    if sparsity is None:
        sparsity = config.sparsity if config.sparsity > 0 else 0.5
    criterion.train(
        matrices,
        episodes=config.prunenet_episodes,
        learning_rate=config.prunenet_learning_rate or default_learning_rate,
        sparsity=sparsity,
        seed=config.seed,
        show_progress=show_progress,
    )


def check_policy_fits_offloaded(config: PruningConfig) -> None:
    """ValueError for training a policy on an offloaded model: training reads every layer's weights at once."""
    if not config.prunenet_policy_path:
        raise ValueError(
            f"criterion={config.criterion!r} trains its policy on all layers' weights at once, which an offloaded "
            "model does not hold in memory: train it on a model that fits (prunenet_save_policy=...) and pass "
            "prunenet_policy_path=..., or load the model without offloading."
        )


def read_policy_settings(path: str) -> dict[str, Any]:
    """The settings stored in the PruneNet policy file at `path` (either criterion's); FileNotFoundError without a
    file, ValueError for a safetensors file that holds no policy."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No PruneNet policy at {path!r} (write one with prunenet_save_policy).")
    with safe_open(path, framework="pt") as handle:
        metadata = handle.metadata() or {}
    if POLICY_METADATA_KEY not in metadata:
        raise ValueError(f"{path!r} is not a PruneNet policy file (no {POLICY_METADATA_KEY!r} metadata).")
    return json.loads(metadata[POLICY_METADATA_KEY])


def training_matrices(adapter: ArchitectureAdapter, config: PruningConfig) -> list[torch.Tensor]:
    """The producer matrices of every group the policy will score in this run, in layer order (views, not copies)."""
    kinds = [k for k in (config.structures or adapter.structure_kinds) if k in POLICY_KINDS]
    return [
        adapter.producer_weight(layer, group).detach()
        for layer in adapter.layers()
        for group in adapter.groups(layer)
        if group.kind in kinds
    ]


def spectral_reward(weight: torch.Tensor, keep: torch.Tensor, reference: torch.Tensor | None = None) -> float:
    """The reference's reward: 1 / KS distance between the singular values of `weight[keep]` and of `weight`
    (`reference`, if precomputed); `ZERO_DISTANCE_REWARD` when the distance is 0."""
    if reference is None:
        reference = singular_values(weight)
    distance = float(ks_distance(reference, singular_values(weight, keep)).cpu())
    return ZERO_DISTANCE_REWARD if distance == 0.0 else 1.0 / distance


def discounted_rewards(rewards: Sequence[float], discount: float = DISCOUNT) -> list[float]:
    """Layer `i`'s reward times `discount**i`, as the reference's `_discount_rewards` (no sum over later layers)."""
    return [discount**index * reward for index, reward in enumerate(rewards)]


def shape_key(weight: torch.Tensor) -> str:
    """The name a predictor is stored under: `"{rows}x{in_features}"` of the producer matrices it reads."""
    return f"{weight.shape[0]}x{weight.shape[1]}"


# ---- policy ---------------------------------------------------------------------------------------------------------
class SparsityPredictor(nn.Module):
    """The reference's policy for producer matrices of one shape `[rows, in_features]`: a linear map of the raw rows.

    `logits(W) = (W P^T + b) v`, `[rows]`; `keep_probabilities` adds the reference's relaxed-Bernoulli noise.
    Initialised as the reference's: `P`, `b` as `nn.Linear(in_features, rows)` does, `v ~ Uniform(0, 1)`.
    """

    def __init__(self, rows: int, in_features: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.rows, self.in_features = rows, in_features
        self.proj_intermediate = nn.Linear(in_features, rows, bias=True)
        self.row_sparsities = nn.Parameter(torch.empty(rows, 1))
        generator = generator if generator is not None else torch.Generator().manual_seed(0)
        with torch.no_grad():
            # nn.Linear's default init bound (kaiming_uniform with a=sqrt(5)) for weight and bias, from a seed.
            bound = 1.0 / math.sqrt(in_features)
            self.proj_intermediate.weight.uniform_(-bound, bound, generator=generator)
            self.proj_intermediate.bias.uniform_(-bound, bound, generator=generator)
            self.row_sparsities.uniform_(0.0, 1.0, generator=generator)

    def logits(self, weight: torch.Tensor) -> torch.Tensor:
        """`logit(alpha)` of every row of `weight` `[rows, in_features]`: `[rows]` float32."""
        if tuple(weight.shape) != (self.rows, self.in_features):
            raise ValueError(
                f"This PruneNet predictor reads [{self.rows}, {self.in_features}] matrices, got {list(weight.shape)}."
            )
        return (self.proj_intermediate(weight.detach().float()) @ self.row_sparsities).squeeze(-1)

    def log_keep_probabilities(self, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`log p` with `p = sigmoid(logit(u) + logit(alpha))`, `u ~ Uniform(0, 1)` drawn from `generator`: `[rows]`."""
        logits = self.logits(weight)
        uniform = torch.rand(logits.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1.0 - 1e-12)
        noise = (torch.log(uniform) - torch.log1p(-uniform)).to(logits.dtype)
        return F.logsigmoid(noise + logits)


# ---- the criterion --------------------------------------------------------------------------------------------------
class PruneNet(Criterion):
    """Calibration-free criterion: the reference PruneNet policy, trained by REINFORCE on the producer weights.

    The registered instance holds no policy; `prepare` returns a new one holding a trained (or loaded) policy.
    Scores are `log p + Gumbel noise` per channel, so the top-k a plan keeps is a draw without replacement with
    probability proportional to `p`, as the reference prunes; the noise comes from the generator the pruner passes.

    Example:
        >>> config = PruningConfig(recipe="prunenet", sparsity=0.3)  # FFN channels, no refit, 20 episodes
        >>> PrunerForCausalLM(model, tokenizer).prune(config)
    """

    name = "prunenet"
    needs_calibration = False

    def __init__(self, predictors: dict[str, SparsityPredictor] | None = None, settings: dict[str, Any] | None = None):
        self.predictors = nn.ModuleDict(predictors or {})
        self.settings: dict[str, Any] = dict(settings or {})
        #: Total reward over the layers, per training episode.
        self.history: list[float] = list(self.settings.get("reward_history", []))
        #: The last training episode: per layer, the kept rows, the reward and the discounted reward.
        self.last_episode: dict[str, list[Any]] = {}
        #: Optimizer steps taken by this instance (0 for a loaded policy).
        self.training_steps = 0

    @classmethod
    def untrained(cls, matrices: Sequence[torch.Tensor], seed: int = 0) -> PruneNet:
        """Fresh predictors, one per distinct shape of `matrices`, initialised from `seed` alone."""
        generator = torch.Generator().manual_seed(seed)
        predictors: dict[str, SparsityPredictor] = {}
        for weight in matrices:
            key = shape_key(weight)
            if key not in predictors:
                predictors[key] = SparsityPredictor(weight.shape[0], weight.shape[1], generator)
        return cls(predictors, {"seed": seed, "shapes": list(predictors)})

    # ---- Criterion API ------------------------------------------------------------------------------------------
    def check_offloaded(self, config: PruningConfig) -> None:
        check_policy_fits_offloaded(config)

    def prepare(
        self,
        adapter: ArchitectureAdapter,
        config: PruningConfig,
        show_progress: bool = True,
        samples: list[dict[str, torch.Tensor]] | None = None,
    ) -> PruneNet:
        """Load `config.prunenet_policy_path`, or train a policy on this model's weights; save it if asked.

        Raises:
            ValueError: when a loaded policy has no predictor for the shape of a matrix this run scores.
        """
        matrices = training_matrices(adapter, config)
        if config.prunenet_policy_path:
            criterion = PruneNet.load_policy(config.prunenet_policy_path)
            missing = sorted({shape_key(w) for w in matrices} - set(criterion.predictors))
            if missing:
                raise ValueError(
                    f"The PruneNet policy in {config.prunenet_policy_path!r} reads producer matrices of shape "
                    f"{sorted(criterion.predictors)} (rows x in_features); this model also has {missing}. The "
                    "reference policy is tied to one shape: train one on this model (no prunenet_policy_path)."
                )
            logger.info("PruneNet: reusing the policy in %s, no training", config.prunenet_policy_path)
        else:
            criterion = PruneNet.untrained(matrices, seed=config.seed)
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
        """`log p` + Gumbel noise per FFN / Mamba inner channel (a unit of several channels: log of their mean `p`);
        `magnitude` scores for attention heads. Higher is kept first."""
        if group.kind not in POLICY_KINDS:
            return MAGNITUDE.score_units(adapter, layer, group, None, generator)
        weight = adapter.producer_weight(layer, group)
        log_p = self.log_keep_probabilities(weight, generator)
        channels = group.unit_channels(torch.arange(group.num_units))
        unit_log_p = log_p[channels.cpu()].reshape(group.num_units, group.channels_per_unit)
        unit_log_p = torch.logsumexp(unit_log_p, 1) - math.log(group.channels_per_unit)
        return (unit_log_p + gumbel_noise(unit_log_p.shape, generator)).to(weight.device)

    # ---- policy -------------------------------------------------------------------------------------------------
    def predictor_for(self, weight: torch.Tensor) -> SparsityPredictor:
        """The predictor of `weight`'s shape."""
        key = shape_key(weight)
        if key not in self.predictors:
            raise ValueError(
                f"This PruneNet policy has predictors for {sorted(self.predictors)} (rows x in_features), not {key}."
            )
        return self.predictors[key]  # type: ignore[return-value]

    @torch.no_grad()
    def log_keep_probabilities(self, weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`log p` (float64, CPU) of the rows of a producer matrix, with fresh relaxed-Bernoulli noise."""
        predictor = self.predictor_for(weight)
        predictor.eval()
        return predictor.log_keep_probabilities(weight.detach().cpu(), generator).double()

    def train(
        self,
        matrices: Sequence[torch.Tensor],
        *,
        episodes: int,
        learning_rate: float,
        sparsity: float,
        seed: int = 0,
        discount: float = DISCOUNT,
        show_progress: bool = True,
    ) -> list[float]:
        """The reference's REINFORCE loop over producer matrices given in layer order; returns the total reward per
        episode. `sparsity` is the fraction of each matrix's rows removed while learning. Keeps the best episode's
        policy (largest total reward), as the reference does."""
        if not self.predictors:
            raise RuntimeError("No policy to train: build one with PruneNet.untrained(matrices).")
        generator = torch.Generator().manual_seed(seed)
        matrices = [w.detach().cpu() for w in matrices]
        references = [singular_values(w) for w in matrices]
        optimizer = torch.optim.AdamW(self.predictors.parameters(), lr=learning_rate)
        best_total, best_state = -math.inf, copy.deepcopy(self.predictors.state_dict())
        self.predictors.train()
        for _ in tqdm(range(episodes), desc="PruneNet policy", disable=not show_progress):
            kept, rewards = [], []
            with torch.no_grad():
                for weight, reference in zip(matrices, references):
                    rows = weight.shape[0]
                    keep_count = min(max(int((1.0 - sparsity) * rows), 1), rows)
                    log_p = self.predictor_for(weight).log_keep_probabilities(weight, generator)
                    keep = sample_without_replacement(log_p, keep_count, generator).sort().values
                    kept.append(keep)
                    rewards.append(spectral_reward(weight, keep, reference))
            discounted = discounted_rewards(rewards, discount)
            for weight, keep, reward in zip(matrices, kept, discounted):
                with torch.enable_grad():
                    log_p = self.predictor_for(weight).log_keep_probabilities(weight, generator)
                    loss = -log_p[keep].sum() * reward
                    optimizer.zero_grad()
                    loss.backward()
                    optimizer.step()
                self.training_steps += 1
            total = float(sum(rewards))
            self.history.append(total)
            self.last_episode = {"kept": kept, "rewards": rewards, "discounted": discounted}
            if total > best_total:
                best_total, best_state = total, copy.deepcopy(self.predictors.state_dict())
        self.predictors.load_state_dict(best_state)
        self.predictors.eval()
        self.settings.update(
            episodes=self.settings.get("episodes", 0) + episodes,
            learning_rate=learning_rate,
            train_sparsity=sparsity,
            discount=discount,
            best_total_reward=best_total,
            reward_history=self.history,
        )
        return self.history

    # ---- persistence --------------------------------------------------------------------------------------------
    def save_policy(self, path: str | os.PathLike) -> None:
        """Write the predictors to one safetensors file (`"{rows}x{in}.<parameter>"`); settings go in its metadata."""
        if not self.predictors:
            raise RuntimeError("No policy to save.")
        path = os.fspath(path)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        settings = {**self.settings, "format": POLICY_FORMAT, "shapes": sorted(self.predictors)}
        tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in self.predictors.state_dict().items()}
        save_file(tensors, path, metadata={POLICY_METADATA_KEY: json.dumps(settings, sort_keys=True)})

    @classmethod
    def load_policy(cls, path: str | os.PathLike) -> PruneNet:
        """Read a policy written by `save_policy`; it prunes at any compression ratio without training.

        Raises:
            FileNotFoundError: no file at `path`.
            ValueError: the file is not a policy of this criterion.
        """
        path = os.fspath(path)
        settings = read_policy_settings(path)
        if settings.get("format") != POLICY_FORMAT:
            hint = ""
            if settings.get("format") == "optimum-prune/prunenet-policy/1":
                hint = " It is a rotation-invariant policy: load it with criterion='prunenet_invariant'."
            raise ValueError(
                f"{path!r} holds a policy of format {settings.get('format')!r}; criterion='prunenet' reads "
                f"{POLICY_FORMAT!r}.{hint}"
            )
        predictors = {}
        for key in settings["shapes"]:
            rows, in_features = (int(x) for x in key.split("x"))
            predictors[key] = SparsityPredictor(rows, in_features)
        criterion = cls(predictors, settings)
        criterion.predictors.load_state_dict(load_file(path))
        criterion.predictors.eval()
        return criterion


PRUNENET = PruneNet()
