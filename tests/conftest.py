"""Every test runs in GRAPH_MODE on the CPU, MindSpore's warning flood silenced."""

import os
import sys
from pathlib import Path

os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402
import mindspore.dataset  # noqa: E402,F401
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the helpers in tests/nets.py
# The scripts' modules (flags, resolve, build, ...) as the scripts import them, so that any test file runs alone.
sys.path.insert(1, str(REPO / "scripts"))

ms.set_device("CPU")
ms.set_context(mode=ms.GRAPH_MODE)


@pytest.fixture
def repo():
    return REPO


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    """Unpacked MNIST goes to a cache of the test session's own, not the user's home."""
    monkeypatch.setenv("MINDSPORE_ACCUM_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(autouse=True)
def _seeded():
    """Initial weights and dataset shuffles are the same on every run.

    MINDSPORE_ACCUM_TEST_SEED picks another draw, to check that a tolerance
    holds beyond the one seed CI uses.
    """
    seed = int(os.environ.get("MINDSPORE_ACCUM_TEST_SEED", "0"))
    ms.set_seed(seed)
    ms.dataset.config.set_seed(seed)
    return seed


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory):
    """64 training and 20 test images in MNIST's IDX format: the scripts' plumbing in seconds."""
    from idx import digits, write_split
    directory = tmp_path_factory.mktemp("tiny_mnist")
    write_split(directory, "train", *digits(64, seed=1))
    write_split(directory, "test", *digits(20, seed=2))
    return directory


@pytest.fixture(scope="session")
def tiny_cifar10(tmp_path_factory):
    """CIFAR-10 binary files of random images: one data_batch_1.bin and test_batch.bin (10000 records each)."""
    from images import write_cifar10
    return write_cifar10(tmp_path_factory.mktemp("tiny_cifar10"), train_files=1, seed=3)
