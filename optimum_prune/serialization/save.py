"""Saving a pruned checkpoint all at once or not at all.

The checkpoint is written into a hidden staging folder beside the target (`.NAME.partial-XXXX`), flushed to disk,
and then swapped with the target in one step: on Linux, `renameat2(RENAME_EXCHANGE)` exchanges the two folders
atomically, so a reader (or a process killed at any instant) sees either the complete old checkpoint or the complete
new one, never a mix; the old one is then deleted. Where the exchange is not available (other systems, some
filesystems), the old folder is first renamed aside (`.NAME.old-XXXX`) and the new one renamed into place; a kill
between those two renames leaves the target missing and the complete old checkpoint aside, and the next save to the
same target puts it back before anything else.

One save at a time per target: a save holds an flock on `.NAME.lock` beside the target (the file holds its process
id) from before it looks at the target until the old checkpoint is deleted, then removes the file. A second save into
the same target meanwhile fails at once with `CheckpointBusyError`, naming that process, instead of both succeeding
and the last one winning. The system releases an flock when its process ends, however it ends, so a killed save
blocks nothing; it only leaves the small lock file, which the next save into that target takes over and removes.
Where flock is missing (Windows, some network filesystems) saves are not locked.

A SIGTERM during a save (where SIGTERM has its default action, in the main thread) first removes the staging folder
and the lock, then ends the process as SIGTERM does; the save never returns. SIGKILL (or a power loss) cannot be
caught: it leaves a model-sized staging folder (or, killed after the fallback's swap, the old checkpoint aside). Every
save removes such leftovers of dead processes from its target's parent folder, whatever their target, not only its
own: a run killed while saving `out/run1` and followed by saves into `out/run2` would otherwise keep it for good. It
spares a running save's folders (its process lives, or it holds its target's lock) and a set-aside checkpoint whose
target is missing (the only copy, which the next save into that target puts back). Leftovers in a folder that no
later save writes into stay until one does.

A Ctrl-C (KeyboardInterrupt) stops a save like any exception: before the swap the target keeps the old checkpoint;
after it, the new checkpoint is complete, and the KeyboardInterrupt carries `saved_to` (the target) so that the
command line can say it was saved rather than interrupted.

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
import re
import secrets
import shutil
import signal
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from torch import nn

from ..configuration import CONFIG_NAME, PruningConfig
from .layout import write_loading_guard

try:
    import fcntl
except ImportError:  # Windows: no flock, and saves there are not locked
    fcntl = None  # type: ignore[assignment]

__all__ = ["CheckpointBusyError", "CheckpointTargetError", "save_pruned_checkpoint"]

_STAGING_INFIX = ".partial-"
_OLD_INFIX = ".old-"
_LOCK_SUFFIX = ".lock"
#: The names of a staging or set-aside folder, ".TARGET.partial-PID-XXXX" / ".TARGET.old-PID-XXXX".
_LEFTOVER = re.compile(r"\.(?P<target>.+)\.(?P<kind>partial|old)-(?P<pid>[0-9]+)-[A-Za-z0-9_]+")
#: Names of the staging and set-aside folders this process's saves are using now.
_IN_USE: set[str] = set()
#: Files whose presence says a folder holds a checkpoint that a save may replace as a whole.
_CHECKPOINT_MARKERS = ("config.json", CONFIG_NAME, "model.safetensors", "model.safetensors.index.json")


def _after_step(step: str) -> None:
    """Called with the name of each step as it completes ("weights", "staged", "swapped", "old-moved-aside"); tests
    replace it to stop a saving process at a chosen point (see tests/test_save.py)."""


class CheckpointTargetError(ValueError):
    """The save target may not be replaced: it is (or holds) the input model, or a folder that is no checkpoint."""


class CheckpointBusyError(CheckpointTargetError):
    """Another save into the same target is running (it holds the lock file `.NAME.lock` beside the target)."""


def save_pruned_checkpoint(
    model: nn.Module,
    save_directory: str | os.PathLike,
    *,
    tokenizer: Any | None = None,
    pruning_config: PruningConfig | None = None,
    model_card: Any | None = None,
    protected: Iterable[str | os.PathLike | None] = (),
    write_weights: Callable[[Path], None] | None = None,
    finish: Callable[[Path], None] | None = None,
) -> Path:
    """Write the model, tokenizer, `pruning_config.json` and README.md into `save_directory`, replacing it whole.

    Args:
        model: The model; written with its own `save_pretrained` (safetensors, config.json).
        save_directory: Target folder. It may be missing, empty, or hold an earlier checkpoint (config.json,
            pruning_config.json or safetensors weights), which is replaced as a whole: no file of it remains.
        tokenizer, pruning_config, model_card: Written beside the weights when given.
        write_weights: Writes the weights and config.json into the staging folder instead of the model's own
            `save_pretrained` (a serving engine's layout, `serialization.serving`).
        finish: Called on the staging folder once everything is written (a serving layout's fix-ups of the
            tokenizer files).
        protected: Folders that must survive the save, e.g. the input model's folder: the target may be neither
            one of them nor a folder that contains one.

    Returns:
        The target folder.

    Raises:
        NotADirectoryError: The target exists and is a file.
        CheckpointTargetError: The target is (or contains) a protected folder, or is a non-empty folder that holds
            no checkpoint (replacing it would delete files that are not ours).
        CheckpointBusyError: Another save into the same target is running (a `CheckpointTargetError`); it is not
            waited for.
        OSError: Writing failed (a full disk, a bad tokenizer); the target is then as it was.
        KeyboardInterrupt: Ctrl-C stops a save like any exception. If it came once the new checkpoint was in place
            (while the old one was being removed, say), the exception's `saved_to` attribute is the target: the
            save is complete, and a caller can say so rather than that it was interrupted.
    """
    target = Path(os.path.abspath(os.path.expanduser(save_directory)))
    if target.is_symlink():
        target = target.resolve()
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(f"Cannot save to {str(target)!r}: it exists and is not a folder.")
    _check_not_protected(target, protected)
    target.parent.mkdir(parents=True, exist_ok=True)

    def write(staging: Path) -> None:
        if write_weights is not None:
            write_weights(staging)
        else:
            model.save_pretrained(staging)
            write_loading_guard(staging)
        _after_step("weights")
        if tokenizer is not None:
            tokenizer.save_pretrained(staging)
        if pruning_config is not None:
            pruning_config.to_json_file(staging / CONFIG_NAME)
        if model_card is not None:
            model_card.save(staging / "README.md")
        if finish is not None:
            finish(staging)

    staged: list[tuple[int, int]] = []
    try:
        with _SigtermCleanup() as sigterm:
            _save_locked(target, write, sigterm, staged)
    except KeyboardInterrupt as err:
        if staged and _identity(target) == staged[0]:
            # Ctrl-C came after the swap (during the removal of the old checkpoint, say): stop, but say the truth.
            err.saved_to = target  # type: ignore[attr-defined]
        raise
    return target


def _save_locked(
    target: Path, write: Callable[[Path], None], sigterm: _SigtermCleanup, staged: list[tuple[int, int]]
) -> None:
    lock = _lock(target)
    try:
        _recover(target)
        _sweep(target)
        if target.exists() and any(target.iterdir()) and not _is_checkpoint(target):
            raise CheckpointTargetError(
                f"Cannot save to {str(target)!r}: it is a non-empty folder that holds no checkpoint, and saving "
                "replaces the whole folder. Choose a new or empty folder."
            )
        _write_and_swap(target, write, sigterm, staged)
    finally:
        sigterm.defer()
        _unlock(target, lock)


def _write_and_swap(
    target: Path, write: Callable[[Path], None], sigterm: _SigtermCleanup, staged: list[tuple[int, int]]
) -> None:
    """Stage the checkpoint that `write` writes into a hidden folder beside `target`, then swap it in. Before the
    swap, the staging folder's identity is appended to `staged`: if the target has it, the new checkpoint is in."""
    # The process id in the name tells a later save whether this folder is stale or another save's work in progress.
    staging = _new_folder(target.parent, f".{target.name}{_STAGING_INFIX}{os.getpid()}-")
    old: Path | None = None
    _IN_USE.add(staging.name)
    try:
        write(staging)
        _open_up_files(staging)
        _sync_tree(staging)
        staged.append(_identity(staging))
        _after_step("staged")
        if not target.exists():
            os.replace(staging, target)
            _sync_folder(target.parent)
            _after_step("swapped")
            return
        # An overwritten checkpoint keeps its folder's permissions, as an overwrite by `save_pretrained` would.
        os.chmod(staging, target.stat().st_mode & 0o7777)
        if _exchange(staging, target):
            _sync_folder(target.parent)
            _after_step("swapped")
            shutil.rmtree(staging, ignore_errors=True)  # now the old checkpoint
            return
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}{_OLD_INFIX}{os.getpid()}-", dir=target.parent))
        _IN_USE.add(old.name)
        os.replace(target, old)
        _after_step("old-moved-aside")
        os.replace(staging, target)
        _sync_folder(target.parent)
        _after_step("swapped")
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        sigterm.defer()
        _IN_USE.difference_update(_names(staging, old))  # what is left of them is stale now
        if staging.exists() and staging.resolve() != target:
            shutil.rmtree(staging, ignore_errors=True)
        _recover(target)
        raise
    finally:
        _IN_USE.difference_update(_names(staging, old))


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        status = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def _names(*folders: Path | None) -> set[str]:
    return {folder.name for folder in folders if folder is not None}


