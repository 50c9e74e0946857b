"""The three graph-mode Cells of gradient accumulation.

They follow MindSpore's tutorial "应用梯度累积算法" (r1.0) and share one
:class:`AccumulationBuffer`:

* :class:`TrainForwardBackward` - loss and gradients of one micro-batch, added
  into ``grad_mean`` by :class:`AddToWindow`;
* :class:`TrainOptim` - one optimizer update from ``grad_mean``;
* :class:`TrainClear` - zero ``grad_mean`` and the window's counters.

Where the tutorial summed, :class:`AddToWindow` keeps a weighted running mean
(``w = b / (n + b)``): the gradient of the concatenated window's mean loss,
never ``mini_steps`` times a gradient, and ``nn.TrainOneStepCell`` to the bit
when ``mini_steps=1``. docs/design.md derives it ("The normalisation rule").
The window's loss is kept the same way, so that the update stage reduces it
across ranks with the gradient.
"""

from typing import Iterable, Optional

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, amp, nn, ops
from mindspore.common.initializer import initializer

from .ema import ExponentialMovingAverage
from .weighting import check_weighting, count_items

__all__ = ["AccumulationBuffer", "AddToWindow", "TrainForwardBackward", "TrainOptim", "TrainClear"]

_accumulate = ops.MultitypeFuncGraph("accumulate")


@_accumulate.register("Tensor", "Tensor", "Tensor")
def _accumulate_tensor(weight, acc, grad):
    """acc <- acc + weight * (grad - acc), in float32 whatever grad's dtype."""
    return ops.assign_add(acc, weight * (ops.cast(grad, ms.float32) - acc))


_accumulate_items = ops.MultitypeFuncGraph("accumulate_items")


@_accumulate_items.register("Tensor", "Tensor", "Tensor", "Tensor")
def _accumulate_items_tensor(weight, has_items, acc, grad):
    """As ``_accumulate``; a micro-batch without items adds nothing, even if its gradient is NaN (a mean over 0)."""
    grad = ops.where(has_items, ops.cast(grad, ms.float32), acc)
    return ops.assign_add(acc, weight * (grad - acc))


_zero = ops.MultitypeFuncGraph("zero")


@_zero.register("Tensor")
def _zero_tensor(acc):
    # zeros_like is a transient of the graph, not a second persistent copy of
    # every parameter (the tutorial kept one). Assigning zeros, rather than
    # subtracting the buffer from itself, also clears inf and NaN.
    return ops.assign(acc, ops.zeros_like(acc))


class AccumulationBuffer:
    """The state of one accumulation window, shared by the three Cells.

    Attributes:
        grad_mean: a ``ParameterTuple`` with one float32 buffer per trainable
            weight; it holds the window's weighted *mean* gradient so far. In
            checkpoints its tensors keep the tutorial's name, ``grad_sum.<weight
            name>`` (state format 2).
        window_items: float32 scalar, what this window is weighted by so far:
            its samples, or its items with ``weighting="items"`` (see
            :mod:`~mindspore_accum.core.weighting`); ``window_samples`` in checkpoints.
        window_micro_steps: int32 scalar, micro-batches added in this window.
        window_loss: float32 scalar, the window's mean loss so far, weighted as ``grad_mean``.
    """

    def __init__(self, weights: Iterable[Parameter]):
        weights = tuple(weights)
        if not weights:
            raise ValueError("weights is empty: the network has no trainable parameters to accumulate")
        # float32 whatever the network's compute type: a float16 buffer would
        # lose the small gradients of late micro-batches.
        self.grad_mean = ParameterTuple(
            Parameter(initializer("zeros", w.shape, ms.float32), name="grad_sum." + w.name, requires_grad=False)
            for w in weights)
        self.window_items = Parameter(Tensor(0.0, ms.float32), name="window_samples", requires_grad=False)
        self.window_micro_steps = Parameter(Tensor(0, ms.int32), name="window_micro_steps", requires_grad=False)
        self.window_loss = Parameter(Tensor(0.0, ms.float32), name="window_loss", requires_grad=False)

    def parameters(self):
        """Every tensor of the buffer: ``grad_mean``, the two counters, the window's loss."""
        return (*self.grad_mean, self.window_items, self.window_micro_steps, self.window_loss)


