"""A Hub name that is not cached, with the Hub out of reach: one line that says what to do, not a chained traceback.

Checked in a fresh interpreter with HF_HUB_OFFLINE=1 and empty Hugging Face caches (huggingface_hub and datasets
read both at import), for `PrunerForCausalLM.from_pretrained`, a named calibration dataset and the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optimum_prune.offline import HubUnreachableError, is_hub_unreachable

ROOT = Path(__file__).resolve().parent.parent
UNCACHED_MODEL = "optimum-prune-tests/never-downloaded"

SCRIPT = f"""
import contextlib, io, json, traceback
from optimum_prune import PrunerForCausalLM
from optimum_prune.cli import main
from optimum_prune.data.calibration import load_texts

report = {{}}
for name, call in (
    ("model", lambda: PrunerForCausalLM.from_pretrained({UNCACHED_MODEL!r})),
    ("dataset", lambda: load_texts("wikitext2")),
):
    try:
        call()
        report[name] = None
    except Exception as err:
        report[name] = {{
            "types": [cls.__name__ for cls in type(err).__mro__],
            "message": str(err),
            "traceback": "".join(traceback.format_exception(err)),
        }}
for name, argv in (
    ("cli_model", ["-m", {UNCACHED_MODEL!r}, "--criterion", "magnitude", "out-model"]),
    ("cli_dataset", ["-m", {UNCACHED_MODEL!r}, "--dataset", "wikitext2", "out-dataset"]),
):
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr):
        status = main(argv)
    report[name] = {{"status": status, "stderr": stderr.getvalue()}}
print("REPORT " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def offline_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("empty-hf-home")
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        HF_HOME=str(home),
        HF_HUB_CACHE=str(home / "hub"),
        HF_DATASETS_CACHE=str(home / "datasets"),
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        TRANSFORMERS_VERBOSITY="error",
        OMP_NUM_THREADS="1",
    )
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=home, env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(lines[-1].removeprefix("REPORT "))


@pytest.mark.parametrize("name", ["model", "dataset"])
def test_python_raises_one_clear_error(offline_report, name):
    error = offline_report[name]
    assert error is not None, f"loading the uncached {name} offline did not fail"
    # A ConnectionError (so `except OSError` still catches it) of our own, clearly named type.
    assert error["types"][:2] == ["HubUnreachableError", "ConnectionError"]
    message = error["message"]
    assert "\n" not in message
    assert "HF_HUB_OFFLINE=1" in message and "python -m optimum_prune.assets" in message
    assert (UNCACHED_MODEL if name == "model" else "'wikitext2'") in message
    # The chain of huggingface_hub / datasets exceptions is not shown: the traceback is ours alone.
    assert "huggingface_hub" not in error["traceback"] and "datasets/load.py" not in error["traceback"]
    assert "During handling" not in error["traceback"] and "direct cause" not in error["traceback"]


@pytest.mark.parametrize("name", ["cli_model", "cli_dataset"])
def test_cli_prints_one_line_and_no_traceback(offline_report, name):
    run = offline_report[name]
    assert run["status"] == 1
    errors = [line for line in run["stderr"].splitlines() if "error" in line]
    assert len(errors) == 1, run["stderr"]
    assert errors[0].startswith("optimum-prune: error: ")
    assert "Traceback" not in run["stderr"]
    assert "HF_HUB_OFFLINE=1" in errors[0] and "python -m optimum_prune.assets" in errors[0]
    assert ("--dataset" in errors[0]) == (name == "cli_dataset")


def test_only_unreachable_hub_errors_are_recognised():
    class LocalEntryNotFoundError(FileNotFoundError):  # huggingface_hub's, by name
        pass

    try:
        try:
            raise LocalEntryNotFoundError("not cached, offline")
        except LocalEntryNotFoundError as inner:
            raise OSError("We couldn't connect to 'https://huggingface.co'") from inner
    except OSError as outer:
        assert is_hub_unreachable(outer)
    assert is_hub_unreachable(ConnectionError("Couldn't reach 'wikitext' on the Hub"))
    assert is_hub_unreachable(HubUnreachableError("x"))
    assert not is_hub_unreachable(FileNotFoundError("no such file"))
    assert not is_hub_unreachable(ValueError("bad config"))
