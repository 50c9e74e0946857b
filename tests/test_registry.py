"""The registries (issue 27): create_model/create_dataset from Python, the scripts built from the entries alone,
and one entry enough to add a network or a dataset.

References: the adapters' own constructors (LeNet5, resnet18, lenet.create_dataset) built directly, and NumPy's
normalisation of the raw IDX pixels for Fashion-MNIST's statistics.
"""

import argparse
import gzip
import os

import numpy as np
import pytest
from cli import run_script

from model_zoo_adapters import lenet, registry
from model_zoo_adapters.lenet import LeNet5
from model_zoo_adapters.resnet import resnet18


def shapes(network):
    return {p.name: p.shape for p in network.get_parameters()}


def test_create_model_builds_the_adapters_networks():
    assert shapes(registry.create_model("lenet")) == shapes(LeNet5())
    assert shapes(registry.create_model("resnet18", 7, norm="group")) == shapes(resnet18(7, norm="group"))
    # Control: another norm is another network (GroupNorm's names differ from BatchNorm's moving statistics).
    assert shapes(registry.create_model("resnet18", 7)) != shapes(resnet18(7, norm="group"))
    with pytest.raises(ValueError, match="--model nonet is not a model: use one of lenet, resnet18"):
        registry.create_model("nonet")


def test_create_dataset_reads_as_the_adapter_does(tiny_mnist):
    ours = next(registry.create_dataset("mnist", tiny_mnist, 8, shuffle=False, seq_len=64).create_tuple_iterator())
    theirs = next(lenet.create_dataset(str(tiny_mnist), 8, shuffle=False).create_tuple_iterator())
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a.asnumpy(), b.asnumpy())  # seq_len, a text keyword, is left out
    with pytest.raises(ValueError, match="--dataset cifar10 needs --data_path"):
        registry.create_dataset("cifar10")


def test_every_entry_resolves_through_the_front_end():
    """Each registered network gets its defaults from its entry; the control is a text network on images."""
    from resolve import resolve_model

    def args(**given):
        base = dict(model="lenet", dataset=None, data_path=None, image_size=None, num_classes=None, norm=None,
                    gn_groups=None, augment=(), seq_len=None, bucket=False, conv_impl="auto", weighting=None)
        return argparse.Namespace(**{**base, **given})

    resolved = resolve_model(args(model="gpt_tiny"), train=True)
    assert (resolved.dataset, resolved.seq_len, resolved.weighting, resolved.data_path) == ("text", 64, "items",
                                                                                             "pydoc")
    resolved = resolve_model(args(model="resnet152", dataset="mnist", data_path="x"), train=True)
    assert (resolved.channels, resolved.image_size, resolved.norm, resolved.num_classes) == (1, 32, "batch", 10)
    with pytest.raises(ValueError, match="--model gpt_tiny takes --dataset text, not mnist"):
        resolve_model(args(model="gpt_tiny", dataset="mnist"), train=True)


def idx_images(path):
    with (gzip.open if str(path).endswith(".gz") else open)(path, "rb") as f:
        data = f.read()
    count, rows, cols = (int.from_bytes(data[i:i + 4], "big") for i in (4, 8, 12))
    return np.frombuffer(data, np.uint8, offset=16).reshape(count, rows, cols)


def test_fashion_mnist_one_entry_normalised_by_its_own_statistics(tiny_mnist, tmp_path):
    """The dataset added with one registry entry: MNIST's files, Fashion-MNIST's mean and std."""
    batch = next(registry.create_dataset("fashion_mnist", tiny_mnist, 4, train=False, shuffle=False,
                                         image_size=28).create_tuple_iterator())[0].asnumpy()
    raw = [f for f in os.listdir(tiny_mnist) if f.startswith("t10k-images")]
    pixels = idx_images(os.path.join(tiny_mnist, raw[0]))[:4].astype(np.float32) / 255.0
    np.testing.assert_allclose(batch[:, 0], (pixels - 0.2860) / 0.3530, atol=1e-5)  # float32 rounding of 2 ops
    mnist = next(registry.create_dataset("mnist", tiny_mnist, 4, train=False, shuffle=False,
                                         image_size=28).create_tuple_iterator())[0].asnumpy()
    assert not np.allclose(mnist, batch, atol=1e-2)  # control: MNIST's statistics are others
    # From the command line: LeNet5 takes it (1 channel, 32x32), with no other change to the scripts.
    trained = run_script("train.py", "--dataset", "fashion_mnist", "--data_path", tiny_mnist, "--batch_size", 8,
                         "--mini_steps", 2, "--epochs", 1, "--no_progress", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "dataset: fashion_mnist (32x32, 10 classes)" in trained.stdout


def test_a_second_entry_of_one_name_is_refused():
    with pytest.raises(ValueError, match="model 'lenet' is registered already"):
        registry.register_model("lenet")(lambda **_: None)
    with pytest.raises(ValueError, match="dataset 'mnist' is registered already"):
        registry.register_dataset("mnist")(lambda *_, **__: None)
    assert registry.MODELS["lenet"].build is not None and registry.DATASETS["mnist"].channels == 1  # unchanged
