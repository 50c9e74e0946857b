"""The training state: everything needed to continue a run exactly where it stopped, for both engines.

The model checkpoint (:mod:`.checkpoint`) holds the bare network for eval.py.
A training-state checkpoint holds, beside it, the trainer's
``state_parameters()`` in groups (``network/``, ``optimizer/``, ``buffer/``,
``scaler/`` and, with EMA, ``ema/``) and a JSON record, :class:`TrainingState`,
whose ``settings`` are the run's :class:`~mindspore_accum.run.settings.RunSettings`. It is an ordinary
MindSpore checkpoint, written atomically with a CRC. The driver writes it as ``state-*.ckpt``, the
Model path's train Cell as ``train/train-*.ckpt``; its ``kind`` says which, and so which engine resumes it.
The layout, field by field, is in docs/resuming.md, which tests/test_docs.py checks against this module.
"""

import dataclasses
import json
import logging
import os
from typing import Dict, Tuple

import mindspore as ms
import numpy as np

from ..core.validation import PathLike, check_positive_int
from .checkpoint import DRIVER, TRAIN_CELL, TRAINING_STATE_KEY, kind_of, mismatches, not_resumable
from .files import (
    CheckpointError,
    check_writable_directory,
    files_in,
    newest_file,
    position_name,
    position_pattern,
    prune,
    read_checkpoint,
    write_checkpoint_atomically,
)
from .settings import RunSettings

__all__ = ["TrainingState", "Progress", "StateDirectory", "save_training_state", "read_training_state",
           "restore_training_state", "find_resume_file", "STATE_PREFIX", "TRAIN_PREFIX",
           "DRIVER", "TRAIN_CELL"]

logger = logging.getLogger(__name__)

#: 2: the settings as one record (0.4 on). Format 1 (0.3 and before) is refused by name.
STATE_FORMAT = 2
#: Training-state files are ``state-<epoch>_<micro-batch>.ckpt`` (:func:`~mindspore_accum.run.files.position_name`).
STATE_PREFIX = "state"
STATE_PATTERN = position_pattern(STATE_PREFIX)
#: The kinds of training state each engine resumes, its own first. The train Cell resumes the driver's too: it
#: holds the same tensors and a position. The driver does not resume the train Cell's, which keeps no update
#: counts, samples or records for the driver's to continue.
RESUMES = {DRIVER: (DRIVER,), TRAIN_CELL: (TRAIN_CELL, DRIVER)}
#: Train-Cell checkpoints (the Model path's) are ``train-<epoch>_<micro-step of the epoch>.ckpt``, in
#: ``<ckpt_path>/train/``.
TRAIN_PREFIX = "train"
#: Each kind's file prefix, and so the glob of its files.
_PREFIXES = {DRIVER: STATE_PREFIX, TRAIN_CELL: TRAIN_PREFIX}
_PATTERNS = {kind: position_pattern(prefix) for kind, prefix in _PREFIXES.items()}

#: Optimizer tensors that are settings, not state: restoring them would silently
#: replace the values this run was given (--lr, --momentum, the schedule), so
#: they must match instead, like the settings below.
_OPTIMIZER_SETTINGS = ("optimizer/learning_rate", "optimizer/momentum")


@dataclasses.dataclass
class Progress:
    """A run's counters, over every ``train_process`` call of one driver and across resumes.

    The driver owns one (``driver.progress``) and its :class:`TrainingState`
    holds the same object, so a state saves the counters as they are.
    """

    #: Optimizer updates applied.
    total_updates: int = 0
    #: Micro-batches run through forward and backward.
    total_micro_steps: int = 0
    #: Samples in those micro-batches (this rank's).
    total_samples: int = 0
    #: Windows skipped because their gradient overflowed (dynamic loss scaling).
    skipped_updates: int = 0


_PROGRESS_FIELDS = tuple(field.name for field in dataclasses.fields(Progress))


