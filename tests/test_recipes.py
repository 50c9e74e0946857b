"""The recipes users bring (issue 23): mindcv's EfficientNet-B0, MNIST's one channel, the CPU fast path, augmentation.

References: one ``nn.TrainOneStepCell`` step on the concatenated window
(SGD, rtol 1e-4, atol 1e-5, as test_resnet.py: 80 layers with sigmoids reorder
float32 sums more than LeNet's 5; measured 6.9e-5 at worst) for EfficientNet-B0 converted to
GroupNorm at ``convert_bn_to_gn``'s defaults, dropout switched off; the
native network's logits for the im2col one (rtol 1e-4: another summation
order through 80 layers); the plain pipeline's images, rotated and flipped
in NumPy, for the augmentations. mindcv is in the ``test`` extra, so CI runs
these.
"""

import mindspore as ms
import numpy as np
from cli import run_script
from idx import write_split
from mindspore import Tensor, nn

from mindspore_accum import GradientAccumulation, load_network_checkpoint
from mindspore_accum.nets.norm import batchnorm_cells
from model_zoo_adapters.lenet import create_dataset
from model_zoo_adapters.mindcv_models import create_mindcv_model, disable_dropout
from model_zoo_adapters.resnet import resnet18
from nets import LOSS, NO_CKPT, concat, micro_batches, params_of, reference_steps


def efficientnet(**kwargs):
    network = create_mindcv_model("efficientnet_b0", 10, in_channels=1, norm="group", conv_impl="native", **kwargs)
    disable_dropout(network)  # dropout and stochastic depth draw random masks: no two runs would agree
    return network


def twin_of(network, **kwargs):
    copy = efficientnet(**kwargs)
    for mine, theirs in zip(copy.get_parameters(), network.get_parameters()):
        assert mine.name == theirs.name
        mine.set_data(theirs.data.copy())
    return copy


def test_efficientnet_b0_converted_at_the_defaults_accumulates_exactly_on_one_channel():
    network = efficientnet()
    assert batchnorm_cells(network) == []
    groups = sorted({cell.num_groups for _, cell in network.cells_and_names() if isinstance(cell, nn.GroupNorm)})
    assert 24 in groups and 32 in groups, groups  # 144 channels take 24 groups, the widths divisible by 32 take 32
    reference, summed = twin_of(network), twin_of(network)
    initial = params_of(network)
    window = micro_batches([2, 2, 1], (1, 32, 32), 10, seed=7)
    GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), 0.1)).train_process(
        1, window, mini_steps=3, save=NO_CKPT)
    expected = reference_steps(reference, nn.SGD(reference.trainable_params(), 0.1), [window])
    assert any(not np.array_equal(expected[n], initial[n]) for n in initial)
    # Each tensor's update to 1e-3 of its largest entry: the stem's gradient comes back through 50 layers of float32
    # sums taken in another order, and the absolute gap depends on the CPU's kernels (an AMD EPYC here: 1.3e-5 of
    # the largest entry at worst, 5e-5 absolute, past the rtol 1e-4, atol 1e-5 that held on another machine).
    def close_updates(params):
        return all(np.allclose(params[n] - initial[n], expected[n] - initial[n], rtol=0,
                               atol=1e-3 * np.max(np.abs(expected[n] - initial[n])))
                   for n in expected if np.any(expected[n] != initial[n]))
    assert close_updates(params_of(network))
    # Control: the tutorial's sum of the 3 micro-batches' gradients (sens=3 on the concatenated window) misses.
    nn.TrainOneStepCell(nn.WithLossCell(summed, LOSS), nn.SGD(summed.trainable_params(), 0.1), sens=3.0)(
        *concat(window))
    assert not close_updates(params_of(summed))


def test_the_cpu_fast_path_applies_to_mindcvs_network_and_keeps_its_outputs_and_names():
    from model_zoo_adapters.conv import Im2ColConv2d, use_im2col
    native = efficientnet()
    fast = twin_of(native)
    replaced = use_im2col(fast, "auto")
    assert replaced == ["features.0"], replaced  # the 3x3 stem; 1x1 and depthwise convolutions stay native
    assert isinstance(fast.features[0], Im2ColConv2d)
    assert [p.name for p in fast.get_parameters()] == [p.name for p in native.get_parameters()]
    images = Tensor(np.random.default_rng(8).standard_normal((3, 1, 32, 32)).astype(np.float32))
    for network in (native, fast):
        network.set_train(False)
    np.testing.assert_allclose(fast(images).asnumpy(), native(images).asnumpy(), rtol=1e-4, atol=1e-4)


