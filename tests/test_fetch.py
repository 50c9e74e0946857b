"""Fetching in chunks: the pipeline's micro-batches, in its order, each epoch read to its end and not past it."""

import itertools

import numpy as np
import pytest
from mindspore import dataset as ds

from mindspore_accum.data.fetch import CHUNK_MOST, chunk_for, in_chunks

MICRO_BATCHES = 10  # an epoch: rows 0..19 in micro-batches of 2


def two_epoch_iterator():
    rows = np.arange(20, dtype=np.float32).reshape(20, 1)
    dataset = ds.NumpySlicesDataset({"x": rows}, shuffle=True).batch(2)
    return dataset.create_tuple_iterator(num_epochs=2, output_numpy=True)


def epochs_of(iterator, read):
    """Both epochs of ``iterator`` as lists of first rows, each read by ``read(iterator)``."""
    return [[int(columns[0][0, 0]) for columns in read(iterator)] for _ in range(2)]


@pytest.mark.parametrize("most", [1, 3, 5, 10, 64])  # streaming, a short last chunk, exact multiples, one chunk
def test_each_epoch_of_a_mindspore_iterator_comes_whole_in_order_and_ends_where_it_ends(most):
    ds.config.set_seed(5)
    reference = epochs_of(two_epoch_iterator(), lambda iterator: iterator)  # MindSpore's own epochs
    ds.config.set_seed(5)
    chunked = epochs_of(two_epoch_iterator(), lambda iterator: in_chunks(iterator, most))
    assert chunked == reference
    assert [len(epoch) for epoch in reference] == [MICRO_BATCHES, MICRO_BATCHES]
    assert reference[0] != reference[1]  # the epochs are shuffled apart, so a chunk that crossed would show


def test_control_a_chunk_read_past_a_short_one_takes_the_next_epochs_micro_batches():
    def naive(iterator, size=3):  # islice until a chunk comes back empty
        while chunk := list(itertools.islice(iterator, size)):
            yield from chunk
    ds.config.set_seed(5)
    reference = epochs_of(two_epoch_iterator(), lambda iterator: iterator)
    ds.config.set_seed(5)
    first = []
    with pytest.raises(RuntimeError, match="beyond the specified number of epochs"):
        for columns in naive(two_epoch_iterator()):  # reads on into the second epoch, and past the last
            first.append(int(columns[0][0, 0]))
    assert first == reference[0] + reference[1]


def test_a_chunk_holds_at_most_the_budgets_bytes_and_most_micro_batches():
    pulled = []

    def source(count, nbytes):
        for index in range(count):
            pulled.append(index)
            yield (np.zeros(nbytes, np.uint8),)

    def pulled_after_each(most, budget, nbytes):
        pulled.clear()
        return [len(pulled) for _ in in_chunks(source(9, nbytes), most, budget)]

    # The first micro-batch alone (it measures them), then chunks of min(most, budget // bytes): by hand.
    assert pulled_after_each(64, 3000, 1000) == [1, 4, 4, 4, 7, 7, 7, 9, 9]
    assert pulled_after_each(2, 3000, 1000) == [1, 3, 3, 5, 5, 7, 7, 9, 9]
    assert pulled_after_each(64, 500, 1000) == [1, 2, 3, 4, 5, 6, 7, 8, 9]  # larger than the budget: streams


def test_an_error_of_the_pipeline_comes_after_the_micro_batches_before_it():
    def failing():
        for index in range(7):
            if index == 5:
                raise RuntimeError("damaged record 5")
            yield (np.full(1, index),)

    seen = []
    with pytest.raises(RuntimeError, match="damaged record 5"):
        for columns in in_chunks(failing(), 64):
            seen.append(int(columns[0][0]))
    assert seen == [0, 1, 2, 3, 4]  # as streaming gives them


def test_the_cpu_fetches_chunks_and_other_devices_stream():
    assert (chunk_for("CPU"), chunk_for("GPU"), chunk_for("Ascend")) == (CHUNK_MOST, 1, 1)


def driver_and_data():
    from mindspore import nn

    from mindspore_accum import GradientAccumulation
    from nets import LOSS, MLP
    network = MLP()
    driver = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), 0.1))
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((24, 8)).astype(np.float32), rng.integers(0, 4, 24).astype(np.int32)
    return driver, rows


def test_the_driver_reads_a_mindspore_pipeline_in_chunks_on_the_cpu(monkeypatch):
    from mindspore_accum.driver import epochs
    from nets import NO_CKPT
    asked = []
    real = epochs.in_chunks
    monkeypatch.setattr(epochs, "in_chunks", lambda batches, most: asked.append(most) or real(batches, most))
    driver, (features, labels) = driver_and_data()
    dataset = ds.NumpySlicesDataset((features, labels), ["x", "y"], shuffle=False).batch(4)
    driver.train_process(2, dataset, mini_steps=2, save=NO_CKPT, log_every=None)
    assert asked == [CHUNK_MOST, CHUNK_MOST]  # each epoch, on this CPU
    assert driver.total_micro_steps == 12
    # Control: a list of the same micro-batches is no pipeline, and goes as it is.
    asked.clear()
    driver.train_process(3, list(dataset.create_tuple_iterator(num_epochs=1)), mini_steps=2, save=NO_CKPT,
                         log_every=None)
    assert asked == [] and driver.total_micro_steps == 12 + 3 * 6


def test_the_driver_reads_any_other_iterable_as_it_comes():
    from mindspore import Tensor

    from mindspore_accum import DriverCallback
    from nets import NO_CKPT
    driver, (features, labels) = driver_and_data()
    pulled = []

    class Made:  # a re-iterable whose items could depend on training so far
        def __iter__(self):
            for start in range(0, 24, 4):
                pulled.append(start)
                yield Tensor(features[start:start + 4]), Tensor(labels[start:start + 4])

    seen = []

    class Pulls(DriverCallback):
        def micro_step(self, epoch, micro_batch, loss, samples):
            seen.append(len(pulled))

    driver.train_process(1, Made(), mini_steps=2, save=NO_CKPT, log_every=None, callbacks=[Pulls()])
    assert seen == [1, 2, 3, 4, 5, 6]  # one pulled per micro-step, none ahead
    pulled.clear()  # control: read in chunks, it would all be pulled by the second micro-batch
    assert [len(pulled) for _ in in_chunks(Made(), CHUNK_MOST)] == [1, 6, 6, 6, 6, 6]
