"""The driver's guarantees for ``mindspore.train.Model``: checked resume, save on a signal, the epoch's size.

``GradientAccumulationCell`` under ``Model.train`` checkpoints through
MindSpore's ``ModelCheckpoint``. What the driver promises beyond that, the
pieces here give to any ``Model`` user (``scripts/train_model.py`` uses all of
them):

* :func:`settings_record` goes into the train Cell's checkpoint
  (``CheckpointConfig(append_info=[..., settings_record(settings)],
  crc_check=True)``), and :func:`load_train_cell_checkpoint` refuses a resume
  whose settings differ, naming each - the checkpoint's optimizer state holds
  the learning rate and momentum, so loading it would silently override a new
  ``--lr`` - as well as a corrupt file (its CRC) and a network of another
  shape, each in one line.
* :class:`SaveOnSignal` turns the first SIGINT or SIGTERM into a checkpoint of
  the train Cell at the end of the micro-step in flight, with the same record,
  and stops ``Model.train``; a second signal aborts at once.
* :class:`EpochSizeCheck` refuses, at ``on_train_begin``, a Cell whose
  ``micro_batches_per_epoch`` is not the dataset's size: windows would leak
  across epochs without a word.
* :class:`ResumableCheckpoint` is ``ModelCheckpoint`` that, in a resumed run,
  names and times its files as the uninterrupted run did.
* The run lock is :func:`~mindspore_accum.run.lock.run_lock`, around
  ``Model.train``: ``with run_lock(ckpt_directory): model.train(...)``.
"""

import logging
import os

import numpy as np
from mindspore.train import Callback, LossMonitor, ModelCheckpoint

from ..run.checkpoint import mismatches, save_network_checkpoint
from ..run.files import CheckpointError, newest_file, prune, read_checkpoint, write_checkpoint_atomically
from ..run.settings import RunSettings
from ..run.signals import StopSignals

__all__ = ["SETTINGS_KEY", "settings_record", "find_train_cell_checkpoint", "read_train_cell_checkpoint",
           "load_train_cell_checkpoint", "SaveOnSignal", "EpochSizeCheck",
           "ResumableCheckpoint", "ResumableLossMonitor", "AverageCheckpoint"]

logger = logging.getLogger(__name__)

#: The entry of a train-Cell checkpoint that holds the run's settings, as JSON.
SETTINGS_KEY = "mindspore_accum_settings"


def settings_record(settings):
    """``{SETTINGS_KEY: json}`` of a :class:`~mindspore_accum.run.settings.RunSettings` (or a dict), for
    ``CheckpointConfig(append_info=[...])`` and :class:`SaveOnSignal`."""
    return {SETTINGS_KEY: _as_settings(settings).to_json()}


def _as_settings(settings):
    return settings if isinstance(settings, RunSettings) else RunSettings.of(settings)


def find_train_cell_checkpoint(path):
    """``--resume``'s file: ``path`` itself, or the newest ``train-*.ckpt`` in the directory or its ``train/``."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return path
    for directory in (path, os.path.join(path, "train")):
        newest = newest_file(directory, "train-*.ckpt")
        if newest is not None:
            return newest
    raise CheckpointError(f"--resume {path!r} is a directory with no train-*.ckpt, in it or in its train/: pass "
                          f"a train-Cell checkpoint, or the --ckpt_path of the run to resume")


def read_train_cell_checkpoint(path):
    """``(params, step, settings)`` of a train-Cell checkpoint: its tensors, its global micro-step, what it records.

    Raises:
        CheckpointError: a damaged file (CRC), or no train-Cell checkpoint.
    """
    path = os.fspath(path)
    params = read_checkpoint(path, "train-Cell checkpoint", "pass a file from <ckpt_path>/train/")
    if "step_num" not in params:
        raise CheckpointError(f"--resume {path!r} is not a train-Cell checkpoint (no step_num): pass a file from "
                              f"<ckpt_path>/train/")
    step = int(params.pop("step_num").asnumpy())
    params.pop("epoch_num", None)
    recorded = params.pop(SETTINGS_KEY, None)
    return params, step, RunSettings.from_json(recorded) if isinstance(recorded, str) else RunSettings()


def load_train_cell_checkpoint(cell, path, settings):
    """Loads a train-Cell checkpoint into ``cell`` if it fits this run; returns the global micro-step it was taken at.

    Everything is checked before anything is loaded: the file's CRC, its
    ``step_num``, the settings it records against ``settings`` (this run's
    :class:`~mindspore_accum.run.settings.RunSettings`, or a dict), and every tensor's name and shape
    against ``cell``'s.

    Raises:
        CheckpointError: naming the file and what does not fit.
    """
    path = os.fspath(path)
    params, step, saved = read_train_cell_checkpoint(path)
    differences = saved.differences(_as_settings(settings), saved_in="the checkpoint")
    problems = mismatches({p.name: p.shape for p in cell.get_parameters()},
                          {name: value.shape for name, value in params.items() if hasattr(value, "shape")})
    if differences or problems:
        raise CheckpointError(f"cannot resume from {path!r}: it does not fit this run: "
                              + "; ".join(differences + problems))
    not_loaded, _ = _load(cell, params)
    if not_loaded:
        raise CheckpointError(f"cannot resume from {path!r}: parameters not loaded: {', '.join(not_loaded[:5])}")
    return step


def _load(cell, params):
    from mindspore import load_param_into_net
    return load_param_into_net(cell, params, strict_load=True)


class SaveOnSignal(Callback):
    """On the first SIGINT or SIGTERM: checkpoint the train Cell after the micro-step in flight, then stop.

    The file is ``<directory>/<prefix>-<epoch>_<step in epoch>.ckpt``, as
    ``ModelCheckpoint`` names it, written atomically with a CRC and the
    ``epoch_num``/``step_num`` and ``record`` entries that
    :func:`load_train_cell_checkpoint` reads. After ``Model.train`` returns,
    :attr:`signum` is the signal (None if none came) and :attr:`saved_path`
    the file.

    Put it last in the callback list: the checkpoint is then taken after every
    other callback has seen the micro-step.
    """

    def __init__(self, directory, prefix="train", record=None):
        super().__init__()
        self.directory, self.prefix, self.record = os.fspath(directory), prefix, dict(record or {})
        self.signum, self.saved_path = None, None
        self._stop = None

    def on_train_begin(self, run_context):
        self._stop = StopSignals().__enter__()

    def on_train_step_end(self, run_context):
        self._stop.rearm()  # every graph run takes SIGINT over (see mindspore_accum.run.signals)
        if self._stop.signum is None or self.saved_path is not None:
            return
        params = run_context.original_args()
        step, per_epoch = params.cur_step_num, params.batch_num
        epoch = (step - 1) // per_epoch + 1
        os.makedirs(self.directory, exist_ok=True)
        path = os.path.join(self.directory, f"{self.prefix}-{epoch}_{step - (epoch - 1) * per_epoch}.ckpt")
        write_checkpoint_atomically(params.train_network, path,
                                    append_dict={"epoch_num": epoch, "step_num": step, **self.record})
        self.signum, self.saved_path = self._stop.signum, path
        logger.info("saved the train Cell to %s (micro-step %d)", path, step)
        run_context.request_stop()

    def on_train_end(self, run_context):
        if self._stop is not None:
            self._stop.__exit__(None, None, None)
            self._stop = None


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


class ResumableCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose files after a resume are named and timed as the uninterrupted run's.

    ``ModelCheckpoint`` renames its prefix to ``<prefix>_1`` when the
    directory already holds ``<prefix>-*`` files - which a resume into its own
    run's directory always does - and counts ``save_checkpoint_steps`` from
    the resumed micro-step rather than from 0. With ``resuming=True`` the
    prefix stays and the count is the uninterrupted run's. (Both fix
    MindSpore 2.10's private ``_prefix`` and ``_last_triggered_step``; the
    project pins MindSpore 2.10.) Put it after the callback that sets
    ``cur_step_num`` to the resumed micro-step.
    """

    def __init__(self, prefix, directory, config, resuming=False):
        super().__init__(prefix, directory, config)
        if resuming:
            self._prefix = prefix

    def on_train_begin(self, run_context):
        super().on_train_begin(run_context)
        step, every = run_context.original_args().cur_step_num, self._config.save_checkpoint_steps
        if step and every:
            self._last_triggered_step = step - step % every