class AddToWindow(nn.Cell):
    """Adds one micro-batch's gradients into the window's weighted running mean: the one copy of that arithmetic.

    :class:`TrainForwardBackward` calls it after its backward, and
    :class:`~mindspore_accum.core.accumulator.Accumulator` with the gradients of
    the user's own step. With ``items`` ``b`` and the window's ``n`` so far,
    each buffer tensor ``acc`` becomes ``acc + w * (g - acc)`` with
    ``w = b / (n + b)``, the loss likewise, and the counters advance.

    Args:
        buffer: the window's :class:`AccumulationBuffer`.
        may_be_empty: a micro-batch may carry no items (``weighting="items"``,
            or a weight the user passes): it then adds nothing, not even the
            NaN of a mean over 0, and its loss reads 0. A constant of the
            graph, so that samples weighting, whose count is never 0, pays
            for no guard.

    Inputs: ``grads``, a tuple like ``buffer.grad_mean``; ``items``, a
    scalar; ``loss``, a scalar.

    Returns: the loss as it entered the window (float32).
    """

    def __init__(self, buffer: AccumulationBuffer, may_be_empty: bool = False):
        super().__init__(auto_prefix=False)
        self.grad_mean = buffer.grad_mean
        self.window_items = buffer.window_items
        self.window_micro_steps = buffer.window_micro_steps
        self.window_loss = buffer.window_loss
        self.may_be_empty = bool(may_be_empty)
        self.hyper_map = ops.HyperMap()

    def construct(self, grads, items, loss):
        items = ops.cast(items, ms.float32)
        loss = ops.cast(loss, ms.float32)
        window_items = self.window_items + items
        if self.may_be_empty:
            has_items = items > 0
            # items / window_items, and 0 for 0 / 0; exact for any positive count, whole or not.
            weight = items / ops.select(window_items > 0, window_items, ops.ones((), ms.float32))
            loss = ops.select(has_items, loss, ops.zeros((), ms.float32))  # a mean over 0 is NaN
            added = self.hyper_map(ops.partial(_accumulate_items, weight, has_items), self.grad_mean, grads)
        else:
            weight = items / window_items
            added = self.hyper_map(ops.partial(_accumulate, weight), self.grad_mean, grads)
        loss = ops.depend(loss, added)
        loss = ops.depend(loss, _accumulate(weight, self.window_loss, loss))
        loss = ops.depend(loss, ops.assign(self.window_items, window_items))
        return ops.depend(loss, ops.assign_add(self.window_micro_steps, ops.ones((), ms.int32)))


class TrainForwardBackward(nn.Cell):
    """Forward and backward of one micro-batch; adds its gradient into ``grad_mean``.

    Args:
        network: the network with its loss (e.g. ``nn.WithLossCell``). Its
            output must be the *mean* loss over the micro-batch.
        weights: the parameters to differentiate, usually
            ``optimizer.parameters``.
        buffer: the window's :class:`AccumulationBuffer`.
        loss_scaler: a ``mindspore.amp`` ``DynamicLossScaler`` or
            ``StaticLossScaler``, or None. With one, the loss is scaled by its
            ``scale_value`` on every micro-step (as the backward's sensitivity,
            the way ``nn.TrainOneStepWithLossScaleCell`` does), so ``grad_mean``
            holds the *scaled* mean gradient until :class:`TrainOptim`
            unscales it.
        weighting: ``"samples"`` (each micro-batch weighted by its rows) or
            ``"items"`` (by its labels that are not ``ignore_index``, or by
            the ``items`` of a network that returns ``(loss, items)``); see
            :mod:`~mindspore_accum.core.weighting`. With ``"items"`` a micro-batch
            without items adds nothing and its loss reads 0.
        ignore_index: the label that is no item (``nn.CrossEntropyLoss``'s).

    Inputs: the network's inputs; the first one's leading dimension is the
    number of samples in the micro-batch, the last one holds the labels.

    Returns: the micro-batch's loss (unscaled).
    """

    def __init__(self, network: nn.Cell, weights: Iterable[Parameter], buffer: AccumulationBuffer,
                 loss_scaler: Optional[amp.LossScaler] = None, weighting: str = "samples", ignore_index: int = -100):
        super().__init__(auto_prefix=False)
        if not isinstance(network, nn.Cell):
            raise TypeError(f"network must be a mindspore.nn.Cell, got {type(network).__name__}: for a function "
                            f"and mindspore.value_and_grad, call mindspore_accum.Accumulator with its gradients")
        self.items = check_weighting(weighting, ignore_index) == "items"
        self.ignore_index = ignore_index
        self.network = network
        self.network.set_grad()
        self.weights = ParameterTuple(weights)
        self.add = AddToWindow(buffer, may_be_empty=self.items)
        self.scaled = loss_scaler is not None
        # Without a scaler: the same gradient formulation as nn.TrainOneStepCell
        # (no sens), so that one micro-batch gives the very same gradient bits.
        self.grad = ops.GradOperation(get_by_list=True, sens_param=self.scaled)
        # A network returning (loss, items): the sensitivity is (scale or 1, 0), so only the loss is differentiated.
        self.grad_of_loss = ops.GradOperation(get_by_list=True, sens_param=True)
        self.scale_value = loss_scaler.scale_value if self.scaled else None

    def construct(self, *inputs):
        if self.items:
            return self._items_step(*inputs)
        loss = self.network(*inputs)
        grads = self._grads(loss, *inputs)
        return self.add(grads, ops.shape(inputs[0])[0], loss)

    def _grads(self, loss, *inputs):
        if self.scaled:
            sens = ops.ones_like(loss) * ops.cast(self.scale_value, ops.dtype(loss))
            return self.grad(self.network, self.weights)(*inputs, sens)
        return self.grad(self.network, self.weights)(*inputs)

    def _items_step(self, *inputs):
        out = self.network(*inputs)
        if isinstance(out, tuple):  # the (loss, items) protocol
            loss, items = out[0], out[1]
            scale = ops.cast(self.scale_value, ops.dtype(loss)) if self.scaled else ops.ones((), ops.dtype(loss))
            sens = (ops.ones_like(loss) * scale, ops.zeros_like(items))
            grads = self.grad_of_loss(self.network, self.weights)(*inputs, sens)
        else:
            loss, items = out, count_items(inputs[-1], self.ignore_index)
            grads = self._grads(loss, *inputs)
        return self.add(grads, items, loss)


