"""``weighting="items"``: a window of per-token losses is one step on the concatenated window's valid tokens.

Reference: one ``nn.TrainOneStepCell`` step on the window's micro-batches
concatenated and padded to one length, with
``nn.CrossEntropyLoss(ignore_index=-100, reduction="mean")``: the mean over
**all** the window's valid tokens. Tolerance rtol 1e-5, atol 1e-6, as in
test_equivalence.py: the same sums in another order. Control: ``samples``
weighting on the same data misses by far more.
"""

import logging

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
import pytest
from mindspore import Model, amp, nn, ops
from mindspore.train import Callback

from mindspore_accum import GradientAccumulation, GradientAccumulationCell, SaveConfig
from model_zoo_adapters.transformer import TokenCrossEntropy
from nets import NO_CKPT, TokenMLP, pad_concat, params_of, token_batches, twin

RTOL, ATOL = 1e-5, 1e-6
TOKEN_LOSS = TokenCrossEntropy()
#: (rows, padded length, valid tokens): 1, 3, 17 and 40 valid tokens at four padded lengths.
WINDOW = [(2, 5, 1), (2, 8, 3), (3, 12, 17), (4, 14, 40)]


def stepped(network, optimizer, windows, loss=TOKEN_LOSS):
    """nn.TrainOneStepCell on each window concatenated; returns the parameters and each window's loss."""
    step = nn.TrainOneStepCell(nn.WithLossCell(network, loss), optimizer)
    losses = [float(step(*pad_concat(window)).asnumpy()) for window in windows]
    return params_of(network), losses


def assert_close(actual, expected, context=""):
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=RTOL, atol=ATOL, err_msg=f"{context} {name}")


def test_an_items_window_equals_one_step_on_the_windows_valid_tokens_and_samples_weighting_does_not():
    batches = token_batches(WINDOW, seed=1)
    network = TokenMLP()
    reference, control = twin(TokenMLP, network), twin(TokenMLP, network)
    model = GradientAccumulation(network, TOKEN_LOSS, nn.SGD(network.trainable_params(), 0.5), weighting="items")
    (record,) = model.train_process(1, batches, mini_steps=4, save=NO_CKPT)
    expected, (loss,) = stepped(reference, nn.SGD(reference.trainable_params(), 0.5), [batches])
    assert (record.items, record.samples) == (61, 11)
    assert record.loss == pytest.approx(loss, rel=RTOL)
    assert_close(params_of(network), expected)

    by_samples = GradientAccumulation(control, TOKEN_LOSS, nn.SGD(control.trainable_params(), 0.5))
    by_samples.train_process(1, batches, mini_steps=4, save=NO_CKPT)
    worst = max(np.max(np.abs(params_of(control)[n] - v) / (np.abs(v) + ATOL / RTOL)) for n, v in expected.items())
    assert worst > 100 * RTOL, f"samples weighting came within {worst:.2g} of the token mean"


def test_a_micro_batch_without_items_adds_nothing_and_no_nan():
    # The second micro-batch has only padding: its loss is a mean over nothing (NaN in MindSpore's loss).
    batches = token_batches([(2, 6, 7), (2, 5, 0), (3, 4, 9)], seed=2)
    network = TokenMLP()
    reference = twin(TokenMLP, network)
    model = GradientAccumulation(network, TOKEN_LOSS, nn.Momentum(network.trainable_params(), 0.1, 0.9),
                                 weighting="items")
    (record,) = model.train_process(1, batches, mini_steps=3, save=NO_CKPT)
    expected, (loss,) = stepped(reference, nn.Momentum(reference.trainable_params(), 0.1, 0.9), [batches])
    assert record.items == 16 and np.isfinite(record.loss) and record.loss == pytest.approx(loss, rel=RTOL)
    assert_close(params_of(network), expected)


def test_a_window_without_items_applies_nothing_says_so_and_training_goes_on(caplog):
    windows = [token_batches([(2, 6, 5), (2, 6, 4)], seed=3), token_batches([(2, 6, 0), (2, 4, 0)], seed=4),
               token_batches([(3, 5, 11), (1, 6, 2)], seed=5)]
    network = TokenMLP()
    reference = twin(TokenMLP, network)
    model = GradientAccumulation(network, TOKEN_LOSS, nn.Momentum(network.trainable_params(), 0.1, 0.9),
                                 weighting="items")
    with caplog.at_level(logging.WARNING, logger="mindspore_accum"):
        history = model.train_process(1, [b for window in windows for b in window], mini_steps=2, save=NO_CKPT)
    assert [(r.items, r.skipped) for r in history] == [(9, False), (0, True), (13, False)]
    assert model.total_updates == 2 and model.skipped_updates == 0
    assert ["epoch: 1 step: 2 the window has no items (every label is ignore_index=-100): no update"] == \
        [r.getMessage() for r in caplog.records]
    # Reference: the two windows with items, as if the empty one had never been (Momentum's state included).
    expected, _ = stepped(reference, nn.Momentum(reference.trainable_params(), 0.1, 0.9), [windows[0], windows[2]])
    assert_close(params_of(network), expected)


