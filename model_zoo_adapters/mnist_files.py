"""Finding, checking and unpacking MNIST-format IDX files for ``MnistDataset``.

``mindspore.dataset.MnistDataset`` reads raw IDX files with fixed names from one
directory and reports damaged files only deep in its pipeline. This module
accepts the layouts people have, checks every file up front, and names the
file when something is wrong:

* ``<data_path>/train`` and ``<data_path>/test`` (the tutorial's layout), or
  all four files directly in ``<data_path>``;
* raw IDX files or their ``.gz`` form (gzip files are unpacked once into a
  cache directory keyed by their content);
* a ``SHA256SUMS.raw`` file beside the data (the project's shipped copy has
  one) makes every listed raw file's checksum binding. Data without one - a
  subset, Fashion-MNIST - still loads.
"""

import gzip
import hashlib
import logging
import os
import shutil
import struct
import tempfile

import numpy as np

from .labels import check_label_range

__all__ = ["MnistFormatError", "SPLIT_FILES", "prepare_mnist_split", "read_idx_header"]

logger = logging.getLogger(__name__)

#: The IDX file names of each split, images first.
SPLIT_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MAGIC = {"images": 2051, "labels": 2049}  # 0x0803 (uint8, 3 dims) and 0x0801 (uint8, 1 dim)
_SUMS_FILE = "SHA256SUMS.raw"
_CHUNK = 1 << 20


class MnistFormatError(ValueError):
    """MNIST data that is missing, damaged or inconsistent; the message names the file."""


def _cache_root():
    explicit = os.environ.get("MINDSPORE_ACCUM_CACHE")
    if explicit:
        return explicit
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mindspore_accum")


def read_idx_header(path, kind, size):
    """Checks an IDX header against ``kind`` ("images" or "labels") and the file's ``size``.

    Returns the dimensions, e.g. ``(60000, 28, 28)``.
    """
    with open(path, "rb") as handle:
        head = handle.read(16 if kind == "images" else 8)
    ndim = 3 if kind == "images" else 1
    if len(head) < 4 + 4 * ndim:
        raise MnistFormatError(f"{path}: truncated IDX file ({size} bytes, shorter than its header)")
    magic = struct.unpack(">I", head[:4])[0]
    if magic != _MAGIC[kind]:
        raise MnistFormatError(f"{path}: wrong magic number {magic:#010x} for an IDX {kind} file "
                               f"(expected {_MAGIC[kind]:#010x}); is it a {kind} file in MNIST format?")
    dims = struct.unpack(">" + "I" * ndim, head[4:4 + 4 * ndim])
    payload = 1
    for dim in dims:
        payload *= dim
    expected = 4 + 4 * ndim + payload
    if size < expected:
        raise MnistFormatError(f"{path}: truncated IDX file: {size} bytes, its header promises {expected}")
    if size > expected:
        raise MnistFormatError(f"{path}: {size - expected} bytes after the {expected} its header describes")
    return dims


def _read_sums(directories):
    for directory in directories:
        sums_path = os.path.join(directory, _SUMS_FILE)
        if os.path.isfile(sums_path):
            sums = {}
            with open(sums_path, encoding="utf-8") as handle:
                for line in handle:
                    parts = line.split()
                    if len(parts) == 2:
                        sums[parts[1].lstrip("*")] = parts[0].lower()
            return sums_path, sums
    return None, {}


def _sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _gunzip(gz_path, target):
    """Unpacks ``gz_path`` to ``target`` atomically: a concurrent reader never sees half a file."""
    handle, tmp_path = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.")
    try:
        with os.fdopen(handle, "wb") as out, gzip.open(gz_path, "rb") as source:
            shutil.copyfileobj(source, out, _CHUNK)
        os.replace(tmp_path, target)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise MnistFormatError(f"{gz_path}: not a readable gzip file ({error})") from None
    logger.info("unpacked %s into %s", gz_path, target)


def _locate(base, name, data_path, split):
    """Returns the path of ``name`` in ``base``, raw or else gzipped."""
    for candidate in (os.path.join(base, name), os.path.join(base, name + ".gz")):
        if os.path.isfile(candidate):
            return candidate
    images, labels = SPLIT_FILES[split]
    raise MnistFormatError(f"--data_path {data_path!r} has no MNIST {split} files: expected {images} and {labels} "
                           f"(raw or .gz) in {data_path} or in {os.path.join(data_path, split)}")


def _raw_directory(found, split):
    """A directory with both raw files of a split, unpacking ``.gz`` files into the cache once."""
    if not any(path.endswith(".gz") for path in found):
        return os.path.dirname(found[0])
    key = hashlib.sha256("".join(_sha256_of(path) for path in found).encode()).hexdigest()[:20]
    directory = os.path.join(_cache_root(), "mnist", f"{split}-{key}")
    os.makedirs(directory, exist_ok=True)
    for path, name in zip(found, SPLIT_FILES[split]):
        target = os.path.join(directory, name)
        if os.path.isfile(target):
            continue
        if path.endswith(".gz"):
            _gunzip(path, target)
        else:
            os.symlink(os.path.abspath(path), target)
    return directory


def prepare_mnist_split(data_path, split, num_classes=10):
    """Returns a directory holding the checked raw IDX files of ``split`` ("train" or "test").

    Pass the result to ``MnistDataset(directory, usage=split)``.

    Raises:
        MnistFormatError: the directory or a file is missing, a file is not a
            valid IDX file (magic number, truncation, extra bytes), image and
            label counts differ, a label is ``num_classes`` or more, or a checksum
            listed in ``SHA256SUMS.raw`` fails.
    """
    if split not in SPLIT_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data_path = os.fspath(data_path)
    if not os.path.isdir(data_path):
        raise MnistFormatError(f"--data_path {data_path!r} is not a directory: point it at the MNIST files, "
                               f"e.g. --data_path data/mnist")
    split_dir = os.path.join(data_path, split)
    base = split_dir if os.path.isdir(split_dir) else data_path
    sums_path, sums = _read_sums([base, data_path])

    found = [_locate(base, name, data_path, split) for name in SPLIT_FILES[split]]
    directory = _raw_directory(found, split)
    dims = {}
    for kind, name, shown in zip(("images", "labels"), SPLIT_FILES[split], found):
        raw = os.path.join(directory, name)
        try:
            dims[kind] = read_idx_header(raw, kind, os.path.getsize(raw))
        except MnistFormatError as error:
            # Name the file the user has, not our unpacked copy.
            raise MnistFormatError(str(error).replace(raw, shown)) from None
        if name in sums and _sha256_of(raw) != sums[name]:
            raise MnistFormatError(f"{shown}: SHA-256 of the raw file differs from {sums_path}: "
                                   f"the copy is corrupt; restore it from the original")
    if dims["images"][0] != dims["labels"][0]:
        raise MnistFormatError(f"{found[0]} holds {dims['images'][0]} images but {found[1]} holds "
                               f"{dims['labels'][0]} labels: the two files must come from the same set")
    if dims["images"][0] == 0:
        raise MnistFormatError(f"{found[0]} holds no images")
    labels = np.fromfile(os.path.join(directory, SPLIT_FILES[split][1]), np.uint8, offset=8)  # after the header
    check_label_range(labels, num_classes, found[1], MnistFormatError)
    return directory
