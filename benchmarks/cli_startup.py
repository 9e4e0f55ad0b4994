"""How long the command line takes to answer before any pruning: `--help`, `--version`, an instant error.

Each command runs as a fresh process (as a user types it), once to warm the file cache and then `--repeats` times;
the table gives the median and the fastest wall time, next to `import torch` for scale. The console scripts are the
ones installed next to this interpreter; PYTHONPATH points them at this source tree.

    python benchmarks/cli_startup.py            # writes benchmarks/results/cli_startup.md
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS_DIR, machine_info, today, write_text_atomically

ROOT = Path(__file__).resolve().parent.parent


def _script(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not installed next to {sys.executable} nor on PATH: run `pip install -e .`.")
    return found


def _time(command: list[str], repeats: int, env: dict[str, str]) -> tuple[float, float, int]:
    """(median, fastest) seconds over `repeats` runs after one warm-up run, and the exit status."""
    status = subprocess.run(command, env=env, capture_output=True).returncode
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, env=env, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), status


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--output", default=os.path.join(RESULTS_DIR, "cli_startup.md"))
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    missing = os.path.join(tempfile.gettempdir(), "no-such-model-folder")
    output = os.path.join(tempfile.gettempdir(), "never-written")
    commands = [
        ("optimum-prune --help", [_script("optimum-prune"), "--help"]),
        ("optimum-prune --version", [_script("optimum-prune"), "--version"]),
        ("optimum-prune -m MISSING OUTPUT (an instant error)", [_script("optimum-prune"), "-m", missing, output]),
        ("optimum-cli prune --help", [_script("optimum-cli"), "prune", "--help"]),
        ('python -c "import optimum_prune"', [sys.executable, "-c", "import optimum_prune"]),
        ('python -c "import torch" (for scale)', [sys.executable, "-c", "import torch"]),
    ]
    rows = []
    for label, command in commands:
        median, fastest, status = _time(command, args.repeats, env)
        rows.append(f"| `{label}` | {median:.2f} | {fastest:.2f} | {status} |")
        print(rows[-1], file=sys.stderr, flush=True)

    machine = machine_info()
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    text = "\n".join(
        [
            "# Command-line startup",
            "",
            f"Measured {today()} with `python benchmarks/cli_startup.py`: wall time of a fresh process, one warm-up "
            f"run then {args.repeats} timed runs (median and fastest), seconds.",
            "",
            "| command | median (s) | fastest (s) | exit status |",
            "|---|---:|---:|---:|",
            *rows,
            "",
            "Machine: "
            + "; ".join(f"{key} {value}" for key, value in machine.items() if key != "torch threads")
            + ".",
            f"Load average when the run ended: {load} (1, 5, 15 min): other jobs shared the cores, so these are upper "
            "bounds.",
            "",
        ]
    )
    write_text_atomically(args.output, text)
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
