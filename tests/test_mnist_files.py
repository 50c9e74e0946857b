"""The MNIST loader: layouts, gzip, checks and clear refusals, against files written by hand."""

import os

import mindspore.dataset as ds
import numpy as np
import pytest
from idx import digits, idx_bytes, write_split

from model_zoo_adapters.lenet import MNIST_MEAN, MNIST_STD, create_dataset
from model_zoo_adapters.mnist_files import MnistFormatError, prepare_mnist_split


def first_batch(dataset):
    return next(dataset.create_tuple_iterator(output_numpy=True))


def block_images(count):
    """Image i is black with one white 7x7 block at cell (i // 4, i % 4) of a 4x4 grid; its label is 3i mod 10.

    Each image is its own and tied to its label, so a transposed, flipped or
    permuted image, or an image given another's label, lands its block elsewhere.
    """
    images = np.zeros((count, 28, 28), np.uint8)
    for index in range(count):
        row, col = divmod(index, 4)
        images[index, 7 * row:7 * row + 7, 7 * col:7 * col + 7] = 255
    return images, (3 * np.arange(count) % 10).astype(np.uint8)


@pytest.mark.parametrize("layout", ["flat", "tutorial"])
@pytest.mark.parametrize("gz", [False, True])
def test_layouts_and_gzip_load_the_same_images(tmp_path, layout, gz):
    images, labels = block_images(12)
    base = tmp_path if layout == "flat" else tmp_path / "train"
    write_split(base, "train", images, labels, gz=gz)
    data, label = first_batch(create_dataset(tmp_path, batch_size=12, train=True, shuffle=False))
    assert data.shape == (12, 1, 32, 32) and data.dtype == np.float32
    np.testing.assert_array_equal(label, labels.astype(np.int32))
    assert label.dtype == np.int32  # cast once per micro-batch; the control: MnistDataset's own are uint32
    own = ds.MnistDataset(prepare_mnist_split(tmp_path, "train", 10), usage="train")
    assert next(own.create_tuple_iterator(num_epochs=1, output_numpy=True))[1].dtype == np.uint32
    white, black = (255 / 255 - MNIST_MEAN) / MNIST_STD, (0 - MNIST_MEAN) / MNIST_STD
    for index, image in enumerate(data[:, 0]):
        # The resize to 32x32 maps each 7x7 cell onto 8x8; the 2x2 at a cell's centre is the block's inside.
        centres = image.reshape(4, 8, 4, 8)[:, 3:5, :, 3:5].mean(axis=(1, 3))
        expected = np.full((4, 4), black, np.float32)
        expected[divmod(index, 4)] = white
        np.testing.assert_allclose(centres, expected, rtol=1e-5, atol=1e-5,
                                   err_msg=f"image {index} (label {label[index]})")


def test_test_split_and_a_subset(tmp_path):
    write_split(tmp_path, "test", *digits(30, seed=1))
    dataset = create_dataset(tmp_path, batch_size=8, train=False, num_samples=20, drop_remainder=False)
    assert dataset.get_dataset_size() == 3  # 8 + 8 + 4


def test_shipped_copy_passes_its_checksums(repo):
    directory = prepare_mnist_split(repo / "data" / "mnist", "test")
    assert (repo / "data" / "mnist" / "SHA256SUMS.raw").is_file()
    assert sorted(os.listdir(directory)) == ["t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def test_a_corrupted_copy_with_checksums_is_refused_by_name(tmp_path):
    images, labels = digits(10)
    write_split(tmp_path, "train", images, labels, sums=True)
    prepare_mnist_split(tmp_path, "train")  # intact: accepted
    damaged = images.copy()
    damaged[3, 5, 5] ^= 0xFF  # still a valid IDX file, only the checksum can tell
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(damaged))
    with pytest.raises(MnistFormatError, match=r"train-images-idx3-ubyte: SHA-256 .* differs"):
        prepare_mnist_split(tmp_path, "train")


def test_data_without_checksums_still_loads(tmp_path):
    write_split(tmp_path, "train", *digits(10), sums=False)
    assert prepare_mnist_split(tmp_path, "train") == str(tmp_path)


@pytest.mark.parametrize("damage, message", [
    ("magic", r"train-images-idx3-ubyte: wrong magic number 0x00000801"),
    ("truncated", r"train-images-idx3-ubyte: truncated IDX file: 7000 bytes, its header promises 7856"),
    ("extra", r"train-images-idx3-ubyte: 3 bytes after the 7856"),
    ("count", r"holds 10 images but .*train-labels-idx1-ubyte holds 9 labels"),
    ("header", r"train-images-idx3-ubyte: truncated IDX file \(5 bytes"),
])
def test_damaged_idx_files_are_refused_by_name(tmp_path, damage, message):
    images, labels = digits(10)
    write_split(tmp_path, "train", images, labels)
    image_file, label_file = tmp_path / "train-images-idx3-ubyte", tmp_path / "train-labels-idx1-ubyte"
    data = image_file.read_bytes()
    if damage == "magic":
        image_file.write_bytes(idx_bytes(labels) + data[8:])
    elif damage == "truncated":
        image_file.write_bytes(data[:7000])
    elif damage == "extra":
        image_file.write_bytes(data + b"\0\0\0")
    elif damage == "count":
        label_file.write_bytes(idx_bytes(labels[:9]))
    elif damage == "header":
        image_file.write_bytes(data[:5])
    with pytest.raises(MnistFormatError, match=message):
        create_dataset(tmp_path, batch_size=2)


def test_a_truncated_gzip_is_refused_by_name(tmp_path):
    write_split(tmp_path, "train", *digits(10), gz=True)
    gz_file = tmp_path / "train-labels-idx1-ubyte.gz"
    gz_file.write_bytes(gz_file.read_bytes()[:20])
    with pytest.raises(MnistFormatError, match=r"train-labels-idx1-ubyte.gz: not a readable gzip file"):
        prepare_mnist_split(tmp_path, "train")


def test_missing_and_empty_directories_name_the_path_and_the_files(tmp_path):
    with pytest.raises(MnistFormatError, match=r"'.*nowhere' is not a directory"):
        prepare_mnist_split(tmp_path / "nowhere", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(MnistFormatError, match=r"has no MNIST train files: expected train-images-idx3-ubyte and "
                                               r"train-labels-idx1-ubyte \(raw or .gz\)"):
        prepare_mnist_split(tmp_path / "empty", "train")


def test_batch_size_larger_than_the_data_is_refused(tmp_path):
    write_split(tmp_path, "train", *digits(10))
    with pytest.raises(ValueError, match=r"batch_size=32 is larger than the 10 samples"):
        create_dataset(tmp_path, batch_size=32)


def test_unpacking_is_cached_by_content(tmp_path):
    images_a, labels_a = digits(10, seed=1)
    write_split(tmp_path / "a", "train", images_a, labels_a, gz=True)
    write_split(tmp_path / "b", "train", *digits(10, seed=2), gz=True)
    first, again, other = (prepare_mnist_split(tmp_path / d, "train") for d in ("a", "a", "b"))
    assert first == again and first != other
    with open(os.path.join(first, "train-images-idx3-ubyte"), "rb") as unpacked:
        assert unpacked.read() == idx_bytes(images_a)