class _Terminated(BaseException):
    """Raised by the SIGTERM handler of a save (`_SigtermCleanup`) to unwind it through its clean-up."""


class _SigtermCleanup:
    """For the duration of a save, make SIGTERM remove the staging folder and the lock before the process ends.

    SIGTERM's default action ends the process on the spot, leaving a model-sized staging folder. While this is
    entered, the first SIGTERM raises `_Terminated` instead (a BaseException, so no `except Exception` on the way
    swallows it), the save unwinds through its clean-up (staging folder removed, an old checkpoint set aside put back,
    lock released), and on the way out the default action is restored and SIGTERM raised again: the process ends
    killed by SIGTERM, as it would have, and the save never returns. A SIGTERM that arrives once the clean-up has
    begun (`defer`) waits for its end. Whether the target then holds the old or the new checkpoint depends on whether
    the swap was done, as for any kill.

    Only where SIGTERM has its default action and this is the main thread (the only one where Python can set a
    handler); else nothing changes: a handler someone installed stays in charge (if it raises, as `sys.exit` does,
    the save cleans up as for any exception), and an ignored SIGTERM stays ignored. The handler is installed for the
    save only, and the previous one restored after it.
    """

    def __init__(self) -> None:
        self.installed = self.received = self.deferred = False

    def __enter__(self) -> _SigtermCleanup:
        if threading.current_thread() is threading.main_thread() and (
            signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
        ):
            signal.signal(signal.SIGTERM, self._handle)
            self.installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        first, self.received = not self.received, True
        if first and not self.deferred:
            raise _Terminated

    def defer(self) -> None:
        """From now on a SIGTERM waits for the save to end: the clean-up must not be cut short."""
        self.deferred = True

    def __exit__(self, *exc_info: Any) -> None:
        if not self.installed:
            return
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if self.received:
            signal.raise_signal(signal.SIGTERM)
            raise SystemExit(128 + signal.SIGTERM)  # only where this thread blocks SIGTERM: end all the same


