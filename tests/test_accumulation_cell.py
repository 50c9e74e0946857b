"""``GradientAccumulationCell`` run by ``mindspore.train.Model``, against references computed another way.

* **Identity**: the three-Cell loop of ``GradientAccumulation.train_process``
  on the same dataset, from the same weights. The Cell is built from the same
  three Cells, so parameters and optimizer state must agree **to the bit**
  (``np.testing.assert_array_equal``), not within a tolerance.
* **Concatenated step**: ``nn.TrainOneStepCell`` on each window's micro-batches
  concatenated (rtol 1e-5, atol 1e-6, as in test_equivalence.py), with
  ``mindspore.boost``'s accumulation as the control that fails it.
* **Window loss**: a separate forward pass on the concatenated window, before
  its update (rtol 1e-5: float32 running mean against one mean).
"""

import logging
import re

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
import pytest
from mindspore import Model, Tensor, amp, nn
from mindspore.train import Callback, CheckpointConfig, EarlyStopping, LossMonitor, ModelCheckpoint, TimeMonitor

from mindspore_accum import GradientAccumulation, GradientAccumulationCell
from nets import LOSS, MLP, NO_CKPT, OPTIMIZERS, concat, micro_batches, params_of, reference_steps, twin

BATCH = 4
RTOL, ATOL = 1e-5, 1e-6


def dataset_of(batches, batch=BATCH):
    """A ``mindspore.dataset`` pipeline yielding ``batches`` again (its last micro-batch may be smaller)."""
    x = np.concatenate([b[0].asnumpy() for b in batches])
    y = np.concatenate([b[1].asnumpy() for b in batches])
    return ds.NumpySlicesDataset({"x": x, "label": y}, shuffle=False).batch(batch, drop_remainder=False)


def seven_micro_batches(seed=1, poison=None):
    """6 micro-batches of 4 and a last one of 2; ``poison`` writes one value into micro-batch 5."""
    batches = micro_batches([BATCH] * 6 + [2], (8,), 4, seed=seed)
    if poison is not None:
        data = batches[5][0].asnumpy().copy()
        data[0, 0] = poison
        batches[5] = (Tensor(data), batches[5][1])
    return batches


class Outputs(Callback):
    """Every micro-step's ``net_outputs`` as a float: the Cell's output, as callbacks see it."""

    def __init__(self):
        self.values = []

    def on_train_step_end(self, run_context):
        self.values.append(float(run_context.original_args().net_outputs.asnumpy()))


def train_cell(network, optimizer, dataset, epochs, mini_steps, amp_level="O0", callbacks=(), **options):
    compute = network if amp_level == "O0" else amp.auto_mixed_precision(network, amp_level)
    cell = GradientAccumulationCell(nn.WithLossCell(compute, LOSS), optimizer, mini_steps,
                                    micro_batches_per_epoch=dataset.get_dataset_size(), **options)
    Model(cell).train(epochs, dataset, callbacks=list(callbacks), dataset_sink_mode=False)
    return cell


def assert_same_bits(cell, driver):
    ours = {p.name: p.asnumpy() for p in cell.optimizer.get_parameters()}
    theirs = {p.name: p.asnumpy() for p in driver.optimizer.get_parameters()}
    assert sorted(ours) == sorted(theirs)
    for name in theirs:  # the weights, moments, global_step and learning rate
        np.testing.assert_array_equal(ours[name], theirs[name], err_msg=f"{name}: the Cell vs the three-Cell loop")


