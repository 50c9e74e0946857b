"""Decoding once: a split's deterministic image ops run over it once, not every epoch.

The micro-batches still come from the dataset's own C++ reader, with its shuffle, shards, sample count,
batching and resume cursor: the order for a seed and the positions a resume starts at stay as they are. Only
the images change hands. Each batch of raw images is replaced, in one Python call per batch, by the decoded
images a table holds, and that table is built once from the whole split (in file order, unshuffled) by the same
MindSpore ops the uncached pipeline runs. The ops (resize, rescale, normalise, HWC to CHW) are a pure
function of the raw image, so looking the result up by the raw image's bytes gives exactly what decoding it
gives: the same bits, identical images sharing one entry.

Random ops (an augmentation) are no function of the image alone: a pipeline with one decodes as it goes.
"""

import logging

import mindspore.dataset.transforms as transforms
import numpy as np

__all__ = ["decode_once", "decoded_bytes", "DECODED_BUDGET"]

logger = logging.getLogger(__name__)

#: The most the decoded table may take: MNIST's training split at 32x32 float32 is 245 MB.
DECODED_BUDGET = 1 << 30


def decoded_bytes(samples, channels, side):
    """The table's size for ``samples`` images of ``channels`` x ``side`` x ``side`` float32."""
    return samples * channels * side * side * 4


def decode_once(raw, whole, image_ops, column="image"):
    """``raw`` (batched, its ``column`` raw images) with each batch's images replaced by their decoded ones.

    Args:
        raw: the training pipeline, batched, its images not decoded.
        whole: every image of the split, unbatched, in any order (unshuffled reads fastest).
        image_ops: the deterministic operations of the uncached pipeline's ``map``, in order.
        column: the images' column.
    """
    return raw.map(operations=_LookUp(_decode_table(whole, image_ops, column)), input_columns=column,
                   python_multiprocessing=False)


class _LookUp:
    """A batch's raw images -> their decoded ones, stacked. The table is shared, never copied: MindSpore
    deep-copies a map's operations, which would copy every decoded image."""

    def __init__(self, table):
        self.table = table

    def __call__(self, images):
        return np.stack([self.table[image.tobytes()] for image in images])

    def __deepcopy__(self, memo):
        return self


def _decode_table(whole, image_ops, column):
    """``{raw image bytes: decoded image}`` over ``whole``, decoded by ``image_ops`` as the pipeline would."""
    both = whole.map(operations=transforms.Duplicate(), input_columns=column, output_columns=[column, "decoded"])
    both = both.map(operations=image_ops, input_columns="decoded").project([column, "decoded"]).batch(1024)
    table = {}
    for images, decoded in both.create_tuple_iterator(num_epochs=1, output_numpy=True):
        table.update(zip((image.tobytes() for image in images), decoded))
    logger.info("decoded the split once: %d distinct images, %.0f MB", len(table),
                sum(value.nbytes for value in table.values()) / 2 ** 20)
    return table