class ResumableLossMonitor(LossMonitor):
    """``LossMonitor`` whose lines after a resume fall at the micro-steps of the uninterrupted run's.

    ``LossMonitor`` counts ``per_print_times`` from its own start, so a run
    resumed at micro-step 10 printed at 13, 16, ... instead of 12, 15, ....
    Put it after the callback that sets ``cur_step_num`` to the resumed
    micro-step. (It sets MindSpore 2.10's private ``_last_print_time``.)

    With ``window_ends`` (``epoch -> the 1-based micro-steps of the epoch that close a window``, as
    :meth:`~mindspore_accum.data.windowed_data.WindowedDataset.window_ends` gives), ``per_print_times`` counts
    windows, and a line is printed only where a window closes: windows of varying micro-batches never put one
    in mid-window, and a resumed run prints where the uninterrupted one did.
    """

    def __init__(self, per_print_times=1, window_ends=None):
        super().__init__(per_print_times)
        self._window_ends = window_ends

    def on_train_begin(self, run_context):
        step, every = run_context.original_args().cur_step_num, self._per_print_times
        if step and every and self._window_ends is None:
            self._last_print_time = step - step % every

    def step_end(self, run_context):
        if self._window_ends is None:
            return super().step_end(run_context)
        params = run_context.original_args()
        epoch, step = params.get("cur_epoch_num", 1), (params.cur_step_num - 1) % params.batch_num + 1
        loss = float(np.asarray(params.net_outputs.asnumpy()).reshape(-1)[0])
        if not np.isfinite(loss):  # as LossMonitor: divergence stops the run
            raise ValueError(f"In epoch: {epoch} step: {step}, loss is NAN or INF, training process cannot "
                             f"continue, terminating training.")
        ends = self._window_ends(epoch)
        if step in ends and (ends.index(step) + 1) % self._per_print_times == 0:
            print(f"epoch: {epoch} step: {step}, loss is {loss}", flush=True)
        return None


class AverageCheckpoint(Callback):
    """With EMA on: at each epoch's end, the bare checkpoint ``<prefix>-<epoch>_<step>.ckpt`` holds the averages.

    Under the network's own parameter names, as ``ModelCheckpoint(saved_network=network)`` would name the raw
    weights, so eval.py and the model zoo load it unchanged; only the newest is kept, as the bare checkpoint's
    ``keep_checkpoint_max=1``. The raw weights and the averages are both in the train Cell's checkpoint.
    """

    def __init__(self, ema, network, directory, prefix):
        super().__init__()
        self.ema, self.network, self.directory, self.prefix = ema, network, os.fspath(directory), prefix

    def on_train_epoch_end(self, run_context):
        params = run_context.original_args()
        if params.cur_step_num % params.batch_num:
            return  # a stop mid-epoch (a signal) also ends the epoch: its averages are no epoch's end
        name = f"{self.prefix}-{params.cur_epoch_num}_{params.batch_num}.ckpt"
        path = save_network_checkpoint(self.network, os.path.join(self.directory, name), self.ema)
        prune(self.directory, self.prefix + "-*.ckpt", 1, kept=path)
