"""The file layer: how every file of a run is written, named, read, found, pruned and cleaned up.

Each format is a thin module over it: the model checkpoint
(:mod:`.checkpoint`), the training state (:mod:`.state`), the train-Cell
checkpoint (:mod:`~mindspore_accum.model.guards`), the metrics file and the
pictures. The run lock is :mod:`.lock`.

* :func:`replacing`: the one write policy. A temporary file in the same
  directory, fsynced, renamed over the target, the rename fsynced; never half
  a file, and a failed write never replaces a good one.
  :func:`write_checkpoint_atomically` is it for ``mindspore.save_checkpoint``.
* :func:`position_name`: ``<prefix>-<epoch>_<n>.ckpt``, the one name of a
  file that records a training position.
* :func:`read_checkpoint`: the whole file parsed and its CRC checked, or one
  :class:`CheckpointError` naming the file.
* :func:`files_in`, :func:`newest_file` and :func:`file_or_newest`: a
  directory's files of a pattern, by the training position their names
  record; :func:`prune`: all but the furthest few deleted.
* :func:`remove_partial_files`: what a dead run left half-written.
"""

import contextlib
import errno
import fnmatch
import logging
import os
import re
import tempfile

import mindspore as ms

__all__ = ["CheckpointError", "check_writable_directory", "replacing", "write_checkpoint_atomically",
           "read_checkpoint", "position_name", "position_pattern", "files_in", "newest_file", "file_or_newest", "prune",
           "remove_partial_files"]

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be written, read, or loaded into the given network."""


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_writable_directory(directory, what):
    """Creates ``directory`` if needed and proves it writable by creating a file in it; returns it.

    ``os.access`` is not proof: it says yes to root everywhere, /proc included.

    Raises:
        CheckpointError: naming ``what``, the directory and the reason.
    """
    directory = os.fspath(directory)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise CheckpointError(f"cannot create the {what} {directory!r}: {error.strerror or error}: choose "
                              f"another --ckpt_path") from None
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise CheckpointError(f"the {what} {directory!r} cannot be written ({error.strerror or error}): "
                              f"choose another --ckpt_path") from None
    return directory


@contextlib.contextmanager
def replacing(path):
    """Yields a temporary path beside ``path`` to write; when the block ends well, it becomes ``path``.

    The temporary (``.<name>.<pid>.tmp<suffix>``: the suffix kept, for writers that
    infer the format from it) is fsynced and renamed over ``path``, and the rename
    made durable: a crash leaves the old file or the new one. When the block
    raises, the temporary is removed and ``path`` is left as it was.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp_path = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp"
                                       f"{os.path.splitext(path)[1]}")
    try:
        yield tmp_path
        with open(tmp_path, "rb") as written:
            os.fsync(written.fileno())
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def write_checkpoint_atomically(save_obj, path, append_dict=None):
    """``mindspore.save_checkpoint`` to ``path`` with a CRC, through :func:`replacing`: never half a file.

    Raises:
        CheckpointError: the file cannot be written.
    """
    directory = os.path.dirname(os.path.abspath(path))
    try:
        with replacing(path) as tmp_path:  # it ends in .ckpt, else save_checkpoint would append it
            try:
                with _quiet_mindspore():  # a full disk: MindSpore logs its own [CRITICAL] line beside ours
                    ms.save_checkpoint(save_obj, tmp_path, append_dict=append_dict, crc_check=True)
            finally:  # the partial file save_checkpoint writes first (.tmp for .ckpt), which a full disk leaves
                partial = os.path.splitext(tmp_path)[0] + ".tmp"
                if os.path.exists(partial):
                    os.remove(partial)
    except OSError as error:  # the free space after the clean-up: what the user has to work with
        raise CheckpointError(f"cannot write checkpoint {path!r}: {error.strerror or error}"
                              + _space_note(error, save_obj, directory)) from None


def _space_note(error, save_obj, directory):
    """For a full disk: how much the checkpoint needs against what is free."""
    if error.errno != errno.ENOSPC:
        return ""
    params = save_obj.get_parameters() if hasattr(save_obj, "get_parameters") else (e["data"] for e in save_obj)
    needed = sum(param.nbytes for param in params)
    stats = os.statvfs(directory)
    return (f" (it needs about {needed / 1024:.0f} KiB; {stats.f_bavail * stats.f_frsize / 1024:.0f} KiB are free in "
            f"{directory}): free some space or choose another --ckpt_path")


#: ``.<name>.<pid>.tmp<suffix>`` (:func:`replacing`'s) and ``.<name>.<pid>.tmp.tmp`` (save_checkpoint's partial file).
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.tmp(\.\w+)?$")


