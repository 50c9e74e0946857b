"""The driver on one graph per micro-step: bit-identical to the three-Cell loop, and no host sync per micro-step.

Reference: the tutorial's loop written out here - ``TrainForwardBackward`` on
every micro-batch, ``TrainOptim`` and ``TrainClear`` when ``WindowSchedule``
says so, the partial window flushed or dropped at each epoch's end - on twin
networks from the same weights. Parameters and optimizer state must agree to
the bit (``assert_array_equal``): the driver runs the same Cells, composed.
"""

import numpy as np
import pytest
from mindspore import Tensor, amp, nn

from mindspore_accum import (
    AccumulationBuffer,
    DriverCallback,
    GradientAccumulation,
    SaveConfig,
    TrainClear,
    TrainForwardBackward,
    TrainOptim,
)
from nets import LOSS, MLP, NO_CKPT, OPTIMIZERS, micro_batches, twin

BATCHES = [4] * 6 + [2]  # 7 micro-batches an epoch; the last is smaller


def three_cell_loop(network, optimizer, batches, epochs, mini_steps, remainder="flush", amp_level="O0",
                    loss_scaler=None, clip_grad_norm=None):
    """The tutorial's loop, its window rule written out here; returns whether each window's update was applied."""
    compute = network if amp_level == "O0" else amp.auto_mixed_precision(network, amp_level)
    buffer = AccumulationBuffer(optimizer.parameters)
    forward_backward = TrainForwardBackward(nn.WithLossCell(compute, LOSS), optimizer.parameters, buffer,
                                            loss_scaler)
    optim, clear = TrainOptim(optimizer, buffer, loss_scaler, clip_grad_norm), TrainClear(buffer)
    applied = []
    for _ in range(epochs):
        window = 0
        for data, label in batches:
            forward_backward(data, label)
            window += 1
            if window == mini_steps:
                applied.append(bool(optim().asnumpy()))
                clear()
                window = 0
        if window and remainder == "flush":
            applied.append(bool(optim().asnumpy()))
        clear()
    return applied


def assert_same_state(driver_optimizer, reference_optimizer):
    ours = {p.name: p.asnumpy() for p in driver_optimizer.get_parameters()}
    theirs = {p.name: p.asnumpy() for p in reference_optimizer.get_parameters()}
    assert sorted(ours) == sorted(theirs)
    for name in theirs:
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=f"{name}: the driver vs the three-Cell loop")


def poisoned(batches, index, value):
    data = batches[index][0].asnumpy().copy()
    data[0, 0] = value
    return batches[:index] + [(Tensor(data), batches[index][1])] + batches[index + 1:]


@pytest.mark.parametrize("remainder", ["flush", "drop"])
@pytest.mark.parametrize("optimizer_name", ["momentum", "adam"])
@pytest.mark.parametrize("mini_steps", [1, 2, 4])
def test_the_driver_is_bit_identical_to_the_three_cell_loop(mini_steps, optimizer_name, remainder):
    batches = micro_batches(BATCHES, (8,), 4, seed=11)
    network = MLP()
    reference = twin(MLP, network)
    make = OPTIMIZERS[optimizer_name]
    optimizer, reference_optimizer = make(network.trainable_params()), make(reference.trainable_params())
    history = GradientAccumulation(network, LOSS, optimizer).train_process(
        2, batches, mini_steps=mini_steps, remainder=remainder, save=NO_CKPT)
    applied = three_cell_loop(reference, reference_optimizer, batches, 2, mini_steps, remainder)
    assert [not r.skipped for r in history] == applied and applied
    assert_same_state(optimizer, reference_optimizer)


