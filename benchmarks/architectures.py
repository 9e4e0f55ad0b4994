"""The supported-architectures table, produced by running the architecture test matrix (not typed by hand).

Runs ``pytest tests/test_architectures.py`` with a JUnit XML report, reads each test's outcome per family, and
writes ``benchmarks/results/architectures.md``; unless ``--no-readme``, the same table replaces the part of
README.md between the ``<!-- architectures:start -->`` and ``<!-- architectures:end -->`` markers. Run from the
repository root: ``python benchmarks/architectures.py``. Families are the entries of tests/architectures_matrix.py.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from architectures_matrix import ARCHITECTURES, PLAIN_RELOAD, STRUCTURED  # noqa: E402
from common import RESULTS_DIR, machine_info, today, write_text_atomically  # noqa: E402

TEST_FILE = "tests/test_architectures.py"
START, END = "<!-- architectures:start -->", "<!-- architectures:end -->"


def run_matrix(junit_path: str) -> tuple[int, float]:
    """Run the matrix; return pytest's exit status and the wall time in seconds."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "pytest", TEST_FILE, "-q", "-p", "no:randomly", f"--junitxml={junit_path}"]
    start = time.perf_counter()
    status = subprocess.run(command, cwd=ROOT, env=env).returncode
    return status, time.perf_counter() - start


def outcomes(junit_path: str) -> dict[tuple[str, str], str]:
    """`(test function, family) -> "passed" | "failed" | "skipped"` from a JUnit XML report."""
    results: dict[tuple[str, str], str] = {}
    for case in ElementTree.parse(junit_path).getroot().iter("testcase"):
        name = case.get("name", "")
        if "[" not in name:
            continue
        function, family = name[:-1].split("[", 1)
        if case.find("failure") is not None or case.find("error") is not None:
            results[(function, family)] = "failed"
        elif case.find("skipped") is not None:
            results[(function, family)] = "skipped"
        else:
            results[(function, family)] = "passed"
    return results


def _cell(outcome: str | None, passed: str = "yes") -> str:
    return {"passed": passed, "failed": "**FAILED**", "skipped": "—", None: "not run"}[outcome]


def table(results: dict[tuple[str, str], str]) -> str:
    lines = [
        "| architecture | task | structured (LIAR) | unstructured (SparseGPT 50%) | 2:4 (Wanda) "
        "| reload after `import optimum_prune` | sparse checkpoint in plain transformers "
        "| structured checkpoint in plain transformers | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for entry in ARCHITECTURES:

        def get(function: str, name: str = entry.name) -> str | None:
            return results.get((function, name))

        if STRUCTURED in entry.capabilities:
            structured = _cell(get("test_structured_liar"))
        else:  # the test passes when structured pruning is refused with the one-line error
            structured = _cell(get("test_structured_liar"), passed="no (clear error)")
        reloads = [get("test_sparse_reload_in_fresh_process")]
        if STRUCTURED in entry.capabilities:
            reloads.append(get("test_structured_reload_in_fresh_process"))
        reload = "**FAILED**" if "failed" in reloads else ("not run" if None in reloads else "same logits")
        if PLAIN_RELOAD in entry.capabilities:
            plain = _cell(get("test_structured_plain_transformers_reload"), passed=f"yes: {entry.plain_recipe_text}")
        elif STRUCTURED in entry.capabilities:
            plain = "needs the plugin"
        else:
            plain = "—"
        lines.append(
            f"| {entry.name} | {entry.task} | {structured} | {_cell(get('test_unstructured_sparsegpt'))} "
            f"| {_cell(get('test_two_four_wanda'))} | {reload} "
            f"| {_cell(get('test_sparse_plain_transformers_reload'), passed='same logits')} | {plain} | {entry.note} |"
        )
    return "\n".join(lines) + "\n"


def update_readme(readme: str, block: str) -> None:
    with open(readme, encoding="utf-8") as handle:
        text = handle.read()
    if START not in text or END not in text:
        raise SystemExit(f"{readme} has no {START} ... {END} markers; add them where the table belongs.")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    write_text_atomically(readme, f"{before}{START}\n{block}{END}{after}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "architectures.md"))
    parser.add_argument("--no-readme", action="store_true", help="only write the results file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        junit = os.path.join(folder, "junit.xml")
        status, seconds = run_matrix(junit)
        if not os.path.exists(junit):
            print(f"pytest wrote no report (exit status {status})", file=sys.stderr)
            return 1
        results = outcomes(junit)
    counts = {kind: sum(1 for v in results.values() if v == kind) for kind in ("passed", "failed", "skipped")}
    rows = table(results)
    legend = (
        "Produced by `python benchmarks/architectures.py` from the outcomes of `tests/test_architectures.py` "
        "(tiny random models built from each family's config class; the families and their declared capabilities "
        "are in `tests/architectures_matrix.py`). *yes*: the test passed: the sparsity requested is met in every "
        "matrix of the blocks, counted from the weights, with no matrix zeroed; causal LMs generate; structured "
        "pruning with LIAR meets the budget. *same logits*: saved and reloaded in a fresh process, the logits are "
        "bit for bit those before saving where a dense save/reload is (within its difference otherwise). "
        "*no (clear error)*: no structured adapter yet; structured pruning stops with one line naming the "
        "supported model types. *structured checkpoint in plain transformers*: a uniform structured run (25%, "
        "activation criterion, LIAR, with the overrides named in the cell) saves a checkpoint whose sizes the "
        "family's own config class expresses, and `from_pretrained` without the plugin gives the logits before "
        "saving (bit for bit once the parameters are copied to fresh memory where a dense reload is bit for bit). "
        "Other structured runs (global allocation, a LIAR refit adding biases the config has no flag for, "
        "encoder heads) need `import optimum_prune` before loading.\n"
    )
    info = machine_info()
    footer = (
        f"\nRun {today()}: {counts['passed']} passed, {counts['failed']} failed, {counts['skipped']} skipped "
        f"(pytest exit status {status}) in {seconds:.0f} s wall time on {info['CPU']} ({info['cores']} cores, "
        f"one torch thread, a machine shared with other jobs); torch {info['torch']}, transformers "
        f"{info['transformers']}.\n"
    )
    report = f"# Supported architectures\n\n{legend}\n{rows}{footer}"
    write_text_atomically(args.output, report)
    print(report)
    if not args.no_readme:
        update_readme(
            os.path.join(ROOT, "README.md"), f"{rows}\nFrom [architectures.md](benchmarks/results/architectures.md).\n"
        )
    return 0 if status == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
