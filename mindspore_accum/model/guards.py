"""The driver's guarantees for ``mindspore.train.Model``: checked resume, checkpoints, a signal, the epoch's size.

``GradientAccumulationCell`` under ``Model.train`` gets what the driver
promises from these ``mindspore.train`` callbacks (``scripts/train_model.py``
uses all of them); the resume itself is the driver's,
:func:`~mindspore_accum.run.state.restore_training_state`:

* :class:`TrainCellCheckpoint` writes the train Cell's training state every so
  many micro-steps, and at the micro-step in flight when a signal comes (then
  stops ``Model.train``), with the settings a resume checks.
* :class:`NetworkCheckpoint` writes the bare network (its moving average,
  with EMA) at each epoch's end, for eval.py and the model zoo.
* :class:`EpochSizeCheck` refuses, at ``on_train_begin``, a Cell whose
  ``micro_batches_per_epoch`` is not the dataset's size: windows would leak
  across epochs without a word.
* :class:`ResumableLossMonitor` prints where the uninterrupted run did.

Why not ``ModelCheckpoint``: it writes in place, not atomically, leaves
``.tmp`` and graph files when a write fails, and after a resume it renames
its prefix and restarts its count, which only its private attributes could
undo. These write as every other file of a run does
(:func:`~mindspore_accum.run.files.replacing`), named as ``ModelCheckpoint``
names them.
"""

import logging
import os

import numpy as np
from mindspore.train import Callback, LossMonitor

from ..run.checkpoint import save_network_checkpoint
from ..run.files import position_name, position_pattern, prune
from ..run.signals import NonFiniteError
from ..run.state import TRAIN_CELL, Progress, StateDirectory, TrainingState
from .callbacks import ran_to_epoch_end

__all__ = ["TrainCellCheckpoint", "NetworkCheckpoint", "EpochSizeCheck", "ResumableLossMonitor"]

logger = logging.getLogger(__name__)


def _position(params):
    """``(epoch, micro-step of the epoch)`` of a run context's global micro-step."""
    step, per_epoch = params.cur_step_num, params.batch_num
    epoch = (step - 1) // per_epoch + 1
    return epoch, step - (epoch - 1) * per_epoch


class TrainCellCheckpoint(Callback):
    """The train Cell's training state, ``<directory>/train-<epoch>_<micro-step of the epoch>.ckpt``, the newest
    ``keep``.

    Written every ``every`` global micro-steps (None: at each epoch's end),
    counted from 0 as in the uninterrupted run after a resume too, and, given
    ``stop`` (a :class:`~mindspore_accum.run.signals.StopSignals` the caller
    holds around ``Model.train``), at the micro-step in flight when a signal
    comes; then ``Model.train`` is asked to stop, and :attr:`saved_path` is the
    file. Each records ``settings`` (this run's
    :class:`~mindspore_accum.run.settings.RunSettings`) and the global micro-step. Put it last:
    the checkpoint is taken after every other callback has seen the micro-step.
    """

    def __init__(self, directory, settings, every=None, keep=5, stop=None):
        super().__init__()
        self.states = StateDirectory(directory, keep, kind=TRAIN_CELL)
        self.settings, self.every, self.stop, self.saved_path = settings, every, stop, None
        self._last = 0

    def on_train_begin(self, run_context):
        self._last = run_context.original_args().cur_step_num  # a resume's: its files are the run's already

    def on_train_step_end(self, run_context):
        params = run_context.original_args()
        every = self.every or params.batch_num
        signalled = self.stop is not None and self.stop.poll()
        if signalled or params.cur_step_num // every > self._last // every:  # a sink may pass a multiple
            self.saved_path = self._save(params)
        self._last = params.cur_step_num
        if signalled:
            logger.info("saved the train Cell to %s (micro-step %d)", self.saved_path, params.cur_step_num)
            run_context.request_stop()

    def _save(self, params):
        epoch, step = _position(params)
        return self.states.save(params.train_network, TrainingState(
            settings=self.settings, epoch=epoch, micro_batch=step, kind=TRAIN_CELL,
            progress=Progress(total_micro_steps=params.cur_step_num)))


class NetworkCheckpoint(Callback):
    """At each epoch's end, the bare network as ``<directory>/<prefix>-<epoch>_<micro-steps>.ckpt``; the newest kept.

    With ``ema`` (the Cell's :class:`~mindspore_accum.core.ema.ExponentialMovingAverage`), it holds the
    averages under the network's own names, so eval.py and the model zoo load it unchanged; the raw weights
    and the averages are both in the train Cell's checkpoint.
    """

    def __init__(self, network, directory, prefix, ema=None):
        super().__init__()
        self.network, self.directory, self.prefix, self.ema = network, os.fspath(directory), prefix, ema

    def on_train_epoch_end(self, run_context):
        params = run_context.original_args()
        if not ran_to_epoch_end(params):
            return
        path = os.path.join(self.directory, position_name(self.prefix, *_position(params)))
        save_network_checkpoint(self.network, path, self.ema)
        prune(self.directory, position_pattern(self.prefix), 1, kept=path)


class EpochSizeCheck(Callback):
    """Refuses a ``GradientAccumulationCell`` whose ``micro_batches_per_epoch`` is not the dataset's size.

    ``Model`` knows the size only when training begins, so the check is here.
    """

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    def on_train_begin(self, run_context):
        size = run_context.original_args().batch_num
        expected = self.cell.micro_batches_per_epoch
        if expected is not None and expected != size:
            raise ValueError(f"micro_batches_per_epoch={expected} but the dataset gives {size} micro-batches an "
                             f"epoch: build the Cell with micro_batches_per_epoch=dataset.get_dataset_size()")


class ResumableLossMonitor(LossMonitor):
    """``LossMonitor``'s lines, at the micro-steps of the uninterrupted run's after a resume too, logged (the
    scripts log to stdout, where ``LossMonitor`` prints).

    ``LossMonitor`` counts ``per_print_times`` from its own start, so a run
    resumed at micro-step 10 printed at 13, 16, ... instead of 12, 15, ....
    This one prints at the multiples of ``per_print_times`` of the global
    micro-step (put it after the callback that sets ``cur_step_num`` to the
    resumed one).

    With ``window_ends`` (``epoch -> the 1-based micro-steps of the epoch that close a window``, as
    :meth:`~mindspore_accum.data.windowed_data.WindowedDataset.window_ends` gives), ``per_print_times`` counts
    windows, and a line is printed only where a window closes: windows of varying micro-batches never put one
    in mid-window, and a resumed run prints where the uninterrupted one did.
    """

    def __init__(self, per_print_times=1, window_ends=None):
        super().__init__(per_print_times)
        self.every, self._window_ends = per_print_times, window_ends

    def step_end(self, run_context):
        params = run_context.original_args()
        epoch, step = params.get("cur_epoch_num", 1), (params.cur_step_num - 1) % params.batch_num + 1
        loss = float(np.asarray(params.net_outputs.asnumpy()).reshape(-1)[0])
        if not np.isfinite(loss):  # the Cell's NaN for a window that diverged (run.signals): the run stops
            raise NonFiniteError(f"the loss is {loss} at epoch {epoch}, micro-step {step}: training stopped, "
                                 f"nothing saved after it; lower the learning rate or check the data")
        if self._window_ends is None:
            due = params.cur_step_num % self.every == 0
        else:
            ends = self._window_ends(epoch)
            due = step in ends and (ends.index(step) + 1) % self.every == 0
        if due:
            logger.info("epoch: %d step: %d, loss is %s", epoch, step, loss)