def _lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}{_LOCK_SUFFIX}"


def _lock(target: Path) -> int | None:
    """Take the lock of saves into `target`, the file `.NAME.lock` beside it, at once or not at all.

    Returns the descriptor holding it, or None where files cannot be locked (no `fcntl.flock` on this system or
    filesystem: the save then runs unlocked). The lock is an flock on that file, so the system releases it when its
    process ends however it ends; the file holds the process id, for the message of a save that finds it taken.

    Raises:
        CheckpointBusyError: Another save holds it.
    """
    if fcntl is None:
        return None
    path = _lock_path(target)
    patience = time.monotonic() + 1.0
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            holder = _lock_holder(path)
            if (holder is None or not _pid_alive(holder)) and time.monotonic() < patience:
                # Taken an instant ago and its process id not written yet (the file may still name the killed
                # process that left it), or only looked at by a save into another target (`_lock_is_free`): look
                # again shortly.
                time.sleep(0.05)
                continue
            who = "another save in this process" if holder == os.getpid() else "another process"
            raise CheckpointBusyError(
                f"{who} (pid {holder if holder is not None else 'unknown'}) is saving to {str(target)!r}; wait for "
                "it to finish, or save to another folder."
            ) from None
        except OSError as err:
            os.close(descriptor)
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return None  # a filesystem without flock: save unlocked, as saves always did
            raise
        except BaseException:
            os.close(descriptor)
            raise
        try:
            if _same_file(descriptor, path):
                os.ftruncate(descriptor, 0)
                os.write(descriptor, f"{os.getpid()}\n".encode())
                return descriptor
        except BaseException:
            os.close(descriptor)
            raise
        # A save that ended between our open and our flock removed the file we opened: lock the one there now.
        os.close(descriptor)


