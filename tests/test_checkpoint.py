"""The checkpoint: the bare network only, atomic, and loaded all-or-nothing."""

import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Model, Tensor, nn
from mindspore import dataset as ds

from mindspore_accum import (
    CheckpointError,
    GradientAccumulation,
    SaveConfig,
    load_initial_weights,
    load_network_checkpoint,
    save_network_checkpoint,
)
from model_zoo_adapters.lenet import LeNet5
from nets import LOSS, MLP, params_of


def synthetic_digits(count, seed):
    """Learnable 32x32 images: class k has a bright k-th row band."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, count).astype(np.int32)
    images = rng.normal(0, 0.3, (count, 1, 32, 32)).astype(np.float32)
    for i, label in enumerate(labels):
        images[i, 0, 3 * label:3 * label + 3, :] += 2.0
    return images, labels


def as_dataset(images, labels, batch_size):
    rows = lambda: ((images[i], labels[i]) for i in range(len(labels)))  # noqa: E731
    return ds.GeneratorDataset(rows, ["image", "label"], shuffle=False).batch(batch_size)


def accuracy(network, images, labels):
    return Model(network, LOSS, metrics={"Accuracy": nn.Accuracy()}).eval(as_dataset(images, labels, 50),
                                                                            dataset_sink_mode=False)["Accuracy"]


def test_checkpoint_holds_the_bare_network_and_evaluates_the_same(tmp_path):
    """Reference: the trained network in memory - its parameters and its logits, to the bit."""
    network = LeNet5()
    initial = params_of(network)
    model = GradientAccumulation(network, LOSS, nn.Adam(network.trainable_params(), 2e-3))
    ckpt = tmp_path / "lenet.ckpt"
    model.train_process(1, as_dataset(*synthetic_digits(32, seed=1), 8), mini_steps=2,
                        save=SaveConfig(ckpt_path=str(ckpt)))
    assert any(not np.array_equal(v, initial[n]) for n, v in params_of(network).items()), "training changed nothing"

    saved = ms.load_checkpoint(str(ckpt))
    assert sorted(saved) == sorted(p.name for p in LeNet5().get_parameters()), "no grad_sum, moments or prefixes"
    fresh = LeNet5()
    not_loaded, unused = ms.load_param_into_net(fresh, saved, strict_load=True)
    assert not_loaded == [] and unused == []
    for name, value in params_of(network).items():
        np.testing.assert_array_equal(params_of(fresh)[name], value, err_msg=name)

    images = Tensor(synthetic_digits(16, seed=2)[0])
    loaded = load_network_checkpoint(LeNet5(), ckpt)
    for cell in (network, loaded):
        cell.set_train(False)
    np.testing.assert_array_equal(loaded(images).asnumpy(), network(images).asnumpy())
    assert os.listdir(tmp_path) == ["lenet.ckpt"], "a temporary file was left behind"


def test_default_path_is_gradient_accumulation_ckpt_in_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    network = MLP()
    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), 0.1))
    model.train_process(1, [(Tensor(np.ones((2, 8), np.float32)), Tensor(np.zeros(2, np.int32)))], mini_steps=1)
    assert (tmp_path / "gradient_accumulation.ckpt").is_file()


def test_a_diverged_network_never_replaces_a_good_checkpoint(tmp_path):
    network = MLP()
    ckpt = tmp_path / "model.ckpt"
    save_network_checkpoint(network, str(ckpt))
    good = ckpt.read_bytes()
    network.fc2.weight.set_data(Tensor(np.full(network.fc2.weight.shape, np.nan, np.float32)))
    with pytest.raises(CheckpointError, match=r"parameter 'fc2.weight' is not finite"):
        save_network_checkpoint(network, str(ckpt))
    assert ckpt.read_bytes() == good
    assert os.listdir(tmp_path) == ["model.ckpt"]


def test_a_checkpoint_of_another_model_is_refused_naming_the_parameters(tmp_path):
    ckpt = tmp_path / "five_classes.ckpt"
    save_network_checkpoint(LeNet5(num_class=5), str(ckpt))
    target = LeNet5()
    before = params_of(target)
    with pytest.raises(CheckpointError, match=r"does not fit LeNet5: shape mismatch fc3.bias \(5,\) in the file "
                                              r"vs \(10,\) in the model; fc3.weight \(5, 84\)"):
        load_network_checkpoint(target, ckpt)
    for name, value in params_of(target).items():
        np.testing.assert_array_equal(value, before[name], err_msg=f"{name} was half-loaded")
    save_network_checkpoint(MLP(), str(tmp_path / "mlp.ckpt"))
    with pytest.raises(CheckpointError, match=r"missing 4: conv1.weight, conv2.weight, fc3.bias, fc3.weight; "
                                              r"shape mismatch fc1.bias \(16,\) in the file vs \(120,\)"):
        load_network_checkpoint(LeNet5(), tmp_path / "mlp.ckpt")


def test_a_refusal_names_a_few_tensors_and_counts_the_rest(tmp_path):
    """Issue 30 (9): a mismatch listed every tensor, hundreds for a large network."""
    from mindspore_accum.run.checkpoint import mismatches
    expected = {f"layer{i}.weight": (4, 4) for i in range(90)}
    problems = mismatches(expected, {})
    assert problems == ["missing 90: layer0.weight, layer1.weight, layer10.weight, layer11.weight, layer12.weight "
                        "and 85 more"]
    wrong = mismatches(expected, {name: (2, 2) for name in expected})
    assert wrong[0].endswith("; and 85 more") and wrong[0].count("in the file vs") == 5
    assert mismatches({"a": (1,)}, {"a": (1,)}) == []  # control: what fits says nothing


def test_a_zero_byte_checkpoint_is_refused_in_our_words(tmp_path):
    """Issue 30 (8): MindSpore's own words named its filter_prefix and specify_prefix arguments."""
    (tmp_path / "empty.ckpt").write_bytes(b"")
    with pytest.raises(CheckpointError) as refused:
        load_network_checkpoint(LeNet5(), tmp_path / "empty.ckpt")
    assert "is empty (0 bytes)" in str(refused.value) and "prefix" not in str(refused.value)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_a_file_that_is_not_a_checkpoint_is_refused_by_name(tmp_path, content):
    ckpt = tmp_path / "bad.ckpt"
    if content == "truncated":
        save_network_checkpoint(LeNet5(), str(ckpt))
        content = ckpt.read_bytes()[: len(ckpt.read_bytes()) // 2]
    ckpt.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"bad.ckpt"):
        load_network_checkpoint(LeNet5(), ckpt)


