"""Learning-rate schedules that count optimizer updates, not micro-batches.

A MindSpore optimizer given a list of learning rates uses entry
``global_step`` at each call, and the optimizer is called once per window,
so a list sized in *updates* makes update t use the same rate whatever
``mini_steps`` is. Size it from :meth:`WindowSchedule.updates_per_epoch
<mindspore_accum.core.schedule.WindowSchedule.updates_per_epoch>`, which counts a
flushed partial window. The lists come from MindSpore's own helpers
(``nn.warmup_lr``, ``nn.cosine_decay_lr``, ``nn.piecewise_constant_lr``).
"""

import numbers
from typing import List

from mindspore import nn

from .validation import check_choice, check_positive_float, check_positive_int

__all__ = ["LR_SCHEDULES", "learning_rates"]

#: ``constant``; ``cosine``: half a cosine from ``lr`` towards 0 over the
#: updates after warm-up; ``step``: ``lr``, then ``lr/10`` from half-way, then
#: ``lr/100`` from three quarters of the way (the ResNet recipe's shape).
LR_SCHEDULES = ("constant", "cosine", "step")


def learning_rates(schedule: str, lr: float, total_updates: int, warmup_updates: int = 0) -> List[float]:
    """The learning rate of each optimizer update, as a list of ``total_updates`` floats.

    Args:
        schedule: one of :data:`LR_SCHEDULES`.
        lr: the peak learning rate (> 0).
        total_updates: optimizer updates in the whole run.
        warmup_updates: the first this many updates ramp linearly to ``lr``:
            update i (1-based) uses ``lr * i / warmup_updates``.
    """
    check_choice("lr_schedule", schedule, LR_SCHEDULES)
    lr = check_positive_float("lr", lr)
    total_updates = check_positive_int("total_updates", total_updates)
    if isinstance(warmup_updates, bool) or not isinstance(warmup_updates, numbers.Integral) or warmup_updates < 0:
        raise ValueError(f"warmup_steps must be a whole number >= 0, got {warmup_updates!r}")
    warmup = min(int(warmup_updates), total_updates)
    # warmup_lr's first entry is 0 (a wasted update); drop it, so warm-up ends at lr exactly.
    rates = nn.warmup_lr(lr, warmup + 1, 1, warmup)[1:] if warmup else []
    rest = total_updates - warmup
    if not rest:
        return rates
    if schedule == "constant":
        rates += [lr] * rest
    elif schedule == "cosine":
        rates += nn.cosine_decay_lr(0.0, lr, rest, 1, rest)
    else:
        milestones, values = [], []
        for milestone, value in ((rest // 2, lr), (rest * 3 // 4, lr / 10), (rest, lr / 100)):
            if milestone > (milestones[-1] if milestones else 0):  # a run too short for three segments has fewer
                milestones.append(milestone)
                values.append(value)
        rates += nn.piecewise_constant_lr(milestones, values)
    return [float(rate) for rate in rates]
