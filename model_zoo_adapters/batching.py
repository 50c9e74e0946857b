"""The last step every image adapter's pipeline shares: batching, refusing a batch larger than the data, and the
labels' int32."""

import mindspore as ms
import mindspore.dataset.transforms as transforms

__all__ = ["batch_checked"]


def batch_checked(dataset, batch_size, drop_remainder, description, num_shards=None, shard_id=None):
    """``dataset.batch(batch_size, drop_remainder)`` with its ``label`` column cast to int32, refusing a batch
    that would leave no batch at all.

    The cast runs once per micro-batch, after the batch, not once per sample: the same labels, one operation
    where there were ``batch_size`` (on a CPU the pipeline's threads take their time from the step's kernels).
    ``description`` names the data in the message; a sharded dataset's shard is named too.
    """
    if num_shards:
        description += f", shard {shard_id} of {num_shards}"
    size = dataset.get_dataset_size()
    if drop_remainder and size < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the {size} samples of {description}: "
                         f"use a batch_size of at most {size}")
    batched = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return batched.map(operations=transforms.TypeCast(ms.int32), input_columns="label")
