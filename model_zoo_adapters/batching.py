"""The last step every adapter's pipeline shares: batching, refusing a batch larger than the data."""

__all__ = ["batch_checked"]


def batch_checked(dataset, batch_size, drop_remainder, description, num_shards=None, shard_id=None):
    """``dataset.batch(batch_size, drop_remainder)``, refusing a batch that would leave no batch at all.

    ``description`` names the data in the message; a sharded dataset's shard is named too.
    """
    if num_shards:
        description += f", shard {shard_id} of {num_shards}"
    size = dataset.get_dataset_size()
    if drop_remainder and size < batch_size:
        raise ValueError(f"batch_size={batch_size} is larger than the {size} samples of {description}: "
                         f"use a batch_size of at most {size}")
    return dataset.batch(batch_size, drop_remainder=drop_remainder)
