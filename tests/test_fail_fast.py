"""A shared module fixture that fails (here: a pytest-timeout timeout) runs once; the other tests fail at once, saying
they share that failure (tests/fail_fast.py, used by the real-model tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

TESTS = Path(__file__).resolve().parent

MODULE = """
import time
from pathlib import Path

from fail_fast import fail_fast_fixture

RUNS = Path(__file__).with_name("runs.txt")


@fail_fast_fixture()
def heavy():
    with RUNS.open("a") as handle:
        handle.write("heavy\\n")
    time.sleep(60)  # interrupted by the 2 s timeout
    return 1


def test_first(heavy):
    pass


def test_second(heavy):
    pass


def test_third(heavy):
    pass


def test_unrelated():
    pass
"""


def test_a_timed_out_module_fixture_runs_once_and_fails_the_others_fast(tmp_path):
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_shared.py").write_text(MODULE)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]))
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "--timeout",
            "2",
            "--junitxml",
            str(tmp_path / "report.xml"),
            "test_shared.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    elapsed = time.perf_counter() - start
    assert (tmp_path / "runs.txt").read_text().split() == ["heavy"], done.stdout[-3000:]
    cases = {case.get("name"): case for case in ElementTree.parse(tmp_path / "report.xml").iter("testcase")}
    assert not list(cases["test_unrelated"])  # passed
    for name in ("test_first", "test_second", "test_third"):
        (error,) = cases[name].findall("error")
        assert "fixture 'heavy' failed (Failed: Timeout" in error.get("message"), error.get("message")
        assert "without running it again" in error.get("message")
    # One timeout, not three: the later tests took no time of their own.
    assert sum(float(cases[name].get("time")) for name in ("test_second", "test_third")) < 1.0
    assert elapsed < 40, (elapsed, done.stdout[-3000:])
