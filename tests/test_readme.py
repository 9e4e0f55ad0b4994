"""The README's first screen: a purpose line, the two set-up commands (the test one is exactly CI's), and usage
examples that run as printed: the command-line example with the shipped SmolLM2 and Wikipedia text (`--dry-run`,
which reads the model's config and the text), then the same lines on a tiny model end to end."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_tokenizer, tiny_llama

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
SHIPPED_MODEL = '-m "$(python -m optimum_prune.assets smollm2)"'


def _code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def _section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, flags=re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def _cli_example() -> str:
    (block,) = [b for b in _code_blocks(_section("Use it"), "bash") if "optimum-prune" in b]
    return block


def test_readme_opens_with_a_purpose_then_the_two_setup_commands():
    head = README.split("\n## ", 1)[0].strip().splitlines()
    assert head[0] == "# optimum-prune" and head[2].startswith("Pruning for 🤗 Transformers")
    setup = _section("Set up")
    blocks = _code_blocks(setup, "bash")
    assert len(blocks) == 2 and all(len(block.strip().splitlines()) == 1 for block in blocks)
    demo, tests = (block.strip() for block in blocks)
    assert demo.endswith(".venv/bin/python examples/prune_causal_lm.py")
    assert tests.endswith(".venv/bin/python -m pytest")
    # The same installation, but for the extra ([demo] against [test]).
    assert demo.split('-e ".[demo]"')[0] == tests.split('-e ".[test]"')[0]
    # Each says what it does and how long it takes.
    assert re.search(r"\b\d+ min(utes)?\b", setup.split(demo)[0])
    assert re.search(r"\babout \d+ minutes\b", setup.split(demo)[1].split(tests)[0])


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    tests = _code_blocks(_section("Set up"), "bash")[1].strip()
    assert tests in ci.splitlines()


def test_readme_python_examples_compile():
    blocks = _code_blocks(README, "python")
    assert len(blocks) >= 2
    for block in blocks:
        compile(block, "README.md", "exec")
    offline = next(b for b in blocks if "smollm2_path" in b)
    assert "wikipedia_split" in offline and "from_pretrained(folder, gguf_file=gguf)" in offline


def _run_bash(script: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run README lines as a user's shell would: `python` and `optimum-prune` from this environment, this checkout's
    code, no Hub."""
    env = dict(
        os.environ,
        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_VERBOSITY="error",
        OMP_NUM_THREADS="1",
    )
    return subprocess.run(["bash", "-e", "-c", script], cwd=cwd, env=env, capture_output=True, text=True, timeout=400)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("readme") / "tiny-llama"
    tiny_llama().save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return folder


def test_readme_cli_example_runs_as_printed(tmp_path, tiny_model):
    example = _cli_example()
    assert SHIPPED_MODEL in example
    # 1. As printed, plus --dry-run: the shipped model's config and the shipped text are found and checked.
    # 2. The same lines on a tiny model (64-token windows): load, evaluate, prune, evaluate, save.
    tiny = example.replace(SHIPPED_MODEL, f"-m {tiny_model}").rstrip() + " --seqlen 64 --no-progress\n"
    script = example.rstrip() + " --dry-run\necho '=== tiny ==='\n" + tiny
    done = _run_bash(script, tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    dry, real = done.stdout.split("=== tiny ===")
    assert "Dry run: structured pruning of" in dry and "(llama)" in dry
    assert "ffn_channels 1536 -> " in dry  # SmolLM2's 30 layers, read from the GGUF
    assert (tmp_path / "wiki.jsonl").read_text(encoding="utf-8").count("\n") == 106
    assert "perplexity" in real
    saved = tmp_path / "smollm2-pruned"
    assert (saved / "config.json").exists() and (saved / "model.safetensors").exists()