@dataclasses.dataclass
class TrainingState:
    """A run's settings and position, small and named; saved as JSON in the state file.

    Settings (compared on resume):
        settings: the run's :class:`~mindspore_accum.run.settings.RunSettings`:
            the driver's own (``model`` and ``optimizer`` class names,
            ``mini_steps``, ``remainder``, ``batch_size``,
            ``micro_batches_per_epoch``, ``seed``, ``amp_level``,
            ``loss_scaler``, ``clip_grad_norm``, ``ranks``, ``weighting``,
            ``ignore_index``, ``ema_decay``) and whatever the caller passed
            as ``train_process(settings=...)``: train.py passes its flags and
            the data's fingerprint.

    Position:
        kind: who wrote it, and so who resumes it: ``"training state"`` (the
            driver) or ``"train-Cell checkpoint"`` (the Model path's train Cell,
            whose position is ``epoch``, ``micro_batch`` and
            ``progress.total_micro_steps`` alone).
        epoch: the 1-based epoch in progress (or just finished, with ``epoch_done``).
        micro_batch: micro-batches of that epoch consumed.
        epoch_done: True once the epoch's end (flush, callbacks) has run.
        progress: the driver's :class:`Progress` (saved as its four fields,
            beside the others).
        window_samples: the rows of the open window's micro-batches (its
            items, micro-batches and loss are in the buffer); 0 between windows.
        epoch_records: the epoch's updates so far, as dicts of
            :class:`~mindspore_accum.driver.epochs.UpdateRecord` fields.
        run_id: drawn when a run starts afresh and kept across its resumes;
            the metrics file's lines carry it, so that a resume keeps only its
            own run's lines.
    """

    settings: RunSettings = dataclasses.field(default_factory=RunSettings)
    epoch: int = 1
    micro_batch: int = 0
    epoch_done: bool = False
    progress: Progress = dataclasses.field(default_factory=Progress)
    window_samples: int = 0
    epoch_records: list = dataclasses.field(default_factory=list)
    run_id: str = None
    kind: str = DRIVER
    format: int = STATE_FORMAT

    def where(self):
        """The position in words, for messages."""
        if self.kind == TRAIN_CELL:
            return f"epoch {self.epoch}, micro-step {self.micro_batch}"
        return (f"epoch {self.epoch}, micro-batch {self.micro_batch}"
                + (" (end of epoch)" if self.epoch_done else "")
                + f", after {self.progress.total_updates} updates")

    def next_epoch(self):
        """Moves the position to the start of the next epoch."""
        self.epoch, self.micro_batch, self.epoch_done, self.epoch_records = self.epoch + 1, 0, False, []

    def to_json(self):
        """The record written into a state file: one flat JSON object (the counters beside the position)."""
        fields = dataclasses.asdict(self)
        fields.update(fields.pop("progress"))
        fields["settings"] = self.settings.values
        return json.dumps(fields)

    @classmethod
    def from_json(cls, text):
        """The inverse of :meth:`to_json`.

        Raises:
            ValueError, TypeError: not a record of this format.
        """
        fields = json.loads(text)
        found = fields.get("format") if isinstance(fields, dict) else fields
        if found == 1:
            raise ValueError("format 1, written by mindspore-accum 0.3 or before: finish that run with "
                             "mindspore-accum 0.4, or start afresh from its weights with --init_ckpt")
        if found != STATE_FORMAT:
            raise ValueError(f"format {found!r}, expected {STATE_FORMAT}")
        progress = Progress(**{name: fields.pop(name) for name in _PROGRESS_FIELDS if name in fields})
        settings = fields.pop("settings")
        if not isinstance(settings, dict):
            raise TypeError(f"settings is {type(settings).__name__}, expected an object")
        return cls(progress=progress, settings=RunSettings.of(settings), **fields)

    def differences(self, other):
        """The settings that differ from ``other``'s, as ``name=<ours> ... vs <theirs>`` phrases."""
        return self.settings.differences(other.settings)