@pytest.mark.parametrize("remainder", ["flush", "drop"])
@pytest.mark.parametrize("optimizer_name", ["momentum", "adam"])
@pytest.mark.parametrize("mini_steps", [1, 2, 4])
def test_model_train_is_bit_identical_to_the_three_cell_loop(mini_steps, optimizer_name, remainder):
    make_optimizer = OPTIMIZERS[optimizer_name]
    batches = seven_micro_batches()
    network = MLP()
    twin_network = twin(MLP, network)
    outputs = Outputs()
    cell = train_cell(network, make_optimizer(network.trainable_params()), dataset_of(batches), 2, mini_steps,
                      callbacks=[outputs], remainder=remainder)
    driver = GradientAccumulation(twin_network, LOSS, make_optimizer(twin_network.trainable_params()))
    history = driver.train_process(2, dataset_of(batches), mini_steps=mini_steps, remainder=remainder,
                                   save=NO_CKPT)

    assert history, "the three-Cell loop made no update"
    assert_same_bits(cell, driver)
    assert [int(p.asnumpy()) for p in (cell.buffer.window_micro_steps, cell.epoch_micro_batch)] == [0, 0]
    # The output at each update's micro-step is that window's loss, as the driver recorded it.
    ends = [micro for micro in range(1, 8) if micro % mini_steps == 0 or (micro == 7 and remainder == "flush")]
    at_updates = [outputs.values[7 * epoch + micro - 1] for epoch in range(2) for micro in ends]
    np.testing.assert_allclose(at_updates, [record.loss for record in history], rtol=1e-6)


def test_o2_with_an_overflowing_window_is_bit_identical_and_skips_it():
    batches = seven_micro_batches(poison=1e5)  # finite in float32, inf in float16
    network = MLP()
    twin_network = twin(MLP, network)
    cell = train_cell(network, nn.SGD(network.trainable_params(), 0.1), dataset_of(batches), 1, 2, amp_level="O2",
                      loss_scaler=amp.DynamicLossScaler(2 ** 10, 2, 1))
    driver = GradientAccumulation(twin_network, LOSS, nn.SGD(twin_network.trainable_params(), 0.1), amp_level="O2",
                                  loss_scaler=amp.DynamicLossScaler(2 ** 10, 2, 1))
    history = driver.train_process(1, dataset_of(batches), mini_steps=2, save=NO_CKPT)

    assert [r.skipped for r in history] == [False, False, True, False], "the test needs one skipped window"
    assert_same_bits(cell, driver)
    # scale_window 1: 1024 doubled twice, halved on the overflow, doubled again - the counter matters too.
    assert float(cell.loss_scaler.scale_value.asnumpy()) == history[-1].loss_scale == 2 ** 12
    assert int(cell.loss_scaler.counter.asnumpy()) == int(driver.loss_scaler.counter.asnumpy())


@pytest.mark.parametrize("scaler", [None, "static"])
def test_clipping_is_bit_identical(scaler):
    batches = seven_micro_batches(seed=3)
    network = MLP()
    twin_network = twin(MLP, network)
    make_scaler = (lambda: amp.StaticLossScaler(1024)) if scaler else (lambda: None)
    cell = train_cell(network, nn.SGD(network.trainable_params(), 0.1), dataset_of(batches), 1, 4,
                      clip_grad_norm=0.05, loss_scaler=make_scaler())
    driver = GradientAccumulation(twin_network, LOSS, nn.SGD(twin_network.trainable_params(), 0.1),
                                  clip_grad_norm=0.05, loss_scaler=make_scaler())
    driver.train_process(1, dataset_of(batches), mini_steps=4, save=NO_CKPT)
    assert_same_bits(cell, driver)


def boost_model(network, optimizer, mini_steps):
    config = {"boost": {"mode": "manual", "grad_accumulation": True},
              "grad_accumulation": {"grad_accumulation_step": mini_steps}}
    return Model(network, LOSS, optimizer, boost_level="O1", boost_config_dict=config)


def test_an_update_equals_one_step_on_the_concatenated_window_and_boost_does_not():
    # 6 micro-batches an epoch, mini_steps 4: each epoch ends mid-window.
    batches = micro_batches([BATCH] * 6, (8,), 4, seed=2)
    network = MLP()
    reference, boosted = twin(MLP, network), twin(MLP, network)
    train_cell(network, nn.Momentum(network.trainable_params(), 0.1, 0.9), dataset_of(batches), 2, 4)
    expected = reference_steps(reference, nn.Momentum(reference.trainable_params(), 0.1, 0.9),
                               [batches[:4], batches[4:]] * 2)
    actual = params_of(network)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=RTOL, atol=ATOL, err_msg=name)

    # Control: boost's accumulation carries the partial window into the next epoch.
    boost_model(boosted, nn.Momentum(boosted.trainable_params(), 0.1, 0.9), 4).train(2, dataset_of(batches),
                                                                                     dataset_sink_mode=False)
    leaked = params_of(boosted)
    assert not all(np.allclose(leaked[n], expected[n], rtol=RTOL, atol=ATOL) for n in expected), \
        "boost matched the concatenated steps: the control cannot tell a leaking window apart"


