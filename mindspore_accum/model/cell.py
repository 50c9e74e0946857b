"""``GradientAccumulationCell``: the three Cells in one graph, a train Cell for ``mindspore.train.Model``.

One call is one micro-step. Inside the same graph the Cell decides whether
the micro-step closes a window and, if so, runs the update and clears the
buffer - so there is no Python between micro-steps, no host sync, and
``Model.train`` (with its callbacks and, on GPU/Ascend, its sink mode) drives
accumulation like any other train Cell::

    net_with_loss = nn.WithLossCell(network, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"))
    train_cell = GradientAccumulationCell(net_with_loss, optimizer, mini_steps=4,
                                          micro_batches_per_epoch=dataset.get_dataset_size())
    Model(train_cell).train(10, dataset, callbacks=[LossMonitor(4)])

It is *built from* :class:`~mindspore_accum.core.cells.TrainForwardBackward`,
:class:`~mindspore_accum.core.cells.TrainOptim` and
:class:`~mindspore_accum.core.cells.TrainClear`, so the arithmetic is theirs,
bit for bit; this module only adds *when*.
"""

import logging
from typing import Optional

from mindspore import amp, nn

from ..core.engine import AccumulationEngine, AccumulationStep, warn_if_longer_than_epoch
from ..core.schedule import WindowSchedule
from ..core.validation import check_positive_int
from ..nets.norm import warn_if_batchnorm

__all__ = ["GradientAccumulationCell"]

logger = logging.getLogger(__name__)


