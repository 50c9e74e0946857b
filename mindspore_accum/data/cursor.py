"""The data cursor: a dataset started at a training position, the one way both engines resume their data.

MindSpore's own resume cursor, ``Dataset.set_init_step``, restarts a pipeline at a global step with that
epoch's shuffle, without reading what it skips. The driver's epochs, a
:class:`~mindspore_accum.data.windowed_data.WindowedDataset`'s samples and the Model path's dataset all
start through here.
"""

__all__ = ["iterator_from", "dataset_from"]


def iterator_from(dataset, epoch, first, num_epochs, output_numpy=False):
    """``dataset``'s tuple iterator from 1-based ``epoch``'s ``first`` item (0-based), through epoch ``num_epochs``.

    The cursor is set only while the iterator is made: ``dataset`` is left as it was.
    """
    previous = dataset.get_init_step()
    dataset.set_init_step((epoch - 1) * dataset.get_dataset_size() + first)
    try:
        return dataset.create_tuple_iterator(num_epochs=num_epochs, output_numpy=output_numpy)
    finally:
        dataset.set_init_step(previous)


def dataset_from(dataset, step, micro_batches):
    """For ``mindspore.train.Model``: ``dataset`` started at global micro-step ``step`` (``micro_batches`` an epoch).

    A WindowedDataset gives its ``as_dataset`` from that epoch's micro-batch; a MindSpore dataset is given
    ``set_init_step(step)``, which ``Model.train`` reads.
    """
    if hasattr(dataset, "as_dataset"):  # a WindowedDataset: its plan starts at any micro-batch
        return dataset.as_dataset(step // micro_batches + 1, step % micro_batches)
    dataset.set_init_step(step)
    return dataset
