"""The ResNet adapters, the BatchNorm policy, and the CIFAR-10 and image-folder pipelines.

Equivalence reference: ``nn.TrainOneStepCell`` on the window's micro-batches
concatenated, as in test_equivalence.py. Tolerance rtol 1e-4, atol 1e-5: a
ResNet-18's gradient passes through 20 normalisations and ~11M weights, so
the float32 reordering between per-micro-batch and whole-batch sums is larger
than for LeNet. Measured over three seeds: GroupNorm's worst difference is
0.05-0.1% of that tolerance, BatchNorm's 27,000-36,000 times it.
"""

import logging
import os

import mindspore as ms
import numpy as np
import pytest
from cli import run_script
from images import write_image_folder
from mindspore import Tensor, nn

from mindspore_accum import GradientAccumulation, convert_bn_to_gn
from mindspore_accum.nets.norm import batchnorm_cells
from model_zoo_adapters.image_files import CIFAR10_RECORD_BYTES
from model_zoo_adapters.resnet import CIFAR10_MEAN, CIFAR10_STD, RESNETS, create_dataset, resnet18
from nets import LOSS, NO_CKPT, micro_batches, params_of, reference_steps

RTOL, ATOL = 1e-4, 1e-5
IMAGE = (3, 32, 32)


@pytest.mark.parametrize("norm", ["batch", "group"])
@pytest.mark.parametrize("name", list(RESNETS))
def test_each_resnet_builds_and_gives_one_row_of_num_classes_per_image(name, norm):
    network = RESNETS[name](num_classes=7, norm=norm)
    network.set_train(False)
    out = network(Tensor(np.random.default_rng(0).standard_normal((2, *IMAGE)).astype(np.float32)))
    assert out.shape == (2, 7), f"{name}/{norm}: output shape {out.shape}"
    assert np.isfinite(out.asnumpy()).all()
    assert bool(batchnorm_cells(network)) == (norm == "batch")


def test_resnet_depths_match_the_model_zoo_parameter_counts():
    """Reference: torchvision's published counts for 1000 classes (same architecture as the zoo's)."""
    expected = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
                "resnet152": 60_192_808}
    for name, count in expected.items():
        network = RESNETS[name](num_classes=1000, norm="group")
        actual = sum(int(np.prod(p.shape)) for p in network.trainable_params())
        assert actual == count, f"{name}: {actual} trainable parameters, expected {count}"


def _one_window(norm, seed=11):
    """resnet18 after one accumulated window of 4 micro-batches of 2, and after one step on the 8 at once."""
    window = micro_batches([2, 2, 2, 2], IMAGE, 10, seed=seed)
    accumulated = resnet18(norm=norm, zero_init_residual=False)  # every weight gets a gradient in step one
    reference = resnet18(norm=norm, zero_init_residual=False)
    for mine, theirs in zip(reference.get_parameters(), accumulated.get_parameters()):
        mine.set_data(theirs.data.copy())
    initial = params_of(accumulated)
    model = GradientAccumulation(accumulated, LOSS, nn.Momentum(accumulated.trainable_params(), 0.01, 0.9))
    model.train_process(1, window, mini_steps=4, save=NO_CKPT)
    expected = reference_steps(reference, nn.Momentum(reference.trainable_params(), 0.01, 0.9), [window])
    return params_of(accumulated), expected, initial


def test_group_norm_resnet18_window_equals_one_step_on_the_concatenated_batch():
    actual, expected, initial = _one_window("group")
    trainable = [n for n in expected if "moving_" not in n]
    assert all(not np.array_equal(expected[n], initial[n]) for n in trainable if n.endswith("weight")), \
        "the reference step left some weight unchanged"
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=RTOL, atol=ATOL,
                                   err_msg=f"resnet18 norm=group, mini_steps=4: parameter {name}")


def test_control_batch_norm_resnet18_is_not_one_step_on_the_concatenated_batch(caplog):
    with caplog.at_level(logging.WARNING, logger="mindspore_accum"):
        actual, expected, _ = _one_window("batch")
    mismatched = [n for n in expected if "moving_" not in n
                  and not np.allclose(actual[n], expected[n], rtol=RTOL, atol=ATOL)]
    assert "stem.conv.weight" in mismatched, f"BatchNorm matched the large batch; mismatched: {mismatched}"
    warnings = [r.getMessage() for r in caplog.records if "BatchNorm layers" in r.getMessage()]
    assert len(warnings) == 1 and "--norm group" in warnings[0] and "convert_bn_to_gn" in warnings[0], warnings