def test_loss_monitor_prints_one_line_per_update_with_the_window_loss(capsys):
    batches = micro_batches([BATCH] * 8, (8,), 4, seed=4)  # 8 = 2 windows of 4: LossMonitor(4) lines up
    network = MLP()
    reference = twin(MLP, network)
    train_cell(network, nn.Momentum(network.trainable_params(), 0.1, 0.9), dataset_of(batches), 2, 4,
               callbacks=[LossMonitor(per_print_times=4)])
    printed = re.findall(r"^epoch: (\d+) step: (\d+), loss is (\S+)$", capsys.readouterr().out, re.MULTILINE)
    assert [(int(e), int(s)) for e, s, _ in printed] == [(1, 4), (1, 8), (2, 4), (2, 8)]

    # The reference: each window's loss by one forward pass on its concatenation, before its step.
    step = nn.TrainOneStepCell(nn.WithLossCell(reference, LOSS), nn.Momentum(reference.trainable_params(), 0.1, 0.9))
    window_losses, last_micro_batch_losses = [], []
    for window in [batches[:4], batches[4:]] * 2:
        window_losses.append(float(LOSS(reference(concat(window)[0]), concat(window)[1]).asnumpy()))
        last_micro_batch_losses.append(float(LOSS(reference(window[-1][0]), window[-1][1]).asnumpy()))
        step(*concat(window))
    values = [float(loss) for _, _, loss in printed]
    np.testing.assert_allclose(values, window_losses, rtol=RTOL)
    # Control: the last micro-batch's own loss is another number, so the comparison can fail.
    assert not np.allclose(values, last_micro_batch_losses, rtol=RTOL)


