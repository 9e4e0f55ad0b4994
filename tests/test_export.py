"""2:4 export: the per-layer pattern check, the clear refusal off Ampere+ GPUs, and (with such a GPU) the outputs."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tokenizer, tiny_llama

from optimum_prune import PrunerForCausalLM
from optimum_prune.sparsity import (
    SemiStructuredUnsupportedError,
    SparsityPattern,
    check_model_nm_pattern,
    check_nm_pattern,
    export_semi_structured,
)

CALIBRATION = ["Sparse weights, dense kernels: two of every four weights are zero. " * 30]


def two_four_weight(rows: int = 8, cols: int = 16, seed: int = 0) -> torch.Tensor:
    """A random weight with exactly 2 zeros in every group of 4 inputs of a row."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, generator=g)
    drop = torch.rand(rows, cols // 4, 4, generator=g).argsort(dim=2)[..., :2]
    mask = torch.ones(rows, cols // 4, 4, dtype=torch.bool).scatter_(2, drop, False)
    return weight * mask.reshape(rows, cols)


def pruned_llama(**sizes) -> torch.nn.Module:
    """A tiny LLaMA whose block Linears were pruned to 2:4 by magnitude (lm_head and embeddings stay dense)."""
    pruner = PrunerForCausalLM(tiny_llama(**sizes), make_tokenizer())
    pruner.prune(target="2:4", method="magnitude", show_progress=False)
    return pruner.model


def test_check_nm_pattern_counts_violations() -> None:
    weight = two_four_weight()
    check = check_nm_pattern(weight, "2:4")
    assert check.ok and check.divisible and (check.groups, check.violations) == (8 * 4, 0)
    # More zeros than needed still fits the hardware format (at most 2 non-zeros per group).
    weight[0, :4] = 0
    assert check_nm_pattern(weight, SparsityPattern.parse("2:4")).ok

    weight[1, 4:8] = 1.0  # group with 4 non-zeros
    weight[3, 12:15] = 2.0  # 3 non-zeros
    check = check_nm_pattern(weight)
    assert not check.ok and check.violations == 2
    assert "2 of 32 groups of 4 have fewer than 2 zeros" in check.describe(SparsityPattern.parse("2:4"))

    odd = check_nm_pattern(torch.zeros(4, 10))
    assert not odd.ok and not odd.divisible and "not a multiple of 4" in odd.describe(SparsityPattern.parse("2:4"))


def test_check_nm_pattern_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="N:M pattern"):
        check_nm_pattern(torch.zeros(4, 8), "unstructured")
    with pytest.raises(ValueError, match="2-D"):
        check_nm_pattern(torch.zeros(4, 4, 4))


def test_model_check_after_two_four_pruning() -> None:
    model = pruned_llama()
    checks = check_model_nm_pattern(model, "2:4")
    blocks = {name: check for name, check in checks.items() if name.startswith("model.layers.")}
    assert len(blocks) == 3 * 7  # q, k, v, o, gate, up, down per layer
    assert all(check.ok for check in blocks.values())
    assert not checks["lm_head"].ok  # left dense on purpose
    assert "lm_head" not in check_model_nm_pattern(model, "2:4", modules_to_skip=["lm_head"])

    # One extra non-zero breaks exactly one group of one layer.
    down = model.model.layers[1].mlp.down_proj.weight.data
    group = down[0, :4]
    group[group == 0] = 0.5
    broken = {name for name, check in check_model_nm_pattern(model).items() if not check.ok}
    assert broken == {"lm_head", "model.layers.1.mlp.down_proj"}


def test_export_on_cpu_raises_a_clear_error() -> None:
    model = pruned_llama()
    before = {name: p.clone() for name, p in model.named_parameters()}
    with pytest.raises(SemiStructuredUnsupportedError, match=r"compute capability >= 8\.0.*float16 or bfloat16") as e:
        export_semi_structured(model)
    assert "cpu" in str(e.value)
    # Nothing changed: the refusal comes before the first weight is touched.
    assert all(torch.equal(before[name], p) for name, p in model.named_parameters())
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())


def test_export_without_two_four_layers_converts_nothing() -> None:
    result = export_semi_structured(tiny_llama())
    assert result.converted == []
    assert "model.layers.0.mlp.up_proj" in result.skipped
    with pytest.raises(ValueError, match="backend"):
        export_semi_structured(tiny_llama(), backend="triton")


def test_export_respects_modules_to_not_convert() -> None:
    result = export_semi_structured(pruned_llama(), modules_to_not_convert=["layers."])
    assert result.converted == []
    assert result.skipped["model.layers.2.self_attn.q_proj"] == "excluded by modules_to_not_convert"


def _ampere_or_newer() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() >= (8, 0)


@pytest.mark.skipif(not _ampere_or_newer(), reason="2:4 kernels need a CUDA GPU with compute capability >= 8.0")
def test_export_on_gpu_gives_close_outputs() -> None:
    # Sizes are multiples of 64 so every block Linear meets the kernels' minimum shapes (lm_head stays dense).
    model = pruned_llama(hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2)
    model = model.to("cuda", torch.float16)
    ids = torch.randint(0, 128, (2, 64), device="cuda")
    with torch.no_grad():
        dense_logits = model(ids).logits.float()
    result = export_semi_structured(model)
    assert len(result.converted) == 3 * 7, result.skipped
    assert "lm_head" in result.skipped
    weight = model.model.layers[0].mlp.up_proj.weight
    assert isinstance(weight, torch.sparse.SparseSemiStructuredTensor)
    with torch.no_grad():
        sparse_logits = model(ids).logits.float()
    scale = dense_logits.abs().max()
    assert torch.allclose(sparse_logits, dense_logits, atol=2e-2 * float(scale), rtol=0)
    # A second export finds nothing left to do.
    again = export_semi_structured(model)
    assert again.converted == [] and again.skipped["model.layers.0.mlp.up_proj"] == "already semi-structured sparse"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_support_check_without_cuda() -> None:
    from optimum_prune.sparsity.export import check_semi_structured_support

    with pytest.raises(SemiStructuredUnsupportedError, match="no usable CUDA device"):
        check_semi_structured_support("cuda", torch.float16)
    with pytest.raises(SemiStructuredUnsupportedError, match="weights are on cpu"):
        check_semi_structured_support("cpu", torch.bfloat16)
