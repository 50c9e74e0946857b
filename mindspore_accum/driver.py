"""The ``GradientAccumulation`` driver: runs the three Cells over a dataset."""

import contextlib
import dataclasses
import itertools
import logging
import math
import os

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, amp, nn, ops

from .cells import AccumulationBuffer, TrainClear, TrainForwardBackward, TrainOptim
from .checkpoint import DEFAULT_CKPT_PATH, check_ckpt_path, remove_stale_temporaries, save_network_checkpoint
from .distributed import data_parallel_rank
from .interrupt import StopSignals, TrainingInterrupted
from .norm import warn_if_batchnorm
from .run_lock import run_locks
from .schedule import WindowSchedule
from .training_state import (StateDirectory, TrainingState, find_training_state, read_training_state,
                             restore_training_state)
from .validation import check_choice, check_positive_float, check_positive_int

__all__ = ["GradientAccumulation", "UpdateRecord", "NonFiniteError", "current_learning_rate", "AMP_LEVELS"]

#: ``mindspore.amp.auto_mixed_precision`` levels.
AMP_LEVELS = ("O0", "O1", "O2", "O3")

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class UpdateRecord:
    """What one optimizer update consumed.

    Attributes:
        epoch: 1-based epoch of the update.
        update: 1-based count of updates within the epoch.
        micro_steps: micro-batches in the window (``mini_steps``, or fewer for a
            flushed partial window).
        samples: samples in the window (over all ranks, when data parallel).
        loss: the window's loss, a mean over its samples - the loss of one step
            on the concatenated window (of all ranks, when data parallel).
        lr: the learning rate this update used, or None if it cannot be read.
        total_updates: updates applied by the driver so far, this one included.
        samples_seen: samples consumed by the driver so far, this window included
            (times the ranks when data parallel: every rank's shard is the same size).
        skipped: True if the window's gradient overflowed and no update was
            applied (dynamic loss scaling); ``update`` still counts it.
        loss_scale: the loss scale after this window's adjustment, or None
            without loss scaling.
    """

    epoch: int
    update: int
    micro_steps: int
    samples: int
    loss: float
    lr: float = None
    total_updates: int = 0
    samples_seen: int = 0
    skipped: bool = False
    loss_scale: float = None


class NonFiniteError(ArithmeticError):
    """Training diverged: a micro-batch's loss, or a window's gradient, was NaN or infinite.

    The message gives the epoch and micro-batch, and the training state that
    is kept (nothing is saved after the divergence).
    """


def current_learning_rate(optimizer, just_applied=False):
    """The learning rate the optimizer's next update uses, as a float; None for a ``LearningRateSchedule`` Cell.

    A list of rates is read at the optimizer's ``global_step``, which counts
    applied updates. With ``just_applied``, the rate of the update just
    applied: one step back.
    """
    rate = optimizer.learning_rate
    if isinstance(rate, nn.Cell) and isinstance(getattr(rate, "learning_rate", None), Parameter):
        rate = rate.learning_rate  # a list of rates (the optimizer wraps it in a Cell), indexed by global_step
    if not isinstance(rate, Parameter):
        return None
    values = rate.asnumpy().reshape(-1)
    if values.size == 1:
        return float(values[0])
    step = int(np.asarray(optimizer.global_step.asnumpy()).reshape(-1)[0]) - int(just_applied)
    return float(values[min(step, values.size - 1)])


def _batch_size(inputs):
    return int(inputs[0].shape[0])


@contextlib.contextmanager
def _own_outputs(ckpt_path, states):
    """One run per checkpoint and state directory (rank 0 only: the others write nothing).

    Holding their locks, it removes what dead runs left there: only the owner cleans.
    """
    with run_locks(ckpt_path, states.directory if states is not None else None):
        if ckpt_path is not None:
            remove_stale_temporaries(os.path.dirname(os.path.abspath(ckpt_path)))
        if states is not None:
            remove_stale_temporaries(states.directory)
        yield


