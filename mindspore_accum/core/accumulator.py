"""``Accumulator``: gradient accumulation inside your own training step, called like an optimizer.

For the MindSpore 2.x loop: a ``forward_fn``, ``mindspore.value_and_grad`` and a
``train_step`` that you write. Where that step would call ``optimizer(grads)``,
it calls ``accumulator(grads, items)``::

    accumulator = Accumulator(optimizer, mini_steps=4)
    grad_fn = mindspore.value_and_grad(forward_fn, None, optimizer.parameters)

    @mindspore.jit                    # or in a Cell's construct (faster on the CPU), or eagerly in PyNative
    def train_step(x, y):
        loss, grads = grad_fn(x, y)
        return loss, accumulator(grads, x.shape[0], loss)

    for x, y in dataset.create_tuple_iterator():
        train_step(x, y)
    accumulator.flush()               # the epoch's partial window, with its true weight

It is built by the engines' own :class:`~mindspore_accum.core.engine.AccumulationEngine`
and runs their Cells - :class:`~mindspore_accum.core.cells.AddToWindow`,
:func:`~mindspore_accum.core.schedule.window_end`,
:class:`~mindspore_accum.core.cells.TrainOptim` and
:class:`~mindspore_accum.core.cells.TrainClear` - so a window is the weighted mean
of its micro-batches' gradients (a step on the concatenated window), and the
unscale, the overflow skip, clipping, the EMA and the data-parallel all-reduce
each happen once per update. docs/own_loop.md has the loop with AMP, msrun and
a mid-window resume.
"""

from typing import Optional

import mindspore as ms
from mindspore import Parameter, Tensor, amp, nn, ops

from .cells import AddToWindow
from .engine import AccumulationEngine
from .optimizers import is_optimizer
from .schedule import window_end
from .validation import check_positive_int

__all__ = ["Accumulator"]


class Accumulator(nn.Cell):
    """Accumulates the gradients of ``mini_steps`` micro-steps and applies ``optimizer`` once per window.

    Args:
        optimizer: a ``mindspore.nn`` optimizer or a ``mindspore.experimental.optim`` one; a learning
            rate given as a list is a rate per update.
        mini_steps: micro-batches per update, unless a call passes its window's size.
        loss_scaler: None, or the ``mindspore.amp`` ``DynamicLossScaler`` / ``StaticLossScaler`` whose
            ``scale(loss)`` your ``forward_fn`` returns. The window is unscaled, checked and the scale
            adjusted once per update; a dynamic scaler skips an overflowing window.
        clip_grad_norm: clip the window's (unscaled) mean gradient to this global norm, once per update.
        all_reduce: data parallel, after ``mindspore.communication.init()``: one all-reduce of the
            window's gradient, items and loss per update; pass each rank's local gradients.
        ema_decay: None, or a decay in [0, 1): a moving average of the weights, once per applied update.

    Inputs:
        - **grads** (tuple of Tensor) - the micro-batch's gradients, one per ``optimizer.parameters``
          in that order: the gradient of its *mean* loss (scaled, with a loss scaler).
        - **items** (int or Tensor) - what the micro-batch weighs: its samples (``x.shape[0]``), or its
          valid tokens for a per-token loss (a micro-batch of 0 items adds nothing).
        - **loss** (Tensor, optional) - the micro-batch's unscaled mean loss: kept as the window's loss,
          part of the finiteness check, and averaged over the ranks with ``all_reduce``.
        - **window** (int or Tensor, optional) - the number of micro-batches of this window, in place of
          ``mini_steps`` (a global batch of any size; ``WindowedDataset`` yields it as its last column).

    Outputs: a bool scalar, True when this call applied an update.

    Every piece of state is a Parameter of this Cell: the buffer and its counters, the optimizer (the
    weights and its moments), the scaler's scale and counter, the EMA, and ``skipped_windows`` (windows
    not applied because their gradient or loss was not finite). So ``mindspore.save_checkpoint(
    accumulator, path)`` in the middle of a window, loaded into a fresh set-up with
    ``mindspore.load_checkpoint(path, accumulator)``, goes on bit for bit.
    """

    def __init__(self, optimizer, mini_steps: int = 4, *, loss_scaler: Optional[amp.LossScaler] = None,
                 clip_grad_norm: Optional[float] = None, all_reduce: bool = False,
                 ema_decay: Optional[float] = None):
        super().__init__(auto_prefix=False)  # the optimizer's and the weights' names stay theirs
        if not is_optimizer(optimizer):
            raise TypeError(f"optimizer must be a mindspore.nn or mindspore.experimental.optim optimizer, got "
                            f"{type(optimizer).__name__}")
        self.mini_steps = check_positive_int("mini_steps", mini_steps, example=4)
        # The engines' own builder and checks, without a network: the user's step takes the gradients.
        engine = AccumulationEngine(None, optimizer, loss_scaler=loss_scaler, clip_grad_norm=clip_grad_norm,
                                    all_reduce=all_reduce, ema_decay=ema_decay)
        self.optimizer = optimizer
        self.weights = tuple(optimizer.parameters)
        self.buffer = engine.buffer
        self.ema = engine.ema
        self.add = AddToWindow(self.buffer, may_be_empty=True)
        self.update_stage = _UpdateStage(engine.optim, engine.clear)
        # The scaler is no Cell: as attributes, its Parameters are this Cell's, and so in its checkpoint.
        for name, param in engine.scaler_parameters().items():
            setattr(self, "loss_scaler_" + name, param)
        self.window_micro_steps = self.buffer.window_micro_steps
        #: Windows not applied because their gradient or loss was not finite (with a dynamic scaler, overflows).
        self.skipped_windows = self.update_stage.skipped_windows
        self._shapes = tuple(tuple(w.shape) for w in self.weights)
        self._no_loss = Tensor(0.0, ms.float32)
        self._not_applied = Tensor(False, ms.bool_)
        self._flush = _Flush(self.update_stage)

    def construct(self, grads, items, loss=None, window=None):
        _check_grads(grads, self._shapes)
        _check_items(items)
        loss = self._no_loss if loss is None else loss
        loss = self.add(grads, items, loss)
        size = self.mini_steps if window is None else window
        update, _ = window_end(ops.depend(self.window_micro_steps, loss), 0, size, None, False)
        if update:
            return self.update_stage()
        return ops.depend(self._not_applied, loss)

    def flush(self):
        """Applies the open partial window, weighted by its true items, and clears it: call it at an epoch's end.

        Returns True when an update was applied (False: no window was open, or it was skipped).
        """
        return bool(self._flush())

    def clear(self):
        """Discards the open partial window (``remainder="drop"``): the buffer and its counters back to 0."""
        self.update_stage.clear()


