"""Loss scaling, overflow, clipping and learning-rate schedules: each once per update, never per micro-step.

References: a second driver trained on the window after an overflow alone;
NumPy clipping of the same accumulated gradient (and, as the control,
clipping per micro-step); the schedule's formula by hand; one
``nn.TrainOneStepCell`` step of the same float16 network.
"""

import math

import numpy as np
import pytest
from mindspore import Tensor, amp, nn, ops

from mindspore_accum import (
    AccumulationBuffer,
    DriverCallback,
    GradientAccumulation,
    TrainForwardBackward,
    learning_rates,
)
from mindspore_accum.core.schedule import WindowSchedule
from nets import LOSS, MLP, NO_CKPT, concat, micro_batches, params_of, reference_steps, twin

BATCH, MINI_STEPS = 4, 4


class Snapshots(DriverCallback):
    """After every update: the network's parameters and a copy of ``grad_sum`` (unscaled, unclipped)."""

    def __init__(self):
        self.params, self.grads, self.records = [], [], []

    def update(self, record, driver):
        self.params.append(params_of(driver.network))
        self.grads.append([g.asnumpy().copy() for g in driver.buffer.grad_mean])
        self.records.append(record)


def windows(count, seed=0, poison=None):
    """``count`` windows of MINI_STEPS micro-batches; ``poison`` = (window, micro-batch, value) writes one input."""
    batches = micro_batches([BATCH] * (count * MINI_STEPS), (8,), 4, seed=seed)
    if poison is not None:
        window, micro_batch, value = poison
        data, label = batches[window * MINI_STEPS + micro_batch]
        poisoned = data.asnumpy().copy()
        poisoned[0, 0] = value
        batches[window * MINI_STEPS + micro_batch] = (Tensor(poisoned), label)
    return batches


@pytest.mark.parametrize("poison", [
    1e5,     # finite in float32, inf once O2 casts it to float16: a true half-precision overflow
    np.inf,
    np.nan,
])
def test_overflow_in_one_micro_batch_skips_the_window_and_the_next_trains_normally(poison):
    network = MLP()
    reference = twin(MLP, network)
    scaler = amp.DynamicLossScaler(2 ** 10, 2, 1000)
    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), 0.1), amp_level="O2",
                                 loss_scaler=scaler)
    snapshots = Snapshots()
    history = model.train_process(1, windows(3, poison=(1, 2, poison)), mini_steps=MINI_STEPS, save=NO_CKPT,
                                  callbacks=[snapshots])

    assert [r.skipped for r in history] == [False, True, False]
    assert [r.loss_scale for r in history] == [1024.0, 512.0, 512.0], "the scale is lowered once, on the overflow"
    assert model.skipped_updates == 1 and model.total_updates == 2
    for name, value in snapshots.params[0].items():  # the overflowing window changed nothing, to the bit
        np.testing.assert_array_equal(snapshots.params[1][name], value, err_msg=f"{name} after the skipped window")

    # The next window, against a fresh driver that starts from the parameters after window 1, at scale 512,
    # and trains on window 3 alone: nothing of window 2 may have stayed in the buffer.
    for param in reference.get_parameters():
        param.set_data(Tensor(snapshots.params[0][param.name]))
    alone = GradientAccumulation(reference, LOSS, nn.SGD(reference.trainable_params(), 0.1), amp_level="O2",
                                 loss_scaler=amp.DynamicLossScaler(512, 2, 1000))
    alone.train_process(1, windows(3)[2 * MINI_STEPS:], mini_steps=MINI_STEPS, save=NO_CKPT)
    for name, value in params_of(reference).items():
        np.testing.assert_array_equal(params_of(network)[name], value, err_msg=f"{name} after window 3")


