"""An exponential moving average of the weights, updated once per optimizer **update**.

After each applied update: ``ema = decay * ema + (1 - decay) * param``, starting
from the parameters at the start of training. Nothing happens on micro-steps
that apply no update, nor on windows skipped for overflow or for having no
items. mindcv's ``TrainStep`` updates its EMA after every micro-step, so under
accumulation it decays ``mini_steps`` times too fast; timm's ``ModelEmaV2`` is
stepped by the caller, per optimizer step, as here. No warm-up.

The averages are float32 Parameters named ``ema.<weight name>``, one per
trainable weight: a training state and a train-Cell checkpoint hold them, so
a resume is exact. :meth:`ExponentialMovingAverage.network_entries` gives the
network's parameters under their own names with the averages in place of the
trainable ones: what the model checkpoint holds with EMA on, so eval.py and the
model zoo load it unchanged.
"""

import contextlib
from typing import Iterable

import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

__all__ = ["ExponentialMovingAverage", "check_ema_decay"]

_blend = ops.MultitypeFuncGraph("blend")


@_blend.register("Tensor", "Tensor", "Tensor")
def _blend_tensor(decay, average, param):
    """average <- decay * average + (1 - decay) * param, in float32."""
    return ops.assign(average, decay * average + (1 - decay) * ops.cast(param, ms.float32))


def check_ema_decay(decay):
    """``decay`` as a float in [0, 1), or None; refused in one line otherwise."""
    if decay is None:
        return None
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise ValueError(f"ema_decay must be a number in [0, 1), got {decay!r}: e.g. ema_decay=0.999, or None for "
                         f"no EMA")
    return float(decay)


class ExponentialMovingAverage(nn.Cell):
    """The averages of ``weights`` and their update; call it (in a graph) after each applied update.

    Args:
        weights: the trainable weights, usually ``optimizer.parameters``.
        decay: in [0, 1).
    """

    def __init__(self, weights: Iterable[Parameter], decay: float):
        super().__init__(auto_prefix=False)
        self.weights = ParameterTuple(weights)
        self.decay_value = check_ema_decay(decay)
        self.decay = Tensor(self.decay_value, ms.float32)
        self.averages = ParameterTuple(
            Parameter(Tensor(w.asnumpy(), ms.float32), name="ema." + w.name, requires_grad=False)
            for w in self.weights)
        self.hyper_map = ops.HyperMap()

    def construct(self):
        return self.hyper_map(ops.partial(_blend, self.decay), self.averages, self.weights)

    def reset(self):
        """Starts the averages from the weights as they are now: at a run's fresh start, after any weights loaded."""
        for weight, average in zip(self.weights, self.averages):
            average.set_data(Tensor(weight.asnumpy(), ms.float32))

    def parameters(self):
        """The averages, for a training state."""
        return list(self.averages)

    def network_entries(self, network):
        """``[{"name", "data"}]`` of ``network``'s parameters, each trainable one's average in its place."""
        averages = {w.name: a for w, a in zip(self.weights, self.averages)}
        return [{"name": p.name, "data": averages.get(p.name, p)} for p in network.get_parameters()]

    @contextlib.contextmanager
    def applied(self):
        """Within the block the weights hold the averages (to evaluate them); then their own values again."""
        saved = [w.data.copy() for w in self.weights]
        try:
            for weight, average in zip(self.weights, self.averages):
                weight.set_data(ops.cast(average, weight.dtype))
            yield
        finally:
            for weight, value in zip(self.weights, saved):
                weight.set_data(value)
