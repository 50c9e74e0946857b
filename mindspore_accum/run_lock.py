"""One run per checkpoint: an advisory lock that a crashed run cannot leave behind.

Two runs writing one checkpoint path corrupt each other: each prunes the
other's training states, their metrics interleave, and the last to finish
silently wins. :func:`run_lock` takes ``fcntl.flock`` on a lock file beside
the checkpoint (``.<name>.lock``). The kernel releases a flock when its
process ends, however it ends, so a crashed or killed run leaves no stale
lock: its lock file may stay, but the next run locks it at once. A run that
ends normally deletes its lock file. The file holds the owner's process id,
for the refusal message.

Locks are re-entrant within a process: ``train.py`` takes the lock before it
opens its metrics file, and the driver takes it again for library users.
"""

import contextlib
import fcntl
import os

from .checkpoint import CheckpointError

__all__ = ["RunInUseError", "run_lock", "run_locks", "lock_path_for"]

_held = {}  # real path of the lock file -> [fd, depth]


class RunInUseError(CheckpointError):
    """Another live process holds the lock of this checkpoint path."""


def lock_path_for(path):
    """The lock file of a checkpoint file or a directory: ``.<name>.lock`` beside it."""
    path = os.path.abspath(os.fspath(path)).rstrip(os.sep)
    return os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")


@contextlib.contextmanager
def run_lock(path):
    """Holds the lock of ``path`` (a checkpoint file or a state directory) for the ``with`` block.

    Raises:
        RunInUseError: another process holds it; the message names the path
            and that process's id.
    """
    lock_file = os.path.realpath(lock_path_for(path))
    if lock_file in _held:
        _held[lock_file][1] += 1
        try:
            yield
        finally:
            _held[lock_file][1] -= 1
        return
    _acquire(lock_file, path)
    try:
        yield
    finally:
        fd, _ = _held.pop(lock_file)
        os.unlink(lock_file)  # while still locked: whoever opens the name next gets a new file (see _acquire)
        os.close(fd)  # closing the descriptor releases the flock


def _acquire(lock_file, path):
    while True:
        try:
            fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise CheckpointError(f"cannot create the lock file {lock_file!r}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunInUseError(f"{os.fspath(path)!r} is in use by another run (process {owner}): wait for it to "
                                f"finish, or give this run another --ckpt_path") from None
        if _same_file(fd, lock_file):
            break
        os.close(fd)  # we locked a file its owner deleted on release: lock the file the name holds now
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as error:  # a full disk fails here first, before any checkpoint is written
        os.unlink(lock_file)
        os.close(fd)
        raise CheckpointError(f"cannot write the lock file {lock_file!r}: {error.strerror}: free some space or "
                              f"choose another --ckpt_path") from None
    _held[lock_file] = [fd, 1]


def _same_file(fd, path):
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


@contextlib.contextmanager
def run_locks(*paths):
    """:func:`run_lock` on every path that is not None, for one ``with`` block; all or none."""
    with contextlib.ExitStack() as stack:
        for path in paths:
            if path is not None:
                stack.enter_context(run_lock(path))
        yield
