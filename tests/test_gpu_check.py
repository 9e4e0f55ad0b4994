"""benchmarks/gpu_check.py in its CPU form (`--device cpu --quick`): the code path of the GPU check, on tiny models.

The device runs stream the blocks through `execution_device="cpu"` and the reference runs prune in memory, so
every check must pass with identical results; the table is written to a temporary folder.
"""

from __future__ import annotations

import importlib
import json
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")

pytestmark = pytest.mark.filterwarnings("ignore:LIAR fits each pruned channel")


def _gpu_check():
    sys.path.insert(0, BENCHMARKS)
    try:
        return importlib.import_module("gpu_check")
    finally:
        sys.path.remove(BENCHMARKS)


def test_quick_cpu_run_writes_the_table_and_every_check_passes(tmp_path) -> None:
    gpu_check = _gpu_check()
    output = tmp_path / "gpu.md"
    report = gpu_check.main(["--device", "cpu", "--quick", "--output", str(output)])
    planned = [
        name
        for section in gpu_check.SECTIONS
        for name, _ in gpu_check.section_rows(section, _args(gpu_check), None)[1]
    ]
    assert list(report.rows) == planned and len(planned) == 11
    for name, row in report.rows.items():
        assert row["check"] == "pass", (name, row)
        if row["masks / units equal (%)"] is not None:  # the same device twice: the same masks and units
            assert row["masks / units equal (%)"] == 100.0, name
        if row["ppl diff (%)"] is not None:
            assert row["ppl diff (%)"] == 0.0, name
    table = output.read_text()
    assert "All checks pass." in table and "| tiny (1B): 2:4 sparsegpt |" in table
    assert json.loads((tmp_path / "gpu.json").read_text())["finished"] is not None

    # A resumed run keeps the finished rows and runs nothing again.
    again = gpu_check.main(
        ["--device", "cpu", "--quick", "--output", str(output), "--resume", "--sections", "random1b"]
    )
    assert list(again.rows) == planned


def _args(gpu_check):
    return gpu_check.build_parser().parse_args(["--device", "cpu", "--quick"])


def test_a_check_fails_when_the_devices_disagree() -> None:
    gpu_check = _gpu_check()
    assert gpu_check.perplexity_failures(20.3, 20.0)[1]  # 1.5% apart
    assert not gpu_check.perplexity_failures(20.1, 20.0)[1]
    assert gpu_check.perplexity_failures(float("nan"), 20.0)[1]
    assert gpu_check.verdict(["x"]).startswith("FAIL")


def test_pack_splits_the_model_so_each_call_carries_less_than_64_mib(tmp_path) -> None:
    pytest.importorskip("gguf")
    gpu_check = _gpu_check()
    try:
        from optimum_prune.assets import smollm2_gguf, wikipedia_articles

        model = smollm2_gguf()
        wikipedia_articles()
    except ImportError as err:
        pytest.skip(f"offline assets not installed: {err}")
    gpu_check.pack(str(tmp_path))
    sizes = {}
    for part in ("a", "b"):
        folder = tmp_path / part
        sizes[part] = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert max(sizes.values()) < 60 * 2**20, sizes
    joined = (tmp_path / "a" / "smollm2.gguf.part0").read_bytes() + (
        tmp_path / "b" / "smollm2.gguf.part1"
    ).read_bytes()
    assert len(joined) == os.path.getsize(model)
    with open(model, "rb") as handle:
        assert handle.read(1 << 20) == joined[: 1 << 20]
    articles = gpu_check.read_articles(str(tmp_path / "a" / "wikipedia.jsonl.gz"))
    assert articles == list(wikipedia_articles())
    assert (tmp_path / "a" / "site" / "gguf" / "__init__.py").exists()
    assert list((tmp_path / "a" / "site").glob("gguf-*.dist-info/METADATA"))
