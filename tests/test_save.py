"""Saving replaces the target folder as a whole: a kill at any point leaves the old or the new checkpoint, an
overwrite leaves no stale file, and the input model's folder is never the target."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import tiny_llama

from optimum_prune import PrunerForCausalLM, PruningConfig
from optimum_prune.serialization import save as save_module
from optimum_prune.serialization.save import CheckpointTargetError, save_pruned_checkpoint

OLD = {"seed": 0, "sparsity": 0.1}
NEW = {"seed": 1, "sparsity": 0.6}

# Builds the NEW model once, then for each job forks a child that saves it over the job's target and runs ON_STEP
# when the save reaches the job's step; this worker then runs REPORT. Forking from one worker spares each job the
# seconds of importing torch. argv[1]: the tests folder (for conftest); stdin: one job a line, "TARGET STEP EXCHANGE".
_FORKING_SAVER = """
import os, signal, sys, time
sys.path.insert(0, sys.argv[1])
from conftest import tiny_llama
from optimum_prune import PruningConfig
from optimum_prune.serialization import save

model = tiny_llama(seed={seed})
config = PruningConfig(sparsity={sparsity})
for job in sys.stdin.read().splitlines():
    target, step, exchange = job.split()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read_end)
        if exchange == "0":
            os.environ["OPTIMUM_PRUNE_NO_RENAME_EXCHANGE"] = "1"

        def after_step(done, step=step):
            if done == step:
{on_step}
        save._after_step = after_step
        save.save_pruned_checkpoint(model, target, pruning_config=config)
        os.write(write_end, b"DONE")
        os._exit(0)
    os.close(write_end)
{report}
"""

# The child stops at the job's step and this worker SIGKILLs it there.
SAVER = _FORKING_SAVER.format(
    **NEW,
    on_step="""                os.write(write_end, b"PAUSED")
                time.sleep(600)""",
    report="""    said = os.read(read_end, 16).decode()
    os.kill(child, signal.SIGKILL)
    os.waitpid(child, 0)
    os.close(read_end)
    print(target, said, flush=True)""",
)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _save(folder: Path, seed: int, sparsity: float) -> Path:
    return save_pruned_checkpoint(tiny_llama(seed=seed), folder, pruning_config=PruningConfig(sparsity=sparsity))


@pytest.fixture(scope="module")
def references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("references")
    return {"old": _hashes(_save(root / "old", **OLD)), "new": _hashes(_save(root / "new", **NEW))}


KILL_POINTS = [
    # (step the save is killed after, renameat2 exchange available, what the target then holds)
    ("weights", True, "old"),  # weights in the staging folder, nothing else yet
    ("staged", True, "old"),  # the whole new checkpoint staged and flushed, not yet swapped
    ("swapped", True, "new"),  # swapped in one step; the old one not yet deleted
    ("old-moved-aside", False, None),  # two-rename fallback, killed between the renames
    ("swapped", False, "new"),
]


def test_killed_save_leaves_the_old_or_the_new_checkpoint(references, tmp_path):
    targets = []
    for index, (step, exchange, _) in enumerate(KILL_POINTS):
        target = tmp_path / f"case{index}" / "checkpoint"
        _save(target, **OLD)
        targets.append(f"{target} {step} {int(exchange)}")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", SAVER, str(Path(__file__).parent)],
        input="\n".join(targets),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert [line.split()[-1] for line in done.stdout.splitlines()] == ["PAUSED"] * len(KILL_POINTS), done.stdout

    for index, (step, exchange, expected) in enumerate(KILL_POINTS):
        folder = tmp_path / f"case{index}"
        target = folder / "checkpoint"
        if expected is None:
            # The only moment the target is missing: the complete old checkpoint waits beside it, and the next save
            # puts it back before anything else (its first step, `_recover`, is called alone here to see that).
            assert not target.exists()
            (aside,) = folder.glob(".checkpoint.old-*")
            assert _hashes(aside) == references["old"]
            save_module._recover(target)
            expected = "old"
        assert _hashes(target) == references[expected], (step, exchange)

        # The next save cleans up whatever the killed one left (staging folder, set-aside old folder).
        _save(target, **NEW)
        assert _hashes(target) == references["new"]
        assert sorted(p.name for p in folder.iterdir()) == ["checkpoint"], (step, exchange)


def test_overwrite_leaves_no_file_of_the_old_checkpoint(references, tmp_path):
    target = tmp_path / "checkpoint"
    tiny_llama(seed=2).save_pretrained(target, max_shard_size="50KB")  # an older, sharded checkpoint
    assert len(list(target.glob("model-*.safetensors"))) > 1 and (target / "model.safetensors.index.json").exists()

    _save(target, **NEW)
    assert _hashes(target) == references["new"]  # the new files, and nothing else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_folder_that_is_no_checkpoint_is_not_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointTargetError, match="holds no checkpoint"):
        _save(tmp_path, **NEW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_the_input_models_folder_is_never_the_output(tokenizer, texts, tmp_path):
    source = tmp_path / "models" / "tiny"
    tiny_llama().save_pretrained(source)
    tokenizer.save_pretrained(source)
    before = _hashes(source)
    pruner = PrunerForCausalLM.from_pretrained(source)
    pruner.prune(PruningConfig(sparsity=0.3, dataset=texts, num_samples=2, seqlen=32), show_progress=False)
    for target in (source, tmp_path / "models", Path(os.path.relpath(source))):
        with pytest.raises(CheckpointTargetError, match="input model's folder"):
            pruner.save_pretrained(target)
    assert _hashes(source) == before
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["tiny"]


def test_a_prune_that_failed_part_way_cannot_be_saved(tokenizer, texts, tmp_path, monkeypatch):
    pruner = PrunerForCausalLM(tiny_llama(), tokenizer)
    calls = []

    def fail_on_second_layer(*args, **kwargs):
        calls.append(1)
        if len(calls) > 2:
            raise RuntimeError("out of memory")
        return original(*args, **kwargs)

    from optimum_prune import structured

    original = structured.checked_refit
    monkeypatch.setattr(structured, "checked_refit", fail_on_second_layer)
    with pytest.raises(RuntimeError, match="out of memory"):
        pruner.prune(PruningConfig(sparsity=0.3, dataset=texts, num_samples=2, seqlen=32), show_progress=False)
    with pytest.raises(RuntimeError, match="half-pruned"):
        pruner.save_pretrained(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_a_staging_folder_of_a_running_save_is_left_alone(tmp_path):
    target = tmp_path / "checkpoint"
    # One left by a process that still runs (this one's parent), one by a process that has ended.
    running = tmp_path / f".checkpoint.partial-{os.getppid()}-abc123"
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".checkpoint.partial-{int(ended.stdout)}-def456"
    for folder in (running, stale):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"half")
    _save(target, **NEW)
    assert sorted(p.name for p in tmp_path.iterdir()) == [running.name, "checkpoint"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_a_new_checkpoint_follows_the_umask(tmp_path, umask):
    """As a plain `save_pretrained` into a new folder would make it: the folder 0o777 & ~umask, every file 0o666 &
    ~umask (safetensors 0.8 writes its files 0o600 whatever the umask, and a temporary folder is 0o700)."""
    previous = os.umask(umask)
    try:
        target = _save(tmp_path / "checkpoint", **NEW)
    finally:
        os.umask(previous)
    assert oct(target.stat().st_mode & 0o7777) == oct(0o777 & ~umask)
    modes = {path.name: oct(path.stat().st_mode & 0o7777) for path in target.rglob("*")}
    assert "model.safetensors" in modes
    assert modes == dict.fromkeys(modes, oct(0o666 & ~umask))


def test_an_overwritten_checkpoint_keeps_its_folders_permissions(tmp_path):
    target = _save(tmp_path / "checkpoint", **OLD)
    target.chmod(0o750)
    _save(target, **NEW)
    assert oct(target.stat().st_mode & 0o7777) == oct(0o750)


# One save stops after writing its weights and waits; meanwhile a second save into the same target (in the worker that
# forked the first), then a save into a sibling, then, once the first has finished, another save into the target.
# argv[1]: the tests folder; argv[2]: the target.
TWO_SAVERS = textwrap.dedent(
    """
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from conftest import tiny_llama
    from optimum_prune import PruningConfig
    from optimum_prune.serialization import save

    model, config, target = tiny_llama(seed={seed}), PruningConfig(sparsity={sparsity}), sys.argv[2]
    paused_read, paused_write = os.pipe()
    go_read, go_write = os.pipe()
    first = os.fork()
    if first == 0:
        def after_step(done):
            if done == "weights":
                os.write(paused_write, b"PAUSED")
                os.read(go_read, 1)

        save._after_step = after_step
        save.save_pruned_checkpoint(model, target, pruning_config=config)
        os._exit(0)
    print("FIRST", first, os.read(paused_read, 16).decode(), flush=True)
    try:
        save.save_pruned_checkpoint(model, target, pruning_config=config)
        print("SECOND saved", flush=True)
    except save.CheckpointTargetError as err:
        print("SECOND refused", err, flush=True)
    save.save_pruned_checkpoint(model, target + "-sibling", pruning_config=config)
    os.write(go_write, b"x")
    print("FIRST status", os.waitstatus_to_exitcode(os.waitpid(first, 0)[1]), flush=True)
    save.save_pruned_checkpoint(model, target, pruning_config=config)
    print("THIRD saved", flush=True)
    """
).format(**NEW)


def test_a_second_save_into_the_same_folder_is_refused_while_the_first_runs(references, tmp_path):
    target = tmp_path / "checkpoint"
    _save(target, **OLD)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", TWO_SAVERS, str(Path(__file__).parent), str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    first = lines[0].split()[1]
    assert lines[0] == f"FIRST {first} PAUSED"
    assert lines[1].startswith(f"SECOND refused another process (pid {first}) is saving to {str(target)!r}"), lines
    assert lines[2:] == ["FIRST status 0", "THIRD saved"], lines
    assert _hashes(target) == references["new"]
    # The lock file went with the saves that held it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint", "checkpoint-sibling"]


# The child sends itself SIGTERM at the job's step and this worker reports how it ended: "DONE" if the save
# returned, and its exit status (-15: killed by SIGTERM).
SIGTERMED_SAVER = _FORKING_SAVER.format(
    **NEW,
    on_step="                os.kill(os.getpid(), signal.SIGTERM)",
    report="""    said = os.read(read_end, 16).decode() or "-"
    status = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])
    os.close(read_end)
    print(target, said, status, flush=True)""",
)

SIGTERM_POINTS = [
    # (step SIGTERM arrives after, renameat2 exchange available, what the target then holds: None if missing)
    ("weights", True, "old"),
    ("staged", True, "old"),
    ("swapped", True, "new"),  # the save is complete, but the process was still told to end, and ends
    ("old-moved-aside", False, "old"),  # the two-rename fallback, between the renames: the old one is put back
    ("swapped", False, "new"),
    ("weights", True, None),  # a save into a new folder
]


def test_sigterm_during_a_save_cleans_up_and_still_ends_the_process(references, tmp_path):
    jobs = []
    for index, (step, exchange, expected) in enumerate(SIGTERM_POINTS):
        target = tmp_path / f"case{index}" / "checkpoint"
        if expected is None:
            target.parent.mkdir()
        else:
            _save(target, **OLD)
        jobs.append(f"{target} {step} {int(exchange)}")
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-c", SIGTERMED_SAVER, str(Path(__file__).parent)],
        input="\n".join(jobs),
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    # Every save ended its process as SIGTERM does (never reporting success), after removing its staging folder.
    assert [line.split()[1:] for line in done.stdout.splitlines()] == [["-", "-15"]] * len(SIGTERM_POINTS), done
    for index, (step, exchange, expected) in enumerate(SIGTERM_POINTS):
        folder = tmp_path / f"case{index}"
        left = sorted(p.name for p in folder.iterdir())
        if expected is None:
            assert left == [], (step, exchange)
        else:
            assert left == ["checkpoint"], (step, exchange)
            assert _hashes(folder / "checkpoint") == references[expected], (step, exchange)


def test_the_sigterm_handler_is_the_saves_only_while_it_saves(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(save_module, "_after_step", lambda step: seen.append(signal.getsignal(signal.SIGTERM)))
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    _save(tmp_path / "default", **NEW)
    assert all(callable(handler) for handler in seen) and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    # A handler someone else installed (or SIG_IGN) stays in charge during the save, and after it.
    for theirs in (lambda signum, frame: None, signal.SIG_IGN):
        seen.clear()
        previous = signal.signal(signal.SIGTERM, theirs)
        try:
            _save(tmp_path / "theirs", **NEW)
            assert seen and all(handler is theirs for handler in seen)
            assert signal.getsignal(signal.SIGTERM) is theirs
        finally:
            signal.signal(signal.SIGTERM, previous)


def test_a_save_removes_what_killed_saves_left_beside_other_targets_in_its_folder(tmp_path):
    """SIGKILL cannot be caught: a killed save leaves its staging folder (or, after the two-rename fallback's swap,
    the old checkpoint set aside). Any save into the same parent folder removes those of dead processes, whatever
    their target, except a set-aside checkpoint whose target is missing (the only copy: its own next save puts it
    back), and anything of a save that runs, or that holds its target's lock."""
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead, running = int(ended.stdout), os.getppid()
    (tmp_path / "other").mkdir()
    (tmp_path / "held").mkdir()
    names = {
        f".other.partial-{dead}-abcd1234": False,  # False: removed
        f".other.old-{dead}-abcd1234": False,  # `other` exists: a leftover of a finished swap
        f".other.partial-{running}-abcd1234": True,  # True: kept
        f".gone.old-{dead}-abcd1234": True,  # `gone` is missing: this is the only copy of it
        f".held.partial-{dead}-abcd1234": True,  # `held` is being saved (its lock is taken, below)
        ".notes.partial-backup": True,  # not a name a save gives
        f".a.b-c.partial-{dead}-abcd1234": False,  # a target `a.b-c`
    }
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(b"half")
    lock = save_module._lock(tmp_path / "held")
    try:
        _save(tmp_path / "checkpoint", **NEW)
    finally:
        save_module._unlock(tmp_path / "held", lock)
    kept = sorted([name for name, keep in names.items() if keep] + ["checkpoint", "held", "other"])
    assert sorted(p.name for p in tmp_path.iterdir()) == kept

    _save(tmp_path / "checkpoint", **NEW)  # `held` is no longer being saved
    assert not (tmp_path / f".held.partial-{dead}-abcd1234").exists()


@pytest.mark.parametrize(
    ("step", "exchange", "existing"),
    [("swapped", True, True), ("swapped", False, True), ("swapped", True, False), ("staged", True, True)],
)
def test_ctrl_c_after_the_swap_says_the_checkpoint_was_saved(
    references, tmp_path, monkeypatch, step, exchange, existing
):
    """A KeyboardInterrupt still stops the save, but once the new checkpoint is in place it carries `saved_to`, so
    that a caller (the CLI) can say the truth: the checkpoint was saved."""
    target = tmp_path / "checkpoint"
    if existing:
        _save(target, **OLD)
    if not exchange:
        monkeypatch.setenv("OPTIMUM_PRUNE_NO_RENAME_EXCHANGE", "1")

    def interrupt(done):
        if done == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(save_module, "_after_step", interrupt)
    with pytest.raises(KeyboardInterrupt) as caught:
        _save(target, **NEW)
    swapped = step == "swapped"
    assert getattr(caught.value, "saved_to", None) == (target if swapped else None)
    assert _hashes(target) == references["new" if swapped else "old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]
