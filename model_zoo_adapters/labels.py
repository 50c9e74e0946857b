"""Labels against the number of classes, checked where the data is read.

A label of ``num_classes`` or more ends in a traceback from the loss kernel,
or, on MindSpore's CPU kernel for the label just past the end, trains
silently on garbage. Checking the label bytes up front names the file, the
sample and the fix instead.
"""

import numpy as np

__all__ = ["check_label_range"]


def check_label_range(labels, num_classes, path, error):
    """Raises ``error`` (an exception class) naming ``path`` and the first sample whose label is out of range.

    ``labels`` is the file's labels in sample order (0-based).
    """
    bad = np.flatnonzero(np.asarray(labels) >= num_classes)
    if bad.size:
        first, largest = int(bad[0]), int(np.max(labels))
        raise error(f"{path}: sample {first} has label {int(labels[first])}, outside 0..{num_classes - 1} for "
                    f"{num_classes} classes ({bad.size} such samples): repair the file, or pass --num_classes "
                    f"{largest + 1} if the data has that many classes")
