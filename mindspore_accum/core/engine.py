"""One accumulation engine for both front ends: the builder, and the step Cell that decides the window.

:class:`AccumulationEngine` builds, once, what the driver
(:class:`~mindspore_accum.driver.loop.GradientAccumulation`) and the train Cell
(:class:`~mindspore_accum.model.cell.GradientAccumulationCell`) share:
the argument checks, the buffer and the tutorial's three Cells, the EMA, the
loss scaler's Parameters, and the settings the engine records.

:class:`AccumulationStep` is one micro-step in one graph: forward and
backward into the buffer, then :func:`~mindspore_accum.core.schedule.window_end`
on the device - is the window full, or does the epoch end? - and, if so, the
update stage. ``GradientAccumulationCell`` is this step with the clear inside
the graph (``clears=True``); the driver runs the same step with
``clears=False``, so that its callbacks see the window's gradient before it
clears the buffer itself.
"""

import logging
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, amp, nn, ops

from ..run.settings import RunSettings
from .cells import AccumulationBuffer, TrainClear, TrainForwardBackward, TrainOptim
from .ema import ExponentialMovingAverage
from .optimizers import is_optimizer, weight_decay_of
from .schedule import WindowSchedule, window_end
from .validation import check_choice, check_positive_float
from .weighting import check_loss, check_weighting

__all__ = ["AccumulationEngine", "AccumulationStep", "AMP_LEVELS", "amp_network", "white_list_to_float16",
           "default_loss_scaler", "optimizer_description", "warn_if_longer_than_epoch"]

logger = logging.getLogger(__name__)

#: ``mindspore.amp.auto_mixed_precision`` levels.
AMP_LEVELS = ("O0", "O1", "O2", "O3")


def amp_network(network, amp_level):
    """``network`` with ``amp_level``'s casts (the same Parameter objects); ``network`` itself at O0.

    O2 and O3 are ``mindspore.amp.auto_mixed_precision``'s. O1 is its white
    list applied cell by cell (:func:`white_list_to_float16`), because
    MindSpore's own O1 rewrites the network's source: it writes
    ``./rewritten_network/``, fails to re-import it from another working
    directory, and fails to compile the text models.
    """
    check_choice("amp_level", amp_level, AMP_LEVELS)
    if amp_level == "O1":
        return white_list_to_float16(network)
    return network if amp_level == "O0" else amp.auto_mixed_precision(network, amp_level)


def white_list_to_float16(network, dtype=ms.float16):
    """O1 by ``Cell.to_float``: the white list's cells (``amp.get_white_list()``: convolutions, Dense, RNN
    cells, subclasses such as Im2ColConv2d included) compute in ``dtype``, every other cell in float32.

    ``to_float`` casts a cell's floating inputs and Parameters on entry, so each
    float32 cell casts a float16 result back on its way in, and the network's
    output is cast to float32 (as MindSpore's O2 and O3 do) for the loss.
    Primitives called directly in a ``construct`` stay float32: that part of
    MindSpore's O1 needs the rewrite. Marks ``network`` in place; the
    Parameters stay float32.
    """
    cells = tuple(kind for kind in amp.get_white_list() if isinstance(kind, type) and issubclass(kind, nn.Cell))
    network.to_float(ms.float32)
    for _, cell in network.cells_and_names():
        if isinstance(cell, cells):
            cell.to_float(dtype)
    return OutputTo32(network)


class OutputTo32(nn.Cell):
    """``network`` with its output cast to float32 for the loss, as MindSpore's O2 and O3 wrap theirs."""

    def __init__(self, network):
        super().__init__(auto_prefix=False)  # the Parameters keep the network's names
        self.network = network

    def construct(self, *inputs):
        return ops.cast(self.network(*inputs), ms.float32)


