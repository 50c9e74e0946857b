"""When to update: the window schedule, kept apart from how gradients accumulate.

As in Accelerate's ``accumulate()``, this object only answers "is this the end
of a window?"; the Cells do the arithmetic. The end of an epoch forces the
decision for a partial window, so nothing leaks into the next epoch.
"""

import math

from .validation import check_choice, check_positive_int

__all__ = ["WindowSchedule", "REMAINDER_POLICIES", "window_end"]

#: ``"flush"``: apply a partial window at the end of an epoch, weighted by its
#: true sample count. ``"drop"``: discard it, so that every update is a full
#: window of ``mini_steps`` micro-batches.
REMAINDER_POLICIES = ("flush", "drop")


def window_end(window_micro_steps, epoch_position, mini_steps, micro_batches_per_epoch, flush):
    """The one rule of when a window closes: ``(update, epoch_end)`` after a micro-step.

    ``window_micro_steps`` micro-batches are in the window, this one included,
    and ``epoch_position`` of the epoch's ``micro_batches_per_epoch`` are
    consumed (None: an endless stream, no epoch end). ``update``: apply the
    window now - it is full, or (``flush``) the epoch ends. Where ``update``
    is False and ``epoch_end`` True, the partial window is dropped.

    It is evaluated on the device, on Tensors, inside the step Cell
    (:class:`~mindspore_accum.core.engine.AccumulationStep`), and on the host, on
    ints, by the driver, which so knows when a window closed without reading
    anything back. ``micro_batches_per_epoch`` and ``flush`` are constants of
    the graph.
    """
    full = window_micro_steps >= mini_steps
    if micro_batches_per_epoch is None:
        return full, False
    epoch_end = epoch_position >= micro_batches_per_epoch
    if flush:
        return full | epoch_end, epoch_end
    return full, epoch_end


class WindowSchedule:
    """An update every ``mini_steps`` micro-batches, and the end-of-epoch policy.

    Args:
        mini_steps: micro-batches per optimizer update (an int >= 1).
        remainder: what happens to a partial window at the end of an epoch,
            one of :data:`REMAINDER_POLICIES`.
    """

    def __init__(self, mini_steps, remainder="flush"):
        self.mini_steps = check_positive_int("mini_steps", mini_steps, example=4)
        self.remainder = check_choice("remainder", remainder, REMAINDER_POLICIES)

    @property
    def flush(self):
        """True when a partial window at the end of an epoch is applied."""
        return self.remainder == "flush"

    def window_end(self, window_micro_steps, epoch_position, micro_batches_per_epoch):
        """:func:`window_end` with this schedule's ``mini_steps`` and remainder policy."""
        return window_end(window_micro_steps, epoch_position, self.mini_steps, micro_batches_per_epoch, self.flush)

    def updates_per_epoch(self, micro_batches):
        """Optimizer updates in an epoch of ``micro_batches`` micro-batches."""
        if self.remainder == "flush":
            return math.ceil(micro_batches / self.mini_steps)
        return micro_batches // self.mini_steps
