"""Writes small MNIST-format IDX files for the tests."""

import gzip
import hashlib
import struct

import numpy as np

from model_zoo_adapters.mnist_files import SPLIT_FILES


def idx_bytes(array):
    kind = {3: 0x0803, 1: 0x0801}[array.ndim]
    return struct.pack(">I", kind) + struct.pack(">" + "I" * array.ndim,
                                                 *array.shape) + array.astype(np.uint8).tobytes()


def write_split(directory, split, images, labels, gz=False, sums=False):
    """Writes ``split``'s two IDX files into ``directory``; returns their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    lines = []
    for name, array in zip(SPLIT_FILES[split], (images, labels)):
        data = idx_bytes(array)
        path = directory / (name + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(data) if gz else data)
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
        paths.append(path)
    if sums:
        with open(directory / "SHA256SUMS.raw", "a", encoding="utf-8") as handle:
            handle.writelines(lines)
    return paths


def digits(count, seed=0, constant=None):
    """``count`` 28x28 images and labels 0..9; with ``constant``, every pixel has that value."""
    rng = np.random.default_rng(seed)
    if constant is None:
        images = rng.integers(0, 256, (count, 28, 28))
    else:
        images = np.full((count, 28, 28), constant)
    return images.astype(np.uint8), (np.arange(count) % 10).astype(np.uint8)
