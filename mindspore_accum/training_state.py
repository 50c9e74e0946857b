"""The training state: everything needed to continue a run exactly where it stopped.

The model checkpoint (:mod:`.checkpoint`) holds the bare network for eval.py.
A training-state checkpoint holds, beside it:

* the network's parameters, under ``network/<name>``;
* the optimizer's state - moments, step counter, learning rate - under
  ``optimizer/<name>``;
* the accumulation buffer and the window's counters, under ``buffer/<name>``;
* the loss scaler's scale and counter, under ``scaler/<name>``;
* a JSON record, :class:`TrainingState`: the run's settings (model, optimizer,
  ``mini_steps``, batch size, seed, ...) and its position (epoch, micro-batches
  of the epoch consumed, the open window's losses, the epoch's updates so far).

It is an ordinary MindSpore checkpoint (``save_checkpoint`` with an
``append_dict``), written atomically with a CRC. Files are named
``state-<epoch>_<micro-batch>.ckpt`` after the position they hold, as
MindSpore's ``ModelCheckpoint`` names ``<prefix>-<epoch>_<step>.ckpt``.
"""

import dataclasses
import glob
import json
import logging
import os

import mindspore as ms
import numpy as np

from .checkpoint import (NETWORK_PREFIX, TRAINING_STATE_KEY, CheckpointError, check_writable_directory, mismatches,
                         read_checkpoint, write_checkpoint_atomically)
from .validation import check_positive_int

__all__ = ["TrainingState", "StateDirectory", "save_training_state", "read_training_state",
           "restore_training_state", "find_training_state", "STATE_PREFIX"]

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
#: Training-state files are ``<STATE_PREFIX><epoch>_<micro-batch>.ckpt``.
STATE_PREFIX = "state-"

#: Optimizer tensors that are settings, not state: restoring them would silently
#: replace the values this run was given (--lr, --momentum, the schedule), so
#: they must match instead, like the settings below.
_OPTIMIZER_SETTINGS = ("optimizer/learning_rate", "optimizer/momentum")

#: Settings a resumed run must share with the run that saved the state: with
#: any of them different, "continue exactly" has no meaning.
_SETTINGS = ("model", "optimizer", "mini_steps", "remainder", "batch_size", "micro_batches_per_epoch", "seed",
             "amp_level", "loss_scaler", "clip_grad_norm", "ranks")


@dataclasses.dataclass
class TrainingState:
    """A run's settings and position, small and named; saved as JSON in the state file.

    Settings (compared on resume):
        model, optimizer: class names of the network and the optimizer.
        mini_steps, remainder: the window schedule.
        batch_size: the dataset's micro-batch size, if it reports one.
        micro_batches_per_epoch: the dataset's size, if it reports one.
        seed: the seed the run was started with, if it was given.
        amp_level, loss_scaler, clip_grad_norm: mixed precision (the scaler's
            class name), and the clipping norm.
        ranks: data-parallel ranks (1 without data parallelism); the
            position counts each rank's own micro-batches.

    Position:
        epoch: the 1-based epoch in progress (or just finished, with ``epoch_done``).
        micro_batch: micro-batches of that epoch consumed.
        epoch_done: True once the epoch's end (flush, callbacks) has run.
        total_updates, total_micro_steps, total_samples, skipped_updates: the
            driver's counters.
        window_losses, window_samples: the open window's micro-batch losses
            and sizes (the tensors are in the buffer); empty between windows.
        epoch_records: the epoch's updates so far, as dicts of
            :class:`~mindspore_accum.driver.UpdateRecord` fields.
    """

    model: str
    optimizer: str
    mini_steps: int
    remainder: str
    batch_size: int = None
    micro_batches_per_epoch: int = None
    seed: int = None
    amp_level: str = "O0"
    loss_scaler: str = None
    clip_grad_norm: float = None
    ranks: int = 1
    epoch: int = 1
    micro_batch: int = 0
    epoch_done: bool = False
    total_updates: int = 0
    total_micro_steps: int = 0
    total_samples: int = 0
    skipped_updates: int = 0
    window_losses: list = dataclasses.field(default_factory=list)
    window_samples: list = dataclasses.field(default_factory=list)
    epoch_records: list = dataclasses.field(default_factory=list)
    format: int = STATE_FORMAT

    def where(self):
        """The position in words, for messages."""
        return (f"epoch {self.epoch}, micro-batch {self.micro_batch}"
                + (" (end of epoch)" if self.epoch_done else "")
                + f", after {self.total_updates} updates")

    def differences(self, other):
        """The settings that differ from ``other``'s, as ``name=<ours> ... vs <theirs>`` phrases."""
        return [f"{name}={getattr(self, name)!r} in the state vs {getattr(other, name)!r} in this run"
                for name in _SETTINGS if getattr(self, name) != getattr(other, name)]


