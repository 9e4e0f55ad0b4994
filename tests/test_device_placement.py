"""Device placement checked without a GPU: nothing in the pruning path is created on a default device, and nothing
is read back to the host once per calibration sample or per weight column.

A tensor created without ``device=`` is a CPU tensor on a GPU run: it either raises (mixed devices) or silently
moves the work to the host. Two independent checks find them here, on the CPU:

* `DeviceAudit` (tests/device_audit.py) records every tensor factory called without a device from a line of the
  package, during whole pruning runs of every method, recipe and allocation;
* the solvers run with ``torch.set_default_device("meta")`` and their inputs on the CPU: a tensor created on the
  default device lands on "meta", and torch refuses to mix it with the CPU inputs.

Host reads (``.item()``, ``.tolist()``, ``float(t)``...) each wait for the GPU; they are counted per call site and
must not grow with the calibration samples (per-sample reads) or with a layer's width (per-column reads).
"""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from conftest import TEXT, make_tokenizer, tiny_llama
from device_audit import DeviceAudit

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.allocation.unstructured import allocate_by_error, obs_error_curve, outlier_ratio
from optimum_prune.criteria.obs import greedy_obs
from optimum_prune.depth import _fit_bridge
from optimum_prune.evaluation import perplexity
from optimum_prune.pipeline.layerwise import ActivationStore, BlockInput, host_copy, pins_well, to_device
from optimum_prune.pipeline.statistics import InputStatistics
from optimum_prune.reconstruction import RECONSTRUCTIONS
from optimum_prune.sparsity import SPARSITY_METHODS, SparsityPattern, least_squares_refit

#: Every kind of run whose code differs: each solver, both non-uniform unstructured allocations, every structured
#: recipe and reconstruction, a global ranking, the random criterion and depth pruning with bridges.
RUNS = {
    "sparsegpt-2:4": dict(target="2:4", method="sparsegpt"),
    "wanda-50": dict(target="unstructured", method="wanda", sparsity=0.5),
    "admm-50": dict(target="unstructured", method="admm", sparsity=0.5),
    "obs_multi-50": dict(target="unstructured", method="obs_multi", sparsity=0.5),
    "magnitude-50": dict(target="unstructured", method="magnitude", sparsity=0.5),
    "owl-allocation": dict(target="unstructured", method="wanda", sparsity=0.5, allocation="owl"),
    "obs-allocation": dict(target="unstructured", method="sparsegpt", sparsity=0.5, allocation="obs"),
    "obs-recipe": dict(recipe="obs", sparsity=0.2),
    "liar-recipe": dict(recipe="liar", sparsity=0.2),
    "flap-recipe": dict(recipe="flap", sparsity=0.2),
    "admm-reconstruction": dict(sparsity=0.2, criterion="activation", reconstruction="admm"),
    "liar_dense": dict(sparsity=0.2, criterion="activation", reconstruction="liar_dense"),
    "global-activation": dict(sparsity=0.2, criterion="activation", allocation="global"),
    "random-bias": dict(sparsity=0.2, criterion="random", reconstruction="bias"),
    "shortgpt_linear": dict(recipe="shortgpt_linear", sparsity=0.3),
}
#: A run of each pipeline, pruned with 2 and with 4 calibration samples: host reads must not depend on the count.
PER_SAMPLE_RUNS = ("sparsegpt-2:4", "obs-allocation", "obs-recipe", "liar_dense", "shortgpt_linear")


def _audited_run(name: str, samples: int) -> tuple[DeviceAudit, PrunerForCausalLM]:
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    config = PruningConfig(dataset=[TEXT], num_samples=samples, seqlen=32, **RUNS[name])
    with DeviceAudit() as audit, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # execution_device streams the blocks as on a GPU (activations wait on the host between blocks).
        pruner.prune(config, show_progress=False, execution_device="cpu")
        perplexity(pruner.model, pruner.tokenizer, TEXT, seqlen=64, max_windows=2, show_progress=False)
    return audit, pruner


@pytest.mark.parametrize("name", list(RUNS))
def test_pruning_creates_no_tensor_on_the_default_device(name: str) -> None:
    audit, _ = _audited_run(name, samples=2)
    assert not audit.hidden_factories, f"tensors created without a device: {dict(audit.hidden_factories)}"
    assert not [site for site in audit.host_reads if site.endswith(" numpy")]


@pytest.mark.parametrize("name", PER_SAMPLE_RUNS)
def test_host_reads_do_not_grow_with_the_calibration_samples(name: str) -> None:
    few, _ = _audited_run(name, samples=2)
    more, _ = _audited_run(name, samples=4)
    grew = {
        site: (few.host_reads[site], count) for site, count in more.host_reads.items() if count > few.host_reads[site]
    }
    assert not grew, f"host reads per calibration sample (2 samples -> 4): {grew}"


# ---- the solvers and the numerical pieces, with "meta" as the default device ------------------------------------
@contextlib.contextmanager
def default_device_meta():
    """Tensors created without a device land on "meta" inside; mixing one with a CPU tensor raises."""
    torch.set_default_device("meta")
    try:
        yield
    finally:
        torch.set_default_device(None)


