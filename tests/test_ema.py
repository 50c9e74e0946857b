"""EMA once per optimizer update, against NumPy.

Reference: the parameters recorded after each update (an ``update``
callback), blended in float64 NumPy from the initial parameters:
``ema = D * ema + (1 - D) * param`` per applied update. Tolerance rtol 1e-5:
float32 blending against float64. Control: the same blend after every
micro-step, as mindcv's TrainStep does under accumulation, differs.
"""

import numpy as np
import pytest
from mindspore import Model, amp, nn
from mindspore import dataset as ds

from mindspore_accum import DriverCallback, GradientAccumulation, GradientAccumulationCell, SaveConfig
from mindspore_accum.run.checkpoint import load_network_checkpoint
from nets import LOSS, MLP, NO_CKPT, micro_batches, params_of, twin

DECAY = 0.8


class AfterEachUpdate(DriverCallback):
    def __init__(self):
        self.params, self.skipped = [], []

    def update(self, record, driver):
        self.params.append(params_of(driver.network))
        self.skipped.append(record.skipped)


def numpy_ema(initial, snapshots, decay=DECAY):
    average = {name: value.astype(np.float64) for name, value in initial.items()}
    for params in snapshots:
        average = {name: decay * average[name] + (1 - decay) * params[name] for name in average}
    return average


def averages(model):
    return {a.name[len("ema."):]: a.asnumpy() for a in model.ema.averages}


def test_the_ema_after_k_updates_equals_numpy_and_a_per_micro_step_ema_does_not():
    batches = micro_batches([4, 4, 4, 4, 4, 4, 2], (8,), 4, seed=1)  # windows of 3, 3 and a flushed 1
    network = MLP()
    initial = params_of(network)
    model = GradientAccumulation(network, LOSS, nn.Momentum(network.trainable_params(), 0.1, 0.9), ema_decay=DECAY)
    seen = AfterEachUpdate()
    model.train_process(2, batches, mini_steps=3, save=NO_CKPT, callbacks=[seen])
    assert len(seen.params) == 6
    expected = numpy_ema(initial, seen.params)
    for name, value in averages(model).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-7, err_msg=name)

    # Control: blending after every micro-step (14 of them) instead of every update (6).
    per_micro_step = numpy_ema(initial, [seen.params[min(i // 3, 5)] for i in range(14)])
    assert not all(np.allclose(averages(model)[n], per_micro_step[n], rtol=1e-3) for n in per_micro_step)


def test_a_skipped_window_leaves_the_ema_as_it_was():
    batches = micro_batches([4] * 6, (8,), 4, seed=2)
    data = batches[3][0].asnumpy().copy()
    data[0, 0] = np.inf  # window 2 (micro-batches 3 and 4... of 2): skipped by the dynamic scaler
    from mindspore import Tensor
    batches[3] = (Tensor(data), batches[3][1])
    network = MLP()
    initial = params_of(network)
    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), 0.1), ema_decay=DECAY,
                                 loss_scaler=amp.DynamicLossScaler(1024, 2, 1000))
    seen = AfterEachUpdate()
    model.train_process(1, batches, mini_steps=2, save=NO_CKPT, callbacks=[seen])
    assert seen.skipped == [False, True, False]
    applied = [params for params, skipped in zip(seen.params, seen.skipped) if not skipped]
    expected = numpy_ema(initial, applied)
    for name, value in averages(model).items():
        np.testing.assert_allclose(value, expected[name], rtol=1e-5, atol=1e-7, err_msg=name)


def test_mid_window_resume_keeps_the_ema_exact(tmp_path):
    import os
    import signal

    from mindspore_accum import TrainingInterrupted

    class InterruptAt(DriverCallback):
        def micro_step(self, epoch, micro_batch, loss, samples):
            if (epoch, micro_batch) == (2, 2):
                os.kill(os.getpid(), signal.SIGINT)

    batches = micro_batches([4] * 7, (8,), 4, seed=3)
    network = MLP()
    resumed_network = twin(MLP, network)

    def run(net, callbacks=(), resume=None, state_dir=None):
        model = GradientAccumulation(net, LOSS, nn.Adam(net.trainable_params(), 0.01), ema_decay=DECAY)
        model.train_process(2, batches, mini_steps=3, callbacks=callbacks,
                            save=SaveConfig(ckpt_path=None, state_dir=state_dir, resume=resume))
        return model

    whole = run(network)
    with pytest.raises(TrainingInterrupted):
        run(resumed_network, [InterruptAt()], state_dir=tmp_path / "states")
    resumed = run(resumed_network, resume=tmp_path / "states", state_dir=tmp_path / "states")
    for name, value in averages(whole).items():
        np.testing.assert_array_equal(averages(resumed)[name], value, err_msg=name)


def test_the_model_checkpoint_holds_the_averages_under_the_networks_names(tmp_path):
    network = MLP()
    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), 0.1), ema_decay=DECAY)
    model.train_process(1, micro_batches([4] * 4, (8,), 4, seed=4), mini_steps=2,
                        save=SaveConfig(ckpt_path=str(tmp_path / "m.ckpt")))
    loaded = load_network_checkpoint(MLP(), tmp_path / "m.ckpt")  # strict: every name, every shape
    for name, value in averages(model).items():
        np.testing.assert_array_equal(params_of(loaded)[name], value, err_msg=name)
    assert not all(np.array_equal(params_of(loaded)[n], v) for n, v in params_of(network).items()), \
        "control: the raw weights are not what was saved"


