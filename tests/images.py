"""Tiny image datasets written by the tests: CIFAR-10 binary files and an ImageNet-style folder."""

import os

import numpy as np
from PIL import Image

from model_zoo_adapters.image_files import CIFAR10_FILE_RECORDS, CIFAR10_RECORD_BYTES


def write_cifar10(directory, train_files=1, seed=0):
    """``data_batch_1..N.bin`` and ``test_batch.bin`` of random images with labels 0-9.

    Every file holds the full 10000 records: ``Cifar10Dataset`` refuses anything
    else. The tests read a few of them with ``num_samples``.
    """
    rng = np.random.default_rng(seed)
    names = [f"data_batch_{index}.bin" for index in range(1, train_files + 1)] + ["test_batch.bin"]
    for name in names:
        records = rng.integers(0, 256, (CIFAR10_FILE_RECORDS, CIFAR10_RECORD_BYTES), dtype=np.uint8)
        records[:, 0] = rng.integers(0, 10, CIFAR10_FILE_RECORDS, dtype=np.uint8)
        records.tofile(os.path.join(directory, name))
    return directory


def write_image_folder(directory, classes=("cat", "dog", "fox"), per_class=4, size=(40, 48), seed=0):
    """``<directory>/<class>/<n>.jpg``: random RGB images of ``size`` (width, height).

    ``per_class`` is a count for every class, or one count per class, in ``classes``' order.
    """
    rng = np.random.default_rng(seed)
    counts = per_class if isinstance(per_class, (list, tuple)) else [per_class] * len(classes)
    for name, count in zip(classes, counts):
        os.makedirs(os.path.join(directory, name), exist_ok=True)
        for index in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(directory, name, f"{index}.jpg"))
    return directory