def _state_tensors(trainer):
    """``{file name: live Parameter}`` of everything a resumed run must get back.

    ``trainer.state_parameters()`` gives them in groups: ``{"network":
    [...], "optimizer": [...], "buffer": [...], "scaler": [...]}``; a group's
    name is its prefix in the file.
    """
    tensors, seen = {}, set()
    for group, params in trainer.state_parameters().items():
        prefix = f"{group}/"  # the "network" group is what checkpoint.NETWORK_PREFIX reads back
        for param in params:
            if id(param) in seen:  # the optimizer also lists the network's weights
                continue
            seen.add(id(param))
            tensors[prefix + param.name] = param
    return tensors


def save_training_state(trainer, state, path):
    """Writes ``trainer``'s tensors (its ``state_parameters()``) and ``state`` to ``path`` atomically.

    The network's and optimizer's tensors must be finite: a state that would
    only reproduce a divergence is never written, so the last good one stays.
    (The buffer may hold an inf mid-window; the update stage decides about it.)

    Raises:
        CheckpointError: a tensor is not finite, or the file cannot be written.
    """
    tensors = _state_tensors(trainer)
    for name, param in tensors.items():
        if not name.startswith("buffer/") and param.dtype in (ms.float16, ms.float32, ms.float64, ms.bfloat16) \
                and not np.isfinite(param.asnumpy().astype(np.float32)).all():
            raise CheckpointError(f"not writing training state {path!r}: {name} is not finite "
                                  f"(training diverged); the last good state is kept")
    save_obj = [{"name": name, "data": param} for name, param in tensors.items()]
    record = {TRAINING_STATE_KEY: state.to_json()}
    write_checkpoint_atomically(save_obj, path, append_dict=record)
    logger.info("saved training state %s (%s)", path, state.where())
    return path


def read_training_state(path: PathLike, kind: str = DRIVER) -> Tuple["TrainingState", Dict[str, ms.Tensor]]:
    """Reads a training-state file of ``kind``: ``(TrainingState, {name: tensor})``; all of it or an error.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated, or is not
            a training state of ``kind`` (for example a model checkpoint).
    """
    path = find_resume_file(path, kind)
    try:
        saved = read_checkpoint(path, kind, "pass a state file or its directory to resume")
    except CheckpointError as error:
        intact = _newest_intact_beside(path)
        if intact is None:
            raise
        raise CheckpointError(f"{error}; the newest intact state beside it is {intact}: resume with --resume "
                              f"{intact}") from None
    found = kind_of(saved)
    if found not in RESUMES[kind]:
        raise not_resumable(path, found, kind)
    record = saved.pop(TRAINING_STATE_KEY)
    try:
        state = TrainingState.from_json(record)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path!r}: its training-state record cannot be read: {error}") from None
    return state, saved


def _newest_intact_beside(path):
    """The newest other state file in ``path``'s directory that reads whole, or None."""
    pattern = _PATTERNS[TRAIN_CELL if os.path.basename(path).startswith(TRAIN_PREFIX + "-") else DRIVER]
    for other in reversed(files_in(os.path.dirname(os.path.abspath(path)), pattern)):
        if os.path.abspath(other) == os.path.abspath(path):
            continue
        try:
            read_checkpoint(other)
        except CheckpointError:
            continue
        return other
    return None


def restore_training_state(trainer, path, expected, loaded=None):
    """Loads the state at ``path`` into ``trainer.state_parameters()`` if it fits; returns its :class:`TrainingState`.

    ``expected`` is this run's :class:`TrainingState` (its settings are
    compared, and its ``kind`` is the one to read). Everything is checked - settings, names, shapes, dtypes - before
    any tensor is touched, so a refused state leaves the trainer as it was.
    ``loaded`` is what :func:`read_training_state` already returned for
    ``path``, to spare reading the file again.

    Raises:
        CheckpointError: unreadable, or it does not fit, with the differences named.
    """
    path = find_resume_file(path, expected.kind)
    state, saved = loaded if loaded is not None else read_training_state(path, expected.kind)
    problems = state.differences(expected)
    tensors = _state_tensors(trainer)
    problems += _optimizer_setting_differences(tensors, saved)
    problems += mismatches({name: param.shape for name, param in tensors.items() if name not in _OPTIMIZER_SETTINGS},
                           {name: value.shape for name, value in saved.items() if name not in _OPTIMIZER_SETTINGS})
    if not problems:
        problems += [f"{name} is {saved[name].dtype} in the state vs {param.dtype} in this run"
                     for name, param in tensors.items() if saved[name].dtype != param.dtype]
    if problems:
        raise CheckpointError(f"cannot resume from {path!r}, it does not fit this run: " + "; ".join(problems))
    for name, param in tensors.items():
        param.set_data(ms.Tensor(saved[name].asnumpy(), dtype=param.dtype))
    logger.info("resumed from %s (%s)", path, state.where())
    return state


