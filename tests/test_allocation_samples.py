"""`allocation_samples`: a ranked allocation's scoring pass reads only the first N calibration samples (issue 23's
cost goal), and nothing else about the run changes."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from optimum_prune import PruningConfig
from optimum_prune.planning import plan_pruning

pytestmark = pytest.mark.usefixtures("one_thread")


def _samples(count: int, seqlen: int = 16) -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128, (count, seqlen), generator=generator)
    return [{"input_ids": row[None], "attention_mask": torch.ones_like(row[None])} for row in ids]


@pytest.mark.parametrize("allocation", ["obs", "flap", "global"])
def test_the_scoring_pass_reads_the_first_samples_only(allocation):
    model = tiny_llama()
    samples = _samples(6)
    criterion = {"flap": "fluctuation", "global": "activation"}.get(allocation, "obs")
    fields = dict(target="structured", sparsity=0.3, allocation=allocation, criterion=criterion, seed=0)
    on_two = plan_pruning(model, PruningConfig(allocation_samples=2, **fields), samples).layers
    # The plan of the scoring pass on the first two samples alone, and different from all six (else vacuous).
    assert on_two == plan_pruning(model, PruningConfig(**fields), samples[:2]).layers
    assert on_two != plan_pruning(model, PruningConfig(**fields), samples).layers
    # More than there are: all of them.
    assert plan_pruning(model, PruningConfig(allocation_samples=60, **fields), samples).layers == (
        plan_pruning(model, PruningConfig(**fields), samples).layers
    )


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "16"])
def test_a_bad_count_is_refused(bad):
    with pytest.raises(ValueError, match="allocation_samples"):
        PruningConfig(target="structured", sparsity=0.2, allocation="obs", allocation_samples=bad)


def test_the_obs_recipe_scores_on_the_first_half_of_the_samples():
    assert PruningConfig(recipe="obs", num_samples=64).allocation_samples == 32
    assert PruningConfig(recipe="obs", num_samples=7).allocation_samples == 3
    assert PruningConfig(recipe="obs", num_samples=1).allocation_samples == 1
    assert PruningConfig(recipe="obs", num_samples=64, allocation_samples=48).allocation_samples == 48  # set wins
    assert PruningConfig(recipe="liar", num_samples=64).allocation_samples is None
    model, samples = tiny_llama(), _samples(6)
    plan = plan_pruning(model, PruningConfig(recipe="obs", sparsity=0.3, num_samples=6, seed=0), samples).layers
    fields = dict(recipe="obs", sparsity=0.3, num_samples=6, seed=0)
    assert plan == plan_pruning(model, PruningConfig(allocation_samples=3, **fields), samples).layers
    assert plan != plan_pruning(model, PruningConfig(allocation_samples=6, **fields), samples).layers