def remove_partial_files(directory):
    """Deletes :func:`replacing`'s temporaries of processes that no longer run from ``directory``; returns them.

    A live process's are left alone: only a run holding the directory's lock
    (:func:`~mindspore_accum.run.lock.own_outputs`) calls it.
    """
    removed = []
    for entry in os.scandir(directory) if os.path.isdir(directory) else ():
        match = _TEMPORARY.match(entry.name)
        if entry.is_file() and match and not _alive(int(match.group(1))):
            os.remove(entry.path)
            removed.append(entry.path)
            logger.info("removed %s, left by a run that no longer writes", entry.path)
    return removed


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def read_checkpoint(path, what="checkpoint", hint="pass the file written by train.py with --ckpt_path"):
    """``mindspore.load_checkpoint`` with its CRC checked; every failure is a :class:`CheckpointError` naming the file.

    The whole file is parsed before anything is returned, so a truncated or
    corrupt file never reaches a network half-loaded.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{what} {path!r} does not exist: {hint}")
    if os.path.getsize(path) == 0:  # MindSpore's words for it name its filter_prefix arguments
        raise CheckpointError(f"{what} {path!r} is empty (0 bytes), as a write cut short leaves it: {hint}")
    try:
        with _quiet_mindspore():
            return ms.load_checkpoint(path, crc_check=True)
    except Exception as error:  # MindSpore raises ValueError, RuntimeError or protobuf errors
        reason = _first_line(error)
        if "May not have permission" in reason:  # MindSpore's words for a failed CRC or parse, which mislead
            reason = "its CRC or structure does not check"
        raise CheckpointError(f"{path!r} is not a readable MindSpore checkpoint (truncated or corrupt?): "
                              f"{reason}") from None


@contextlib.contextmanager
def _quiet_mindspore():
    """Mutes MindSpore's own ``[ERROR]`` line about an unreadable file: the CheckpointError says it, by name."""
    from mindspore import log
    mindspore_logger = log._get_logger()  # private: docs/design.md says why; GLOG_v sets its level
    level = mindspore_logger.level
    mindspore_logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        mindspore_logger.setLevel(level)


#: ``<prefix>-<epoch>_<n>.ckpt``: a training state's or train Cell's name, which records its position.
_POSITION = re.compile(r"-(\d+)_(\d+)\.ckpt$")


def position_name(prefix, epoch, n):
    """``<prefix>-<epoch>_<n>.ckpt``, ``n`` counting micro-batches of the epoch (as ``ModelCheckpoint`` names)."""
    return f"{prefix}-{epoch}_{n}.ckpt"


def position_pattern(prefix):
    """``<prefix>-*.ckpt``: the glob of :func:`position_name`'s files of ``prefix``."""
    return f"{prefix}-*.ckpt"


def files_in(directory, pattern="*.ckpt"):
    """The files of ``directory`` whose names match ``pattern``, earliest first (directories are no files).

    The training position a name records (``<prefix>-<epoch>_<n>.ckpt``, as Hugging Face's
    ``get_last_checkpoint`` reads ``checkpoint-<step>``) orders them, not the write time, which a copy
    (``cp -r``) renews on every file. Write time orders only files of one position or of none, those first.
    Names follow positions, so a run resumed from an earlier file replaces the later ones as it reaches them.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        return []
    found = [entry.path for entry in os.scandir(directory)
             if entry.is_file() and fnmatch.fnmatchcase(entry.name, pattern) and not entry.name.startswith(".")]
    return sorted(found, key=_position_then_time)


def _position_then_time(path):
    match = _POSITION.search(os.path.basename(path))
    position = (int(match.group(1)), int(match.group(2))) if match else (-1, -1)
    return position, os.stat(path).st_mtime_ns, path


def newest_file(directory, pattern="*.ckpt"):
    """The last file of :func:`files_in` (the furthest position), or None."""
    found = files_in(directory, pattern)
    return found[-1] if found else None


def file_or_newest(path, pattern="*.ckpt", refusal="{path!r} is a directory with no {pattern} file"):
    """``path`` itself when it is no directory, else its newest file of ``pattern`` (:func:`newest_file`).

    A directory holding none is refused with ``refusal``, formatted with ``path`` and ``pattern``.

    Raises:
        CheckpointError: a directory with no such file.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        return path
    found = newest_file(path, pattern)
    if found is None:
        raise CheckpointError(refusal.format(path=path, pattern=pattern))
    return found


def prune(directory, pattern, keep, kept=None):
    """Deletes all but the newest ``keep`` files of :func:`files_in` (and never ``kept``); returns them."""
    removed = []
    for old in files_in(directory, pattern)[:-keep]:
        if kept is None or os.path.abspath(old) != os.path.abspath(kept):
            os.remove(old)
            removed.append(old)
            logger.debug("removed old file %s", old)
    return removed