def default_loss_scaler(amp_level, loss_scaler="auto"):
    """``"auto"``: MindSpore's ``DynamicLossScaleManager`` defaults below O0, none at O0; else as given, checked."""
    if isinstance(loss_scaler, str) and loss_scaler == "auto":
        return None if check_choice("amp_level", amp_level, AMP_LEVELS) == "O0" else \
            amp.DynamicLossScaler(2 ** 16, 2, 2000)
    if loss_scaler is not None and not isinstance(loss_scaler, amp.LossScaler):
        raise TypeError(f"loss_scaler must be 'auto', None, or a mindspore.amp.DynamicLossScaler or "
                        f"StaticLossScaler, got {loss_scaler!r}")
    return loss_scaler


def optimizer_description(optimizer):
    """The optimizer's class, with its weight decay when it has one: ``AdamWeightDecay(weight_decay=0.01)``.

    A resume compares it: a changed weight decay is no tensor of the state, so it
    is named here. Without weight decay it is the bare class name.
    """
    decay = weight_decay_of(optimizer)
    name = type(getattr(optimizer, "optimizer", optimizer)).__name__  # RatePerUpdate: the optimizer it drives
    return f"{name}(weight_decay={decay:g})" if isinstance(decay, float) and decay else name


def warn_if_longer_than_epoch(mini_steps, micro_batches, remainder):
    """Warns when ``mini_steps`` exceeds an epoch: every update is then a partial window (or none, with drop)."""
    if micro_batches is not None and micro_batches < mini_steps:
        logger.warning("mini_steps=%d is larger than the %d micro-batches of an epoch: every update is a "
                       "partial window of %d micro-batches%s", mini_steps, micro_batches, micro_batches,
                       " (flushed at the epoch's end)" if remainder == "flush"
                       else ", and remainder='drop' discards it: no update will happen")


class AccumulationEngine:
    """The buffer, the three Cells, the EMA and the loss scaler of one accumulation set-up, checked and built once.

    Args:
        network_with_loss: the network with its loss (e.g. ``nn.WithLossCell``),
            outputting the *mean* loss over the micro-batch; or None, for a
            caller whose own step takes the gradients
            (:class:`~mindspore_accum.core.accumulator.Accumulator`): then no
            ``forward_backward`` is built.
        optimizer: a MindSpore optimizer; its ``parameters`` are differentiated.
        loss_scaler, clip_grad_norm, all_reduce, weighting, ignore_index,
        ema_decay: as :class:`~mindspore_accum.model.cell.GradientAccumulationCell`.
        loss_fn: the loss Cell, when the caller has it apart (checked for its
            reduction); else ``network_with_loss``'s own is looked up.
    """

    def __init__(self, network_with_loss: Optional[nn.Cell], optimizer: nn.Optimizer, *,
                 loss_scaler: Optional[amp.LossScaler] = None, clip_grad_norm: Optional[float] = None,
                 all_reduce: bool = False, weighting: str = "samples", ignore_index: int = -100,
                 ema_decay: Optional[float] = None, loss_fn: Optional[nn.Cell] = None):
        _check_arguments(network_with_loss, optimizer, loss_scaler, weighting, ignore_index, loss_fn)
        if clip_grad_norm is not None:
            clip_grad_norm = check_positive_float("clip_grad_norm", clip_grad_norm, "or None for no clipping")
        self.optimizer = optimizer
        self.loss_scaler = loss_scaler
        self.clip_grad_norm = clip_grad_norm
        self.weighting, self.ignore_index = weighting, ignore_index
        self.all_reduce = bool(all_reduce)
        self.buffer = AccumulationBuffer(optimizer.parameters)
        self.forward_backward = None if network_with_loss is None else TrainForwardBackward(
            network_with_loss, optimizer.parameters, self.buffer, loss_scaler, weighting, ignore_index)
        #: The weights' moving average, or None; :meth:`ExponentialMovingAverage.reset` at a fresh start.
        self.ema = ExponentialMovingAverage(optimizer.parameters, ema_decay) if ema_decay is not None else None
        self.optim = TrainOptim(optimizer, self.buffer, loss_scaler, clip_grad_norm, self.all_reduce, ema=self.ema)
        self.clear = TrainClear(self.buffer)
        #: Only a dynamic scaler can answer an overflow (by lowering the scale); else a non-finite window diverged.
        self.skips_overflow = isinstance(loss_scaler, amp.DynamicLossScaler)

    def scaler_parameters(self):
        """The loss scaler's Parameters (its scale and counter), which a resume must get back."""
        return {name: getattr(self.loss_scaler, name) for name in ("scale_value", "counter")
                if isinstance(getattr(self.loss_scaler, name, None), Parameter)}

    def state_parameters(self, network):
        """What a training state saves and a resume restores, in groups named as in the file (:mod:`..run.state`)."""
        groups = {"network": list(network.get_parameters()), "optimizer": list(self.optimizer.get_parameters()),
                  "buffer": list(self.buffer.parameters()), "scaler": list(self.scaler_parameters().values())}
        if self.ema is not None:
            groups["ema"] = self.ema.parameters()
        return groups

    def loss_scale(self):
        """The current loss scale as a float, or None without a scaler (one read-back)."""
        return float(self.loss_scaler.scale_value.asnumpy()) if self.loss_scaler is not None else None

    def settings(self, **more) -> RunSettings:
        """What this engine computes with, as a :class:`~mindspore_accum.run.settings.RunSettings`, with ``more``."""
        return RunSettings.of(
            optimizer=optimizer_description(self.optimizer),
            loss_scaler=type(self.loss_scaler).__name__ if self.loss_scaler is not None else None,
            clip_grad_norm=self.clip_grad_norm, weighting=self.weighting, ignore_index=self.ignore_index,
            ema_decay=self.ema.decay_value if self.ema is not None else None, **more)