@pytest.mark.parametrize("bites", [True, False])
@pytest.mark.parametrize("scaler", [None, "static"])
def test_clipping_is_once_per_update_on_the_unscaled_mean_gradient(scaler, bites):
    """Reference: the gradient of the mean loss over the concatenated window, by GradOperation, clipped in NumPy.

    Not the driver's own grad_sum: clipping that bites cancels any scale
    factor. So the micro-batches differ in size (wrong weights change the
    direction), and in the case where clipping does not bite the limit is 1.5x
    the true norm, which a sum of 4 micro-batch gradients would exceed.
    """
    network = MLP()
    initial = params_of(network)
    lr = 0.1
    batches = micro_batches([4, 3, 4, 1], (8,), 4, seed=3)
    names = [p.name for p in network.trainable_params()]
    probe = twin(MLP, network)
    window_grad = ops.GradOperation(get_by_list=True)(nn.WithLossCell(probe, LOSS), probe.trainable_params())
    grads = [g.asnumpy().astype(np.float64) for g in window_grad(*concat(batches))]
    norm = math.sqrt(sum(float(np.sum(g ** 2)) for g in grads))
    max_norm = 0.05 if bites else 1.5 * norm
    assert (norm > 2 * max_norm) == bites, f"the case needs clipping to {'' if bites else 'not '}bite: norm {norm}"

    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), lr), clip_grad_norm=max_norm,
                                 loss_scaler=amp.StaticLossScaler(1024) if scaler else None)
    model.train_process(1, batches, mini_steps=MINI_STEPS, save=NO_CKPT)
    for name, grad in zip(names, grads):
        expected = initial[name] - lr * grad * min(1.0, max_norm / norm)
        np.testing.assert_allclose(params_of(network)[name], expected, rtol=1e-5, atol=1e-7, err_msg=name)
    if not bites:
        return

    # Control: clipping each micro-batch's gradient, then averaging, is a different update.
    per_micro_step = [np.zeros_like(g) for g in grads]
    for data, label in batches:
        probe = twin(MLP, MLP())
        for param in probe.get_parameters():
            param.set_data(Tensor(initial[param.name]))
        buffer = AccumulationBuffer(probe.trainable_params())
        TrainForwardBackward(nn.WithLossCell(probe, LOSS), probe.trainable_params(), buffer)(data, label)
        g_i = [g.asnumpy() for g in buffer.grad_mean]
        n_i = math.sqrt(sum(float(np.sum(g ** 2)) for g in g_i))
        per_micro_step = [acc + g * min(1.0, max_norm / n_i) * len(label) / 12 for acc, g in zip(per_micro_step, g_i)]
    wrong = {name: initial[name] - lr * g for name, g in zip(names, per_micro_step)}
    assert max(np.max(np.abs(wrong[name] - params_of(network)[name])) for name in names) > 1e-4


def test_schedule_counts_updates_so_mini_steps_1_and_4_read_the_same_rates():
    """References: the rates by hand, and the parameters of nn.TrainOneStepCell stepping with the same rate list.

    The reference steps once per window on the concatenated micro-batches, so
    its optimizer's global_step counts updates. A schedule that counted
    micro-steps would read other rates, and the parameters would differ.
    """
    epochs, updates_per_epoch = 2, 6
    rates_read = {}
    for mini_steps, micro_batch_count in ((1, 6), (4, 22)):  # 22 = 5 full windows and a flushed partial one
        schedule = WindowSchedule(mini_steps)
        assert schedule.updates_per_epoch(micro_batch_count) == updates_per_epoch
        total = schedule.updates_per_epoch(micro_batch_count) * epochs
        network = MLP()
        reference = twin(MLP, network)
        rates = learning_rates("cosine", 0.1, total, warmup_updates=3)
        batches = micro_batches([BATCH] * micro_batch_count, (8,), 4)
        model = GradientAccumulation(network, LOSS, nn.Momentum(network.trainable_params(), rates, 0.9))
        history = model.train_process(epochs, batches, mini_steps, save=NO_CKPT)
        rates_read[mini_steps] = [record.lr for record in history]
        windows = [batches[start:start + mini_steps] for start in range(0, micro_batch_count, mini_steps)]
        expected = reference_steps(reference, nn.Momentum(reference.trainable_params(), rates, 0.9),
                                   windows * epochs)
        for name, value in params_of(network).items():
            np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6,
                                       err_msg=f"mini_steps={mini_steps}: {name}")

    assert rates_read[1] == rates_read[4], rates_read
    # By hand: warm-up 0.1 * i / 3 for updates 1-3, then half a cosine over the other 9 updates.
    by_hand = [0.1 * i / 3 for i in (1, 2, 3)] + [0.05 * (1 + math.cos(math.pi * j / 9)) for j in range(9)]
    np.testing.assert_allclose(rates_read[4], by_hand, rtol=1e-6, err_msg="rates read from the optimizer")


