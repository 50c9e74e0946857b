"""What a run's settings are: one frozen record, saved with every state and train checkpoint, compared on resume.

A *setting* is anything that changes what training computes: the window
(``mini_steps``, ``remainder``), the optimizer and its hyper-parameters, the
network with its norm policy, the data pipeline with its augmentation and a
fingerprint of the data itself, precision, clipping, the schedule, EMA and the
ranks. A resume that changes one would not continue the run "exactly", so it
is refused, and every such refusal comes from :meth:`RunSettings.differences`.

Both engines record the same :class:`RunSettings` in every training state
(:mod:`~mindspore_accum.run.state`). Each engine contributes what it knows itself
(:meth:`~mindspore_accum.core.engine.AccumulationEngine.settings`); a front end
adds its own with :meth:`RunSettings.with_flags` (the scripts add every flag
but those in their short list of run flags, so a flag added later is a setting
without anyone touching a list; one the engine records itself is not written
twice).

A record saved before a setting existed does not name it: that setting is
then not compared (and the log says so), so older states still resume.
"""

import dataclasses
import hashlib
import json
import logging
import os
from typing import List, Mapping, Optional

__all__ = ["RunSettings", "data_fingerprint"]

logger = logging.getLogger(__name__)


def _canonical(value):
    """``value`` as JSON would read it back: tuples as lists, so a saved and a live record compare equal."""
    return json.loads(json.dumps(value))


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """A run's settings, ``name -> JSON value``, frozen.

    Build one with :meth:`of` (or ``RunSettings.of(mini_steps=4, ...)``);
    ``record.values`` is a plain dict copy. Equality is by value.
    """

    items: tuple = ()

    @classmethod
    def of(cls, values: Optional[Mapping] = None, **more) -> "RunSettings":
        merged = {**(values or {}), **more}
        return cls(tuple(sorted((str(name), _canonical(value)) for name, value in merged.items())))

    @property
    def values(self) -> dict:
        return dict(self.items)

    def __getitem__(self, name):
        return self.values[name]

    def get(self, name, default=None):
        return self.values.get(name, default)

    def merged(self, other: Mapping) -> "RunSettings":
        """These settings with ``other``'s added (``other`` wins on a shared name)."""
        return RunSettings.of({**self.values, **dict(other)})

    def with_flags(self, flags: Mapping) -> "RunSettings":
        """These settings with a front end's ``{"--flag": value}``, but for the flags these already hold under
        their own name: one key per setting (a script's ``--seed`` is the engine's ``seed``)."""
        return self.merged({name: value for name, value in dict(flags).items()
                            if not (name.startswith("--") and name[2:] in self.values)})

    def to_json(self) -> str:
        return json.dumps(self.values, sort_keys=True)

    @classmethod
    def from_json(cls, text) -> "RunSettings":
        values = json.loads(text)
        if not isinstance(values, dict):
            raise ValueError(f"a settings record is a JSON object, got {type(values).__name__}")
        return cls.of(values)

    def differences(self, live: "RunSettings", saved_in="the state") -> List[str]:
        """The settings that differ between this saved record and ``live``, as phrases; empty when they fit.

        A name only one side records is not compared: the other was written
        before that setting existed (or by a caller who does not set it).
        """
        ours, theirs = self.values, live.values
        unchecked = sorted(set(ours) ^ set(theirs))
        if unchecked:
            logger.info("not compared on resume (recorded on one side only): %s", ", ".join(unchecked))
        return [f"{name}={ours[name]!r} in {saved_in} vs {theirs[name]!r} in this run"
                for name in sorted(set(ours) & set(theirs)) if ours[name] != theirs[name]]


#: Files up to this total are hashed whole; past it, each file by its size and its first and last MiB.
_WHOLE_BYTES = 1 << 30
_PIECE = 1 << 20


def data_fingerprint(path) -> Optional[str]:
    """A short hash of the data at ``path`` (a file or a directory tree): its relative names and contents.

    It names the data, not where it lies: a moved copy has the same
    fingerprint, another corpus at the same path has another. Hidden files
    (a lock, a temporary) are left out. None when ``path`` is no file or
    directory (a built-in corpus such as ``pydoc`` is named by the caller).
    A tree over 1 GiB is hashed by each file's size and its first and last
    MiB, so that a start never reads a whole ImageNet.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        files = [(os.path.basename(path), path)]
    elif os.path.isdir(path):
        files = sorted((os.path.relpath(os.path.join(root, name), path), os.path.join(root, name))
                       for root, dirs, names in os.walk(path) for name in names if not name.startswith("."))
    else:
        return None
    whole = sum(os.path.getsize(full) for _, full in files) <= _WHOLE_BYTES
    digest = hashlib.sha256()
    for relative, full in files:
        size = os.path.getsize(full)
        digest.update(f"{relative}\0{size}\0".encode())
        with open(full, "rb") as stream:
            if whole or size <= 2 * _PIECE:
                for block in iter(lambda: stream.read(_PIECE), b""):
                    digest.update(block)
            else:
                digest.update(stream.read(_PIECE))
                stream.seek(size - _PIECE)
                digest.update(stream.read(_PIECE))
    return digest.hexdigest()[:16]