@pytest.mark.parametrize("options", [
    dict(amp_level="O2", loss_scaler="dynamic"),          # window 2 overflows in float16 and is skipped
    dict(clip_grad_norm=0.05),
    dict(clip_grad_norm=0.05, loss_scaler="static"),
])
def test_o2_with_an_overflowing_window_and_clipping_are_bit_identical(options):
    scalers = {"dynamic": lambda: amp.DynamicLossScaler(2 ** 10, 2, 1), "static": lambda: amp.StaticLossScaler(1024)}
    kind = options.pop("loss_scaler", None)
    batches = micro_batches(BATCHES, (8,), 4, seed=12)
    if kind == "dynamic":
        batches = poisoned(batches, 5, 1e5)  # finite in float32, inf once O2 casts it to float16
    network = MLP()
    reference = twin(MLP, network)
    make_scaler = scalers[kind] if kind else (lambda: None)
    optimizer, reference_optimizer = nn.SGD(network.trainable_params(), 0.1), nn.SGD(reference.trainable_params(), 0.1)
    driver = GradientAccumulation(network, LOSS, optimizer, loss_scaler=make_scaler(), **options)
    history = driver.train_process(1, batches, mini_steps=2, save=NO_CKPT)
    reference_scaler = make_scaler()
    applied = three_cell_loop(reference, reference_optimizer, batches, 1, 2, loss_scaler=reference_scaler, **options)
    assert [not r.skipped for r in history] == applied
    if kind == "dynamic":
        assert applied == [True, True, False, True], "the test needs one skipped window"
        assert float(driver.loss_scaler.scale_value.asnumpy()) == float(reference_scaler.scale_value.asnumpy())
    assert_same_state(optimizer, reference_optimizer)


#: Every way a Tensor's value reaches the host: ``asnumpy`` (and ``numpy``, ``__array__``), and the C++
#: ``_item`` and ``_tolist`` behind ``float(t)``, ``int(t)``, ``bool(t)``, ``t.item()`` and ``t.tolist()``,
#: which do not go through ``asnumpy``.
READ_BACKS = ("asnumpy", "_item", "_tolist")


class Reads(DriverCallback):
    """Where tensors are read back: the micro-step count at each read-back during training.

    ``read_every_loss`` is the control: a callback that reads each micro-batch's
    loss with ``float(loss)``, the commonest host sync, must show up.
    """

    def __init__(self, monkeypatch, read_every_loss=False):
        self.micro_steps, self.read_at, self.read_every_loss = 0, [], read_every_loss
        for name in READ_BACKS:
            monkeypatch.setattr(Tensor, name, self._counted(getattr(Tensor, name)))

    def _counted(self, original):
        def read_back(tensor, *args, **kwargs):
            self.read_at.append(self.micro_steps)
            return original(tensor, *args, **kwargs)
        return read_back

    def micro_step(self, epoch, micro_batch, loss, samples):
        self.micro_steps += 1
        if self.read_every_loss:
            float(loss)


def test_every_read_back_path_is_counted(monkeypatch):
    """The probe itself: each entry point a user's code takes to the host is seen."""
    probe = Reads(monkeypatch)
    tensor = Tensor(np.array([2.5], np.float32))
    for read in (float, bool, int, lambda t: t.item(), lambda t: t.tolist(), lambda t: t.asnumpy(), np.asarray):
        before = len(probe.read_at)
        read(tensor)
        assert len(probe.read_at) > before, f"{read} reached the host unseen"


@pytest.mark.parametrize("read_every_loss", [False, True])
def test_the_loss_is_read_back_once_per_window_not_on_every_micro_step(monkeypatch, read_every_loss):
    mini_steps, batches = 4, micro_batches([4] * 8, (8,), 4, seed=13)  # 2 windows an epoch
    network = MLP()
    reads = Reads(monkeypatch, read_every_loss)
    GradientAccumulation(network, LOSS, nn.Momentum(network.trainable_params(), 0.1, 0.9)).train_process(
        2, batches, mini_steps=mini_steps, save=SaveConfig(ckpt_path=None,
                                                           handle_signals=False), log_every=None, callbacks=[reads])
    between = sorted({at for at in reads.read_at if at % mini_steps})
    if read_every_loss:  # the control: a float(loss) on each micro-step shows up on every micro-step
        assert between == [m for m in range(1, 17) if m % mini_steps], between
    else:
        assert between == [], f"tensors were read back mid-window, after micro-steps {between}"
        # Per window: its figures (applied, micro-batches, items, loss) in one read-back, and the learning rate.
        per_window = {at: reads.read_at.count(at) for at in sorted(set(reads.read_at)) if at}  # 0: the set-up
        assert per_window == {4: 2, 8: 2, 12: 2, 16: 2}, per_window