def _optimizer_setting_differences(tensors, saved):
    """The optimizer settings whose values differ between this run and the state, as phrases."""
    problems = []
    for name in _OPTIMIZER_SETTINGS:
        if name in tensors and name in saved:
            ours, theirs = tensors[name].asnumpy(), saved[name].asnumpy()
            if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
                problems.append(f"{name.split('/', 1)[1]} {_describe(theirs)} in the state vs {_describe(ours)} "
                                f"in this run (a resume continues the run exactly: give the same --lr, --momentum, "
                                f"--lr_schedule, --warmup_steps and, with a schedule, --epochs)")
    return problems


def _describe(values):
    values = values.reshape(-1)
    if values.size == 1:
        return f"{float(values[0]):g}"
    return f"(a schedule of {values.size} rates, {float(values[0]):g} to {float(values[-1]):g})"


def find_resume_file(path, kind):
    """``path`` itself if it is no directory; else its (or its ``train/``'s) newest state that ``kind``'s engine
    resumes (:data:`RESUMES`), its own kind first.

    ``kind`` is ``"training state"`` or ``"train-Cell checkpoint"``. A directory
    that holds only a kind the engine does not resume is refused, saying which engine resumes it.

    Raises:
        CheckpointError: a directory with no file of either kind, or only of the other.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        return path

    def newest(pattern):
        found = (newest_file(directory, pattern) for directory in (path, os.path.join(path, TRAIN_PREFIX)))
        return next((file for file in found if file is not None), None)
    for resumed in RESUMES[kind]:
        if newest(_PATTERNS[resumed]) is not None:
            return newest(_PATTERNS[resumed])
    for other, pattern in _PATTERNS.items():
        if newest(pattern) is not None:
            raise not_resumable(newest(pattern), other, kind)
    raise CheckpointError(f"--resume {path!r} is a directory with no {_PATTERNS[kind]} {kind}, in it or in its "
                          f"{TRAIN_PREFIX}/: pass a {kind}, or the directory the run to resume wrote")


class StateDirectory:
    """Where training states go: ``state-<epoch>_<micro-batch>.ckpt`` (the train Cell's: ``train-...``), the newest
    ``keep`` kept.

    Args:
        directory: created if needed; must be writable (checked now, not
            after an hour of training).
        keep: how many state files to keep; older ones are deleted after each
            successful write, as MindSpore's ``keep_checkpoint_max`` does.
        kind: :data:`DRIVER` or :data:`TRAIN_CELL`, whose files it names.
    """

    def __init__(self, directory, keep=5, kind=DRIVER):
        self.directory = os.fspath(directory)
        self.keep = check_positive_int("keep_checkpoints", keep, example=5)
        self.prefix = _PREFIXES[kind]
        check_writable_directory(self.directory, "training-state directory")
        #: The last state this object wrote, or None.
        self.last_path = None

    @staticmethod
    def files_in(directory):
        """The state files in ``directory``, earliest position first (:func:`~mindspore_accum.run.files.files_in`).

        A directory named state-old.ckpt is the user's, not a state to load or prune.
        """
        return files_in(directory, STATE_PATTERN)

    def save(self, trainer, state):
        """Writes ``state`` as ``<prefix>-<epoch>_<micro-batch>.ckpt``, then deletes all but the newest ``keep``."""
        path = os.path.join(self.directory, position_name(self.prefix, state.epoch, state.micro_batch))
        save_training_state(trainer, state, path)
        self.last_path = path
        prune(self.directory, position_pattern(self.prefix), self.keep, kept=path)
        return path