class _UpdateStage(nn.Cell):
    """A window's close: ``TrainOptim`` (applied if finite), a skip counted if not, ``TrainClear``."""

    def __init__(self, optim, clear):
        super().__init__(auto_prefix=False)
        self.optim, self.clear = optim, clear
        self.window_items = optim.window_items
        self.skipped_windows = Parameter(Tensor(0, ms.int32), name="skipped_windows", requires_grad=False)

    def construct(self):
        applied = self.optim()
        skipped = ops.logical_not(applied) & (ops.depend(self.window_items, applied) > 0)
        applied = ops.depend(applied, ops.assign_add(self.skipped_windows, ops.cast(skipped, ms.int32)))
        return ops.depend(applied, self.clear())


class _Flush(nn.Cell):
    """:meth:`Accumulator.flush` as a graph of its own: the update stage if a window is open."""

    def __init__(self, update_stage):
        super().__init__(auto_prefix=False)
        self.update_stage = update_stage
        self.window_micro_steps = update_stage.clear.window_micro_steps
        self._not_applied = Tensor(False, ms.bool_)

    def construct(self):
        if self.window_micro_steps > 0:
            return self.update_stage()
        return self._not_applied


def _check_grads(grads, shapes):
    """Refuses gradients that are not the optimizer's parameters' (compile time: shapes are constants)."""
    if not isinstance(grads, (tuple, list)):
        raise TypeError("grads must be the tuple of gradients that value_and_grad(forward_fn, None, "
                        "optimizer.parameters) returns")
    if len(grads) != len(shapes):
        raise ValueError(f"grads has {len(grads)} tensors but the optimizer has {len(shapes)} parameters: take "
                         f"the gradients with respect to optimizer.parameters")
    for index, (grad, shape) in enumerate(zip(grads, shapes)):
        if tuple(grad.shape) != shape:
            raise ValueError(f"grads[{index}] has shape {list(grad.shape)} but the optimizer's parameter "
                             f"{index} has {list(shape)}: take the gradients with respect to optimizer.parameters, "
                             f"in that order")


def _check_items(items):
    """Refuses a weight that is not a positive number or a scalar Tensor (values in a graph are not seen)."""
    if isinstance(items, bool) or not isinstance(items, (int, float, Tensor)):
        raise TypeError(f"items must be a positive number or a scalar Tensor, e.g. x.shape[0], got "
                        f"{type(items).__name__}")
    if isinstance(items, Tensor):
        if items.ndim != 0:
            raise ValueError(f"items must be a scalar Tensor, got shape {items.shape}: pass the micro-batch's "
                             f"count, e.g. x.shape[0] or the number of valid tokens")
    elif not items > 0:
        raise ValueError(f"items must be positive, got {items}: pass the micro-batch's samples, e.g. x.shape[0]")
