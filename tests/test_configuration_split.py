"""The config's typed parts: one config per method, each sparsity solver's options, and configs saved before the split
still load."""

from __future__ import annotations

import inspect
import json
from dataclasses import MISSING, fields
from pathlib import Path

import pytest
import torch

from optimum_prune import PruningConfig
from optimum_prune.configuration import (
    PRUNING_CONFIGS,
    SOLVER_OPTIONS,
    ADMMOptions,
    DepthConfig,
    PruneNetConfig,
    SolverOptions,
    SparsityConfig,
    StructuredConfig,
    config_fields,
    solver_options,
)
from optimum_prune.sparsity import SPARSITY_METHODS

BEFORE_SPLIT = Path(__file__).parent / "data" / "configs_before_split"


@pytest.mark.parametrize("method", sorted(SPARSITY_METHODS))
def test_solver_options_mirror_the_solver(method):
    """Every option is a keyword of the solver with the same default (dtype: None stands for the solver's float32),
    and every keyword of the solver but the pipeline's own is an option."""
    parameters = inspect.signature(SPARSITY_METHODS[method]).parameters
    options = SOLVER_OPTIONS[method]
    for option in fields(options):
        assert option.metadata["help"], (method, option.name)
        default = parameters[option.name].default
        assert option.default == (None if default is torch.float32 else default), (method, option.name)
    keywords = {
        name
        for name, p in parameters.items()
        if p.kind is p.KEYWORD_ONLY or (p.kind is p.POSITIONAL_OR_KEYWORD and p.default is not p.empty)
    }
    own = {"damp", "cache", "mask_scope"}
    assert keywords - own == {f.name for f in fields(options)}, method
    assert options.has_mask_scope == ("mask_scope" in parameters)


def test_a_dict_becomes_the_methods_typed_options():
    config = PruningConfig(target="unstructured", method="admm", solver_options={"iterations": 5, "refit": "cg"})
    assert isinstance(config.solver_options, ADMMOptions)
    assert (config.solver_options.iterations, config.solver_options.rho) == (5, 1.0)
    # It reads as the options set, which is what the solver is given and what is saved.
    assert config.solver_options == {"iterations": 5, "refit": "cg"}
    assert config.to_dict()["solver_options"] == {"iterations": 5, "refit": "cg"}
    assert PruningConfig.from_dict(config.to_dict()) == config
    assert PruningConfig(
        target="unstructured", method="admm", solver_options=ADMMOptions(iterations=5)
    ).solver_options == {"iterations": 5}
    assert PruningConfig(target="unstructured", method="wanda").to_dict()["solver_options"] == {}
    assert type(PruningConfig(target="2:4", method="wanda").solver_options) is SolverOptions


def test_an_unknown_solver_option_is_one_clear_error():
    with pytest.raises(ValueError, match=r"method='admm' has no option 'iteration'; its options: \['cg_max_iter'"):
        PruningConfig(target="unstructured", method="admm", solver_options={"iteration": 5})
    with pytest.raises(ValueError, match="method='wanda' has no option 'refit'"):
        PruningConfig(target="unstructured", method="wanda", solver_options={"refit": "cg"})
    with pytest.raises(ValueError, match="not damp"):
        PruningConfig(target="unstructured", method="admm", solver_options={"damp": 0.1})
    # Another method's options convert when their names fit, else the same error.
    assert solver_options("obs_multi", ADMMOptions(refit="exact", cg_tol=1e-4)) == {"refit": "exact", "cg_tol": 1e-4}
    with pytest.raises(ValueError, match="method='sparsegpt' has no option 'rho'"):
        solver_options("sparsegpt", ADMMOptions(rho=2.0))


@pytest.mark.parametrize("path", sorted(BEFORE_SPLIT.glob("*.json")), ids=lambda p: p.stem)
def test_configs_saved_before_the_split_load(path):
    """pruning_config.json files written by the flat PruningConfig (generated with main at ff46109, every field of
    every method) load as their method's config; the other methods' fields, all at their defaults there, are
    dropped, and the rest saves back as it was."""
    saved = json.loads(path.read_text())
    config = PruningConfig.from_json_file(path)
    expected = {"depth": DepthConfig, "prunenet": PruneNetConfig, "structured": StructuredConfig}
    assert type(config) is expected.get(
        path.stem, StructuredConfig if path.stem.startswith("recipe") else SparsityConfig
    )
    own = config.to_dict()
    assert {key: value for key, value in own.items() if key in saved} == {
        key: value for key, value in saved.items() if key in own
    }
    defaults = {
        f.name: f.default_factory() if f.default_factory is not MISSING else f.default for f in config_fields()
    }
    assert all(saved[key] == defaults[key] for key in set(saved) - set(own)), path.stem
    # Fields added since (allocation_samples) load at their defaults.
    assert all(own[key] == defaults[key] for key in set(own) - set(saved)), path.stem


def test_construction_dispatches_to_the_methods_config():
    assert type(PruningConfig()) is StructuredConfig
    assert type(PruningConfig(target="2:4")) is type(PruningConfig("unstructured")) is SparsityConfig
    assert type(PruningConfig(criterion="prunenet_invariant")) is PruneNetConfig
    assert type(PruningConfig(recipe="prunenet")) is PruneNetConfig  # the recipe's criterion
    assert type(PruningConfig(recipe="shortgpt")) is type(PruningConfig(structures="layers")) is DepthConfig
    assert all(isinstance(PruningConfig(target=t), PruningConfig) for t in ("structured", "unstructured", "2:4"))
    assert set(PRUNING_CONFIGS.values()) == {StructuredConfig, DepthConfig, PruneNetConfig, SparsityConfig}
    # Each method's own class builds as it is, with its own defaults.
    assert SparsityConfig().target == "unstructured" and StructuredConfig().target == "structured"
    with pytest.raises(ValueError, match="StructuredConfig is for target='structured', not '2:4'"):
        StructuredConfig(target="2:4")
    with pytest.raises(ValueError, match="SparsityConfig is for target='unstructured' or an N:M pattern"):
        SparsityConfig(target="structured")
    for spec in config_fields():
        assert spec.metadata["help"].strip(), spec.name


def test_another_methods_field_is_one_clear_error():
    with pytest.raises(
        ValueError, match=r"mask_scope='row' is an option of unstructured and N:M sparsity .*structured"
    ):
        PruningConfig(mask_scope="row")
    with pytest.raises(ValueError, match=r"protect_layers=\[0\] is an option of structured pruning"):
        PruningConfig(target="2:4", protect_layers=[0])
    with pytest.raises(ValueError, match=r"prunenet_episodes=3 is an option of PruneNet \(criterion='prunenet'"):
        PruningConfig(criterion="activation", prunenet_episodes=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'no_such_field'"):
        PruningConfig(no_such_field=1)
    # At its default it is accepted (it changes nothing), and a config without the field reads its default.
    config = PruningConfig(target="unstructured", criterion="activation")
    assert "criterion" not in config.to_dict() and config.criterion == "activation"
    assert PruningConfig().method == "sparsegpt" and PruningConfig().protect_layers == []
    with pytest.raises(AttributeError):
        PruningConfig().no_such_field  # noqa: B018
