"""The zoo's networks at the defaults (issue 28, item 2): the CPU fast path keeps every name; O1 on every network.

References: for the fast path, the same network built with ``conv_impl="native"``
(its parameter names exactly, a strict load of the default's checkpoint, and
its logits to 1e-3 of the largest: another summation order), as
``benchmarks/zoo.py`` checks it; that script, run over one network per mindcv
family, is the full sweep (docs/recipes.md). Here the three networks whose
structure broke the old swap: ResNet-18's nested names, RegNet's nested stem,
DenseNet's named SequentialCell. For O1, the float32 network's logits: they
agree to half precision (1e-2 of the largest) and differ beyond float32's
(control: O1 really computes in float16).
"""

import os
import subprocess
import sys

import numpy as np
import pytest
from cli import run_script
from mindspore import Tensor

from mindspore_accum import load_network_checkpoint
from mindspore_accum.core.engine import amp_network
from mindspore_accum.nets.cell_surgery import child_cells
from model_zoo_adapters.conv import Im2ColConv2d
from model_zoo_adapters.mindcv_models import create_mindcv_model
from model_zoo_adapters.registry import create_model

ZOO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "zoo.py")


def test_zoo_networks_whose_structure_broke_the_fast_path_train_keep_their_names_and_load_natively():
    names = ["resnet18", "regnet_x_200mf", "densenet121"]
    done = subprocess.run([sys.executable, ZOO, *names], capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, GLOG_v="3"))
    assert done.returncode == 0, done.stderr[-2000:]
    status = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines() if line.split()[:1] != []}
    assert {name: status.get(name) for name in names} == dict.fromkeys(names, "ok"), done.stdout
    assert "convolutions on im2col" in done.stdout  # the fast path was taken, not skipped


def test_control_a_plain_setattr_swap_renames_a_nested_weight():
    """What the check above guards against: MindSpore names an assigned cell's Parameters from its parent alone."""
    network = create_mindcv_model("resnet18", 10, in_channels=1, conv_impl="native")
    for full, parent, child_name, conv in child_cells(network):
        if full == "layer1.0.conv1":
            fast = Im2ColConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, pad_mode=conv.pad_mode,
                                padding=conv.padding)
            fast.weight = conv.weight
            setattr(parent, child_name, fast)
    names = [p.name for p in network.get_parameters()]
    assert "layer1.0.conv1.weight" not in names and "conv1.weight" in names


def twins(model):
    """Two builds of ``model`` (the registry's entry, at its defaults) holding the same weights."""
    first, second = (create_model(model, 10, channels=1, image_size=32, seq_len=16) for _ in range(2))
    for mine, theirs in zip(second.get_parameters(), first.get_parameters()):
        mine.set_data(theirs.data.copy())
    return first, second


@pytest.mark.parametrize("model", ["lenet", "resnet18", "gpt_tiny"])
def test_o1_computes_the_white_lists_cells_in_float16_on_the_shipped_networks(model):
    """Reference: the float32 network's logits; agreement to half precision, and a control that they differ."""
    half, full = twins(model)
    inputs = (Tensor(np.random.default_rng(3).integers(1, 256, (4, 16)).astype(np.int32)) if model == "gpt_tiny"
              else Tensor(np.random.default_rng(3).standard_normal((4, 1, 32, 32)).astype(np.float32)))
    compute = amp_network(half, "O1")
    for network in (compute, full):
        network.set_train(False)
    ours, reference = compute(inputs).asnumpy(), full(inputs).asnumpy()
    assert ours.dtype == np.float32  # cast back for the loss
    scale = np.abs(reference).max()
    gap = np.abs(ours - reference).max() / scale
    assert gap < 1e-2, gap  # float16's 11 bits, through a few layers
    assert gap > 1e-5, gap  # control: float32 alone would agree to ~1e-6


@pytest.mark.parametrize("model", ["lenet", "gpt_tiny"])
def test_o1_runs_from_any_working_directory_and_writes_nothing_there(tmp_path, tiny_mnist, model):
    data = ("--data_path", tiny_mnist) if model == "lenet" else ()
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    trained = run_script("train.py", "--model", model, *data, "--amp_level", "O1", "--num_samples", 16,
                         "--batch_size", 4, "--mini_steps", 2, "--epochs", 1, "--no_progress",
                         "--ckpt_path", tmp_path / "out" / "net.ckpt", cwd=cwd)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert "amp_level: O1" in trained.stdout
    assert list(cwd.iterdir()) == []  # MindSpore's own O1 leaves ./rewritten_network here
    load_network_checkpoint(create_model(model, 10, channels=1, image_size=32), tmp_path / "out" / "net.ckpt")


def test_no_dropout_makes_a_dropout_networks_window_the_large_batch_and_without_it_they_differ(tmp_path, tiny_mnist):
    """Reference: the same network trained on batches of 16 (2 updates); accumulated: 4 x 4 (2 windows).

    MobileNetV3 (mindcv; GroupNorm so that the normalisation is exact) has a
    dropout of 0.2 before its head. rtol 1e-4, atol 1e-5, as
    test_recipes.py for EfficientNet: float32 sums in another order through a
    deep network (measured 3e-6 at worst here). Control: with its dropout on,
    the two runs draw other masks and differ beyond that.
    """
    import mindspore as ms

    def final(name, batch_size, mini_steps, *flags):
        result = run_script("train.py", "--model", "mindcv:mobilenet_v3_small_075", "--dataset", "mnist",
                            "--image_size", 32, "--norm", "group", "--data_path", tiny_mnist, "--num_samples", 32,
                            "--epochs", 1, "--batch_size", batch_size, "--mini_steps", mini_steps, "--no_progress",
                            "--ckpt_path", f"{name}.ckpt", *flags, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-2000:]
        if flags:
            assert "dropout and stochastic-depth layers replaced by identities" in result.stdout
        return {n: v.asnumpy() for n, v in ms.load_checkpoint(str(tmp_path / f"{name}.ckpt")).items()}

    accumulated, large = final("accumulated", 4, 4, "--no_dropout"), final("large", 16, 1, "--no_dropout")
    for name, value in large.items():
        np.testing.assert_allclose(accumulated[name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    with_dropout = final("accumulated_dropout", 4, 4), final("large_dropout", 16, 1)
    assert not all(np.allclose(with_dropout[0][n], v, rtol=1e-4, atol=1e-5) for n, v in with_dropout[1].items())