_unscale = ops.MultitypeFuncGraph("unscale")
_flat_sum = ops.MultitypeFuncGraph("flat_sum")
_assign_piece = ops.MultitypeFuncGraph("assign_piece")


@_flat_sum.register("Tensor", "Tensor")
def _flat_sum_tensor(samples, acc):
    """A rank's window mean times its samples: its share of the sum over all ranks' samples, flat."""
    return ops.reshape(acc * samples, (-1,))


@_assign_piece.register("Tensor", "Tensor")
def _assign_piece_tensor(acc, piece):
    return ops.assign(acc, ops.reshape(piece, ops.shape(acc)))


@_unscale.register("Tensor", "Tensor")
def _unscale_tensor(scale, acc):
    return ops.assign(acc, acc / scale)


class TrainOptim(nn.Cell):
    """Applies ``optimizer`` once to the window's gradient in ``grad_mean``, if it is finite.

    In this order, once per window (never per micro-step):

    1. ``amp.all_finite`` of ``grad_mean`` and the window's loss: a NaN or inf
       from any micro-batch reaches the accumulated gradient, while a finite
       loss can hide one (a ReLU maps NaN to 0 on the way forward, not on the
       way back); and an infinite loss with a finite gradient is divergence too.
    2. If finite: unscale ``grad_mean`` in place (with a loss scaler), clip the
       result by its global norm (``ops.clip_by_global_norm``, with
       ``clip_grad_norm``), and apply the optimizer. If not, nothing is applied.
    3. With a loss scaler: ``adjust(finite)``, which lowers the scale after an
       overflow and may raise it after a run of good windows - after the
       unscale, so the window is unscaled by the scale it was scaled with.

    With ``all_reduce=True`` (data parallel, after
    ``mindspore.communication.init()``), step 1 is preceded by the window's
    only communication: each rank's ``samples x grad_mean``, its samples and
    ``samples x window_loss`` are concatenated into one flat vector, summed
    over all ranks by **one** ``ops.AllReduce``, and divided by the total
    samples. Every rank then holds the mean gradient of all ranks' samples of
    the window (and ``window_items`` / ``window_loss`` the global figures),
    checks it, and applies the same update. A non-finite gradient or loss on
    any rank reaches every rank through the sum, so all ranks skip or stop
    together.

    ``grad_mean`` is already the mean over the window's samples, so no division
    by ``mini_steps`` happens here. The buffer is left for :class:`TrainClear`.
    Callbacks that read ``grad_mean`` after this Cell see the unscaled,
    unclipped mean gradient.

    A window whose count is 0 (``weighting="items"`` with every label ignored)
    applies no update; its gradient is finite (zero) and does not lower the scale.

    With ``ema`` (an :class:`~mindspore_accum.core.ema.ExponentialMovingAverage`),
    the averages are updated right after each applied update, and never
    otherwise.

    Returns: a bool scalar, True if the update was applied.
    """

    def __init__(self, optimizer: nn.Optimizer, buffer: AccumulationBuffer,
                 loss_scaler: Optional[amp.LossScaler] = None, clip_grad_norm: Optional[float] = None,
                 all_reduce: bool = False, ema: Optional[ExponentialMovingAverage] = None):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.ema = ema
        self.use_ema = ema is not None
        self.grad_mean = buffer.grad_mean
        self.window_items = buffer.window_items
        self.window_loss = buffer.window_loss
        self.checked = ParameterTuple((*buffer.grad_mean, buffer.window_loss))  # what must be finite
        self.all_reduce = bool(all_reduce)
        if self.all_reduce:
            self.sum_over_ranks = ops.AllReduce(ops.ReduceOp.SUM)
            # The flat vector's pieces: every gradient, then samples and samples x loss.
            self.piece_sizes = tuple(int(p.size) for p in self.grad_mean) + (1, 1)
            self.total_index = sum(self.piece_sizes) - 2
        self.scaled = loss_scaler is not None
        self.loss_scaler = loss_scaler
        self.scale_value = loss_scaler.scale_value if self.scaled else None
        self.clip = clip_grad_norm is not None
        self.clip_grad_norm = float(clip_grad_norm) if self.clip else 1.0
        self.hyper_map = ops.HyperMap()

    def construct(self):
        if self.all_reduce:
            finite = self._reduce_over_ranks()
        else:
            finite = amp.all_finite(self.checked)
        # A window without items (weighting="items": every label ignored) has nothing to apply.
        applied = finite & (ops.depend(self.window_items, finite) > 0)
        if applied:
            if self.scaled:
                applied = ops.depend(applied, self.hyper_map(ops.partial(_unscale, self.scale_value), self.grad_mean))
            grads = self.grad_mean
            if self.clip:
                grads = ops.clip_by_global_norm(grads, self.clip_grad_norm)
            applied = ops.depend(applied, self.optimizer(grads))
            if self.use_ema:  # after the optimizer has written the weights, and only on an applied update
                applied = ops.depend(applied, self.ema())
        if self.scaled:
            applied = ops.depend(applied, self.loss_scaler.adjust(finite))
        return applied

    def _reduce_over_ranks(self):
        samples = self.window_items
        parts = self.hyper_map(ops.partial(_flat_sum, samples), self.grad_mean)
        flat = ops.concat(parts + (ops.reshape(samples, (1,)), ops.reshape(self.window_loss * samples, (1,))))
        flat = self.sum_over_ranks(flat)  # the one all-reduce of the window
        finite = amp.all_finite((flat,))
        mean = flat / ops.maximum(flat[self.total_index], 1.0)  # the same, and 0 for a window without items
        pieces = ops.split(mean, self.piece_sizes)
        finite = ops.depend(finite, self.hyper_map(_assign_piece, self.grad_mean, pieces[:-2]))
        finite = ops.depend(finite, ops.assign(self.window_items, ops.reshape(flat[self.total_index], ())))
        return ops.depend(finite, ops.assign(self.window_loss, ops.reshape(pieces[-1], ())))


class TrainClear(nn.Cell):
    """Zeroes ``grad_mean``, the window's counters and its loss."""

    def __init__(self, buffer: AccumulationBuffer):
        super().__init__(auto_prefix=False)
        self.grad_mean = buffer.grad_mean
        self.window_items = buffer.window_items
        self.window_micro_steps = buffer.window_micro_steps
        self.window_loss = buffer.window_loss
        self.hyper_map = ops.HyperMap()

    def construct(self):
        # Return a scalar, not the cleared buffers: a tuple output would be
        # copied back to the host on every update.
        done = ops.depend(ops.ones((), ms.bool_), self.hyper_map(_zero, self.grad_mean))
        done = ops.depend(done, ops.assign(self.window_items, ops.zeros((), ms.float32)))
        done = ops.depend(done, ops.assign(self.window_loss, ops.zeros((), ms.float32)))
        return ops.depend(done, ops.assign(self.window_micro_steps, ops.zeros((), ms.int32)))
