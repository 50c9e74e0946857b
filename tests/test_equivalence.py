"""One accumulated update equals one ordinary step on the concatenated window.

Reference: ``nn.TrainOneStepCell`` on the window's micro-batches concatenated,
from the same initial weights with a fresh optimizer of the same kind.

Tolerance rtol 1e-5, atol 1e-6: the two gradients are the same sum taken in a
different order (per micro-batch, then across; against all at once), so they
differ by float32 rounding, ~1e-7 relative; one step moves that by lr.

The Adam cases cannot catch a factor-of-``mini_steps`` error: Adam's first
step is about ``lr * sign(g)``, whatever the gradient's scale. They check the
moments and the direction; the scale is Momentum's to check, so every window
shape an Adam case covers is covered by a Momentum case too (checked below).
"""

import numpy as np
import pytest
from mindspore import nn

from mindspore_accum import GradientAccumulation
from nets import LOSS, MLP, NETWORKS, NO_CKPT, OPTIMIZERS, concat, micro_batches, params_of, reference_steps, twin

RTOL, ATOL = 1e-5, 1e-6

# The last micro-batch of each window is smaller: samples, not micro-batches, are weighted.
WINDOW_SIZES = {1: [5], 2: [4, 3], 4: [4, 4, 4, 2]}


def assert_params_close(actual, expected, context):
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=RTOL, atol=ATOL,
                                   err_msg=f"{context}: parameter {name}")


#: (network, optimizer, mini_steps): every pair of network and window shape, with each optimizer.
CASES = [(network, optimizer, mini_steps) for network in ("mlp", "lenet") for optimizer in ("momentum", "adam")
         for mini_steps in WINDOW_SIZES]
# Every optimizer train.py offers (--optimizer), on the window of 4 with a short last micro-batch.
CASES += [(network, optimizer, 4) for network in ("mlp", "lenet") for optimizer in ("sgd", "adamw")]


def test_every_window_shape_of_an_adam_case_has_a_momentum_case():
    shapes = {optimizer: {(network, mini_steps) for network, o, mini_steps in CASES if o == optimizer}
              for optimizer in ("momentum", "adam", "adamw")}
    assert shapes["adam"] | shapes["adamw"] <= shapes["momentum"], shapes["adam"] - shapes["momentum"]


@pytest.mark.parametrize("network_name, optimizer_name, mini_steps", CASES)
def test_one_window_equals_one_step_on_the_concatenated_batch(network_name, optimizer_name, mini_steps):
    network_cls, feature_shape, num_classes = NETWORKS[network_name]
    make_optimizer = OPTIMIZERS[optimizer_name]
    window = micro_batches(WINDOW_SIZES[mini_steps], feature_shape, num_classes, seed=mini_steps)

    accumulated = network_cls()
    reference = twin(network_cls, accumulated)
    initial = params_of(accumulated)
    model = GradientAccumulation(accumulated, LOSS, make_optimizer(accumulated.trainable_params()))
    history = model.train_process(1, window, mini_steps=mini_steps, save=NO_CKPT)

    assert [record.samples for record in history] == [sum(WINDOW_SIZES[mini_steps])]
    expected = reference_steps(reference, make_optimizer(reference.trainable_params()), [window])
    assert any(not np.array_equal(expected[n], initial[n]) for n in initial), "reference step changed nothing"
    assert_params_close(params_of(accumulated), expected, f"{network_name}/{optimizer_name}/mini_steps={mini_steps}")


def test_control_summing_like_the_tutorial_does_not_match():
    """The tutorial's sum is a step with mini_steps x the gradient; the test must tell it apart."""
    window = micro_batches([4, 4, 4, 4], (8,), 4, seed=7)
    accumulated = MLP()
    summed = twin(MLP, accumulated)
    model = GradientAccumulation(accumulated, LOSS, nn.Momentum(accumulated.trainable_params(), 0.1, 0.9))
    model.train_process(1, window, mini_steps=4, save=NO_CKPT)
    # sens=4 multiplies the concatenated batch's gradient by 4: the tutorial's sum of 4 micro-batch gradients.
    step = nn.TrainOneStepCell(nn.WithLossCell(summed, LOSS), nn.Momentum(summed.trainable_params(), 0.1, 0.9),
                               sens=4.0)
    step(*concat(window))
    actual, tutorial = params_of(accumulated), params_of(summed)
    assert not all(np.allclose(actual[n], tutorial[n], rtol=RTOL, atol=ATOL) for n in actual)


def test_control_batchnorm_does_not_match():
    """BatchNorm normalises each micro-batch by its own statistics: not one large batch."""
    window = micro_batches([4, 4, 4, 4], (8,), 4, seed=3)
    accumulated = MLP(batchnorm=True)
    reference = twin(MLP, accumulated, batchnorm=True)
    model = GradientAccumulation(accumulated, LOSS, nn.Momentum(accumulated.trainable_params(), 0.1, 0.9))
    model.train_process(1, window, mini_steps=4, save=NO_CKPT)
    expected = reference_steps(reference, nn.Momentum(reference.trainable_params(), 0.1, 0.9), [window])
    actual = params_of(accumulated)
    mismatched = [n for n in expected if not np.allclose(actual[n], expected[n], rtol=RTOL, atol=ATOL)]
    assert "fc1.weight" in mismatched, f"BatchNorm network matched the large batch; mismatched: {mismatched}"