def test_an_unwritable_checkpoint_path_fails_before_training(tmp_path):
    network = MLP()
    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), 0.1))
    before = params_of(network)
    (tmp_path / "file").write_text("")
    with pytest.raises(CheckpointError, match=r"cannot create the checkpoint directory"):
        model.train_process(1, [(Tensor(np.ones((2, 8), np.float32)), Tensor(np.zeros(2, np.int32)))],
                            mini_steps=1, save=SaveConfig(ckpt_path=str(tmp_path / "file" / "model.ckpt")))
    assert all(np.array_equal(v, before[n]) for n, v in params_of(network).items()), "trained before failing"


def test_init_weights_equal_the_source_checkpoint_bit_for_bit(tmp_path):
    source = LeNet5()
    for param in source.get_parameters():  # not an initial draw: weights of their own
        param.set_data(Tensor(np.random.default_rng(5).normal(0, 0.1, param.shape).astype(np.float32)))
    save_network_checkpoint(source, tmp_path / "source.ckpt")
    target = LeNet5()
    assert load_initial_weights(target, tmp_path / "source.ckpt") == []
    for name, value in params_of(source).items():
        np.testing.assert_array_equal(params_of(target)[name], value, err_msg=name)


def test_a_new_head_is_re_initialised_by_name_and_the_rest_is_the_sources(tmp_path, caplog):
    import logging
    source = LeNet5(num_class=10)
    for param in source.get_parameters():
        param.set_data(Tensor(np.random.default_rng(6).normal(0, 0.1, param.shape).astype(np.float32)))
    save_network_checkpoint(source, tmp_path / "source.ckpt")
    target = LeNet5(num_class=12)
    own = params_of(target)
    with caplog.at_level(logging.INFO, logger="mindspore_accum"):
        fresh = load_initial_weights(target, tmp_path / "source.ckpt")
    assert fresh == ["fc3.weight", "fc3.bias"]
    assert "re-initialised the head, whose shape differs: fc3.weight (10, 84) -> (12, 84), fc3.bias (10,) -> (12,)" \
        in caplog.text
    for name, value in params_of(target).items():
        expected = own[name] if name.startswith("fc3.") else params_of(source)[name]
        np.testing.assert_array_equal(value, expected, err_msg=name)


def test_a_body_that_does_not_fit_is_refused_by_name_and_nothing_is_loaded(tmp_path):
    save_network_checkpoint(LeNet5(num_channel=3), tmp_path / "rgb.ckpt")
    target = LeNet5()
    before = params_of(target)
    message = r"rgb.ckpt' does not fit LeNet5: shape mismatch conv1.weight \(6, 3, 5, 5\) in the file vs \(6, 1, 5, 5\)"
    with pytest.raises(CheckpointError, match=message):
        load_initial_weights(target, tmp_path / "rgb.ckpt")
    for name, value in params_of(target).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