def _layer(out_features: int = 16, in_features: int = 32, tokens: int = 256, seed: int = 0):
    generator = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(tokens, in_features, generator=generator, device="cpu", dtype=torch.float64)
    x = x * torch.rand(in_features, generator=generator, device="cpu", dtype=torch.float64)
    weight = torch.randn(out_features, in_features, generator=generator, device="cpu")
    return weight, x.T @ x


@pytest.mark.parametrize("method", sorted(SPARSITY_METHODS))
@pytest.mark.parametrize("target", ["unstructured", "2:4"])
def test_solvers_create_nothing_on_the_default_device(method: str, target: str) -> None:
    weight, gram = _layer()
    pattern = SparsityPattern.parse(target, 0.5)
    solver = SPARSITY_METHODS[method]
    expected, expected_keep = solver(weight, gram, pattern, cache={})
    with default_device_meta():
        new_weight, keep = solver(weight, gram, pattern, cache={})
    assert new_weight.device.type == "cpu" and keep.device.type == "cpu"
    assert torch.equal(keep, expected_keep) and torch.equal(new_weight, expected)


def test_refits_and_allocations_create_nothing_on_the_default_device() -> None:
    weight, gram = _layer()
    keep = torch.rand(weight.shape, generator=torch.Generator(device="cpu").manual_seed(1), device="cpu") > 0.5
    stats = InputStatistics(weight.shape[1], with_gram=True, device="cpu")
    x = torch.randn(64, weight.shape[1], generator=torch.Generator(device="cpu").manual_seed(2), device="cpu")
    grid = torch.arange(0, 100, dtype=torch.float64, device="cpu") / 100
    with default_device_meta():
        stats.update(x)
        for method in ("direct", "cg"):
            assert least_squares_refit(weight, gram, keep, 0.01, method=method).device.type == "cpu"
        assert len(greedy_obs(weight, stats, 4, 0.01).order) > 0
        curve = obs_error_curve(weight, gram, 0.01, grid)
        assert curve.device.type == "cpu"
        assert len(allocate_by_error(torch.stack([curve, curve * 2]), [10, 10], grid, 0.5, 0.2)) == 2
        assert 0.0 <= outlier_ratio([weight], [stats.norm], 5.0) <= 100.0
        bridge_weight, bridge_bias = _fit_bridge([x[None]], [x[None] * 2], 0.01)
        assert bridge_weight.device.type == "cpu" and bridge_bias.device.type == "cpu"
        kept = torch.arange(0, 24, device="cpu")
        pruned = torch.arange(24, 32, device="cpu")
        for name, reconstruction in RECONSTRUCTIONS.items():
            if name == "liar_dense":
                stats.update_cross(x, x)
            linear = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False, device="cpu")
            reconstruction.refit(linear, stats, kept, pruned, 0.01)
            assert linear.weight.device.type == "cpu"
            assert linear.bias is None or linear.bias.device.type == "cpu"


# ---- no host read per weight column ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sparsegpt", "wanda", "admm", "magnitude"])
@pytest.mark.parametrize("target", ["unstructured", "2:4"])
def test_solver_host_reads_do_not_grow_with_the_columns(method: str, target: str) -> None:
    """SparseGPT's column loop, ADMM's iterations and the mask selections run without reading the device; the few
    reads left (a Cholesky success flag) are per matrix. obs_multi reads once per group of columns by design."""
    pattern = SparsityPattern.parse(target, 0.5)
    counts = []
    for in_features in (64, 256):
        weight, gram = _layer(in_features=in_features, tokens=512)
        with DeviceAudit() as audit:
            SPARSITY_METHODS[method](weight, gram, pattern, cache={})
        counts.append(sum(audit.host_reads.values()))
    assert counts[0] == counts[1] <= 3, counts


# ---- activations waiting on the host -----------------------------------------------------------------------------
def test_pinned_memory_is_used_only_where_the_allocator_rounds_little() -> None:
    assert pins_well(512 * 2048 * 4)  # a 512-token window of a 2048-wide model in float32: a power of two
    assert pins_well(7 * 2**20)  # rounded to 8 MiB: 14% more
    assert not pins_well(512 * 576 * 4)  # SmolLM2's windows: 1.78x
    assert not pins_well(0)


def test_host_activations_are_uploaded_without_blocking_when_pinned(monkeypatch) -> None:
    """CPU-only stand-in: a tensor that says it is pinned is moved with non_blocking=True; others block."""
    calls = []
    original = torch.Tensor.to

    def recording_to(self, *args, **kwargs):
        calls.append(kwargs.get("non_blocking", False))
        return original(self, *args, **{k: v for k, v in kwargs.items() if k != "non_blocking"})

    monkeypatch.setattr(torch.Tensor, "to", recording_to)
    tensor = torch.ones(4, device="cpu")
    to_device(tensor, "meta")
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: True)
    to_device({"hidden": tensor}, "meta")
    to_device(tensor, "cpu")  # host to host: nothing to overlap
    assert calls == [False, True, False]


def test_activation_store_on_the_host_keeps_cpu_tensors_as_they_are() -> None:
    hidden = torch.randn(1, 8, 4, device="cpu")
    assert host_copy(hidden) is hidden or torch.equal(host_copy(hidden), hidden)
    store = ActivationStore("cpu")
    store.append(BlockInput(hidden))
    assert torch.equal(store[0].hidden_states, hidden) and not store[0].hidden_states.is_pinned()