def test_convert_bn_to_gn_leaves_no_batchnorm_and_builds_what_norm_group_builds():
    converted = resnet18(norm="batch")
    for index, param in enumerate(p for p in converted.get_parameters() if p.name.endswith(".gamma")):
        param.set_data(Tensor(np.full(param.shape, 0.5 + index / 100, np.float32)))
    gammas = {p.name: p.asnumpy().copy() for p in converted.get_parameters() if p.name.endswith(".gamma")}
    assert convert_bn_to_gn(converted) is converted
    assert batchnorm_cells(converted) == []
    assert not any(isinstance(cell, nn.BatchNorm2d) for _, cell in converted.cells_and_names())

    built = resnet18(norm="group")
    assert [p.name for p in converted.get_parameters()] == [p.name for p in built.get_parameters()]
    for name, value in gammas.items():  # the affine values carried over
        np.testing.assert_array_equal(dict(converted.parameters_and_names())[name].asnumpy(), value, err_msg=name)
    for mine, theirs in zip(built.get_parameters(), converted.get_parameters()):
        mine.set_data(theirs.data.copy())
    x = Tensor(np.random.default_rng(1).standard_normal((3, *IMAGE)).astype(np.float32))
    converted.set_train(False)
    built.set_train(False)
    np.testing.assert_allclose(converted(x).asnumpy(), built(x).asnumpy(), rtol=1e-6, atol=1e-6)


def test_convert_bn_to_gn_refuses_groups_that_do_not_divide_and_changes_nothing():
    network = resnet18(norm="batch")
    before = batchnorm_cells(network)
    with pytest.raises(ValueError, match=r"num_groups 24 does not divide the 64 channels of stem.norm: pass one "
                                         r"that divides every BatchNorm2d's channels, here 1, 2, 4, 8, 16, 32, 64"):
        convert_bn_to_gn(network, num_groups=24)
    assert batchnorm_cells(network) == before


def test_cifar10_eval_pipeline_is_the_normalised_record(tiny_cifar10):
    """Reference: the binary records decoded by hand with NumPy (no augmentation at evaluation)."""
    dataset = create_dataset(tiny_cifar10, batch_size=5, train=False, image_size=32, num_samples=5)
    images, labels = next(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))
    raw = np.fromfile(os.path.join(tiny_cifar10, "test_batch.bin"), np.uint8, count=5 * CIFAR10_RECORD_BYTES)
    raw = raw.reshape(5, CIFAR10_RECORD_BYTES)
    pixels = raw[:, 1:].reshape(5, 3, 32, 32).astype(np.float32) / 255.0
    mean, std = (np.array(v, np.float32).reshape(1, 3, 1, 1) for v in (CIFAR10_MEAN, CIFAR10_STD))
    np.testing.assert_array_equal(labels, raw[:, 0].astype(np.int32))
    assert labels.dtype == np.int32 and images.dtype == np.float32 and images.shape == (5, 3, 32, 32)
    np.testing.assert_allclose(images, (pixels - mean) / std, rtol=0, atol=1e-5)