def test_a_resnet_takes_mnists_single_channel():
    network = resnet18(num_classes=10, norm="group", in_channels=1)
    network.set_train(False)
    assert network.stem.conv.weight.shape == (64, 1, 7, 7)
    assert network(Tensor(np.zeros((2, 1, 32, 32), np.float32))).shape == (2, 10)


def test_the_efficientnet_recipe_from_the_command_line_and_eval_py_scores_it(tmp_path, tiny_mnist):
    """EfficientNet-B0 on MNIST: GroupNorm(1, C), AdamW at 3e-4, 4 micro-batches an update; zoo-style strict load."""
    flags = ("--model", "efficientnet_b0", "--dataset", "mnist", "--image_size", 32, "--norm", "group",
             "--gn_groups", 1, "--data_path", tiny_mnist, "--ckpt_path", "effnet.ckpt")
    trained = run_script("train.py", *flags, "--optimizer", "adamw", "--lr", 3e-4, "--weight_decay", 0.05,
                         "--mini_steps", 4, "--batch_size", 4, "--num_samples", 32, "--epochs", 1, "--no_progress",
                         "--log_every", 1, "--augment", "hflip", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "epoch: 1 step: 2 loss is" in trained.stdout and "BatchNorm layers" not in trained.stdout
    assert "replaced 49 BatchNorm2d with GroupNorm (49 with 1 groups)" in trained.stdout
    evaluated = run_script("eval.py", *flags, "--num_samples", 8, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.strip().splitlines()[-1].startswith("{'Accuracy': ")
    network = create_mindcv_model("efficientnet_b0", 10, in_channels=1, norm="group", gn_groups=1)
    load_network_checkpoint(network, tmp_path / "effnet.ckpt")  # every name and shape, strictly
    assert {cell.num_groups for _, cell in network.cells_and_names() if isinstance(cell, nn.GroupNorm)} == {1}


def test_rot90_and_hflip_give_each_image_one_of_its_eight_symmetries(tmp_path):
    rng = np.random.default_rng(9)
    images = rng.integers(0, 256, (16, 28, 28)).astype(np.uint8)
    write_split(tmp_path, "train", images, (np.arange(16) % 10).astype(np.uint8))
    plain, augmented = (next(create_dataset(tmp_path, batch_size=16, shuffle=False, augment=augment)
                             .create_tuple_iterator(num_epochs=1, output_numpy=True))[0][:, 0]
                        for augment in ((), ("rot90", "hflip")))
    moved = 0
    for index, (image, original) in enumerate(zip(augmented, plain)):
        symmetries = [np.rot90(flipped, k) for flipped in (original, original[:, ::-1]) for k in range(4)]
        matches = [k for k, candidate in enumerate(symmetries) if np.allclose(image, candidate, atol=1e-5)]
        assert matches, f"image {index} is no rotation or flip of its own"
        moved += 0 not in matches
    assert moved >= 8, f"only {moved} of 16 images were rotated or flipped"


def test_the_checkpoint_of_a_mindcv_network_loads_into_mindcvs_own_build(tmp_path):
    """Parameter names are mindcv's: a checkpoint of ours is a mindcv checkpoint, and back (--init_ckpt)."""
    from mindcv.models import create_model

    from mindspore_accum import load_initial_weights, save_network_checkpoint
    ours = create_mindcv_model("mobilenet_v3_small_100", 10)
    save_network_checkpoint(ours, tmp_path / "ours.ckpt")
    theirs = create_model("mobilenet_v3_small_100", num_classes=10)
    load_network_checkpoint(theirs, tmp_path / "ours.ckpt")
    tuned = create_mindcv_model("mobilenet_v3_small_100", 4)
    assert load_initial_weights(tuned, tmp_path / "ours.ckpt") == [p.name for p in tuned.trainable_params()][-2:]
    assert ms.load_checkpoint(str(tmp_path / "ours.ckpt"))
