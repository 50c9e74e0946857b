"""The im2col convolution against MindSpore's native nn.Conv2d."""

import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops
from test_checkpoint import synthetic_digits

from mindspore_accum import GradientAccumulation, load_network_checkpoint, save_network_checkpoint
from model_zoo_adapters import conv as conv_module
from model_zoo_adapters.conv import Im2ColConv2d, make_conv2d
from model_zoo_adapters.lenet import LeNet5
from nets import LOSS, NO_CKPT, micro_batches, params_of, twin


def random_configs(count, seed=2024):
    """Random layer shapes, strides, pads, dilations and bias, over every pad_mode."""
    rng = np.random.default_rng(seed)
    configs = []
    for index in range(count):
        kernel = tuple(int(k) for k in rng.integers(1, 5, 2))
        kwargs = dict(stride=tuple(int(s) for s in rng.integers(1, 4, 2)),
                      dilation=tuple(int(d) for d in rng.integers(1, 3, 2)),
                      has_bias=bool(index % 2), pad_mode=("valid", "same", "pad", "pad")[index % 4])
        if kwargs["pad_mode"] == "pad":
            kwargs["padding"] = int(rng.integers(0, 3)) if index % 8 == 2 else tuple(int(p) for p in rng.integers(0,
                                                                                                                  3, 4))
        configs.append((int(rng.integers(1, 6)), int(rng.integers(1, 9)), kernel, kwargs))
    return configs


class InputAndWeightGrads(nn.Cell):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        self.grad = ops.GradOperation(get_all=True, get_by_list=True)
        self.weights = ms.ParameterTuple(conv.trainable_params())

    def construct(self, x):
        return self.grad(self.conv, self.weights)(x)


@pytest.mark.parametrize("in_channels, out_channels, kernel, kwargs", random_configs(16))
def test_forward_and_gradients_equal_native(in_channels, out_channels, kernel, kwargs):
    native = nn.Conv2d(in_channels, out_channels, kernel, **kwargs)
    im2col = twin(lambda: Im2ColConv2d(in_channels, out_channels, kernel, **kwargs), native)
    x = Tensor(np.random.default_rng(in_channels * 7 + out_channels).standard_normal(
        (3, in_channels, 13, 11)).astype(np.float32))
    context = f"{in_channels}->{out_channels} {kernel} {kwargs}"
    np.testing.assert_allclose(im2col(x).asnumpy(), native(x).asnumpy(), rtol=1e-5, atol=1e-6, err_msg=context)
    (dx_native,), dw_native = InputAndWeightGrads(native)(x)
    (dx_im2col,), dw_im2col = InputAndWeightGrads(im2col)(x)
    np.testing.assert_allclose(dx_im2col.asnumpy(), dx_native.asnumpy(), rtol=1e-5, atol=1e-5, err_msg=context)
    for mine, theirs in zip(dw_im2col, dw_native):
        np.testing.assert_allclose(mine.asnumpy(), theirs.asnumpy(), rtol=1e-5, atol=1e-5, err_msg=context)


def test_parameters_keep_nn_conv2d_names_and_shapes():
    native, im2col = LeNet5(conv_impl="native"), LeNet5(conv_impl="im2col")
    assert [(p.name, p.shape) for p in native.get_parameters()] == [(p.name, p.shape) for p in im2col.get_parameters()]
    assert isinstance(im2col.conv1, Im2ColConv2d) and type(native.conv1) is nn.Conv2d


def test_three_windows_train_the_same_with_either_implementation():
    native = LeNet5(conv_impl="native")
    im2col = twin(lambda: LeNet5(conv_impl="im2col"), native)
    batches = micro_batches([8] * 12, (1, 32, 32), 10, seed=5)
    for network in (native, im2col):
        model = GradientAccumulation(network, LOSS, nn.Momentum(network.trainable_params(), 0.05, 0.9))
        history = model.train_process(1, batches, mini_steps=4, save=NO_CKPT)
        assert len(history) == 3
    expected = params_of(native)
    for name, value in params_of(im2col).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_checkpoint_moves_between_implementations(tmp_path):
    """Reference: the im2col network's logits; the native one loaded from its checkpoint gives them at rtol 1e-5."""
    im2col = LeNet5(conv_impl="im2col")
    for param in im2col.get_parameters():  # not the initial draw: every weight of its own
        param.set_data(Tensor(np.random.default_rng(3).normal(0, 0.1, param.shape).astype(np.float32)))
    save_network_checkpoint(im2col, str(tmp_path / "im2col.ckpt"))
    native = load_network_checkpoint(LeNet5(conv_impl="native"), tmp_path / "im2col.ckpt")
    images = Tensor(synthetic_digits(16, seed=2)[0])
    for network in (im2col, native):
        network.set_train(False)
    expected = im2col(images).asnumpy()
    np.testing.assert_allclose(native(images).asnumpy(), expected, rtol=1e-5, atol=1e-6)
    untouched = LeNet5(conv_impl="native")
    untouched.set_train(False)
    assert not np.allclose(untouched(images).asnumpy(), expected, rtol=1e-3), "control: any LeNet5 gives them"


def test_auto_picks_im2col_on_cpu_for_kernels_above_1x1_and_native_elsewhere(monkeypatch):
    assert type(make_conv2d(6, 16, 5)) is Im2ColConv2d
    assert type(make_conv2d(64, 64, 3)) is Im2ColConv2d
    assert type(make_conv2d(256, 64, 1)) is nn.Conv2d
    assert type(make_conv2d(6, 16, 5, conv_impl="native")) is nn.Conv2d
    assert type(make_conv2d(64, 64, 1, conv_impl="im2col")) is Im2ColConv2d
    for device in ("GPU", "Ascend"):
        monkeypatch.setattr(conv_module.ms, "get_context", lambda key, device=device: device)
        assert type(make_conv2d(6, 16, 5)) is nn.Conv2d, f"auto on {device} must be native"


def test_bad_conv_impl_and_unsupported_layers_are_refused():
    with pytest.raises(ValueError, match=r"conv_impl must be one of 'auto', 'native', 'im2col', got 'fast'"):
        LeNet5(conv_impl="fast")
    with pytest.raises(ValueError, match=r"group=1 only, got group=2"):
        Im2ColConv2d(4, 4, 3, group=2)


REPEAT_SCRIPT = '''
import sys
import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops
from model_zoo_adapters.conv import Im2ColConv2d

ms.set_device("CPU")
ms.set_context(mode=ms.GRAPH_MODE)


class Grads(nn.Cell):
    def __init__(self, conv):
        super().__init__()
        self.conv = conv
        self.grad = ops.GradOperation(get_all=True)

    def construct(self, x):
        return self.grad(self.conv)(x)


x = Tensor(np.ones((4, 3, 12, 12), np.float32))
for kwargs in (dict(pad_mode="same"), dict(pad_mode="pad", padding=(1, 2, 0, 1)), dict(pad_mode="same", stride=2)):
    grads = Grads(Im2ColConv2d(3, 4, (4, 3), **kwargs))
    for _ in range(30):
        grads(x)[0].asnumpy()
print("done")
'''


def test_padded_im2col_backward_survives_many_calls(tmp_path):
    """Regression: ops.pad's backward spun forever on its tenth call (MindSpore 2.10, CPU).

    Run in a subprocess with a time limit, so that a regression fails instead of hanging CI.
    """
    script = tmp_path / "repeat_im2col_grad.py"  # graph mode compiles from a source file
    script.write_text(REPEAT_SCRIPT)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, GLOG_v="3"))
    assert result.returncode == 0 and result.stdout.strip() == "done", result.stderr[-2000:]