def test_cifar10_train_pipeline_crops_the_padded_record_and_flips(tiny_cifar10):
    """Reference: the records decoded by hand, padded with 4 zeros; each output is one of 81 crops, flipped or not.

    Garbage, a crop of another record, or a wrong normalisation matches none.
    """
    count = 8
    dataset = create_dataset(tiny_cifar10, batch_size=count, train=True, image_size=32, num_samples=count,
                             shuffle=False)
    images, labels = next(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert dataset.get_dataset_size() == 1 and images.shape == (count, 3, 32, 32)
    raw = np.fromfile(os.path.join(tiny_cifar10, "data_batch_1.bin"), np.uint8, count=count * CIFAR10_RECORD_BYTES)
    raw = raw.reshape(count, CIFAR10_RECORD_BYTES)
    np.testing.assert_array_equal(labels, raw[:, 0].astype(np.int32))
    padded = np.pad(raw[:, 1:].reshape(count, 3, 32, 32).astype(np.float32), ((0, 0), (0, 0), (4, 4), (4, 4)))
    mean, std = (np.array(v, np.float32).reshape(3, 1, 1) for v in (CIFAR10_MEAN, CIFAR10_STD))
    moved = 0
    for index, image in enumerate(images):
        pixels = (image * std + mean) * 255.0  # back to 0..255
        matches = [(top, left, flipped) for top in range(9) for left in range(9) for flipped in (False, True)
                   if np.allclose(pixels, (lambda crop: crop[:, :, ::-1] if flipped else crop)(
                       padded[index, :, top:top + 32, left:left + 32]), atol=1e-2)]
        assert matches, f"image {index} is no crop of its padded record, flipped or not"
        moved += (4, 4, False) not in matches
    assert moved >= count // 2, f"only {moved} of {count} images were cropped off-centre or flipped"


def test_image_folder_labels_are_the_sorted_class_folders(tmp_path):
    """Classes of 1, 2 and 3 images, written in unsorted order: only the sorted mapping gives these counts."""
    write_image_folder(tmp_path / "train", classes=("b_dog", "a_cat", "c_fox"), per_class=(1, 2, 3))
    dataset = create_dataset(str(tmp_path), batch_size=6, train=True, image_size=24, dataset="imagefolder")
    images, labels = next(dataset.create_tuple_iterator(num_epochs=1, output_numpy=True))
    assert images.shape == (6, 3, 24, 24) and images.dtype == np.float32
    # a_cat (2 images) -> 0, b_dog (1) -> 1, c_fox (3) -> 2; the order written would give [0, 1, 1, 2, 2, 2].
    assert sorted(labels.tolist()) == [0, 0, 1, 2, 2, 2]


def test_train_then_eval_resnet18_on_cifar10_files(tmp_path, tiny_cifar10):
    flags = ("--model", "resnet18", "--norm", "group", "--image_size", 32, "--data_path", tiny_cifar10,
             "--batch_size", 4, "--ckpt_path", tmp_path / "r18.ckpt")
    trained = run_script("train.py", *flags, "--num_samples", 24, "--mini_steps", 3, "--epochs", 1,
                         "--no_progress", "--log_every", 1, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "model: resnet18 (norm: group), dataset: cifar10 (32x32, 10 classes)" in trained.stdout
    assert "epoch: 1 step: 2 loss is" in trained.stdout, trained.stdout  # 6 micro-batches, 2 updates
    assert "BatchNorm" not in trained.stdout

    evaluated = run_script("eval.py", *flags, "--num_samples", 12, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.strip().splitlines()[-1].startswith("{'Accuracy': ")

    fresh = resnet18(num_classes=10, norm="group")
    saved = ms.load_checkpoint(str(tmp_path / "r18.ckpt"))
    assert not any(name.startswith(("grad_sum", "moments", "window_")) for name in saved), sorted(saved)[:5]
    not_loaded, not_used = ms.load_param_into_net(fresh, saved)
    assert (list(not_loaded), list(not_used)) == ([], [])


def test_batch_norm_resnet_warns_once_about_accumulation(tmp_path, tiny_cifar10):
    result = run_script("train.py", "--model", "resnet18", "--image_size", 32, "--data_path", tiny_cifar10,
                        "--batch_size", 4, "--num_samples", 8, "--mini_steps", 2, "--epochs", 2, "--no_progress",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("BatchNorm layers") == 1, result.stdout
    assert "use GroupNorm: --norm group" in result.stdout


class OddWidths(nn.Cell):
    """BatchNorm2d at EfficientNet-B0's awkward widths: 144 and 40 (no divisor 32), 6 (fewer than 32), 96."""

    def __init__(self):
        super().__init__()
        widths = (3, 144, 40, 6, 96)
        self.body = nn.SequentialCell([layer for c_in, c_out in zip(widths, widths[1:]) for layer in (
            nn.Conv2d(c_in, c_out, 3, weight_init="he_uniform"), nn.BatchNorm2d(c_out), nn.ReLU())])
        self.head = nn.Dense(96, 10)

    def construct(self, x):
        return self.head(self.body(x).mean(axis=(2, 3)))


def test_convert_bn_to_gn_at_its_defaults_takes_any_width_and_accumulation_is_then_exact(caplog):
    """Issue 23 (3): the default was 32 groups, which refused EfficientNet-B0's 144 channels.

    Reference, by hand: the largest divisor of each width not above 32 (24, 20, 6, 32); then one
    concatenated-window step (SGD, rtol 1e-5) as in test_equivalence.py.
    """
    network = OddWidths()
    with pytest.raises(ValueError, match=r"num_groups 32 does not divide the 144 channels of body.1"):
        convert_bn_to_gn(network, num_groups=32)  # an explicit count stays strict
    with caplog.at_level(logging.INFO, logger="mindspore_accum"):
        convert_bn_to_gn(network)
    groups = [cell.num_groups for _, cell in network.cells_and_names() if isinstance(cell, nn.GroupNorm)]
    assert groups == [24, 20, 6, 32] and batchnorm_cells(network) == []
    assert ("convert_bn_to_gn: replaced 4 BatchNorm2d with GroupNorm (1 with 32 groups, 1 with 24 groups, "
            "1 with 20 groups, 1 with 6 groups)") in caplog.text
    window = micro_batches([2, 2, 2], (3, 8, 8), 10, seed=4)
    reference = OddWidths()
    convert_bn_to_gn(reference)
    for mine, theirs in zip(reference.get_parameters(), network.get_parameters()):
        mine.set_data(theirs.data.copy())
    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), 0.1))
    model.train_process(1, window, mini_steps=3, save=NO_CKPT)
    expected = reference_steps(reference, nn.SGD(reference.trainable_params(), 0.1), [window])
    for name, value in params_of(network).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
