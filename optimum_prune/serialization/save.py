"""Saving a pruned checkpoint all at once or not at all.

The checkpoint is written into a hidden staging folder beside the target (`.NAME.partial-XXXX`), flushed to disk,
and then swapped with the target in one step: on Linux, `renameat2(RENAME_EXCHANGE)` exchanges the two folders
atomically, so a reader (or a process killed at any instant) sees either the complete old checkpoint or the complete
new one, never a mix; the old one is then deleted. Where the exchange is not available (other systems, some
filesystems), the old folder is first renamed aside (`.NAME.old-XXXX`) and the new one renamed into place; a kill
between those two renames leaves the target missing and the complete old checkpoint aside, and the next save to the
same target puts it back before anything else. Staging folders left by killed runs are removed by the next save.

Replacing the target as a whole is what makes an overwrite clean: shards and index files of an older checkpoint,
which a file-by-file copy would leave beside the new weights, are gone with the old folder.

Permissions are those of a plain `save_pretrained`: a new checkpoint folder gets 0o777 and its files 0o666, less the
process umask (the weights too, which safetensors itself writes 0o600); an overwritten folder keeps its own mode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import secrets
import shutil
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from ..configuration import CONFIG_NAME, PruningConfig
from .layout import write_loading_guard

__all__ = ["CheckpointTargetError", "save_pruned_checkpoint"]

_STAGING_INFIX = ".partial-"
_OLD_INFIX = ".old-"
#: Files whose presence says a folder holds a checkpoint that a save may replace as a whole.
_CHECKPOINT_MARKERS = ("config.json", CONFIG_NAME, "model.safetensors", "model.safetensors.index.json")


def _after_step(step: str) -> None:
    """Called with the name of each step as it completes ("weights", "staged", "swapped", "old-moved-aside"); tests
    replace it to stop a saving process at a chosen point (see tests/test_save.py)."""


class CheckpointTargetError(ValueError):
    """The save target may not be replaced: it is (or holds) the input model, or a folder that is no checkpoint."""


def save_pruned_checkpoint(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    tokenizer: Any | None = None,
    pruning_config: PruningConfig | None = None,
    model_card: Any | None = None,
    protected: Iterable[str | os.PathLike | None] = (),
) -> Path:
    """Write the model, tokenizer, `pruning_config.json` and README.md into `save_directory`, replacing it whole.

    Args:
        model: The model; written with its own `save_pretrained` (safetensors, config.json).
        save_directory: Target folder. It may be missing, empty, or hold an earlier checkpoint (config.json,
            pruning_config.json or safetensors weights), which is replaced as a whole: no file of it remains.
        tokenizer, pruning_config, model_card: Written beside the weights when given.
        protected: Folders that must survive the save, e.g. the input model's folder: the target may be neither
            one of them nor a folder that contains one.

    Returns:
        The target folder.

    Raises:
        NotADirectoryError: The target exists and is a file.
        CheckpointTargetError: The target is (or contains) a protected folder, or is a non-empty folder that holds
            no checkpoint (replacing it would delete files that are not ours).
        OSError: Writing failed (a full disk, a bad tokenizer); the target is then as it was.
    """
    target = Path(os.path.abspath(os.path.expanduser(save_directory)))
    if target.is_symlink():
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"Cannot save to {str(target)!r}: it exists and is not a folder.")
    _check_not_protected(target, protected)
    target.parent.mkdir(parents=True, exist_ok=True)
    _recover(target)
    if target.exists() and any(target.iterdir()) and not _is_checkpoint(target):
        raise CheckpointTargetError(
            f"Cannot save to {str(target)!r}: it is a non-empty folder that holds no checkpoint, and saving replaces "
            "the whole folder. Choose a new or empty folder."
        )

    # The process id in the name tells a later save whether this folder is stale or another save's work in progress.
    staging = _new_folder(target.parent, f".{target.name}{_STAGING_INFIX}{os.getpid()}-")
    try:
        model.save_pretrained(staging)
        write_loading_guard(staging)
        _after_step("weights")
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if pruning_config is not None:
            pruning_config.to_json_file(staging / CONFIG_NAME)
        if model_card is not None:
            model_card.save(staging / "README.md")
        _open_up_files(staging)
        _sync_tree(staging)
        _after_step("staged")
        if not target.exists():
            os.replace(staging, target)
            _sync_folder(target.parent)
            _after_step("swapped")
            return target
        # An overwritten checkpoint keeps its folder's permissions, as an overwrite by `save_pretrained` would.
        os.chmod(staging, target.stat().st_mode & 0o7777)
        if _exchange(staging, target):
            _sync_folder(target.parent)
            _after_step("swapped")
            shutil.rmtree(staging, ignore_errors=True)  # now the old checkpoint
            return target
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}{_OLD_INFIX}{os.getpid()}-", dir=target.parent))
        os.replace(target, old)
        _after_step("old-moved-aside")
        os.replace(staging, target)
        _sync_folder(target.parent)
        _after_step("swapped")
        shutil.rmtree(old, ignore_errors=True)
        return target
    except BaseException:
        if staging.exists() and staging.resolve() != target:
            shutil.rmtree(staging, ignore_errors=True)
        _recover(target)
        raise


def _new_folder(parent: Path, prefix: str) -> Path:
    """Make a new folder `prefix` + 8 random characters in `parent` with the permissions `save_pretrained`'s
    `os.makedirs` gives a new folder: 0o777 less the umask (or as a default ACL of `parent` says). Unlike
    `tempfile.mkdtemp` (0o700), so that the staging folder can become the checkpoint folder as it is."""
    for _ in range(100):
        path = parent / f"{prefix}{secrets.token_hex(4)}"
        try:
            os.mkdir(path, 0o777)
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"No free name for a folder {prefix}XXXXXXXX in {str(parent)!r}")


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:  # Linux: read without changing it
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o077)  # elsewhere the only way to read it is to set it (briefly to the strictest sensible value)
    os.umask(umask)
    return umask


def _open_up_files(folder: Path) -> None:
    """Give every file of `folder` at least the permissions a file made with `open()` gets, 0o666 less the umask.

    safetensors (0.8) writes through a temporary file that it creates 0o600 and renames into place, whatever the
    umask, so `model.safetensors` would be readable by its owner alone while config.json beside it is not (see
    safetensors issue #782). Permissions are only added, never removed, so a default ACL that gave more stays."""
    wanted = 0o666 & ~_umask()
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            mode = stat.S_IMODE(os.lstat(path).st_mode)
            if mode & wanted != wanted:
                os.chmod(path, mode | wanted)


def _check_not_protected(target: Path, protected: Iterable[str | os.PathLike | None]) -> None:
    real_target = os.path.realpath(target)
    for folder in protected:
        if folder is None or not os.path.isdir(folder):
            continue  # a Hub id, or nothing on disk to lose
        real = os.path.realpath(folder)
        if real == real_target or real.startswith(real_target.rstrip(os.sep) + os.sep):
            raise CheckpointTargetError(
                f"Cannot save to {str(target)!r}: it is (or contains) the input model's folder {str(folder)!r}, "
                "which saving would replace. Choose another output folder."
            )


def _is_checkpoint(folder: Path) -> bool:
    names = {entry.name for entry in folder.iterdir()}
    return any(marker in names for marker in _CHECKPOINT_MARKERS) or any(n.endswith(".safetensors") for n in names)


def _recover(target: Path) -> None:
    """Finish what a killed save left beside `target`: put a set-aside old checkpoint back, drop staging folders."""
    leftovers = sorted(target.parent.glob(f".{target.name}{_OLD_INFIX}*"), key=lambda p: p.stat().st_mtime)
    if leftovers and not target.exists():
        # Killed between the two renames of the fallback path: the newest set-aside folder is the complete old one.
        os.replace(leftovers.pop(), target)
    for stale in [*leftovers, *target.parent.glob(f".{target.name}{_STAGING_INFIX}*")]:
        if not _owner_alive(stale.name):
            shutil.rmtree(stale, ignore_errors=True)


def _owner_alive(name: str) -> bool:
    """Whether the process that made the staging folder `name` (".NAME.partial-PID-XXXX") still runs."""
    try:
        pid = int(name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return False
    if pid == os.getpid():
        return False  # this process saves one folder at a time: anything of ours lying there is stale
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # it exists, owned by someone else
    return True


def _sync_tree(folder: Path) -> None:
    """Flush every file of `folder` to disk, so a power loss after the swap cannot leave empty files behind it."""
    for root, _, files in os.walk(folder):
        for name in files:
            descriptor = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
        _sync_folder(Path(root))


def _sync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows cannot open folders; the rename itself is still atomic there
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_renameat2: Any = None


def _exchange(first: Path, second: Path) -> bool:
    """Atomically swap two folders (Linux renameat2 RENAME_EXCHANGE); False where that is not supported."""
    global _renameat2
    if os.environ.get("OPTIMUM_PRUNE_NO_RENAME_EXCHANGE"):  # exercises the two-rename path in tests
        return False
    if _renameat2 is None:
        _renameat2 = False
        library = ctypes.util.find_library("c")
        if library and os.name == "posix":
            try:
                function = ctypes.CDLL(library, use_errno=True).renameat2
            except (OSError, AttributeError):
                function = None
            if function is not None:
                function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                function.restype = ctypes.c_int
                _renameat2 = function
    if not _renameat2:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):
        return False  # the filesystem or kernel cannot exchange: fall back to two renames
    raise OSError(code, f"Cannot swap {str(first)!r} into {str(second)!r}: {os.strerror(code)}")
