"""The ``GradientAccumulation`` driver: runs the three Cells over a dataset."""

import dataclasses
import logging

import numpy as np
from mindspore import Parameter, nn

from .cells import AccumulationBuffer, TrainClear, TrainForwardBackward, TrainOptim
from .checkpoint import DEFAULT_CKPT_PATH, check_ckpt_path, save_network_checkpoint
from .schedule import WindowSchedule
from .validation import check_positive_int

__all__ = ["GradientAccumulation", "UpdateRecord", "current_learning_rate"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class UpdateRecord:
    """What one optimizer update consumed.

    Attributes:
        epoch: 1-based epoch of the update.
        update: 1-based count of updates within the epoch.
        micro_steps: micro-batches in the window (``mini_steps``, or fewer for a
            flushed partial window).
        samples: samples in the window.
        loss: the window's loss, a mean over its samples - the loss of one step
            on the concatenated window.
        lr: the learning rate this update used, or None if it cannot be read.
        total_updates: updates applied by the driver so far, this one included.
        samples_seen: samples consumed by the driver so far, this window included.
    """

    epoch: int
    update: int
    micro_steps: int
    samples: int
    loss: float
    lr: float = None
    total_updates: int = 0
    samples_seen: int = 0


def current_learning_rate(optimizer):
    """The learning rate the optimizer's next update uses, as a float; None for a schedule Cell."""
    rate = optimizer.learning_rate
    if not isinstance(rate, Parameter):
        return None
    values = rate.asnumpy().reshape(-1)
    if values.size == 1:
        return float(values[0])
    step = int(np.asarray(optimizer.global_step.asnumpy()).reshape(-1)[0])
    return float(values[min(step, values.size - 1)])


def _batch_size(inputs):
    return int(inputs[0].shape[0])


class GradientAccumulation:
    """Trains ``network`` with an optimizer update every ``mini_steps`` micro-batches.

    One update equals one ordinary training step on the concatenation of the
    window's micro-batches (for networks without BatchNorm): the gradients are
    averaged over the window's samples, not summed.

    Args:
        network: the bare network; its parameters are what the checkpoint holds.
        loss_fn: a loss Cell reducing to the *mean* over the micro-batch, such
            as ``nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")``.
        optimizer: a MindSpore optimizer over ``network``'s parameters.

    Example::

        model = GradientAccumulation(network, net_loss, net_opt)
        model.train_process(10, ds_train, mini_steps=4)
    """

    def __init__(self, network, loss_fn, optimizer):
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
        self.network = network
        self.network_with_loss = nn.WithLossCell(network, loss_fn)
        self.optimizer = optimizer
        self.buffer = AccumulationBuffer(optimizer.parameters)
        self.train_forward_backward = TrainForwardBackward(self.network_with_loss, optimizer.parameters,
                                                           self.buffer)
        self.train_optim = TrainOptim(optimizer, self.buffer)
        self.train_clear = TrainClear(self.buffer)
        #: Optimizer updates applied by this driver, over all calls.
        self.total_updates = 0
        #: Micro-batches run through forward and backward, over all calls.
        self.total_micro_steps = 0
        #: Samples in those micro-batches.
        self.total_samples = 0

    def train_process(self, epoch, train_dataset, mini_steps=4, *, remainder="flush",
                      ckpt_path=DEFAULT_CKPT_PATH, log_every=1, callbacks=()):
        """Trains for ``epoch`` epochs and saves the checkpoint.

        Args:
            epoch: number of passes over ``train_dataset``.
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

        Returns:
            A list of :class:`UpdateRecord`, one per optimizer update.
        """
        schedule = WindowSchedule(mini_steps, remainder)
        epoch = check_positive_int("epoch", epoch, example=10)
        if log_every is not None:
            log_every = check_positive_int("log_every", log_every)
        callbacks = tuple(callbacks)
        micro_batches = train_dataset.get_dataset_size() if hasattr(train_dataset, "get_dataset_size") else None
        if ckpt_path is not None:
            ckpt_path = check_ckpt_path(ckpt_path)
        if hasattr(train_dataset, "create_tuple_iterator"):
            iterator = train_dataset.create_tuple_iterator(num_epochs=epoch)
            epochs = (iterator for _ in range(epoch))
        else:
            epochs = (train_dataset for _ in range(epoch))

        self.train_clear()  # a window left by an interrupted earlier call must not leak in
        history = []
        for epoch_index, batches in enumerate(epochs, start=1):
            # Every epoch: an evaluation callback may have switched the network to eval mode.
            self.network_with_loss.set_train(True)
            for callback in callbacks:
                callback.epoch_begin(epoch_index, micro_batches, schedule)
            window_losses, window_samples = [], []
            updates_in_epoch = micro_steps_in_epoch = 0
            epoch_records = []
            for inputs in batches:
                loss = self.train_forward_backward(*inputs)
                self.total_micro_steps += 1
                micro_steps_in_epoch += 1
                window_losses.append(float(loss.asnumpy()))
                window_samples.append(_batch_size(inputs))
                self.total_samples += window_samples[-1]
                for callback in callbacks:
                    callback.micro_step(epoch_index, micro_steps_in_epoch, window_losses[-1], window_samples[-1])
                if schedule.is_window_full(len(window_losses)):
                    updates_in_epoch += 1
                    epoch_records.append(self._apply(epoch_index, updates_in_epoch, window_losses, window_samples,
                                                     log_every is not None and updates_in_epoch % log_every == 0,
                                                     callbacks))
                    window_losses, window_samples = [], []
            if schedule.flush_at_epoch_end(len(window_losses)):
                updates_in_epoch += 1
                epoch_records.append(self._apply(epoch_index, updates_in_epoch, window_losses, window_samples,
                                                 log_every is not None, callbacks))
            elif window_losses:
                logger.info("epoch: %d dropped a partial window of %d micro-batches (remainder='drop')",
                            epoch_index, len(window_losses))
                self.train_clear()
            if micro_steps_in_epoch == 0:
                raise ValueError(f"train_dataset gave no micro-batches in epoch {epoch_index}: pass a mindspore "
                                 f"dataset or a re-iterable such as a list, not an empty or one-shot iterator")
            if updates_in_epoch == 0:
                logger.warning("epoch: %d made no optimizer update: its %d micro-batches are fewer than "
                               "mini_steps=%d and remainder='drop'", epoch_index, micro_steps_in_epoch,
                               schedule.mini_steps)
            history.extend(epoch_records)
            for callback in callbacks:
                callback.epoch_end(epoch_index, epoch_records)

        if ckpt_path is not None:
            save_network_checkpoint(self.network, ckpt_path)
        return history

    def _apply(self, epoch_index, update, window_losses, window_samples, log, callbacks):
        """One optimizer update from the buffer, then an empty buffer.

        Callbacks see the update between the two, while ``grad_sum`` still
        holds the window's gradient.
        """
        lr = current_learning_rate(self.optimizer)  # before the update moves a dynamic rate on
        self.train_optim()
        self.total_updates += 1
        samples = sum(window_samples)
        # Sample-weighted, so that it is the loss of the concatenated window.
        loss = sum(l * n for l, n in zip(window_losses, window_samples)) / samples
        record = UpdateRecord(epoch_index, update, len(window_losses), samples, loss, lr, self.total_updates,
                              self.total_samples)
        for callback in callbacks:
            callback.update(record, self)
        self.train_clear()
        if log:
            logger.info("epoch: %d step: %d loss is %.6f", epoch_index, update, loss)
        return record