def _unlock(target: Path, descriptor: int | None) -> None:
    """Remove the lock file and release the lock (in that order, so that a save waiting on this very file sees it
    removed when it gets the lock, and takes the next one: see `_lock`)."""
    if descriptor is None:
        return
    try:
        if _same_file(descriptor, _lock_path(target)):
            os.unlink(_lock_path(target))
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _lock_is_free(target: Path) -> bool:
    """Whether no save into `target` holds its lock; a lock file that a killed save left is removed."""
    if fcntl is None:
        return True
    path = _lock_path(target)
    try:
        descriptor = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return True
    except OSError:
        return False  # cannot tell: leave that target alone
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            return True  # no flock on this filesystem: only the process ids tell
        if _same_file(descriptor, path):
            os.unlink(path)
        return True
    finally:
        os.close(descriptor)


def _lock_holder(path: Path) -> int | None:
    try:
        return int(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _same_file(descriptor: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(descriptor), os.stat(path, follow_symlinks=False))
    except FileNotFoundError:
        return False


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


def _leftovers(parent: Path) -> dict[str, list[tuple[str, Path]]]:
    """The staging ("partial") and set-aside ("old") folders of saves in `parent`, by the name of their target."""
    found: dict[str, list[tuple[str, Path]]] = {}
    with os.scandir(parent) as entries:
        for entry in entries:
            match = _LEFTOVER.fullmatch(entry.name)
            if match and entry.is_dir(follow_symlinks=False):
                found.setdefault(match["target"], []).append((match["kind"], Path(entry.path)))
    return found


def _recover(target: Path) -> None:
    """Finish what a killed save left beside `target`: put a set-aside old checkpoint back, drop staging folders.

    Called by a save that holds `target`'s lock, so no other save into `target` runs (bar one of a version without
    the lock, whose folders the process-id check spares)."""
    leftovers = _leftovers(target.parent).get(target.name, [])
    aside = sorted((path for kind, path in leftovers if kind == "old"), key=lambda p: p.stat().st_mtime)
    if aside and not target.exists():
        # Killed between the two renames of the fallback path: the newest set-aside folder is the complete old one.
        os.replace(aside.pop(), target)
    for stale in [*aside, *(path for kind, path in leftovers if kind == "partial")]:
        if not _owner_alive(stale.name):
            shutil.rmtree(stale, ignore_errors=True)


def _sweep(target: Path) -> None:
    """Remove what killed saves left beside the other targets in `target`'s folder.

    A SIGKILL (or a power loss) leaves a model-sized staging folder, and `_recover` only looks at one target: a run
    killed while saving `out/run1` and followed by saves into `out/run2` would leave it there for good. So every save
    also removes the leftovers of dead processes beside its siblings: staging folders, and set-aside old checkpoints
    whose target exists (the swap was done). It leaves alone a set-aside checkpoint whose target is missing (the only
    copy; the next save into that target puts it back), anything of a running process, and every leftover of a target
    whose lock is held (a save into it runs: on this machine or, on a shared filesystem, another, where the process
    ids mean nothing here). Leftovers in other folders wait for a save there."""
    for name, leftovers in _leftovers(target.parent).items():
        other = target.parent / name
        if name == target.name or not _lock_is_free(other):
            continue
        for kind, path in leftovers:
            if (kind == "partial" or other.exists()) and not _owner_alive(path.name):
                shutil.rmtree(path, ignore_errors=True)


def _owner_alive(name: str) -> bool:
    """Whether the process that made the folder `name` (".NAME.partial-PID-XXXX", ".NAME.old-PID-XXXX") still runs."""
    try:
        pid = int(name.rsplit("-", 2)[-2])
    except (ValueError, IndexError):
        return False
    if pid == os.getpid():
        return name in _IN_USE  # another thread's save, else a save of this process that failed to clean up
    return _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False  # os.kill would address a process group
    if pid == os.getpid():
        return True
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
