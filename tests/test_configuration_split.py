"""The config's typed parts: each sparsity solver's options, and configs saved before they existed still load."""

from __future__ import annotations

import inspect
import json
from dataclasses import fields
from pathlib import Path

import pytest
import torch

from optimum_prune import PruningConfig
from optimum_prune.configuration import SOLVER_OPTIONS, ADMMOptions, SolverOptions, solver_options
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
    assert type(PruningConfig(method="wanda").solver_options) is SolverOptions


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
def test_configs_saved_before_the_split_load_unchanged(path):
    """pruning_config.json files written by the flat PruningConfig (generated with main at ff46109) load, and save
    back to the same JSON."""
    saved = json.loads(path.read_text())
    config = PruningConfig.from_json_file(path)
    assert config.to_dict() == saved
