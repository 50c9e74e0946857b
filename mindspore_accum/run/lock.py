"""One run per checkpoint: an advisory lock that a crashed run cannot leave behind.

Two runs writing one checkpoint path corrupt each other: each prunes the
other's training states, their metrics interleave, and the last to finish
silently wins. :func:`run_lock` takes ``fcntl.flock`` on a lock file beside
the checkpoint (``.<name>.lock``). The kernel releases a flock when its
process ends, however it ends, so a crashed or killed run leaves no stale
lock: its lock file may stay, but the next run locks it at once. A run that
ends normally deletes its lock file. The file holds the owner's process id,
for the refusal message.

A lock covers nested paths too: a run whose output lies inside a live run's
output directory, or whose output directory holds a live run's output, is
refused by name, before it touches anything (two runs into ``d`` and
``d/train``, or a ``--ckpt_path d/model.ckpt`` beside a Model-path run into
``d``). A lock file counts as live while a process holds its flock.

Both engines take their locks through :func:`own_outputs`, which also
removes what dead runs left half-written there: only the owner cleans. The
driver takes it around ``train_process``, ``scripts/train_model.py`` around
``Model.train``. Locks are re-entrant within a process, so a library user may
hold one around the driver's own.
"""

import contextlib
import fcntl
import os

from .files import CheckpointError, remove_partial_files

__all__ = ["RunInUseError", "run_lock", "own_outputs", "lock_path_for"]

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
        _refuse_nested(path)
    except RunInUseError:
        _release(lock_file)
        raise
    try:
        yield
    finally:
        _release(lock_file)


def _release(lock_file):
    fd, _ = _held.pop(lock_file)
    os.unlink(lock_file)  # while still locked: whoever opens the name next gets a new file (see _acquire)
    os.close(fd)  # closing the descriptor releases the flock


def _refuse_nested(path):
    """Refuses ``path`` if it lies inside a live run's output directory, or its tree holds a live run's output."""
    real = os.path.realpath(os.fspath(path))
    ancestor = os.path.dirname(real)
    while ancestor != os.path.dirname(ancestor):  # up to, not including, the root
        _refuse_if_live(lock_path_for(ancestor), f"{os.fspath(path)!r} lies inside {ancestor!r}, the output of "
                                                 f"another run")
        ancestor = os.path.dirname(ancestor)
    if os.path.isdir(real):
        for root, _, names in os.walk(real):
            for name in names:
                if name.startswith(".") and name.endswith(".lock"):
                    owned = os.path.join(root, name[1:-len(".lock")])
                    _refuse_if_live(os.path.join(root, name), f"{os.fspath(path)!r} holds {owned!r}, the output "
                                                              f"of another run")


def _refuse_if_live(lock_file, what):
    """Raises :class:`RunInUseError` if another process holds the flock of ``lock_file``."""
    if os.path.realpath(lock_file) in _held:  # this process's own lock: not another run's
        return
    try:
        fd = os.open(lock_file, os.O_RDONLY)
    except OSError:
        return  # no lock file: no run there
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        raise RunInUseError(f"{what} (process {owner}), which is still running: choose a --ckpt_path outside its "
                            f"outputs, or wait for it to finish") from None
    finally:
        os.close(fd)  # a shared lock we took, if any, goes with it


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
def own_outputs(*paths):
    """:func:`run_lock` on every path that is not None, all or none; then, holding them, the dead runs' leftovers.

    A path is a checkpoint file (its directory is cleaned) or a directory (it and its ``train/``).
    """
    paths = [os.fspath(path) for path in paths if path is not None]
    with contextlib.ExitStack() as stack:
        for path in paths:
            stack.enter_context(run_lock(path))
        for path in paths:
            for directory in (path, os.path.join(path, "train")) if os.path.isdir(path) else \
                    (os.path.dirname(os.path.abspath(path)),):
                remove_partial_files(directory)
        yield
