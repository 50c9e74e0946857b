"""The three Cells against values computed by hand."""

import numpy as np
import pytest
from mindspore import Tensor, nn

from mindspore_accum import (
    AccumulationBuffer,
    GradientAccumulation,
    TrainClear,
    TrainForwardBackward,
    TrainOptim,
)
from nets import LOSS, MLP, NO_CKPT, MeanOfInputs, micro_batches, params_of, twin


def one_weight_cells(learning_rate=1.0):
    """Cells around ``MeanOfInputs``: the gradient of a micro-batch is the mean of its inputs."""
    network = MeanOfInputs()
    optimizer = nn.SGD(network.trainable_params(), learning_rate=learning_rate)
    buffer = AccumulationBuffer(optimizer.parameters)
    cells = (TrainForwardBackward(network, optimizer.parameters, buffer), TrainOptim(optimizer, buffer),
             TrainClear(buffer))
    return network, buffer, cells


def feed(forward_backward, values):
    forward_backward(Tensor(np.asarray(values, np.float32)), Tensor(np.zeros(len(values), np.int32)))


def test_gradients_1_2_3_4_give_a_mean_of_exactly_2_5():
    network, buffer, (forward_backward, optim, _) = one_weight_cells()
    for gradient in (1.0, 2.0, 3.0, 4.0):
        feed(forward_backward, [gradient])
    assert buffer.grad_mean[0].asnumpy()[0] == 2.5
    assert buffer.window_items.asnumpy() == 4.0
    assert buffer.window_micro_steps.asnumpy() == 4
    optim()
    assert network.w.asnumpy()[0] == 1.0 - 2.5  # SGD, lr 1: w - mean gradient


def test_micro_batches_are_weighted_by_samples_not_by_count():
    # Micro-batch means 1 (two samples) and 4 (one sample): (1 + 1 + 4) / 3 = 2, not (1 + 4) / 2.
    _, buffer, (forward_backward, _, _) = one_weight_cells()
    feed(forward_backward, [0.5, 1.5])
    feed(forward_backward, [4.0])
    assert buffer.grad_mean[0].asnumpy()[0] == 2.0
    assert buffer.window_items.asnumpy() == 3.0


def test_clear_zeroes_the_buffer_even_after_nan_and_inf():
    _, buffer, (forward_backward, _, clear) = one_weight_cells()
    feed(forward_backward, [np.inf])
    feed(forward_backward, [1.0])  # inf + (1 - inf) = nan
    assert np.isnan(buffer.grad_mean[0].asnumpy()[0])
    clear()
    np.testing.assert_array_equal(buffer.grad_mean[0].asnumpy(), [0.0])
    assert buffer.window_items.asnumpy() == 0.0 and buffer.window_micro_steps.asnumpy() == 0
    feed(forward_backward, [3.0])
    assert buffer.grad_mean[0].asnumpy()[0] == 3.0  # nothing of the old window leaked


def test_buffer_is_float32_named_after_the_weights():
    network = MLP()
    buffer = AccumulationBuffer(network.trainable_params())
    assert [p.name for p in buffer.grad_mean] == ["grad_sum." + p.name for p in network.trainable_params()]
    assert all(str(p.dtype) == "Float32" and not p.requires_grad for p in buffer.grad_mean)


def test_parameters_are_bit_identical_mid_window():
    network = MLP()
    optimizer = nn.Momentum(network.trainable_params(), 0.1, 0.9)
    buffer = AccumulationBuffer(optimizer.parameters)
    forward_backward = TrainForwardBackward(nn.WithLossCell(network, LOSS), optimizer.parameters, buffer)
    optim = TrainOptim(optimizer, buffer)
    before = params_of(network)
    moments_before = [m.asnumpy().copy() for m in optimizer.moments]
    for micro_step, batch in enumerate(micro_batches([4, 4, 4], (8,), 4), start=1):
        forward_backward(*batch)
        for name, value in params_of(network).items():
            np.testing.assert_array_equal(value, before[name], err_msg=f"micro-step {micro_step}: {name} moved")
        for moment, moment_before in zip(optimizer.moments, moments_before):
            np.testing.assert_array_equal(moment.asnumpy(), moment_before, err_msg=f"micro-step {micro_step}")
    optim()
    after = params_of(network)
    assert any(not np.array_equal(after[name], before[name]) for name in before), "the update changed nothing"


@pytest.mark.parametrize("batch_size", [3, 32])  # 3: no power of two to hide a rounding of b * g / b
def test_mini_steps_1_is_bit_identical_to_train_one_step_cell(batch_size):
    batches = micro_batches([batch_size] * 3, (8,), 4, seed=batch_size)
    accumulated = MLP()
    reference = twin(MLP, accumulated)
    model = GradientAccumulation(accumulated, LOSS, nn.Momentum(accumulated.trainable_params(), 0.1, 0.9))
    model.train_process(1, batches, mini_steps=1, save=NO_CKPT)
    step = nn.TrainOneStepCell(nn.WithLossCell(reference, LOSS), nn.Momentum(reference.trainable_params(), 0.1, 0.9))
    for batch in batches:
        step(*batch)
    expected = params_of(reference)
    for name, value in params_of(accumulated).items():
        np.testing.assert_array_equal(value, expected[name], err_msg=f"{name} after 3 updates")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "4", None])
def test_bad_mini_steps_is_refused_naming_the_argument_and_value(bad):
    network = MLP()
    model = GradientAccumulation(network, LOSS, nn.Momentum(network.trainable_params(), 0.1, 0.9))
    with pytest.raises((ValueError, TypeError)) as raised:
        model.train_process(1, micro_batches([4], (8,), 4), mini_steps=bad, save=NO_CKPT)
    message = str(raised.value)
    assert "mini_steps" in message and repr(bad) in message, message
    assert isinstance(raised.value, TypeError if not isinstance(bad, int) or isinstance(bad, bool) else ValueError)


def test_constructor_refuses_a_summing_loss_and_wrong_types():
    network = MLP()
    optimizer = nn.Momentum(network.trainable_params(), 0.1, 0.9)
    with pytest.raises(ValueError, match="reduction must be 'mean', got 'sum'"):
        GradientAccumulation(network, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="sum"), optimizer)
    with pytest.raises(TypeError, match="optimizer must be a mindspore.nn.Optimizer"):
        GradientAccumulation(network, LOSS, "sgd")
    with pytest.raises(ValueError, match="remainder must be one of 'flush', 'drop', got 'keep'"):
        GradientAccumulation(network, LOSS, optimizer).train_process(1, [], mini_steps=2, remainder="keep",
                                                                   save=NO_CKPT)
