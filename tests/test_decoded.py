"""Decoding once (issue 39): the cached pipeline yields the uncached one's micro-batches, bit for bit, in its order.

The reference is the uncached pipeline itself, MindSpore decoding every image every epoch, read with the same
seed: two epochs (each its own shuffle), two shards, and a resume cursor mid-epoch. Controls: another seed
gives another order, so equal orders are no accident of the data; an image the table lacks is a KeyError, not a
silent zero.
"""

import mindspore.dataset as ds
import numpy as np
import pytest
from idx import digits, write_split

from model_zoo_adapters import decoded
from model_zoo_adapters.lenet import create_dataset


def batches(dataset, epochs=2, start=0):
    """Every micro-batch of ``epochs`` epochs as NumPy arrays, from global micro-batch ``start``."""
    if start:
        dataset.set_init_step(start)
    iterator = dataset.create_tuple_iterator(num_epochs=epochs, output_numpy=True)
    return [tuple(columns) for _ in range(epochs) for columns in iterator]


def pipelines(path, seed, **kwargs):
    out = []
    for decode_once in (True, False):
        ds.config.set_seed(seed)
        out.append(create_dataset(str(path), 8, train=True, decode_once=decode_once, **kwargs))
    return out


def assert_same(cached, uncached):
    assert len(cached) == len(uncached) > 0
    for (images, labels), (images_ref, labels_ref) in zip(cached, uncached):
        assert images.dtype == images_ref.dtype and images.shape == images_ref.shape
        np.testing.assert_array_equal(images, images_ref)
        np.testing.assert_array_equal(labels, labels_ref)
        assert labels.dtype == labels_ref.dtype == np.int32


def test_the_cached_pipeline_yields_the_uncached_micro_batches_in_their_order(tiny_mnist):
    cached, uncached = pipelines(tiny_mnist, seed=5)
    assert (cached.get_dataset_size(), cached.get_batch_size()) == (uncached.get_dataset_size(), 8)
    ours, theirs = batches(cached), batches(uncached)
    assert_same(ours, theirs)
    # Two epochs, two orders (the shuffle draws again), and the control: another seed, another order.
    assert not np.array_equal(ours[0][1], ours[len(ours) // 2][1])
    _, other = pipelines(tiny_mnist, seed=6)
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(batches(other), theirs))


def test_shards_and_a_resume_cursor_start_where_the_uncached_pipeline_does(tiny_mnist):
    for shard in (0, 1):
        assert_same(*(batches(d) for d in pipelines(tiny_mnist, seed=5, num_shards=2, shard_id=shard)))
    assert_same(*(batches(d, start=5) for d in pipelines(tiny_mnist, seed=5)))  # epoch 1's 6th micro-batch on


def test_identical_images_share_one_entry_and_a_missing_one_is_an_error(tmp_path):
    images, labels = digits(16, seed=4)
    images[8:] = images[:8]  # every image twice, under its own label
    write_split(tmp_path, "train", images, labels)
    assert_same(*(batches(d) for d in pipelines(tmp_path, seed=5)))
    look_up = decoded._LookUp({images[0].tobytes(): np.zeros((1, 32, 32), np.float32)})
    with pytest.raises(KeyError):
        look_up(images[1:2])


def test_decoding_once_is_the_default_only_where_it_is_exact_and_whole(tiny_mnist):
    """Default on for a whole training split; off with an augmentation (random), a subset, or for evaluation."""
    def maps_per_batch(dataset):  # the cached pipeline ends in the per-batch look-up
        return isinstance(dataset.operations[0], decoded._LookUp) if hasattr(dataset, "operations") else False
    assert maps_per_batch(create_dataset(str(tiny_mnist), 8))
    assert not maps_per_batch(create_dataset(str(tiny_mnist), 8, augment=("hflip",)))
    assert not maps_per_batch(create_dataset(str(tiny_mnist), 8, num_samples=32))
    assert not maps_per_batch(create_dataset(str(tiny_mnist), 8, train=False))
    with pytest.raises(ValueError, match=r"decode_once with augment=\['hflip'\]: random operations"):
        create_dataset(str(tiny_mnist), 8, augment=("hflip",), decode_once=True)
