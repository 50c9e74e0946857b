"""``MeanCrossEntropy``: the held-out loss as a mean over items, for ``Model.eval``.

MindSpore's ``nn.Loss`` metric averages the per-batch means with equal
weights, so a short last batch counts as much as a full one: on 30 test
samples in batches of 8 it reports another number than the mean over the 30.
This metric takes the logits and labels instead, and averages over every
item: every sample of a classifier, or every label that is not
``ignore_index`` of a sequence model (the same items ``weighting="items"``
trains on). It also keeps the count, for bits per byte or perplexity.
"""

import numpy as np
from mindspore.train import Metric

__all__ = ["MeanCrossEntropy"]


class MeanCrossEntropy(Metric):
    """Mean cross-entropy over items, from ``(logits, labels)``; computed in float64 NumPy.

    Args:
        ignore_index: labels equal to it are no items (as ``nn.CrossEntropyLoss``).

    ``update(logits, labels)``: logits ``(..., classes)``, integer labels of
    the same leading shape. ``eval()`` returns the mean; :attr:`items` and
    :attr:`total` (the summed loss in nats) stay readable after it.
    """

    def __init__(self, ignore_index: int = -100):
        super().__init__()
        self.ignore_index = ignore_index
        self.clear()

    def clear(self):
        self.total, self.items = 0.0, 0

    def update(self, *inputs):
        if len(inputs) != 2:
            raise ValueError(f"MeanCrossEntropy.update takes (logits, labels), got {len(inputs)} inputs")
        logits = self._convert_data(inputs[0]).astype(np.float64)
        labels = self._convert_data(inputs[1]).astype(np.int64)
        logits = logits.reshape(-1, logits.shape[-1])
        labels = labels.reshape(-1)
        valid = labels != self.ignore_index
        logits, labels = logits[valid], labels[valid]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        self.total += float(-log_softmax[np.arange(len(labels)), labels].sum())
        self.items += int(valid.sum())

    def eval(self):
        if self.items == 0:
            raise RuntimeError("MeanCrossEntropy saw no items: evaluate on data with at least one valid label")
        return self.total / self.items
