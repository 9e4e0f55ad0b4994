"""SparseGPT's mask scope: an equal count per row ("row") or one threshold per column block ("block", the reference's)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tokenizer, tiny_llama

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.sparsity import SparsityPattern, layer_reconstruction_error, magnitude, sparsegpt
from optimum_prune.unstructured import prunable_linears

OUT, IN, TOKENS, BLOCK = 48, 96, 1024, 32


@pytest.fixture(scope="module")
def layer() -> tuple[torch.Tensor, torch.Tensor]:
    """Weight [48, 96] with rows of very different sizes, and the Gram matrix of correlated, unevenly scaled inputs:
    a layer where some rows matter far more than others, so the two scopes choose different masks."""
    g = torch.Generator().manual_seed(0)
    mixing = torch.eye(IN, dtype=torch.float64) + 0.5 * torch.randn(IN, IN, generator=g, dtype=torch.float64) / IN**0.5
    x = (torch.randn(TOKENS, IN, generator=g, dtype=torch.float64) @ mixing) * torch.exp(
        0.8 * torch.randn(IN, generator=g, dtype=torch.float64)
    )
    row_scale = torch.exp(torch.randn(OUT, 1, generator=g))
    return torch.randn(OUT, IN, generator=g) * row_scale, x.T @ x


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_block_scope_meets_the_sparsity_of_every_block(layer, sparsity: float) -> None:
    weight, gram = layer
    pattern = SparsityPattern(sparsity=sparsity)
    new, keep = sparsegpt.solve(weight, gram, pattern, blocksize=BLOCK, mask_scope="block")
    for start in range(0, IN, BLOCK):
        per_row = pattern.num_pruned(start + BLOCK) - pattern.num_pruned(start)
        assert int((~keep[:, start : start + BLOCK]).sum()) == per_row * OUT
    zeros_per_row = (~keep).sum(1)
    # One threshold over the rows: rows lose different counts (what distinguishes it from the row scope).
    assert zeros_per_row.min() < pattern.num_pruned(IN) < zeros_per_row.max()
    assert torch.equal(new == 0, ~keep | (weight == 0))


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_row_scope_meets_the_sparsity_of_every_row(layer, sparsity: float) -> None:
    weight, gram = layer
    pattern = SparsityPattern(sparsity=sparsity)
    _, keep = sparsegpt.solve(weight, gram, pattern, blocksize=BLOCK, mask_scope="row")
    assert torch.all((~keep).sum(1) == pattern.num_pruned(IN))
    assert torch.equal(keep, sparsegpt.solve(weight, gram, pattern, blocksize=BLOCK)[1])  # row is the default here


@pytest.mark.parametrize("scope", sparsegpt.MASK_SCOPES)
def test_both_scopes_beat_magnitude_on_layer_error(layer, scope: str) -> None:
    weight, gram = layer
    pattern = SparsityPattern(sparsity=0.5)
    new, _ = sparsegpt.solve(weight, gram, pattern, blocksize=BLOCK, mask_scope=scope)
    baseline, _ = magnitude.solve(weight, gram, pattern)
    assert layer_reconstruction_error(weight, new, gram) < 0.7 * layer_reconstruction_error(weight, baseline, gram)


def test_n_m_ignores_the_scope(layer) -> None:
    weight, gram = layer
    pattern = SparsityPattern.parse("2:4")
    by_row = sparsegpt.solve(weight, gram, pattern, blocksize=BLOCK, mask_scope="row")
    by_block = sparsegpt.solve(weight, gram, pattern, blocksize=BLOCK, mask_scope="block")
    assert torch.equal(by_row[1], by_block[1]) and torch.equal(by_row[0], by_block[0])


def test_unknown_scope_is_refused(layer) -> None:
    weight, gram = layer
    with pytest.raises(ValueError, match="mask_scope"):
        sparsegpt.solve(weight, gram, SparsityPattern(sparsity=0.5), mask_scope="column")
    with pytest.raises(ValueError, match="mask_scope"):
        PruningConfig(target="unstructured", method="sparsegpt", mask_scope="column")


def test_config_scope_reaches_the_solver(texts) -> None:
    """Through the pruner: the layer scope keeps the layer's total but not every row's count, and is saved (the old
    name "block" reads as "layer")."""
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    config = PruningConfig(
        target="unstructured",
        sparsity=0.5,
        method="sparsegpt",
        mask_scope="block",
        dataset=texts,
        num_samples=4,
        seqlen=64,
    )
    pruner.prune(config, show_progress=False)
    uneven = 0
    for layer in pruner.adapter.layers():
        for linear in prunable_linears(layer, []).values():
            zeros = (linear.weight == 0).sum(1)
            assert int(zeros.sum()) == (linear.in_features // 2) * linear.out_features
            uneven += int(zeros.min() != zeros.max())
    assert uneven > 0
    assert config.mask_scope == PruningConfig.from_dict(config.to_dict()).mask_scope == "layer"
