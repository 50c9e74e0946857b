"""Checking CIFAR-10 binary files and image folders before MindSpore's readers see them.

``Cifar10Dataset`` and ``ImageFolderDataset`` report a missing or damaged file
deep in their pipeline, or not at all (an empty folder is an empty dataset).
These checks name the path and the fix up front.
"""

import glob
import os

import numpy as np

from .labels import check_label_range

__all__ = ["ImageDataError", "CIFAR10_RECORD_BYTES", "CIFAR10_FILE_RECORDS", "check_cifar10_dir",
           "image_folder_split", "image_folder_classes"]

#: One record: a label byte, then a 32x32 image as 1024 red, 1024 green and 1024 blue bytes.
CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32
#: Records in every file of the binary version; ``Cifar10Dataset`` reads nothing else.
CIFAR10_FILE_RECORDS = 10000
_CIFAR10_FILES = {"train": "data_batch_*.bin", "test": "test_batch.bin"}


class ImageDataError(ValueError):
    """Image data that is missing or not in the expected layout; the message names the path."""


def check_cifar10_dir(data_path, usage, num_classes=10):
    """The directory of CIFAR-10's binary files for ``usage`` ("train" or "test"), checked.

    Accepts ``data_path`` itself or its ``cifar-10-batches-bin`` subdirectory
    (the archive's layout). Every file must hold whole 10000-record blocks,
    and every label byte must be below ``num_classes``.
    """
    candidates = [data_path, os.path.join(data_path, "cifar-10-batches-bin")]
    pattern = _CIFAR10_FILES[usage]
    for directory in candidates:
        files = sorted(glob.glob(os.path.join(directory, pattern)))
        if files:
            break
    else:
        raise ImageDataError(f"--data_path {data_path!r} has no CIFAR-10 {usage} files: expected {pattern} "
                             f"(the binary version, cifar-10-binary.tar.gz) in {data_path} or in "
                             f"{candidates[1]}")
    block = CIFAR10_RECORD_BYTES * CIFAR10_FILE_RECORDS
    for path in files:
        size = os.path.getsize(path)
        if size == 0 or size % block:
            raise ImageDataError(f"{path} has {size} bytes, not whole blocks of {CIFAR10_FILE_RECORDS} records of "
                                 f"{CIFAR10_RECORD_BYTES} bytes: it is truncated or not CIFAR-10's binary version; "
                                 f"download it again")
        records = np.memmap(path, np.uint8, mode="r").reshape(-1, CIFAR10_RECORD_BYTES)
        check_label_range(np.asarray(records[:, 0]), num_classes, path, ImageDataError)  # the label byte
    return directory


def image_folder_split(data_path, train):
    """``<data_path>/train`` or ``<data_path>/val`` where it exists, else ``data_path`` itself."""
    split = os.path.join(data_path, "train" if train else "val")
    return split if os.path.isdir(split) else data_path


def image_folder_classes(directory):
    """The sorted class subfolders of an ImageNet-style folder; refuses a folder without any."""
    if not os.path.isdir(directory):
        raise ImageDataError(f"--data_path {directory!r} is not a directory: give a folder of class subfolders "
                             f"(<data_path>/<class>/<image>), or one with train/ and val/ folders of them")
    classes = sorted(entry.name for entry in os.scandir(directory) if entry.is_dir())
    if not classes:
        raise ImageDataError(f"--data_path {directory!r} has no class subfolders: put each class's images in "
                             f"<data_path>/<class name>/ (ImageNet's layout)")
    return classes
