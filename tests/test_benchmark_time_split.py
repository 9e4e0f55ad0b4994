"""The time split of the benchmarks' pruning rows (issue 23): `common.timed_calls` counts nested calls once, and the
structured table's split (`structured.timed_prune`) adds up to the wall time of the run."""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import FrozenInstanceError, dataclass

import pytest
import torch
from conftest import TEXT, benchmark_module, make_tokenizer, tiny_llama


class FakeClock:
    """A clock that moves only when the toy functions say how long they take."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Holder:
    """Holds its solver as a field, as a `Reconstruction` holds `refit`."""

    solve: Callable[[], str]


def test_timed_calls_counts_a_nested_call_once() -> None:
    """A patched function calling a patched function, of another bucket or of its own, a patched method, static
    method and frozen-dataclass field: every second lands in exactly one bucket, the innermost call's."""
    common = benchmark_module("common")
    clock = FakeClock()
    toy = types.ModuleType("toy")

    def inner() -> str:
        clock.now += 5.0
        return "inner"

    def outer() -> str:
        clock.now += 2.0
        value = toy.inner()
        clock.now += 1.0
        return value

    def recursive(depth: int) -> int:
        clock.now += 1.0
        return toy.recursive(depth - 1) + 1 if depth else 0

    def failing() -> None:
        clock.now += 1.0
        raise ValueError("solver failed")

    def catching() -> None:
        clock.now += 1.0
        with pytest.raises(ValueError):
            toy.failing()
        clock.now += 1.0

    toy.inner, toy.outer, toy.recursive, toy.failing, toy.catching = inner, outer, recursive, failing, catching

    class Toy:
        def method(self) -> str:
            clock.now += 3.0
            return toy.inner()

        @staticmethod
        def helper() -> str:
            clock.now += 1.0
            return "helper"

    method, helper = Toy.__dict__["method"], Toy.__dict__["helper"]
    holder = Holder(lambda: toy.inner())
    solve = holder.solve
    patches = {
        "outer": [(toy, "outer"), (Toy, "method"), (Toy, "helper"), (toy, "catching")],
        "inner": [(toy, "inner"), (toy, "failing")],
        "same": [(toy, "recursive")],
        "held": [(holder, "solve")],
    }
    calls: dict[str, int] = {}
    with common.timed_calls(patches, calls, clock=clock) as buckets:
        start = clock()
        assert toy.outer() == "inner"  # outer 3, inner 5
        assert Toy().method() == "inner"  # outer 3, inner 5
        assert Toy.helper() == Toy().helper() == "helper"  # outer 1 + 1
        assert toy.recursive(3) == 3  # same 4, not 4 + 3 + 2 + 1
        assert holder.solve() == "inner"  # held 0, inner 5
        toy.catching()  # outer 2, inner 1: a call that raises still leaves its caller's count right
        wall = clock() - start
    assert buckets == {"outer": 10.0, "inner": 16.0, "same": 4.0, "held": 0.0}
    assert sum(buckets.values()) == wall == 30.0
    assert calls == {"outer": 5, "inner": 4, "same": 4, "held": 1}
    # Everything is put back, the frozen dataclass frozen again.
    assert (toy.inner, toy.outer, toy.recursive, toy.failing, toy.catching) == (
        inner,
        outer,
        recursive,
        failing,
        catching,
    )
    assert Toy.__dict__["method"] is method and Toy.__dict__["helper"] is helper and holder.solve is solve
    with pytest.raises(FrozenInstanceError):
        holder.solve = solve  # type: ignore[misc]


@pytest.mark.parametrize("recipe", ["obs", "liar"])
def test_structured_time_split_adds_up_to_the_run(recipe: str) -> None:
    """Issue 23's must-show on a tiny Llama: the split of the structured table's pruning time (what
    structured.py's rows record) is non-negative and adds up to the wall time; OBS time only where the recipe runs
    the greedy OBS, refit time in both."""
    import optimum_prune.criteria.obs as obs
    from optimum_prune import PrunerForCausalLM, PruningConfig
    from optimum_prune.pipeline.statistics import InputStatistics
    from optimum_prune.reconstruction import LIAR

    structured = benchmark_module("structured")
    update, greedy, refit = InputStatistics.__dict__["update"], obs.greedy_obs, LIAR.refit
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    before = sum(p.numel() for p in pruner.model.parameters())
    config = PruningConfig(target="structured", sparsity=0.3, recipe=recipe, num_samples=8, seqlen=48, seed=0)
    calls: dict[str, int] = {}
    torch.manual_seed(0)
    times = structured.timed_prune(pruner, config, [TEXT], calls)

    assert sum(p.numel() for p in pruner.model.parameters()) < before  # it did prune
    assert list(times) == ["pruning time (s)", *structured.TIME_COLUMNS]
    split = {name: times[name] for name in structured.TIME_COLUMNS if name != "prune cpu s"}
    assert set(split) == {"forward s", *calls}
    assert all(seconds >= 0.0 for seconds in split.values()), split
    assert sum(split.values()) == pytest.approx(times["pruning time (s)"], rel=1e-9, abs=1e-9)
    assert split["forward s"] > 0.0 and times["prune cpu s"] > 0.0
    assert split["statistics s"] > 0.0 and calls["statistics s"] > 0
    assert split["refit s"] > 0.0 and calls["refit s"] > 0
    assert calls["scoring s"] > 0
    if recipe == "obs":
        assert split["OBS s"] > 0.0 and calls["OBS s"] > 0
    else:
        assert split["OBS s"] == 0.0 and calls["OBS s"] == 0
    # The patches are gone.
    assert InputStatistics.__dict__["update"] is update and obs.greedy_obs is greedy and LIAR.refit is refit


def test_structured_breakdown_counts_obs_inside_the_criterion_once(monkeypatch) -> None:
    """The greedy OBS runs inside the criteria's entry points (`select_units`, `allocation_scores`, both patched for
    `scoring s`): with a clock that moves one second per greedy run and never otherwise, the obs recipe's split is
    exactly one second of OBS per run and no scoring time (a split counting nested calls twice would put every
    second in both)."""
    import optimum_prune.criteria.obs as obs
    from optimum_prune import PrunerForCausalLM, PruningConfig

    common = benchmark_module("common")
    clock = FakeClock()
    greedy = obs.greedy_obs

    def greedy_taking_a_second(*args, **kwargs):
        clock.now += 1.0
        return greedy(*args, **kwargs)

    monkeypatch.setattr(obs, "greedy_obs", greedy_taking_a_second)
    pruner = PrunerForCausalLM(tiny_llama(), make_tokenizer())
    config = PruningConfig(target="structured", sparsity=0.3, recipe="obs", num_samples=8, seqlen=48, seed=0)
    calls: dict[str, int] = {}
    with common.timed_calls(common.structured_time_breakdown(), calls, clock=clock) as buckets:
        pruner.prune(config, dataset=[TEXT], show_progress=False)
    assert calls["OBS s"] > 0 and calls["scoring s"] >= calls["OBS s"]  # every greedy run is inside a criterion call
    assert buckets == {"statistics s": 0.0, "OBS s": float(calls["OBS s"]), "refit s": 0.0, "scoring s": 0.0}
    assert sum(buckets.values()) == clock.now
