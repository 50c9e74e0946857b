"""What a window is weighted by: its samples, or its items (the labels a per-token loss is a mean over).

``weighting="samples"`` (the default) weights each micro-batch by its rows: right
when each sample carries one loss term, as in image classification.

``weighting="items"`` weights it by its number of items: the labels of the
last input that are not ``ignore_index``, or the count a network-with-loss
returns beside its loss as ``(loss, items)``. Right for per-token losses over
padded sequences (causal and masked LM, sequence labelling), where a
micro-batch's loss is a mean over *its* valid tokens and the window's must be
the mean over *all* the window's valid tokens. docs/weighting.md has the
formula and what other tools do. Either way ``AccumulationBuffer.window_items``
holds the window's count, of samples or items.
"""

import mindspore as ms
from mindspore import ops

from .validation import check_choice

__all__ = ["WEIGHTINGS", "check_weighting", "check_loss", "count_items"]

#: The choices of ``weighting``.
WEIGHTINGS = ("samples", "items")


def check_weighting(weighting, ignore_index):
    """Returns ``weighting`` checked; ``ignore_index`` must be an int (``nn.CrossEntropyLoss``'s default is -100)."""
    weighting = check_choice("weighting", weighting, WEIGHTINGS)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be a whole number, got {ignore_index!r}: pass the label value the loss "
                        f"ignores, -100 for nn.CrossEntropyLoss")
    return weighting


def check_loss(loss_fn, what, ignore_index):
    """Refuses a loss whose micro-batch value is not a mean, or that ignores other labels than ``ignore_index``.

    Averaging over the window assumes each micro-batch loss is a mean; a sum
    would weight micro-batches by their size twice. MindSpore's losses keep
    this in ``reduction``, or in ``average``/``reduce`` flags (``MSELoss``'s
    base class ``LossBase`` keeps ``reduce`` and ``average``).
    """
    if loss_fn is None:
        return
    reduction = getattr(loss_fn, "reduction", None)
    if reduction is None and hasattr(loss_fn, "average"):
        reduction = "mean" if loss_fn.average and getattr(loss_fn, "reduce", True) else \
            ("sum" if getattr(loss_fn, "reduce", True) else "none")
    if reduction not in (None, "mean"):
        raise ValueError(f"{what} reduction must be 'mean', got {reduction!r}: construct the loss with "
                         f"reduction='mean'")
    theirs = getattr(loss_fn, "ignore_index", None)
    if isinstance(theirs, int) and theirs != ignore_index:
        raise ValueError(f"{what} ignores label {theirs} but ignore_index={ignore_index}: pass "
                         f"ignore_index={theirs}, so that the items counted are the labels the loss averages over")


def count_items(labels, ignore_index):
    """The number of labels that are not ``ignore_index``, as a float32 scalar (graph-mode function)."""
    return ops.reduce_sum(ops.cast(ops.not_equal(labels, ignore_index), ms.float32))
