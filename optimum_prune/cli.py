"""`optimum-prune`: the same command as `optimum-cli prune`, as a console script of its own.

    optimum-prune -m MODEL --sparsity 0.2 --criterion activation --dataset calibration.txt OUTPUT

The options and the work are those of `optimum_prune.commands.prune`; only the program name differs.
"""

from __future__ import annotations

import argparse
import sys

from .commands.prune import add_prune_arguments
from .commands.prune_run import run_prune

__all__ = ["build_parser", "main"]


def build_parser(prog: str = "optimum-prune") -> argparse.ArgumentParser:
    """The argument parser of `optimum-prune` (the options of `optimum-cli prune`)."""
    return add_prune_arguments(argparse.ArgumentParser(prog=prog))


def main(argv: list[str] | None = None) -> int:
    """Parse `argv` (default: the command line), prune, and return the exit status.

    0 on success, 1 when pruning could not be done (the reason is one line on stderr), 2 for malformed arguments;
    `--help` returns 0 after printing the help.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, or a malformed argument (already reported on one line)
        return int(done.code or 0)
    return run_prune(args, prog=parser.prog)


if __name__ == "__main__":
    sys.exit(main())
