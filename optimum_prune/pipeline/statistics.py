"""Running statistics of a Linear layer's inputs over calibration tokens."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


class InputStatistics:
    """Sums over tokens of x, x*x and (optionally) x x^T, accumulated in float64.

    Token batches are multiplied in float32 (fast) and only the per-batch results are added in float64, which
    keeps the Gram matrix accurate over many thousands of tokens.
    """

    def __init__(self, num_features: int, with_gram: bool = False, device: torch.device | str = "cpu") -> None:
        self.num_features = num_features
        self.count = 0
        self.sum = torch.zeros(num_features, dtype=torch.float64, device=device)
        self.sum_sq = torch.zeros(num_features, dtype=torch.float64, device=device)
        self.gram = torch.zeros(num_features, num_features, dtype=torch.float64, device=device) if with_gram else None
        #: Error-correcting refits: sum over tokens of x x_dense^T (the inputs the dense model's copy of this layer
        #: saw for the same tokens) and of x_dense; filled by `update_cross`, else None.
        self.cross: torch.Tensor | None = None
        self.dense_sum: torch.Tensor | None = None

    @torch.no_grad()
    def update(self, inputs: torch.Tensor) -> None:
        x = inputs.detach().reshape(-1, self.num_features).to(device=self.sum.device, dtype=torch.float32)
        self.count += x.shape[0]
        self.sum += x.sum(0, dtype=torch.float64)
        self.sum_sq += (x * x).sum(0, dtype=torch.float64)
        if self.gram is not None:
            self.gram += (x.T @ x).double()

    @torch.no_grad()
    def update_cross(self, inputs: torch.Tensor, dense_inputs: torch.Tensor) -> None:
        """Add x x_dense^T over the same tokens (call `update(inputs)` as well; this does not count tokens)."""
        x = inputs.detach().reshape(-1, self.num_features).to(device=self.sum.device, dtype=torch.float32)
        d = dense_inputs.detach().reshape(-1, self.num_features).to(device=self.sum.device, dtype=torch.float32)
        if self.cross is None:
            self.cross = torch.zeros(self.num_features, self.num_features, dtype=torch.float64, device=x.device)
            self.dense_sum = torch.zeros(self.num_features, dtype=torch.float64, device=x.device)
        self.cross += (x.T @ d).double()
        self.dense_sum += d.sum(0, dtype=torch.float64)

    def _require_tokens(self) -> None:
        if self.count == 0:
            raise ValueError("No calibration tokens reached this layer: the calibration data is empty.")

    @property
    def mean(self) -> torch.Tensor:
        self._require_tokens()
        return self.sum / self.count

    @property
    def norm(self) -> torch.Tensor:
        """Per-feature L2 norm over all tokens, ||X_j||_2."""
        return self.sum_sq.sqrt()

    @property
    def variance(self) -> torch.Tensor:
        self._require_tokens()
        return (self.sum_sq / self.count - self.mean**2).clamp_min(0.0)

    def augmented_gram(self) -> torch.Tensor:
        """H = [X 1]^T [X 1], float64, [num_features + 1, num_features + 1]: the Gram matrix with a constant input.

        The extra row and column (sums over tokens, and the token count in the corner) let a least-squares refit
        solve for a bias jointly with the weights, as the structured OBS cost and the ADMM refit both do.

        Raises:
            ValueError: if the statistics were collected without the Gram matrix.
        """
        if self.gram is None:
            raise ValueError("The augmented Gram matrix needs statistics collected with `with_gram=True`.")
        n = self.num_features
        h = torch.empty(n + 1, n + 1, dtype=torch.float64, device=self.gram.device)
        h[:n, :n] = self.gram
        h[:n, n] = h[n, :n] = self.sum
        h[n, n] = float(self.count)
        return h


def attach_statistics(
    modules: dict[str, torch.nn.Module], with_gram: bool
) -> tuple[dict[str, InputStatistics], list[torch.utils.hooks.RemovableHandle]]:
    """Hook each Linear in `modules` so every forward adds its input to its own `InputStatistics` (observed alone:
    `weight_inputs.attach_inputs` without a block)."""
    from ..architectures.weights import WeightMatrix
    from .weight_inputs import attach_inputs

    inputs, handles = attach_inputs(None, [WeightMatrix(name, module) for name, module in modules.items()], with_gram)
    return inputs.direct, handles


@contextlib.contextmanager
def observe_statistics(modules: dict[str, torch.nn.Module], with_gram: bool) -> Iterator[dict[str, InputStatistics]]:
    """`attach_statistics` for the duration of the context: yields the statistics, removes the hooks on exit."""
    stats, handles = attach_statistics(modules, with_gram)
    try:
        yield stats
    finally:
        for handle in handles:
            handle.remove()