class AccumulationStep(nn.Cell):
    """One micro-step in one graph: forward and backward, the window's end decided on the device, the update.

    Args:
        engine: the :class:`AccumulationEngine` whose Cells it runs.
        schedule: the :class:`~mindspore_accum.core.schedule.WindowSchedule`.
        micro_batches_per_epoch: the epoch's micro-batches, or None (windows
            run on across epochs).
        clears: True (the train Cell): the graph clears the closed window and
            returns the window's loss; False (the driver): it leaves the
            buffer for the driver's callbacks and returns ``(loss, figures)``:
            the micro-batch's loss and, where the micro-step closed a window,
            the float32 ``[applied, micro-batches, items, loss]`` of that window
            (over all ranks), zeros elsewhere; one read-back gives them all.
        windows_from_data: the last input of every call is its window's number
            of micro-batches (an int32 scalar, as
            :class:`~mindspore_accum.data.windowed_data.WindowedDataset` yields): the
            window closes when that many are in, whatever ``schedule.mini_steps``.
            A count, not a constant of the graph: windows of any size run on
            one graph. The data's plan ends every epoch's last window, so
            ``micro_batches_per_epoch`` is not used.

    ``epoch_micro_batch`` counts the epoch's micro-batches consumed, on the
    device; 0 again after the epoch's last.
    """

    def __init__(self, engine: AccumulationEngine, schedule: WindowSchedule,
                 micro_batches_per_epoch: Optional[int] = None, clears: bool = True,
                 windows_from_data: bool = False):
        super().__init__(auto_prefix=False)
        self._windows_from_data = bool(windows_from_data)
        if windows_from_data:
            micro_batches_per_epoch = None
        self.engine = engine
        self.buffer = engine.buffer
        self.forward_backward, self.optim, self.clear = engine.forward_backward, engine.optim, engine.clear
        self.mini_steps, self.remainder = schedule.mini_steps, schedule.remainder
        self.micro_batches_per_epoch = micro_batches_per_epoch
        self.window_micro_steps = self.buffer.window_micro_steps
        self.window_loss = self.buffer.window_loss
        #: Micro-batches of the current epoch consumed; 0 again after the epoch's last.
        self.epoch_micro_batch = Parameter(Tensor(0, ms.int32), name="epoch_micro_batch", requires_grad=False)
        self._flush = schedule.flush
        self._knows_epoch = micro_batches_per_epoch is not None
        self._clears = bool(clears)
        self._skips_overflow = engine.skips_overflow
        self._nan = Tensor(float("nan"), ms.float32)
        self._no_figures = Tensor(np.zeros(4, np.float32))

    def construct(self, *inputs):
        if self._windows_from_data:
            loss = self.forward_backward(*inputs[:-1])
            window = ops.depend(self.window_micro_steps, loss)
            update, _ = window_end(window, 0, inputs[-1], None, self._flush)
            return self._update(loss) if update else self._open(loss)
        loss = self.forward_backward(*inputs)
        window = ops.depend(self.window_micro_steps, loss)
        if not self._knows_epoch:
            update, epoch_end = window_end(window, 0, self.mini_steps, None, self._flush)
            return self._update(loss) if update else self._open(loss)
        position = self.epoch_micro_batch + 1
        update, epoch_end = window_end(window, position, self.mini_steps, self.micro_batches_per_epoch, self._flush)
        update = ops.depend(update, ops.assign(self.epoch_micro_batch, ops.select(epoch_end, 0, position)))
        # One runtime branch per micro-step with flush: the remainder policy is a constant of the graph.
        if self._flush:
            return self._update(loss) if update else self._open(loss)
        if update:
            return self._update(loss)
        return self._drop(loss) if epoch_end else self._open(loss)

    def settings(self, **more) -> RunSettings:
        """The engine's settings and the window's (unless the data's plan gives it), with ``more``: what a resume
        must match."""
        window = {} if self._windows_from_data else dict(
            mini_steps=self.mini_steps, remainder=self.remainder, micro_batches_per_epoch=self.micro_batches_per_epoch)
        return self.engine.settings(**window, **more)

    def place_in_epoch(self, micro_batch):
        """Sets ``epoch_micro_batch``: ``micro_batch`` micro-batches of the epoch consumed (0 at its end)."""
        per_epoch = self.micro_batches_per_epoch
        self.epoch_micro_batch.set_data(Tensor(micro_batch if per_epoch and micro_batch < per_epoch else 0, ms.int32))

    def _window_loss(self):
        # A copy, not the Parameter: TrainClear zeroes the Parameter afterwards.
        return ops.identity(self.window_loss)

    def _open(self, loss):
        if self._clears:
            return self._window_loss()
        return loss, self._no_figures

    def _drop(self, loss):
        if self._clears:
            return ops.depend(self._window_loss(), self.clear())
        return loss, self._no_figures

    def _update(self, loss):
        applied = self.optim()
        if not self._clears:
            return loss, self._figures(applied)
        window_loss = self._window_loss()  # after TrainOptim: over all ranks, with all_reduce
        if not self._skips_overflow:  # loud divergence: LossMonitor stops on NaN; a window without items is none
            window_loss = ops.select(applied | (ops.depend(self.buffer.window_items, applied) <= 0), window_loss,
                                     self._nan)
        return ops.depend(window_loss, self.clear())

    def _figures(self, applied):
        """``[applied, micro-batches, items, loss]`` of the window, read after the update stage has reduced them."""
        counts = (self.window_micro_steps, self.buffer.window_items, self.window_loss)
        return ops.stack([ops.cast(applied, ms.float32)] + [ops.cast(ops.depend(count, applied), ms.float32)
                                                           for count in counts])


def _check_arguments(network_with_loss, optimizer, loss_scaler, weighting, ignore_index, loss_fn):
    if network_with_loss is not None and not isinstance(network_with_loss, nn.Cell):
        raise TypeError(f"network_with_loss must be a mindspore.nn.Cell (e.g. nn.WithLossCell), got "
                        f"{type(network_with_loss).__name__}")
    if not is_optimizer(optimizer):
        raise TypeError(f"optimizer must be a mindspore.nn.Optimizer or a mindspore.experimental.optim optimizer, "
                        f"got {type(optimizer).__name__}")
    if loss_scaler is not None and not isinstance(loss_scaler, amp.LossScaler):
        raise TypeError(f"loss_scaler must be None or a mindspore.amp.DynamicLossScaler or StaticLossScaler, "
                        f"got {loss_scaler!r}")
    check_weighting(weighting, ignore_index)
    if loss_fn is None:
        check_loss(getattr(network_with_loss, "_loss_fn", None), "the loss's", ignore_index)
    else:
        check_loss(loss_fn, "loss_fn", ignore_index)