def test_the_cell_under_model_train_keeps_the_same_ema_as_the_driver():
    batches = micro_batches([4] * 5, (8,), 4, seed=5)
    x = np.concatenate([b[0].asnumpy() for b in batches])
    y = np.concatenate([b[1].asnumpy() for b in batches])
    network = MLP()
    twin_network = twin(MLP, network)
    cell = GradientAccumulationCell(nn.WithLossCell(network, LOSS), nn.SGD(network.trainable_params(), 0.1), 2,
                                    micro_batches_per_epoch=5, ema_decay=DECAY)
    Model(cell).train(2, ds.NumpySlicesDataset({"x": x, "label": y}, shuffle=False).batch(4),
                      dataset_sink_mode=False)
    driver = GradientAccumulation(twin_network, LOSS, nn.SGD(twin_network.trainable_params(), 0.1), ema_decay=DECAY)
    driver.train_process(2, batches, mini_steps=2, save=NO_CKPT)
    for name, value in averages(driver).items():
        np.testing.assert_array_equal(averages(cell)[name], value, err_msg=name)


@pytest.mark.parametrize("decay", [1.0, -0.1, "0.9"])
def test_a_decay_outside_0_1_is_refused(decay):
    network = MLP()
    with pytest.raises(ValueError, match=r"ema_decay must be a number in \[0, 1\)"):
        GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), 0.1), ema_decay=decay)


@pytest.mark.parametrize("script", ["train.py", "train_model.py"])
def test_ema_decay_from_the_command_line_checkpoints_the_average_that_eval_py_scores(tmp_path, tiny_mnist, script):
    """The model checkpoint of either script, with --ema_decay, is the average of the train state's weights."""
    from cli import run_script

    from mindspore_accum import load_network_checkpoint
    from model_zoo_adapters.lenet import LeNet5
    flags = ("--data_path", tiny_mnist, "--batch_size", 8, "--mini_steps", 3, "--epochs", 2, "--ema_decay", 0.5)
    result = run_script(script, *flags, *(("--no_progress", "--eval_every_epoch") if script == "train.py" else ()),
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from mindspore_accum import read_training_state
    if script == "train.py":
        saved, state = tmp_path / "gradient_accumulation.ckpt", tmp_path / "gradient_accumulation_state"
        _, tensors = read_training_state(state)
    else:
        saved = tmp_path / "ckpt" / "lenet-2_8.ckpt"
        _, tensors = read_training_state(tmp_path / "ckpt" / "train" / "train-2_8.ckpt", "train-Cell checkpoint")
    loaded = params_of(load_network_checkpoint(LeNet5(), saved))
    for name, value in loaded.items():
        np.testing.assert_array_equal(value, tensors[f"ema/ema.{name}"].asnumpy(), err_msg=name)
    evaluated = run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path", saved, cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