class GradientAccumulationCell(AccumulationStep):
    """A train Cell that accumulates ``mini_steps`` micro-batches per optimizer update, in one graph.

    Each call runs one micro-batch through forward and backward into the
    buffer (:class:`TrainForwardBackward`). When the window is full - or, with
    ``micro_batches_per_epoch``, at the epoch's last micro-batch - the same
    graph applies the update (:class:`TrainOptim`: the data-parallel
    all-reduce, the finiteness check, unscaling, clipping, the optimizer, the
    loss scaler's adjustment) and clears the buffer (:class:`TrainClear`).

    Args:
        network_with_loss: the network with its loss, e.g. ``nn.WithLossCell``;
            its output must be the *mean* loss over the micro-batch. For mixed
            precision, build it from ``amp.auto_mixed_precision(network,
            level)`` and pass a ``loss_scaler``.
        optimizer: a MindSpore optimizer; its ``parameters`` are differentiated.
        mini_steps: micro-batches per update.
        micro_batches_per_epoch: the dataset's ``get_dataset_size()``. With it,
            a partial window at the end of an epoch is applied or dropped
            (``remainder``) and never leaks into the next epoch. Without it
            (None), windows run on across epochs, as for an endless stream.
        remainder: ``"flush"`` applies the end-of-epoch partial window,
            weighted by its samples; ``"drop"`` discards it.
        loss_scaler: None, or a ``mindspore.amp.DynamicLossScaler`` /
            ``StaticLossScaler``; the loss is scaled every micro-step and the
            window checked once. A dynamic scaler skips an overflowing window.
        clip_grad_norm: clip the window's mean gradient to this global norm,
            once per update.
        all_reduce: data parallel (after ``mindspore.communication.init()``):
            one all-reduce of the window's gradient, samples and loss per update.
        weighting: ``"samples"``, or ``"items"`` for per-token losses: each
            micro-batch weighted by its labels that are not ``ignore_index``
            (or by the items of a network that returns ``(loss, items)``); see
            :mod:`~mindspore_accum.core.weighting`.
        ignore_index: the label that is no item, as the loss's own.
        ema_decay: None, or a decay in [0, 1): a moving average of the
            trainable weights, updated once per applied update, never per
            micro-step (see :mod:`~mindspore_accum.core.ema`).
        windows_from_data: the data says how many micro-batches each window
            has: train on ``WindowedDataset.as_dataset()``, whose last column
            is that count (see :mod:`~mindspore_accum.data.windowed_data`): a global
            batch that is no multiple of the micro-batch, or a batch ramp, on
            one graph. ``mini_steps`` and ``micro_batches_per_epoch`` are then
            not used.

    Inputs: the network's inputs for one micro-batch (the first input's
    leading dimension is its number of samples), and with ``windows_from_data``
    the window's micro-batches.

    Returns: a float32 scalar, the window's loss so far - the mean over the
    window's micro-batches up to this one, weighted by samples (or items). On the micro-step that
    closes a window it is the **window's loss**, the loss of one step on the
    concatenated window (over all ranks, with ``all_reduce``), so
    ``LossMonitor(per_print_times=mini_steps)`` prints one line per update
    when the epoch's micro-batches are a multiple of ``mini_steps``. If the
    window's gradient is not finite and no dynamic scaler can skip it, no update
    is applied and the output is NaN, which ``LossMonitor`` treats as
    divergence and stops on. A window without items applies no update and
    outputs 0.

    Everything a resume needs is a Parameter of this Cell - the network, the
    optimizer's state, the buffer and its counters, ``epoch_micro_batch`` and the
    loss scaler's state - so ``ModelCheckpoint`` of the train network, loaded
    into a fresh Cell with ``load_param_into_net``, continues mid-window exactly.
    :meth:`state_parameters` are the driver's, so a training state of either engine resumes it
    (:meth:`resume_at` places ``epoch_micro_batch`` at the state's position).
    """

    def __init__(self, network_with_loss: nn.Cell, optimizer: nn.Optimizer, mini_steps: int = 4, *,
                 micro_batches_per_epoch: Optional[int] = None, remainder: str = "flush",
                 loss_scaler: Optional[amp.LossScaler] = None, clip_grad_norm: Optional[float] = None,
                 all_reduce: bool = False, weighting: str = "samples", ignore_index: int = -100,
                 ema_decay: Optional[float] = None, windows_from_data: bool = False):
        schedule = WindowSchedule(mini_steps, remainder)
        if windows_from_data:
            if micro_batches_per_epoch is not None:
                raise ValueError("micro_batches_per_epoch with windows_from_data=True: the data's plan ends each "
                                 "epoch's windows; pass micro_batches_per_epoch=None")
        elif micro_batches_per_epoch is not None:
            micro_batches_per_epoch = check_positive_int("micro_batches_per_epoch", micro_batches_per_epoch)
            warn_if_longer_than_epoch(schedule.mini_steps, micro_batches_per_epoch, schedule.remainder)
        elif schedule.mini_steps > 1:
            logger.warning("micro_batches_per_epoch is None: windows run on across epochs; pass "
                           "micro_batches_per_epoch=dataset.get_dataset_size() to end each epoch's last window")
        engine = AccumulationEngine(network_with_loss, optimizer, loss_scaler=loss_scaler,
                                    clip_grad_norm=clip_grad_norm, all_reduce=all_reduce, weighting=weighting,
                                    ignore_index=ignore_index, ema_decay=ema_decay)
        super().__init__(engine, schedule, micro_batches_per_epoch, clears=True, windows_from_data=windows_from_data)
        #: The weights' moving average (its Parameters are in the train Cell's checkpoint), or None.
        self.ema = engine.ema
        self.optimizer = optimizer
        self.loss_scaler = loss_scaler
        # The scaler is no Cell: naming its Parameters here puts them in the train
        # network's checkpoint, so that a resume gets the scale and its counter back.
        for name, param in engine.scaler_parameters().items():
            setattr(self, "loss_scaler_" + name, param)
        warn_if_batchnorm(network_with_loss, self.mini_steps)

    def state_parameters(self):
        """What a training state saves and a resume restores, in the driver's groups (:mod:`..run.state`)."""
        return self.engine.state_parameters(self.forward_backward.network)

    def resume_at(self, state, micro_batches_per_epoch):
        """Places the epoch's position at a :class:`~mindspore_accum.run.state.TrainingState`'s (before or after its
        tensors are restored: they do not hold it); returns the global micro-step, where the data resumes."""
        micro_batch = micro_batches_per_epoch if state.epoch_done else state.micro_batch
        self.place_in_epoch(micro_batch)
        return (state.epoch - 1) * micro_batches_per_epoch + micro_batch