def _state_tensors(driver):
    """``{file name: live Parameter}`` of everything a resumed run must get back."""
    tensors, seen = {}, set()
    scaler = [getattr(driver.loss_scaler, name) for name in ("scale_value", "counter")
              if isinstance(getattr(driver.loss_scaler, name, None), ms.Parameter)]
    for prefix, params in ((NETWORK_PREFIX, driver.network.get_parameters()),
                           ("optimizer/", driver.optimizer.get_parameters()),
                           ("buffer/", driver.buffer.parameters()),
                           ("scaler/", scaler)):
        for param in params:
            if id(param) in seen:  # the optimizer also lists the network's weights
                continue
            seen.add(id(param))
            tensors[prefix + param.name] = param
    return tensors


def save_training_state(driver, state, path):
    """Writes ``driver``'s tensors and ``state`` to ``path`` atomically.

    The network's and optimizer's tensors must be finite: a state that would
    only reproduce a divergence is never written, so the last good one stays.
    (The buffer may hold an inf mid-window; the update stage decides about it.)

    Raises:
        CheckpointError: a tensor is not finite, or the file cannot be written.
    """
    tensors = _state_tensors(driver)
    for name, param in tensors.items():
        if not name.startswith("buffer/") and param.dtype in (ms.float16, ms.float32, ms.float64, ms.bfloat16) \
                and not np.isfinite(param.asnumpy().astype(np.float32)).all():
            raise CheckpointError(f"not writing training state {path!r}: {name} is not finite "
                                  f"(training diverged); the last good state is kept")
    save_obj = [{"name": name, "data": param} for name, param in tensors.items()]
    record = {TRAINING_STATE_KEY: json.dumps(dataclasses.asdict(state))}
    write_checkpoint_atomically(save_obj, path, append_dict=record)
    logger.info("saved training state %s (%s)", path, state.where())
    return path


def read_training_state(path):
    """Reads a training-state file: ``(TrainingState, {name: tensor})``; all of it or an error.

    Raises:
        CheckpointError: the file is missing, unreadable, truncated, or is not
            a training state (for example a model checkpoint).
    """
    path = find_training_state(path)
    saved = read_checkpoint(path, "training state", "pass a state file or its directory to resume")
    record = saved.pop(TRAINING_STATE_KEY, None)
    if not isinstance(record, str):
        raise CheckpointError(f"{path!r} is a MindSpore checkpoint but not a training state (a model checkpoint?): "
                              f"resume from a {STATE_PREFIX}*.ckpt file")
    try:
        fields = json.loads(record)
        if fields.get("format") != STATE_FORMAT:
            raise ValueError(f"format {fields.get('format')!r}, expected {STATE_FORMAT}")
        state = TrainingState(**fields)
    except (ValueError, TypeError) as error:
        raise CheckpointError(f"{path!r}: its training-state record cannot be read: {error}") from None
    return state, saved


def restore_training_state(driver, path, expected, loaded=None):
    """Loads the state at ``path`` into ``driver``, after checking it fits; returns its :class:`TrainingState`.

    ``expected`` is this run's :class:`TrainingState` (its settings are
    compared). Everything is checked - settings, names, shapes, dtypes - before
    any tensor is touched, so a refused state leaves the driver as it was.
    ``loaded`` is what :func:`read_training_state` already returned for
    ``path``, to spare reading the file again.

    Raises:
        CheckpointError: unreadable, or it does not fit, with the differences named.
    """
    path = find_training_state(path)
    state, saved = loaded if loaded is not None else read_training_state(path)
    problems = state.differences(expected)
    tensors = _state_tensors(driver)
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


def find_training_state(path):
    """``path`` itself if it is a file; for a directory, its most recently written state file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        found = StateDirectory.files_in(path)
        if not found:
            raise CheckpointError(f"no {STATE_PREFIX}*.ckpt training state in directory {path!r}: "
                                  f"pass a state file, or the directory train.py wrote states to")
        return found[-1]
    return path


class StateDirectory:
    """Where training states go: ``state-<epoch>_<micro-batch>.ckpt``, the newest ``keep`` kept.

    Args:
        directory: created if needed; must be writable (checked now, not
            after an hour of training).
        keep: how many state files to keep; older ones are deleted after each
            successful write, as MindSpore's ``keep_checkpoint_max`` does.
    """

    def __init__(self, directory, keep=5):
        self.directory = os.fspath(directory)
        self.keep = check_positive_int("keep_checkpoints", keep, example=5)
        check_writable_directory(self.directory, "training-state directory")
        #: The last state this object wrote, or None.
        self.last_path = None

    @staticmethod
    def files_in(directory):
        """The state files in ``directory``, oldest written first.

        Write time, not the position in the name, orders them: after resuming
        from an earlier state, the files this run writes are the ones to keep.
        """
        paths = glob.glob(os.path.join(glob.escape(os.fspath(directory)), STATE_PREFIX + "*.ckpt"))
        return sorted(paths, key=lambda p: (os.stat(p).st_mtime_ns, p))

    def save(self, driver, state):
        """Writes ``state`` as ``state-<epoch>_<micro-batch>.ckpt``, then deletes all but the newest ``keep``."""
        path = os.path.join(self.directory, f"{STATE_PREFIX}{state.epoch}_{state.micro_batch}.ckpt")
        save_training_state(driver, state, path)
        self.last_path = path
        for old in self.files_in(self.directory)[:-self.keep]:
            if old != path:
                os.remove(old)
                logger.debug("removed old training state %s", old)
        return path