def test_a_flushed_partial_window_is_weighted_by_its_true_items_over_two_epochs():
    batches = token_batches([(2, 7, 13), (3, 4, 2), (2, 9, 17)], seed=6)  # mini_steps 2: windows [0, 1], [2]
    network = TokenMLP()
    reference = twin(TokenMLP, network)
    model = GradientAccumulation(network, TOKEN_LOSS, nn.Adam(network.trainable_params(), 0.01, eps=1e-6),
                                 weighting="items")
    history = model.train_process(2, batches, mini_steps=2, save=NO_CKPT)
    assert [r.items for r in history] == [15, 17, 15, 17]
    expected, losses = stepped(reference, nn.Adam(reference.trainable_params(), 0.01, eps=1e-6),
                               [batches[:2], batches[2:]] * 2)
    np.testing.assert_allclose([r.loss for r in history], losses, rtol=RTOL)
    assert_close(params_of(network), expected)


class MaskedTokenLoss(nn.Cell):
    """A network-with-loss with a mask of its own: only even positions count. Returns (loss, items) or the loss."""

    def __init__(self, network, with_items=True):
        super().__init__()
        self.network, self.with_items = network, with_items

    def construct(self, ids, labels):
        logits = self.network(ids)
        positions = ops.arange(labels.shape[1]).reshape(1, -1) % 2 == 0
        mask = ops.cast(ops.logical_and(labels != -100, positions), ms.float32)
        per_token = ops.cross_entropy(logits.reshape(-1, logits.shape[-1]), ops.maximum(labels, 0).reshape(-1),
                                      reduction="none").reshape(labels.shape)
        items = mask.sum()
        loss = (per_token * mask).sum() / items
        if self.with_items:
            return loss, items
        return loss


@pytest.mark.parametrize("scaled", [False, True])
def test_the_loss_items_protocol_with_a_custom_mask_equals_the_concatenated_step(scaled):
    """With a loss scaler too: the sensitivity is (scale, 0), and TrainOptim unscales as for any loss."""
    batches = token_batches([(2, 5, 9), (3, 8, 20), (1, 6, 3)], seed=7)
    network = TokenMLP()
    reference, control = twin(TokenMLP, network), twin(TokenMLP, network)

    def accumulate(network_with_loss, net):
        cell = GradientAccumulationCell(network_with_loss, nn.SGD(net.trainable_params(), 0.5), 3, weighting="items",
                                        loss_scaler=amp.StaticLossScaler(1024.0) if scaled else None)
        for ids, labels in batches:
            cell(ids, labels)
        return params_of(net)

    actual = accumulate(MaskedTokenLoss(network), network)
    step = nn.TrainOneStepCell(MaskedTokenLoss(reference, with_items=False), nn.SGD(reference.trainable_params(), 0.5))
    step(*pad_concat(batches))
    assert_close(actual, params_of(reference))
    # Control: the same loss weighted by its valid labels, not by the items it returns, is another update.
    counted = accumulate(MaskedTokenLoss(control, with_items=False), control)
    assert not all(np.allclose(counted[n], v, rtol=RTOL, atol=ATOL) for n, v in params_of(reference).items())


class Outputs(Callback):
    """The Cell's output at every micro-step, as LossMonitor reads it."""

    def __init__(self):
        self.values = []

    def on_train_step_end(self, run_context):
        self.values.append(float(run_context.original_args().net_outputs.asnumpy()))


def token_dataset(batches):
    """A mindspore.dataset pipeline that yields ``batches`` as they are (each element one micro-batch)."""
    rows = [(b[0].asnumpy(), b[1].asnumpy()) for b in batches]
    return ds.GeneratorDataset(lambda: iter(rows), ["ids", "labels"], shuffle=False)


