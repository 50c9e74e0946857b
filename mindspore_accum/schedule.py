"""When to update: the window schedule, kept apart from how gradients accumulate.

As in Accelerate's ``accumulate()``, this object only answers "is this the end
of a window?"; the Cells do the arithmetic. The end of an epoch forces the
decision for a partial window, so nothing leaks into the next epoch.
"""

import math

from .validation import check_choice, check_positive_int

__all__ = ["WindowSchedule", "REMAINDER_POLICIES"]

#: ``"flush"``: apply a partial window at the end of an epoch, weighted by its
#: true sample count. ``"drop"``: discard it, so that every update is a full
#: window of ``mini_steps`` micro-batches.
REMAINDER_POLICIES = ("flush", "drop")


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

    def is_window_full(self, window_micro_steps):
        """True when a window holding ``window_micro_steps`` micro-batches must be applied now."""
        return window_micro_steps >= self.mini_steps

    def flush_at_epoch_end(self, window_micro_steps):
        """True when the partial window left at the end of an epoch is applied, False when it is dropped or empty."""
        return window_micro_steps > 0 and self.remainder == "flush"

    def updates_per_epoch(self, micro_batches):
        """Optimizer updates in an epoch of ``micro_batches`` micro-batches."""
        if self.remainder == "flush":
            return math.ceil(micro_batches / self.mini_steps)
        return micro_batches // self.mini_steps
