"""Recorded digests of pruned weights, one record per floating-point environment.

Bitwise equality only holds where the floating-point libraries compute as they did when the digests were recorded:
the same torch and transformers, the same CPU capability, and the same CPU make (MKL and oneDNN take other code
paths on AMD than on Intel at the same AVX-512 capability: every digest differed). A digest file holds one record
per environment; a test finds the record of the machine it runs on, or is skipped, saying which environments were
recorded. Recording adds or replaces this environment's record only, so digests from the code before a change can be
added on a new machine from a checkout whose results are trusted.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import benchmark_module

#: The CPU's marketing name, as the benchmark pages give it.
cpu_model = benchmark_module("common").cpu_model


def environment() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu": cpu_model(),
    }


def _records(path: str) -> list[dict]:
    try:
        with open(path) as handle:
            return json.load(handle)["records"]
    except FileNotFoundError:
        return []


def recorded_or_skip(path: str) -> dict[str, str]:
    """The digests recorded in this environment; skips the calling test where there are none."""
    here, records = environment(), _records(path)
    for record in records:
        if record["environment"] == here:
            return record["digests"]
    pytest.skip(f"no digests recorded for {here}; recorded: {[r['environment'] for r in records]}")


def record(path: str, digests: dict[str, str]) -> None:
    here = environment()
    records = [r for r in _records(path) if r["environment"] != here] + [{"environment": here, "digests": digests}]
    with open(path, "w") as handle:
        json.dump({"records": records}, handle, indent=1, sort_keys=True)
        handle.write("\n")
