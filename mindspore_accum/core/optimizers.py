"""The optimizers by name, and what the engines read of any optimizer.

Both engines take a ``mindspore.nn.Optimizer`` or a ``mindspore.experimental.optim`` optimizer (MindSpore's
torch-semantics ones). :func:`create_optimizer` builds the scripts' ``--optimizer`` choices:

=================  ====================================  =================================================
name               MindSpore's                           semantics
=================  ====================================  =================================================
``momentum``       ``nn.Momentum``                       the model zoo's, ``torch.optim.SGD(momentum=)``
``sgd``            ``nn.SGD``                            plain SGD, L2 weight decay
``adam``           ``experimental.optim.Adam``           ``torch.optim.Adam``: bias-corrected, L2 decay
``adamw``          ``experimental.optim.AdamW``          ``torch.optim.AdamW``: bias-corrected, decoupled
``adamweightdecay`` ``nn.AdamWeightDecay``               BERT's: decoupled decay, **no** bias correction,
                                                         so its first update moves a weight by ~3.16 x lr
=================  ====================================  =================================================

A learning rate may be a list of rates, one per applied update. ``nn`` optimizers index it themselves;
an ``experimental.optim`` one gets :class:`RatePerUpdate`, which sets the rate on the device from the
optimizer's own step count before each update - so schedules work on the driver, under ``Model`` and in
sink mode alike, and a resume (which restores the step count) goes on at the right rate.
"""

from typing import Sequence, Union

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.experimental import optim

__all__ = ["OPTIMIZERS", "STATES_PER_WEIGHT", "create_optimizer", "is_optimizer", "RatePerUpdate", "weight_decay_of",
           "learning_rate_of"]

#: name -> (builder(params, lr, momentum, weight_decay), what it is). lr: a float (a list: see create_optimizer).
OPTIMIZERS = {
    "momentum": (lambda p, lr, m, wd: nn.Momentum(p, lr, m, weight_decay=wd), "nn.Momentum (the zoo's)"),
    "sgd": (lambda p, lr, m, wd: nn.SGD(p, lr, weight_decay=wd), "nn.SGD"),
    "adam": (lambda p, lr, m, wd: optim.Adam(p, lr=lr, weight_decay=wd),
             "experimental.optim.Adam: torch.optim.Adam, L2 decay"),
    "adamw": (lambda p, lr, m, wd: optim.AdamW(p, lr=lr, weight_decay=wd),
              "experimental.optim.AdamW: torch.optim.AdamW, decoupled decay"),
    "adamweightdecay": (lambda p, lr, m, wd: nn.AdamWeightDecay(p, lr, weight_decay=wd),
                        "nn.AdamWeightDecay: BERT's, no bias correction"),
}


#: name -> the tensors of each weight's shape the optimizer keeps (momentum's accumulation, Adam's two moments);
#: nn.SGD keeps its accumulation at momentum 0 too. The scripts' memory check counts them.
STATES_PER_WEIGHT = {"momentum": 1, "sgd": 1, "adam": 2, "adamw": 2, "adamweightdecay": 2}


def create_optimizer(name, params, lr: Union[float, Sequence[float]], momentum=0.9, weight_decay=0.0):
    """The optimizer ``name`` (one of :data:`OPTIMIZERS`) over ``params`` at ``lr``: a rate, or one per update."""
    if name not in OPTIMIZERS:
        raise ValueError(f"optimizer {name!r} is none of {', '.join(OPTIMIZERS)}")
    build = OPTIMIZERS[name][0]
    params = list(params)
    if isinstance(lr, (int, float)) or name in ("momentum", "sgd", "adamweightdecay"):
        return build(params, lr if isinstance(lr, (int, float)) else list(lr), momentum, weight_decay)
    return RatePerUpdate(build(params, float(lr[0]), momentum, weight_decay), lr)


def is_optimizer(optimizer):
    """An optimizer the engines take: ``nn.Optimizer``, ``experimental.optim.Optimizer``, or :class:`RatePerUpdate`."""
    return isinstance(optimizer, (nn.Optimizer, optim.Optimizer, RatePerUpdate))


class RatePerUpdate(nn.Cell):
    """An ``experimental.optim`` optimizer whose rate is ``rates[k]`` at its ``k``-th update (the last after them).

    The rate is set on the device from the optimizer's ``state_step`` (its applied updates), so no host
    Python runs between updates. ``parameters``, ``param_groups`` and ``state_step`` are the optimizer's.
    """

    def __init__(self, optimizer, rates: Sequence[float]):
        super().__init__(auto_prefix=False)
        if not isinstance(optimizer, optim.Optimizer) or len(optimizer.lrs) != 1:
            raise TypeError("RatePerUpdate takes an experimental.optim optimizer of one parameter group")
        self.optimizer = optimizer
        self.parameters = optimizer.parameters
        self.param_groups = optimizer.param_groups
        self.state_step = optimizer.state_step
        self.lr = optimizer.lrs[0]
        self.rates = Tensor(np.asarray(rates, np.float32))
        self.last = len(rates) - 1

    def construct(self, gradients):
        index = ops.minimum(ops.cast(ops.reshape(self.state_step, ()), ms.int32), self.last)
        gradients = ops.depend(gradients, ops.assign(self.lr, ops.cast(self.rates[index], self.lr.dtype)))
        return self.optimizer(gradients)


def _inner(optimizer):
    return optimizer.optimizer if isinstance(optimizer, RatePerUpdate) else optimizer


def weight_decay_of(optimizer):
    """The optimizer's weight decay as a float (its first group's for ``experimental.optim``)."""
    optimizer = _inner(optimizer)
    decay = optimizer.param_groups[0].get("weight_decay", 0.0) if isinstance(optimizer, optim.Optimizer) else \
        getattr(optimizer, "weight_decay", 0.0)
    if isinstance(decay, Tensor) and decay.size == 1:
        return float(decay.asnumpy())
    return float(decay) if isinstance(decay, (int, float)) else decay


def learning_rate_of(optimizer, just_applied=False):
    """The rate the optimizer's next update uses (``just_applied``: the last one's), or None if unreadable.

    A list of rates is read at the optimizer's step count, which counts applied updates; a
    ``LearningRateSchedule`` Cell gives None.
    """
    if isinstance(optimizer, RatePerUpdate):
        step = int(np.asarray(optimizer.state_step.asnumpy()).reshape(-1)[0]) - int(just_applied)
        return float(optimizer.rates.asnumpy()[min(max(step, 0), optimizer.last)])
    if isinstance(optimizer, optim.Optimizer):
        return float(np.asarray(optimizer.lrs[0].asnumpy()).reshape(-1)[0])
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