def test_a_skipped_window_does_not_move_the_learning_rate_schedule():
    """Reference: nn.TrainOneStepCell with the same rate list, stepping on windows 1 and 3 only.

    Window 2 holds an inf and is skipped by the dynamic scaler: window 3 must
    use the second rate, as if window 2 had never been.
    """
    rates = [0.1, 0.05, 0.02, 0.01]
    network = MLP()
    reference = twin(MLP, network)
    batches = windows(3, seed=4, poison=(1, 1, np.inf))
    model = GradientAccumulation(network, LOSS, nn.Momentum(network.trainable_params(), rates, 0.9),
                                 loss_scaler=amp.DynamicLossScaler(1024, 2, 1000))
    history = model.train_process(1, batches, mini_steps=MINI_STEPS, save=NO_CKPT)
    assert [r.skipped for r in history] == [False, True, False]
    np.testing.assert_allclose([history[0].lr, history[2].lr], [rates[0], rates[1]], rtol=1e-7)  # float32 rates
    expected = reference_steps(reference, nn.Momentum(reference.trainable_params(), rates, 0.9),
                               [batches[:MINI_STEPS], batches[2 * MINI_STEPS:]])
    for name, value in params_of(network).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("kind, expected", [
    ("constant", [0.1] * 8),
    ("step", [0.1] * 4 + [0.01] * 2 + [0.001] * 2),
])
def test_constant_and_step_schedules(kind, expected):
    np.testing.assert_allclose(learning_rates(kind, 0.1, 8), expected, rtol=1e-7)


@pytest.mark.parametrize("kwargs, message", [
    (dict(schedule="linear"), "lr_schedule must be one of 'constant', 'cosine', 'step', got 'linear'"),
    (dict(warmup_updates=-1), "warmup_steps must be a whole number >= 0, got -1"),
    (dict(lr=0.0), "lr must be a finite number > 0, got 0.0"),
])
def test_bad_schedule_arguments_are_refused(kwargs, message):
    args = {"schedule": "cosine", "lr": 0.1, "total_updates": 10, "warmup_updates": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        learning_rates(**args)


@pytest.mark.parametrize("level", ["O0", "O1", "O2", "O3"])
def test_auto_loss_scaler_is_mindspores_dynamic_loss_scale_manager_default_below_o0(level, tmp_path, monkeypatch):
    """Reference: DynamicLossScaleManager's defaults, by hand: scale 2**16, factor 2, window 2000."""
    monkeypatch.chdir(tmp_path)  # O1 rewrites the network and leaves its source in ./rewritten_network
    network = MLP()
    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), 0.1), amp_level=level)
    if level == "O0":
        assert model.loss_scaler is None
        return
    scaler = model.loss_scaler
    assert isinstance(scaler, amp.DynamicLossScaler)
    assert (float(scaler.scale_value.asnumpy()), scaler.scale_factor, scaler.scale_window) == (2.0 ** 16, 2, 2000)


@pytest.mark.parametrize("level", ["O1", "O2", "O3"])
def test_a_mixed_precision_window_matches_one_step_at_that_level_on_the_concatenated_batch(level, tmp_path,
                                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)  # O1 rewrites the network and leaves its source in ./rewritten_network
    network = MLP()
    initial = params_of(network)
    batches = micro_batches([4, 4, 4, 3], (8,), 4, seed=5)
    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), 0.1), amp_level=level,
                                 loss_scaler=amp.StaticLossScaler(1024))
    model.train_process(1, batches, mini_steps=4, save=NO_CKPT)
    assert all(str(g.dtype) == "Float32" for g in model.buffer.grad_mean), [g.dtype for g in model.buffer.grad_mean]

    def step_on_concatenation(level):
        reference = twin(MLP, network)
        for param in reference.get_parameters():
            param.set_data(Tensor(initial[param.name]))
        compute = amp.auto_mixed_precision(reference, level) if level != "O0" else reference
        step = nn.TrainOneStepCell(nn.WithLossCell(compute, LOSS), nn.SGD(reference.trainable_params(), 0.1))
        step(*concat(batches))
        return {name: value - initial[name] for name, value in params_of(reference).items()}

    accumulated = {name: value - initial[name] for name, value in params_of(network).items()}
    float16_step, float32_step = step_on_concatenation(level), step_on_concatenation("O0")
    for name, delta in float16_step.items():
        # rtol 1e-2, as half precision allows; atol relative to the update's size, for entries near 0.
        np.testing.assert_allclose(accumulated[name], delta, rtol=1e-2, atol=1e-2 * np.max(np.abs(delta)),
                                   err_msg=name)
    # Control: the level really computed in float16 - its update is not float32's to float32 precision.
    assert max(np.max(np.abs(accumulated[n] - float32_step[n]) / (np.abs(float32_step[n]) + 1e-6))
               for n in float32_step) > 1e-5