def test_a_model_checkpoint_written_mid_window_resumes_exactly(tmp_path):
    # 7 micro-batches an epoch, mini_steps 4, Adam and O2 with a dynamic scaler whose window (2) makes the
    # counter matter: a checkpoint every 5 micro-steps lands mid-window (epoch 1 step 5, epoch 2 step 3).
    batches = seven_micro_batches(seed=5)
    options = dict(mini_steps=4, amp_level="O2")
    make_optimizer = OPTIMIZERS["adam"]
    network = MLP()
    resumed_network, bare_network = twin(MLP, network), twin(MLP, network)
    saver = ModelCheckpoint("accum", str(tmp_path), CheckpointConfig(save_checkpoint_steps=5, keep_checkpoint_max=9))
    train_cell(network, make_optimizer(network.trainable_params()), dataset_of(batches), 3, callbacks=[saver],
               loss_scaler=amp.DynamicLossScaler(2 ** 10, 2, 2), **options)
    uninterrupted = params_of(network)
    assert (tmp_path / "accum-2_3.ckpt").exists(), sorted(p.name for p in tmp_path.iterdir())

    fresh = GradientAccumulationCell(
        nn.WithLossCell(amp.auto_mixed_precision(resumed_network, "O2"), LOSS),
        make_optimizer(resumed_network.trainable_params()), 4, micro_batches_per_epoch=7,
        loss_scaler=amp.DynamicLossScaler(2 ** 10, 2, 2))
    not_loaded, _ = ms.load_param_into_net(fresh, ms.load_checkpoint(str(tmp_path / "accum-2_3.ckpt")))
    assert not_loaded == [], not_loaded
    dataset = dataset_of(batches)
    dataset.set_init_step(10)  # MindSpore's resume cursor: the global micro-batch the checkpoint was taken at
    Model(fresh).train(3, dataset, initial_epoch=10 // 7, dataset_sink_mode=False)
    for name, value in uninterrupted.items():
        np.testing.assert_array_equal(params_of(resumed_network)[name], value, err_msg=f"{name} after the resume")

    # Control: the same resume from the bare network alone (no buffer, moments or scaler) does not match.
    ms.load_param_into_net(bare_network, ms.load_checkpoint(str(tmp_path / "accum-2_3.ckpt")))
    dataset = dataset_of(batches)
    dataset.set_init_step(10)
    bare = GradientAccumulationCell(nn.WithLossCell(amp.auto_mixed_precision(bare_network, "O2"), LOSS),
                                    make_optimizer(bare_network.trainable_params()), 4, micro_batches_per_epoch=7,
                                    loss_scaler=amp.DynamicLossScaler(2 ** 10, 2, 2))
    Model(bare).train(3, dataset, initial_epoch=1, dataset_sink_mode=False)
    assert not all(np.array_equal(params_of(bare_network)[n], v) for n, v in uninterrupted.items())


def test_fit_validates_each_epoch_and_early_stopping_and_time_monitor_fit(capsys):
    batches = micro_batches([BATCH] * 6, (8,), 4, seed=6)
    valid = micro_batches([5, 5], (8,), 4, seed=7)
    network = MLP()
    reference = twin(MLP, network)
    cell = GradientAccumulationCell(nn.WithLossCell(network, LOSS), nn.Momentum(network.trainable_params(), 0.1, 0.9),
                                    4, micro_batches_per_epoch=6)
    # eval_indexes: WithEvalCell returns (loss, logits, label); Model needs telling with a train Cell of its own.
    model = Model(cell, eval_network=nn.WithEvalCell(network, LOSS), metrics={"loss": nn.Loss()},
                  eval_indexes=[0, 1, 2])
    # Epoch 1 improves on infinity; no later epoch improves by min_delta, so patience 1 stops after epoch 2 of 3.
    stop = EarlyStopping(monitor="eval_loss", patience=1, min_delta=1e9)
    model.fit(3, dataset_of(batches), valid_dataset=dataset_of(valid, batch=5), callbacks=[stop, TimeMonitor()])

    assert stop.stopped_epoch == 2
    expected = reference_steps(reference, nn.Momentum(reference.trainable_params(), 0.1, 0.9),
                               [batches[:4], batches[4:]] * 2)
    for name, value in params_of(network).items():  # exactly two epochs: four updates
        np.testing.assert_allclose(value, expected[name], rtol=RTOL, atol=ATOL, err_msg=name)
    loss = float(LOSS(reference(concat(valid)[0]), concat(valid)[1]).asnumpy())
    assert re.search(r"Train epoch time: [\d.]+ ms", capsys.readouterr().out)
    np.testing.assert_allclose(model.eval(dataset_of(valid, batch=5))["loss"], loss, rtol=RTOL)


def test_early_stopping_restores_the_best_epochs_weights_into_the_train_cell():
    """Reference: two concatenated-window steps (epoch 1, the best), after training has stopped in epoch 2."""
    batches = micro_batches([BATCH] * 6, (8,), 4, seed=6)
    valid = micro_batches([5, 5], (8,), 4, seed=7)
    network = MLP()
    reference = twin(MLP, network)
    cell = GradientAccumulationCell(nn.WithLossCell(network, LOSS), nn.Momentum(network.trainable_params(), 0.1, 0.9),
                                    4, micro_batches_per_epoch=6)
    model = Model(cell, eval_network=nn.WithEvalCell(network, LOSS), metrics={"loss": nn.Loss()},
                  eval_indexes=[0, 1, 2])
    stop = EarlyStopping(monitor="eval_loss", patience=1, min_delta=1e9, restore_best_weights=True)
    model.fit(3, dataset_of(batches), valid_dataset=dataset_of(valid, batch=5), callbacks=[stop])
    assert stop.stopped_epoch == 2
    expected = reference_steps(reference, nn.Momentum(reference.trainable_params(), 0.1, 0.9),
                               [batches[:4], batches[4:]])
    for name, value in params_of(network).items():
        np.testing.assert_allclose(value, expected[name], rtol=RTOL, atol=ATOL, err_msg=name)
    assert int(cell.buffer.window_micro_steps.asnumpy()) == 0, "the restored buffer is an epoch's end: empty"


def test_without_micro_batches_per_epoch_it_warns_and_windows_run_across_epochs(caplog):
    """Reference: concatenated-window steps whose windows straddle the epochs: 7 micro-batches, mini_steps 4."""
    batches = seven_micro_batches(seed=8)
    network = MLP()
    reference, control = twin(MLP, network), twin(MLP, network)
    with caplog.at_level(logging.WARNING, logger="mindspore_accum"):
        cell = GradientAccumulationCell(nn.WithLossCell(network, LOSS), nn.SGD(network.trainable_params(), 0.1), 4)
    assert [r.getMessage() for r in caplog.records] == [
        "micro_batches_per_epoch is None: windows run on across epochs; pass "
        "micro_batches_per_epoch=dataset.get_dataset_size() to end each epoch's last window"]
    Model(cell).train(4, dataset_of(batches), dataset_sink_mode=False)  # 28 micro-batches: 7 full windows
    stream = batches * 4
    expected = reference_steps(reference, nn.SGD(reference.trainable_params(), 0.1),
                               [stream[start:start + 4] for start in range(0, 28, 4)])
    for name, value in params_of(network).items():
        np.testing.assert_allclose(value, expected[name], rtol=RTOL, atol=ATOL, err_msg=name)
    # Control: windows cut at each epoch's end (a flushed 3) are other updates.
    cut = reference_steps(control, nn.SGD(control.trainable_params(), 0.1), [batches[:4], batches[4:]] * 4)
    assert not all(np.allclose(params_of(network)[n], cut[n], rtol=RTOL, atol=ATOL) for n in cut)


def test_a_window_that_is_not_finite_outputs_nan_and_loss_monitor_stops():
    batches = seven_micro_batches(poison=np.nan)
    network = MLP()
    before = params_of(network)
    with pytest.raises(ValueError, match="loss is NAN or INF"):
        train_cell(network, nn.SGD(network.trainable_params(), 0.1), dataset_of(batches), 1, 4,
                   callbacks=[LossMonitor(1)])
    after = params_of(network)
    assert all(not np.array_equal(after[n], before[n]) for n in before), "the first window was not applied"
    assert all(np.isfinite(v).all() for v in after.values()), "the non-finite window reached the weights"


@pytest.mark.parametrize("arguments, message", [
    (dict(mini_steps=0), "mini_steps must be a whole number >= 1, got 0"),
    (dict(remainder="keep"), "remainder must be one of 'flush', 'drop', got 'keep'"),
    (dict(micro_batches_per_epoch=2.5), "micro_batches_per_epoch must be a whole number >= 1, got 2.5"),
    (dict(loss="sum"), "the loss's reduction must be 'mean', got 'sum'"),
])
def test_bad_arguments_are_refused_in_one_line(arguments, message):
    network = MLP()
    loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction=arguments.pop("loss", "mean"))
    with pytest.raises((ValueError, TypeError)) as error:
        GradientAccumulationCell(nn.WithLossCell(network, loss), nn.SGD(network.trainable_params(), 0.1), **arguments)
    assert str(error.value).startswith(message), str(error.value)


def test_batchnorm_is_named_in_one_warning_and_groupless_networks_get_none(caplog):
    for batchnorm in (True, False):
        network = MLP(batchnorm=batchnorm)
        with caplog.at_level(logging.WARNING, logger="mindspore_accum"):
            caplog.clear()
            GradientAccumulationCell(nn.WithLossCell(network, LOSS), nn.SGD(network.trainable_params(), 0.1), 4,
                                     micro_batches_per_epoch=4)
        warned = [r.getMessage() for r in caplog.records if "BatchNorm" in r.getMessage()]
        assert len(warned) == int(batchnorm), warned
        if batchnorm:
            assert "1 BatchNorm layers (_backbone.bn)" in warned[0] and "convert_bn_to_gn" in warned[0], warned[0]