def test_the_cell_under_model_train_is_bit_identical_to_the_driver_in_items_mode_with_a_flushed_window():
    batches = token_batches([(2, 6, 7), (3, 5, 1), (2, 9, 15), (2, 4, 8), (1, 7, 0)], seed=8)  # windows 2, 2, 1
    network = TokenMLP()
    twin_network = twin(TokenMLP, network)
    cell = GradientAccumulationCell(nn.WithLossCell(network, TOKEN_LOSS),
                                    nn.Momentum(network.trainable_params(), 0.1, 0.9), 2, micro_batches_per_epoch=5,
                                    weighting="items")
    outputs = Outputs()
    Model(cell).train(2, token_dataset(batches), callbacks=[outputs], dataset_sink_mode=False)
    driver = GradientAccumulation(twin_network, TOKEN_LOSS, nn.Momentum(twin_network.trainable_params(), 0.1, 0.9),
                                  weighting="items")
    history = driver.train_process(2, token_dataset(batches), mini_steps=2, save=NO_CKPT)
    assert [r.items for r in history] == [8, 23, 0] * 2 and [r.skipped for r in history] == [False, False, True] * 2
    ours = {p.name: p.asnumpy() for p in cell.optimizer.get_parameters()}
    for param in driver.optimizer.get_parameters():
        np.testing.assert_array_equal(ours[param.name], param.asnumpy(), err_msg=param.name)
    # What LossMonitor prints at each update's micro-step: the window's item-weighted loss, as the driver recorded.
    at_updates = [outputs.values[5 * epoch + micro] for epoch in range(2) for micro in (1, 3, 4)]
    np.testing.assert_allclose(at_updates, [r.loss for r in history], rtol=1e-6)


def test_mid_window_resume_in_items_mode_equals_the_uninterrupted_run(tmp_path):
    import os
    import signal

    from mindspore_accum import DriverCallback, TrainingInterrupted

    class InterruptAt(DriverCallback):
        def micro_step(self, epoch, micro_batch, loss, samples):
            if (epoch, micro_batch) == (1, 4):  # mid-window: the buffer holds the 4th micro-batch of 3 + 1
                os.kill(os.getpid(), signal.SIGINT)

    batches = token_batches([(2, 6, 7), (3, 5, 1), (2, 9, 15), (2, 4, 8), (1, 7, 3), (2, 3, 4)], seed=9)
    network = TokenMLP()
    resumed_network = twin(TokenMLP, network)

    def run(net, callbacks=(), resume=None, state_dir=None):
        model = GradientAccumulation(net, TOKEN_LOSS, nn.Adam(net.trainable_params(), 0.01), weighting="items")
        return model.train_process(2, batches, mini_steps=3, callbacks=callbacks, save=SaveConfig(
            ckpt_path=None, state_dir=state_dir, resume=resume))

    uninterrupted = run(network)
    with pytest.raises(TrainingInterrupted):
        run(resumed_network, [InterruptAt()], state_dir=tmp_path / "states")
    rest = run(resumed_network, resume=tmp_path / "states", state_dir=tmp_path / "states")
    assert [(r.items, r.loss) for r in rest] == [(r.items, r.loss) for r in uninterrupted[1:]]
    for name, value in params_of(network).items():
        np.testing.assert_array_equal(params_of(resumed_network)[name], value, err_msg=name)


@pytest.mark.parametrize("kwargs, message", [
    (dict(weighting="tokens"), "weighting must be one of 'samples', 'items', got 'tokens'"),
    (dict(weighting="items", ignore_index=0), "loss_fn ignores label -100 but ignore_index=0: pass ignore_index=-100"),
    (dict(ignore_index="pad"), "ignore_index must be a whole number, got 'pad'"),
])
def test_bad_weighting_arguments_are_refused_in_one_line(kwargs, message):
    network = TokenMLP()
    with pytest.raises((ValueError, TypeError), match=message):
        GradientAccumulation(network, TOKEN_LOSS, nn.SGD(network.trainable_params(), 0.1), **kwargs)


def test_clipping_and_a_rate_schedule_act_once_per_items_window():
    """Reference: the token-mean gradient of each concatenated window by GradOperation, clipped in NumPy, stepped
    at the schedule's rate for that update."""
    windows = [token_batches(WINDOW, seed=10), token_batches([(2, 6, 9), (3, 4, 2)], seed=11)]
    rates, max_norm = [0.5, 0.2], 0.05
    network = TokenMLP()
    reference = twin(TokenMLP, network)
    model = GradientAccumulation(network, TOKEN_LOSS, nn.SGD(network.trainable_params(), rates),
                                 clip_grad_norm=max_norm, weighting="items")
    model.train_process(1, windows[0] + windows[1][:1] + windows[1][1:], mini_steps=4, save=NO_CKPT)
    expected = params_of(reference)
    grad = ops.GradOperation(get_by_list=True)(nn.WithLossCell(reference, TOKEN_LOSS), reference.trainable_params())
    for rate, window in zip(rates, windows):
        grads = [g.asnumpy().astype(np.float64) for g in grad(*pad_concat(window))]
        norm = np.sqrt(sum((g ** 2).sum() for g in grads))
        assert norm > 2 * max_norm, "the test needs clipping to bite"
        for param, g in zip(reference.trainable_params(), grads):
            expected[param.name] = expected[param.name] - rate * g * max_norm / norm
            param.set_data(ms.Tensor(expected[param.name].astype(np.float32)))
    assert_close(params_of(network), expected)
