"""One ``train_process`` call's loop: its epochs, micro-steps and windows, what it records, saves and stops on.

:class:`~mindspore_accum.driver.loop.GradientAccumulation` builds an :class:`EpochLoop` (its checks, outputs and
resume) and runs it. Each micro-step is one graph; nothing is read back until a window closes, when the
window's figures come back at once, the record is written, the callbacks run while ``grad_mean`` still holds
the window's gradient, and ``TrainClear`` empties the buffer.
"""

import dataclasses
import itertools
import logging
import math
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import nn

from ..core.optimizers import learning_rate_of
from ..core.schedule import WindowSchedule, window_end
from ..data.cursor import iterator_from
from ..data.fetch import in_chunks
from ..data.windowed_data import WindowedDataset
from ..run.checkpoint import save_network_checkpoint
from ..run.signals import NonFiniteError, StopSignals, TrainingInterrupted
from ..run.state import StateDirectory, TrainingState

__all__ = ["EpochLoop", "UpdateRecord"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class UpdateRecord:
    """What one optimizer update consumed.

    Attributes:
        epoch: 1-based epoch of the update.
        update: 1-based count of updates within the epoch.
        micro_batches: micro-batches in the window (``mini_steps``, or fewer
            for a flushed partial window).
        samples: samples in the window (over all ranks, when data parallel;
            with ``weighting="items"`` this rank's times the ranks, exact when
            every rank's micro-batches have the same rows, as a sharded
            dataset's do).
        loss: the window's loss, a mean over its samples (its items, with
            ``weighting="items"``) - the loss of one step on the concatenated
            window (of all ranks, when data parallel).
        lr: the learning rate this update used, or None if it cannot be read.
        total_updates: updates applied by the driver so far, this one included.
        samples_seen: samples consumed by the driver so far, this window included
            (times the ranks when data parallel: every rank's shard is the same size).
        skipped: True if the window's gradient overflowed and no update was
            applied (dynamic loss scaling); ``update`` still counts it.
        loss_scale: the loss scale after this window's adjustment, or None
            without loss scaling.
        items: what the window was weighted by: its samples, or with
            ``weighting="items"`` its items (over all ranks, when data
            parallel). A window of 0 items applies no update (``skipped``).
    """

    epoch: int
    update: int
    micro_batches: int
    samples: int
    loss: float
    lr: float = None
    total_updates: int = 0
    samples_seen: int = 0
    skipped: bool = False
    loss_scale: float = None
    items: int = None


def _batch_size(inputs):
    return int(inputs[0].shape[0])


def _as_tensors(micro_batches):
    for columns in micro_batches:
        yield tuple(ms.Tensor(column) for column in columns)


@dataclasses.dataclass(eq=False)
class EpochLoop:
    """One ``train_process`` call: what it was asked, where it is, what it has made, and its loop.

    The driver builds it (:meth:`GradientAccumulation._begin`: checks, outputs, resume) and runs it; its
    methods are the call's seams: :meth:`run` over the epochs, each ``_train_epoch`` over its micro-batches
    (``_train_micro_batch``), ``_end_epoch`` (its callbacks, state and checkpoint); a window's end
    (``_close_window``, ``_drop_window``); saving and stopping.
    """

    #: The :class:`~mindspore_accum.driver.loop.GradientAccumulation` that runs it.
    driver: object
    schedule: WindowSchedule
    state: TrainingState
    #: None when this process writes no training state (no ``state_dir``, or not rank 0).
    states: Optional[StateDirectory]
    #: None when this process writes no model checkpoint.
    ckpt_path: Optional[str]
    micro_batches: Optional[int]
    callbacks: tuple
    log_every: Optional[int]
    save_every: Optional[int]
    step: nn.Cell
    stop: StopSignals = None
    #: Micro-batches in the open window: the host's count, for window_end.
    window: int = 0
    #: The dataset when it plans the windows (a WindowedDataset), else None.
    windowed: Optional[WindowedDataset] = None
    #: The epoch's records, those of a resumed state included.
    epoch_records: list = dataclasses.field(default_factory=list)
    #: The records this call made, returned at the end.
    history: list = dataclasses.field(default_factory=list)
    #: The position of the last state written, so that an interrupt does not write it twice.
    saved_at: tuple = None
    #: Micro-batches fetched at a time (:func:`~mindspore_accum.data.fetch.chunk_for`): 1 streams.
    fetch: int = 1

    def run(self, train_dataset, epoch):
        """Every epoch from the state's position to ``epoch``; returns the records this call made."""
        for batches in _epochs(train_dataset, epoch, self.state, self.micro_batches, self.fetch):
            self._train_epoch(batches)
        if not self.history and not self.epoch_records:
            self._save_network()  # no epoch ran (a finished run resumed): from the state it loaded
        return self.history

    def _train_epoch(self, batches):
        state = self.state
        if self.windowed is not None:  # a schedule's epochs differ in length
            self.micro_batches = self.windowed.micro_batches_in(state.epoch)
        self.epoch_records = [UpdateRecord(**fields) for fields in state.epoch_records]
        restored = len(self.epoch_records)  # made by the run that saved the state, not by this call
        # Every epoch: an evaluation callback may have switched the network to eval mode.
        self.driver.network_with_loss.set_train(True)
        for callback in self.callbacks:
            callback.epoch_begin(state.epoch, self.micro_batches, self.schedule, start=state.micro_batch)
        for inputs in batches:
            self._train_micro_batch(inputs)
        self._end_epoch()
        self.history.extend(self.epoch_records[restored:])
        state.next_epoch()

    def _train_micro_batch(self, inputs):
        """One micro-step; where it closed a window (full, or the epoch's end), the window's record and clear."""
        loss, figures = self.step(*inputs)  # one graph; nothing is read back unless the window closed
        self.stop.rearm()  # every graph run takes SIGINT over; take it back
        samples = _batch_size(inputs)
        state = self.state
        state.micro_batch += 1
        self.driver.progress.total_micro_steps += 1
        self.driver.progress.total_samples += samples
        self.window += 1
        state.window_samples += samples
        for callback in self.callbacks:
            callback.micro_step(state.epoch, state.micro_batch, loss, samples)
        # The rule the step Cell has just applied on the device, on the host's counts: no read-back to learn it.
        if self.windowed is not None:  # the window's micro-batches come with the data (a host tensor)
            update, epoch_end = window_end(self.window, 0, int(inputs[-1].asnumpy()), None, True)
        else:
            update, epoch_end = self.schedule.window_end(self.window, state.micro_batch, self.micro_batches)
        if update:
            record = self._close_window(figures.asnumpy())  # the window's one read-back
            if self.save_every is not None and not record.skipped and self.driver.total_updates % self.save_every == 0:
                self._save_state()
        elif epoch_end:
            self._drop_window()
        if self.stop.poll() is not None:
            self._interrupt()

    def _end_epoch(self):
        """The epoch's callbacks and its training state (and an unsized stream's partial window)."""
        state = self.state
        if self.window:  # only a stream of unknown size: the step Cell closes every other epoch's last window
            if self.schedule.flush:
                applied = self.driver.train_optim()
                self._close_window(np.array([applied.asnumpy(), *self._window_figures()], np.float32))
            else:
                self._drop_window()
        if state.micro_batch == 0:
            raise ValueError(f"train_dataset gave no micro-batches in epoch {state.epoch}: pass a "
                             f"mindspore dataset or a re-iterable such as a list, not an empty or "
                             f"one-shot iterator")
        if not self.epoch_records:
            logger.warning("epoch: %d made no optimizer update: its %d micro-batches are fewer than "
                           "mini_steps=%d and remainder='drop'", state.epoch, state.micro_batch,
                           self.schedule.mini_steps)
        for callback in self.callbacks:
            callback.epoch_end(state.epoch, self.epoch_records)
        state.epoch_done = True
        self._save_state()
        self._save_network()
        if self.stop.poll() is not None:
            self._interrupt()

    # The end of a window.

    def _drop_window(self):
        logger.info("epoch: %d dropped a partial window of %d micro-batches (remainder='drop')", self.state.epoch,
                    self.window)
        self.driver.train_clear()
        self.window, self.state.window_samples = 0, 0

    def _close_window(self, figures):
        """The record of a window whose update stage has run, then an empty window.

        ``figures``: the window's ``[applied, micro-batches, items, loss]``, read back at once.

        Callbacks see the update between the two, while ``grad_mean`` still
        holds the window's gradient.
        """
        applied, micro_batches, items, loss = bool(figures[0]), int(figures[1]), int(round(float(figures[2]))), \
            float(figures[3])
        state = self.state
        lr = learning_rate_of(self.driver.optimizer, just_applied=applied)
        flushed = self.windowed is None and micro_batches < self.schedule.mini_steps
        # Samples weighting counts rows, so the buffer's count (over all ranks, once reduced) is the window's samples.
        samples = items if self.driver.weighting == "samples" else state.window_samples * self.driver.ranks
        samples_seen = self.driver.total_samples * self.driver.ranks
        if self.windowed is not None:  # the plan knows the window's true total, and the samples before it
            samples = self.windowed.window_samples(state.epoch, state.micro_batch)
            samples_seen = self.windowed.plan(state.epoch).consumed_before + samples + \
                sum(record.samples for record in self.epoch_records)
        empty = not applied and items == 0  # weighting="items", every label ignored: nothing to apply
        if not applied and not empty and not self.driver.engine.skips_overflow:
            ranks = ", over all ranks," if self.driver.distributed else ""
            self._diverged(f"the window's loss{ranks} is {loss}" if not math.isfinite(loss) else
                           f"the window's accumulated gradient{ranks} is not finite (NaN or inf)", micro_batches)
        if applied:
            self.driver.progress.total_updates += 1
        elif not empty:
            self.driver.progress.skipped_updates += 1
        record = UpdateRecord(state.epoch, len(self.epoch_records) + 1, micro_batches, samples, loss, lr,
                              self.driver.total_updates, samples_seen, not applied,
                              self.driver.engine.loss_scale(), items)
        self.epoch_records.append(record)
        if empty:
            logger.warning("epoch: %d step: %d the window has no items (every label is ignore_index=%d): no update",
                           state.epoch, record.update, self.driver.ignore_index)
        elif not applied:
            logger.warning("epoch: %d step: %d gradient overflow: update skipped, loss scale lowered to %g "
                           "(%d skipped so far)", state.epoch, record.update, record.loss_scale,
                           self.driver.skipped_updates)
        for callback in self.callbacks:
            callback.update(record, self.driver)
        self.driver.train_clear()
        self.window, state.window_samples = 0, 0
        if applied and self.log_every is not None and (flushed or record.update % self.log_every == 0):
            scale = "" if record.loss_scale is None else \
                f" (loss scale {record.loss_scale:g}, {self.driver.skipped_updates} skipped)"
            logger.info("epoch: %d step: %d loss is %.6f%s", state.epoch, record.update, record.loss, scale)
        return record

    def _window_figures(self):
        """The closed window's micro-batches, items and loss, from the buffer: an unsized stream's flushed window."""
        micro_batches = int(self.driver.buffer.window_micro_steps.asnumpy())
        items = int(round(float(self.driver.buffer.window_items.asnumpy())))
        return micro_batches, items, float(self.driver.buffer.window_loss.asnumpy())

    # Saving and stopping.

    def _save_state(self):
        if self.states is None:
            return
        state = self.state
        state.epoch_records = [dataclasses.asdict(record) for record in self.epoch_records]
        self.saved_at = (state.epoch, state.micro_batch, state.epoch_done)
        self.states.save(self.driver, state)

    def _save_network(self):
        """The model checkpoint, at each epoch's end as the Model path's NetworkCheckpoint writes it: one policy."""
        if self.ckpt_path is not None:
            save_network_checkpoint(self.driver.network, self.ckpt_path, self.driver.ema)

    def _interrupt(self):
        """Stops on the signal received: the state saved (unless it just was), then :class:`TrainingInterrupted`."""
        state = self.state
        if self.states is not None and self.saved_at != (state.epoch, state.micro_batch, state.epoch_done):
            self._save_state()
        raise TrainingInterrupted(self.stop.signum, self.states.last_path if self.states is not None else None,
                                  state.where())

    def _diverged(self, what, window):
        kept = self.states.last_path if self.states is not None else None
        state = self.state
        first = state.micro_batch - window + 1
        raise NonFiniteError(f"{what} at epoch {state.epoch}, micro-batch {state.micro_batch} (in update "
                             f"{len(self.epoch_records) + 1} of the epoch, micro-batches {first}-{state.micro_batch}): "
                             f"training stopped, nothing saved; "
                             + (f"the last good training state, {kept}, is kept" if kept else
                                "no training state was saved before it")
                             + "; lower the learning rate or check the data")


def _epochs(train_dataset, epoch, state, micro_batches, fetch):
    """The micro-batch iterables of epochs ``state.epoch .. epoch``, the first one skipping what was consumed.

    A MindSpore pipeline's (a WindowedDataset's too) are fetched ``fetch`` micro-batches at a time
    (:func:`~mindspore_accum.data.fetch.in_chunks`); any other iterable's as it gives them, since its items may
    be made as training goes.
    """
    # The position when the run starts: ``state`` moves on while this generator is paused.
    start_epoch, first = state.epoch, state.micro_batch
    remaining = epoch - start_epoch + 1
    if remaining <= 0:
        return
    if isinstance(train_dataset, WindowedDataset):  # the plan positions itself, at any micro-batch
        for number in range(start_epoch, epoch + 1):
            yield in_chunks(_as_tensors(train_dataset.iterate(number, first if number == start_epoch else 0)), fetch)
        return
    if hasattr(train_dataset, "create_tuple_iterator"):
        if first >= micro_batches:  # stopped after the epoch's last micro-batch, before its end ran
            yield ()
            remaining, first = remaining - 1, micro_batches
            if not remaining:
                return
        iterator = iterator_from(train_dataset, start_epoch, first, num_epochs=epoch)
        for _ in range(remaining):
            yield in_chunks(iterator, fetch)
    else:
        yield itertools.islice(train_dataset, first, None)
        for _ in range(remaining - 1):
            yield train_dataset