class _MicroStep(nn.Cell):
    """The driver's micro-step: forward and backward, and the update when the window is full, in one graph.

    It is :class:`~mindspore_accum.accumulation_cell.GradientAccumulationCell`
    without the clear: the driver clears after its callbacks have seen the
    window's gradient, and flushes a partial window itself at an epoch's end.

    Returns: the micro-batch's loss and whether an update was applied, as
    device tensors: nothing is read back here.
    """

    def __init__(self, forward_backward, optim, buffer, mini_steps):
        super().__init__(auto_prefix=False)
        self.forward_backward = forward_backward
        self.optim = optim
        self.window_micro_steps = buffer.window_micro_steps
        self.mini_steps = mini_steps
        self.not_applied = Tensor(False, ms.bool_)

    def construct(self, *inputs):
        loss = self.forward_backward(*inputs)
        full = ops.depend(self.window_micro_steps, loss) >= self.mini_steps
        return loss, self.optim() if full else self.not_applied


class GradientAccumulation:
    """Trains ``network`` with an optimizer update every ``mini_steps`` micro-batches.

    One update equals one ordinary training step on the concatenation of the
    window's micro-batches (for networks without BatchNorm): the gradients are
    averaged over the window's samples, not summed.

    Each micro-step is one graph: forward and backward, and, when it closes a
    window, the update stage too. Nothing is read back from the device until
    the window closes. Then the window's losses, the record and the callbacks
    are handled once, ``TrainClear`` empties the buffer, and a partial window
    at an epoch's end is flushed through ``TrainOptim``.

    Args:
        network: the bare network; its parameters are what the checkpoint holds.
        loss_fn: a loss Cell reducing to the *mean* over the micro-batch, such
            as ``nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")``.
        optimizer: a MindSpore optimizer over ``network``'s parameters.
        amp_level: ``"O0"`` (float32), ``"O1"``, ``"O2"`` or ``"O3"``, applied
            with ``mindspore.amp.auto_mixed_precision``. The parameters, the
            checkpoint and the accumulation buffer stay float32.
        loss_scaler: ``"auto"`` (a ``DynamicLossScaler(2**16, 2, 2000)`` -
            MindSpore's ``DynamicLossScaleManager`` defaults - for O1 to O3,
            none for O0), None, or a ``mindspore.amp.DynamicLossScaler`` /
            ``StaticLossScaler``. The loss is scaled every micro-step; overflow
            is checked once per window, on the accumulated gradient. With a
            dynamic scaler an overflowing window is skipped (no update, buffer
            cleared, scale lowered, :attr:`skipped_updates` + 1); otherwise a
            non-finite window stops training (:class:`NonFiniteError`).
        clip_grad_norm: clip the window's mean gradient to this global norm
            (``ops.clip_by_global_norm``), once per update, after unscaling.
        distributed: data parallel over every rank of
            ``mindspore.communication`` (call ``init()`` first, under
            ``msrun``; see :mod:`~mindspore_accum.distributed`). Each rank
            accumulates its own shard's micro-batches with no communication;
            once per window the update stage all-reduces the window's
            gradient, samples and loss in one call, and every rank applies the
            same update: one step on all ranks' micro-batches of the window,
            weighted by samples. Only rank 0 writes the checkpoint and the
            training states; every rank reads a state to resume. The update
            records then give the window's samples and loss over all ranks.

    Example::

        model = GradientAccumulation(network, net_loss, net_opt)
        model.train_process(10, ds_train, mini_steps=4)
    """

    def __init__(self, network, loss_fn, optimizer, *, amp_level="O0", loss_scaler="auto", clip_grad_norm=None,
                 distributed=False):
        if not isinstance(network, nn.Cell):
            raise TypeError(f"network must be a mindspore.nn.Cell, got {type(network).__name__}")
        if not isinstance(loss_fn, nn.Cell):
            raise TypeError(f"loss_fn must be a mindspore.nn.Cell, got {type(loss_fn).__name__}")
        if not isinstance(optimizer, nn.Optimizer):
            raise TypeError(f"optimizer must be a mindspore.nn.Optimizer, got {type(optimizer).__name__}")
        reduction = getattr(loss_fn, "reduction", "mean")
        if reduction != "mean":
            # Averaging over the window's samples assumes each micro-batch loss
            # is a mean; a sum would weight micro-batches by their size twice.
            raise ValueError(f"loss_fn.reduction must be 'mean', got {reduction!r}: "
                             f"construct the loss with reduction='mean'")
        self.amp_level = check_choice("amp_level", amp_level, AMP_LEVELS)
        if isinstance(loss_scaler, str) and loss_scaler == "auto":
            loss_scaler = None if amp_level == "O0" else amp.DynamicLossScaler(2 ** 16, 2, 2000)
        if loss_scaler is not None and not isinstance(loss_scaler, amp.LossScaler):
            raise TypeError(f"loss_scaler must be 'auto', None, or a mindspore.amp.DynamicLossScaler or "
                            f"StaticLossScaler, got {loss_scaler!r}")
        if clip_grad_norm is not None:
            clip_grad_norm = check_positive_float("clip_grad_norm", clip_grad_norm, "or None for no clipping")
        #: This process's rank and the number of ranks (0 and 1 unless ``distributed``).
        self.rank, self.ranks = data_parallel_rank() if distributed else (0, 1)
        self.distributed = bool(distributed)
        #: The network as given: its parameters are what checkpoints hold.
        self.network = network
        #: Where ``amp_level`` put its casts; the same Parameter objects as ``network``.
        self.compute_network = network if amp_level == "O0" else amp.auto_mixed_precision(network, amp_level)
        self.network_with_loss = nn.WithLossCell(self.compute_network, loss_fn)
        self.optimizer = optimizer
        self.loss_scaler = loss_scaler
        self.clip_grad_norm = clip_grad_norm
        self.buffer = AccumulationBuffer(optimizer.parameters)
        self.train_forward_backward = TrainForwardBackward(self.network_with_loss, optimizer.parameters,
                                                           self.buffer, loss_scaler)
        self.train_optim = TrainOptim(optimizer, self.buffer, loss_scaler, clip_grad_norm, all_reduce=distributed)
        self.train_clear = TrainClear(self.buffer)
        # Only a dynamic scaler can answer an overflow (by lowering the scale);
        # without one, a non-finite window means training has diverged.
        self._skips_overflow = isinstance(loss_scaler, amp.DynamicLossScaler)
        #: Windows skipped because their gradient overflowed (dynamic loss scaling only).
        self.skipped_updates = 0
        #: Optimizer updates applied by this driver, over all calls.
        self.total_updates = 0
        #: Micro-batches run through forward and backward, over all calls.
        self.total_micro_steps = 0
        #: Samples in those micro-batches.
        self.total_samples = 0
        self._stop = StopSignals(enabled=False)
        self._micro_steps = {}  # mini_steps -> _MicroStep
        self._states = None
        self._warned_batchnorm = False

    def train_process(self, epoch, train_dataset, mini_steps=4, *, remainder="flush",
                      ckpt_path=DEFAULT_CKPT_PATH, log_every=1, callbacks=(), state_dir=None, save_every=None,
                      keep_checkpoints=5, resume=None, seed=None, handle_signals=True):
        """Trains until ``epoch`` epochs are done and saves the checkpoint.

        Args:
            epoch: the number of passes over ``train_dataset`` - in all, counting
                those before a ``resume``.
            train_dataset: a ``mindspore.dataset`` Dataset (or any re-iterable of
                input tuples) yielding micro-batches; the last input is the label.
            mini_steps: micro-batches per optimizer update.
            remainder: ``"flush"`` applies a partial window at the end of each
                epoch with its true weighting; ``"drop"`` discards it.
            ckpt_path: where the bare network's checkpoint is written at the
                end, atomically; ``None`` skips it.
            log_every: log one line every this many updates; None logs none
                (a progress bar shows them instead).
            callbacks: :class:`~mindspore_accum.callbacks.Callback` objects,
                told of every epoch, micro-step and update.
            state_dir: where training states are written (see
                :mod:`~mindspore_accum.training_state`): at the end of every
                epoch, every ``save_every`` updates, and on SIGINT/SIGTERM.
                None writes none.
            save_every: also write a state every this many updates.
            keep_checkpoints: training states kept in ``state_dir``; older ones
                are deleted.
            resume: a training-state file (or a directory of them: the newest)
                to continue from. The run's settings must match the state's.
                A MindSpore dataset is positioned with ``set_init_step``, so the
                micro-batches already consumed are skipped, not re-read.
            seed: the seed the caller set, recorded in the state and checked on
                resume; the driver itself draws no random numbers.
            handle_signals: on SIGINT/SIGTERM, finish the micro-step, save the
                state and raise :class:`~mindspore_accum.interrupt.TrainingInterrupted`.

        Returns:
            A list of :class:`UpdateRecord`, one per optimizer update of this call.

        Raises:
            NonFiniteError: a micro-batch's loss, or a window's accumulated
                gradient, is NaN or infinite. No update is applied from it, and
                the last saved state and the checkpoint are left as they were.
            TrainingInterrupted: a signal stopped training (after saving).
        """
        schedule = WindowSchedule(mini_steps, remainder)
        epoch = check_positive_int("epoch", epoch, example=10)
        if log_every is not None:
            log_every = check_positive_int("log_every", log_every)
        if save_every is not None:
            save_every = check_positive_int("save_every", save_every)
            if state_dir is None:
                raise ValueError(f"save_every={save_every} needs a state_dir to save to: pass state_dir")
        callbacks = tuple(callbacks)
        writer = self.rank == 0  # data parallel: one copy of every file, from rank 0
        micro_batches = train_dataset.get_dataset_size() if hasattr(train_dataset, "get_dataset_size") else None
        if ckpt_path is not None:
            ckpt_path = check_ckpt_path(ckpt_path) if writer else None
        states = StateDirectory(state_dir, keep_checkpoints) if state_dir is not None and writer else None
        state = TrainingState(
            model=type(self.network).__name__, optimizer=type(self.optimizer).__name__,
            mini_steps=schedule.mini_steps, remainder=schedule.remainder,
            batch_size=train_dataset.get_batch_size() if hasattr(train_dataset, "get_batch_size") else None,
            micro_batches_per_epoch=micro_batches, seed=seed, amp_level=self.amp_level,
            loss_scaler=type(self.loss_scaler).__name__ if self.loss_scaler is not None else None,
            clip_grad_norm=self.clip_grad_norm, ranks=self.ranks)
        if not self._warned_batchnorm:  # once per driver: it is about the network, not the call
            self._warned_batchnorm = warn_if_batchnorm(self.network, schedule.mini_steps)
        if micro_batches is not None and micro_batches < schedule.mini_steps:
            logger.warning("mini_steps=%d is larger than the %d micro-batches of an epoch: every update is a "
                           "partial window of %d micro-batches%s", schedule.mini_steps, micro_batches,
                           micro_batches, " (flushed at the epoch's end)" if schedule.remainder == "flush"
                           else ", and remainder='drop' discards it: no update will happen")

        earlier = StateDirectory.files_in(states.directory) if resume is None and states is not None else []
        if earlier:
            # Lightning's choice: warn, not refuse, so that running the same command twice works.
            logger.warning("the training-state directory %s holds %d states of an earlier run, which this run's "
                           "states will push out (newest %d kept); to continue that run instead, pass "
                           "resume=%s (--resume)", states.directory, len(earlier), states.keep, states.directory)
        if resume is not None:
            resume = find_training_state(resume)
            loaded = read_training_state(resume)
            saved = loaded[0]
            epochs_started = saved.epoch if saved.micro_batch or saved.epoch_done else saved.epoch - 1
            if epochs_started > epoch:
                raise ValueError(f"epoch={epoch} but the state {resume} is already at {saved.where()}: "
                                 f"pass an epoch of at least {epochs_started} (epoch counts the epochs before "
                                 f"the resume too)")
            state = restore_training_state(self, resume, state, loaded)
            self.total_updates, self.total_micro_steps = state.total_updates, state.total_micro_steps
            self.total_samples, self.skipped_updates = state.total_samples, state.skipped_updates
            if state.epoch_done:
                state = dataclasses.replace(state, epoch=state.epoch + 1, micro_batch=0, epoch_done=False,
                                            epoch_records=[])
        else:
            self.train_clear()  # a window left by an interrupted earlier call must not leak in

        self._saved_at = None
        history = []
        self._states = states
        step = self._micro_step(schedule.mini_steps)
        pending = []  # the open window's losses, on the device until it closes
        with StopSignals(handle_signals) as stop, _own_outputs(ckpt_path, states):
            self._stop = stop
            for batches in self._epochs(train_dataset, epoch, state, micro_batches):
                epoch_records = [UpdateRecord(**fields) for fields in state.epoch_records]
                restored = len(epoch_records)  # made by the run that saved the state, not by this call
                # Every epoch: an evaluation callback may have switched the network to eval mode.
                self.network_with_loss.set_train(True)
                for callback in callbacks:
                    callback.epoch_begin(state.epoch, micro_batches, schedule, start=state.micro_batch)
                for inputs in batches:
                    loss, applied = step(*inputs)  # one graph; nothing is read back until the window closes
                    stop.rearm()  # every graph run takes SIGINT over; take it back
                    samples = _batch_size(inputs)
                    state.micro_batch += 1
                    self.total_micro_steps += 1
                    self.total_samples += samples
                    pending.append(loss)
                    state.window_samples.append(samples)
                    for callback in callbacks:
                        callback.micro_step(state.epoch, state.micro_batch, loss, samples)
                    if schedule.is_window_full(len(state.window_samples)):  # the graph has run the update
                        self._read_losses(pending, state, epoch_records)
                        log = log_every is not None and (len(epoch_records) + 1) % log_every == 0
                        epoch_records.append(self._close_window(state, epoch_records, bool(applied.asnumpy()), log,
                                                                callbacks))
                        if save_every is not None and not epoch_records[-1].skipped \
                                and self.total_updates % save_every == 0:
                            self._save_state(states, state, epoch_records)
                    if stop.signum is not None:
                        self._read_losses(pending, state, epoch_records)
                        self._interrupt(stop.signum, states, state, epoch_records)
                self._read_losses(pending, state, epoch_records)
                if schedule.flush_at_epoch_end(len(state.window_losses)):
                    epoch_records.append(self._apply(state, epoch_records, log_every is not None, callbacks))
                elif state.window_losses:
                    logger.info("epoch: %d dropped a partial window of %d micro-batches (remainder='drop')",
                                state.epoch, len(state.window_losses))
                    state.window_losses, state.window_samples = [], []
                    self.train_clear()
                if state.micro_batch == 0:
                    raise ValueError(f"train_dataset gave no micro-batches in epoch {state.epoch}: pass a "
                                     f"mindspore dataset or a re-iterable such as a list, not an empty or "
                                     f"one-shot iterator")
                if not epoch_records:
                    logger.warning("epoch: %d made no optimizer update: its %d micro-batches are fewer than "
                                   "mini_steps=%d and remainder='drop'", state.epoch, state.micro_batch,
                                   schedule.mini_steps)
                history.extend(epoch_records[restored:])
                for callback in callbacks:
                    callback.epoch_end(state.epoch, epoch_records)
                stop.rearm()  # an evaluation callback runs graphs too
                state.epoch_done = True
                self._save_state(states, state, epoch_records)
                if stop.signum is not None:
                    self._interrupt(stop.signum, states, state, epoch_records)
                state = dataclasses.replace(state, epoch=state.epoch + 1, micro_batch=0, epoch_done=False,
                                            epoch_records=[])
            if ckpt_path is not None:
                save_network_checkpoint(self.network, ckpt_path)
        return history

    @staticmethod
    def _epochs(train_dataset, epoch, state, micro_batches):
        """The micro-batch iterables of epochs ``state.epoch .. epoch``, the first one skipping what was consumed."""
        remaining = epoch - state.epoch + 1
        if remaining <= 0:
            return
        if hasattr(train_dataset, "create_tuple_iterator"):
            first = state.micro_batch
            if first >= micro_batches:  # stopped after the epoch's last micro-batch, before its end ran
                yield ()
                remaining, first = remaining - 1, micro_batches
                if not remaining:
                    return
            # MindSpore's own resume cursor: the pipeline restarts at that global
            # micro-batch with the same shuffle order, without reading what it skips.
            previous = train_dataset.get_init_step()
            train_dataset.set_init_step((state.epoch - 1) * micro_batches + first)
            try:
                iterator = train_dataset.create_tuple_iterator(num_epochs=epoch)
            finally:
                train_dataset.set_init_step(previous)
            for _ in range(remaining):
                yield iterator
        else:
            yield itertools.islice(train_dataset, state.micro_batch, None)
            for _ in range(remaining - 1):
                yield train_dataset

    def _save_state(self, states, state, epoch_records):
        if states is None:
            return None
        state.total_updates, state.total_micro_steps = self.total_updates, self.total_micro_steps
        state.total_samples, state.skipped_updates = self.total_samples, self.skipped_updates
        state.epoch_records = [dataclasses.asdict(record) for record in epoch_records]
        self._saved_at = (state.epoch, state.micro_batch, state.epoch_done)
        return states.save(self, state)

    def _interrupt(self, signum, states, state, epoch_records):
        if states is not None and self._saved_at != (state.epoch, state.micro_batch, state.epoch_done):
            self._save_state(states, state, epoch_records)
        raise TrainingInterrupted(signum, states.last_path if states is not None else None, state.where())

    def _micro_step(self, mini_steps):
        """The one-graph micro-step for ``mini_steps``, built once and kept."""
        if mini_steps not in self._micro_steps:
            self._micro_steps[mini_steps] = _MicroStep(self.train_forward_backward, self.train_optim, self.buffer,
                                                       mini_steps)
        return self._micro_steps[mini_steps]

    def _read_losses(self, pending, state, epoch_records):
        """Reads the open window's losses back (one sync a window) into ``state``; stops on a non-finite one.

        Data parallel: a rank must not stop alone (the others would wait in the
        all-reduce); the loss goes into the reduced window, and every rank sees it there.
        """
        losses = [float(loss.asnumpy()) for loss in pending]
        pending.clear()
        first = state.micro_batch - len(losses) + 1
        for offset, loss in enumerate(losses):
            if not math.isfinite(loss) and not self._skips_overflow and not self.distributed:
                # The update stage refused the window too: nothing was applied from it.
                self._diverged(f"loss is {loss}", state, epoch_records, micro_batch=first + offset)
        state.window_losses.extend(losses)

    def _diverged(self, what, state, epoch_records, micro_batch=None):
        kept = self._states.last_path if self._states is not None else None
        micro_batch = state.micro_batch if micro_batch is None else micro_batch
        raise NonFiniteError(f"{what} at epoch {state.epoch}, micro-batch {micro_batch} (in update "
                             f"{len(epoch_records) + 1} of the epoch): training stopped, nothing saved; "
                             + (f"the last good training state, {kept}, is kept" if kept else
                                "no training state was saved before it")
                             + "; lower the learning rate or check the data")

    def _apply(self, state, epoch_records, log, callbacks):
        """A partial window flushed at an epoch's end: the update stage, then :meth:`_close_window`."""
        return self._close_window(state, epoch_records, bool(self.train_optim().asnumpy()), log, callbacks)

    def _close_window(self, state, epoch_records, applied, log, callbacks):
        """The record of a window whose update stage has run, then an empty buffer and window.

        Callbacks see the update between the two, while ``grad_sum`` still
        holds the window's gradient.
        """
        self._stop.rearm()
        lr = current_learning_rate(self.optimizer, just_applied=applied)
        if not applied and not self._skips_overflow:
            self._diverged("the window's accumulated gradient" + (" or loss, over all ranks," if self.distributed
                                                                    else "") + " is not finite (NaN or inf)",
                           state, epoch_records)
        if applied:
            self.total_updates += 1
        else:
            self.skipped_updates += 1
        loss_scale = float(self.loss_scaler.scale_value.asnumpy()) if self.loss_scaler is not None else None
        if self.distributed:  # TrainOptim left the figures over all ranks in the buffer
            samples = int(round(float(self.buffer.window_samples.asnumpy())))
            loss = float(self.buffer.window_loss.asnumpy())
        else:
            samples = sum(state.window_samples)
            # Sample-weighted, so that it is the loss of the concatenated window.
            loss = sum(l * n for l, n in zip(state.window_losses, state.window_samples)) / samples
        record = UpdateRecord(state.epoch, len(epoch_records) + 1, len(state.window_losses), samples, loss, lr,
                              self.total_updates, self.total_samples * self.ranks, not applied, loss_scale)
        if not applied:
            logger.warning("epoch: %d step: %d gradient overflow: update skipped, loss scale lowered to %g "
                           "(%d skipped so far)", state.epoch, record.update, loss_scale, self.skipped_updates)
        for callback in callbacks:
            callback.update(record, self)
        self.train_clear()
        self._stop.rearm()
        state.window_losses, state.window_samples = [], []
        if log and applied:
            logger.info("epoch: %d step: %d loss is %.6f%s", state.epoch, record.update, loss,
                        "" if loss_scale is None else f" (loss scale {loss_scale:g}, {self.skipped_updates} skipped)")
        return record
