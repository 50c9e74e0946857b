"""A global batch of any size, and batch schedules: each window is exactly its samples.

Reference: ``nn.TrainOneStepCell`` on each window's samples concatenated, windows cut by hand from the
sample order (NumPy slicing), from the same initial weights. Tolerance as test_equivalence (rtol 1e-5,
atol 1e-6): the same gradient summed in another order. Controls: windows cut at the micro-batch (128
samples) instead of 100, and a ramp that counts micro-batches instead of samples, must differ.
"""

import dataclasses
import os
import signal

import mindspore as ms
import numpy as np
import pytest
from mindspore import Model, Tensor, nn

from mindspore_accum import (
    DriverCallback,
    GradientAccumulation,
    GradientAccumulationCell,
    SaveConfig,
    TrainingInterrupted,
)
from mindspore_accum.core.batch_size import BatchSchedule, rank_shares, resolve_batch_sizes
from mindspore_accum.data.windowed_data import WindowedDataset
from nets import LOSS, MLP, NO_CKPT, params_of, reference_steps, twin

RTOL, ATOL = 1e-5, 1e-6


def samples(count, seed=0):
    """``count`` single samples of the MLP's (8 features, 4 classes), as batches of one."""
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((count, 8)).astype(np.float32)
    labels = rng.integers(0, 4, count).astype(np.int32)
    return [(data[i:i + 1], labels[i:i + 1]) for i in range(count)], data, labels


def windows_by_hand(data, labels, sizes):
    """The reference's windows: consecutive slices of the sample order, one (data, label) each."""
    out, start = [], 0
    for size in sizes:
        out.append([(Tensor(data[start:start + size]), Tensor(labels[start:start + size]))])
        start += size
    return out


def momentum(params):
    return nn.Momentum(params, learning_rate=0.1, momentum=0.9)


def assert_close(actual, expected, context):
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=RTOL, atol=ATOL,
                                   err_msg=f"{context}: {name}")


def max_difference(actual, expected):
    return max(float(np.abs(actual[name] - expected[name]).max()) for name in expected)


# The plan, by hand.

def test_triples_resolve_as_deepspeed_and_exactly():
    assert resolve_batch_sizes(100, 32).mini_steps == 4
    assert resolve_batch_sizes(128, 32, ranks=2).mini_steps == 2
    assert resolve_batch_sizes(None, 32, 4, ranks=2).global_batch_size == 256
    assert resolve_batch_sizes(100, None, 4).micro_batch_size == 25
    assert resolve_batch_sizes(100, 32, 4).global_batch_size == 100


@pytest.mark.parametrize("triple, words", [
    ((100, 32, 3), "contradict each other over 1 rank(s): 100 samples in micro-batches of 32 x 1 take 4"),
    ((16, 32, None), "global_batch_size 16 is below the micro-batch, micro_batch_size 32"),
    ((None, 32, None), "give two of"),
])
def test_bad_triples_are_refused_with_the_numbers(triple, words):
    with pytest.raises(ValueError) as refused:
        resolve_batch_sizes(*triple)
    assert words in str(refused.value)


def test_the_plan_cuts_each_window_at_its_global_batch():
    rows, _, _ = samples(250)
    windowed = WindowedDataset(rows, 32, 100)
    plan = windowed.plan(1)
    assert plan.windows == (100, 100, 50) and plan.dropped == 0
    sizes = [rows for _, rows, _, _ in plan.micro_batches(0, 1, 32)]
    assert sizes == [32, 32, 32, 4, 32, 32, 32, 4, 32, 18]
    assert WindowedDataset(rows, 32, 100, remainder="drop").plan(1).windows == (100, 100)
    # Two ranks: each window dealt 50 and 50, a rank's share cut at 32.
    two = plan.micro_batches(1, 2, 32)
    assert [(first, count) for first, count, _, _ in two[:2]] == [(50, 32), (82, 18)]
    assert rank_shares(101, 2) == [51, 50]


def test_a_ramp_grows_by_samples_consumed_as_megatron():
    schedule = BatchSchedule(128, rampup=(32, 32, 192))  # 3 increments, one every 64 samples
    assert [schedule.window_size(1, consumed) for consumed in (0, 63, 64, 128, 191, 192, 10 ** 6)] == \
        [32, 32, 64, 96, 96, 128, 128]
    rows, _, _ = samples(400)
    # 32 at 0, 64 at 32 (not yet 64 consumed: 32), ...: each window sized at its start.
    assert WindowedDataset(rows, 32, schedule=schedule).plan(1).windows == (32, 32, 64, 96, 128, 48)


def test_a_schedule_by_epoch_as_lightning():
    schedule = BatchSchedule.from_mini_steps({1: 1, 3: 4}, micro_batch_size=8)
    assert [schedule.window_size(epoch, 0) for epoch in (1, 2, 3, 9)] == [8, 8, 32, 32]


@pytest.mark.parametrize("kwargs, words", [
    ({"global_batch_size": 128, "rampup": (128, 32, 100)}, "is not below the global batch 128: a ramp must increase"),
    ({"global_batch_size": 128, "rampup": (32, 40, 100)}, "does not step from 32"),
    ({"by_epoch": {1: 8, 3: 4, 2: 16}}, "are not increasing"),
    ({"by_epoch": {2: 8}}, "must say the global batch of epoch 1"),
    ({"global_batch_size": 2.5}, "whole number"),
])
def test_bad_schedules_are_refused(kwargs, words):
    with pytest.raises((ValueError, TypeError)) as refused:
        BatchSchedule(**kwargs)
    assert words in str(refused.value)


def test_a_windowed_dataset_takes_one_of_the_global_batch_and_a_schedule():
    rows, _, _ = samples(10)
    for kwargs in ({}, {"global_batch_size": 4, "schedule": BatchSchedule(4)}):
        with pytest.raises(ValueError, match="pass one of global_batch_size"):
            WindowedDataset(rows, 2, **kwargs)
    with pytest.raises(ValueError, match="below the 3 ranks"):
        WindowedDataset(rows, 2, 2, ranks=3)


# Against the concatenated step.

def test_a_window_of_100_in_32_32_32_4_equals_one_step_on_the_100_samples():
    rows, data, labels = samples(100)
    accumulated = MLP()
    reference = twin(MLP, accumulated)
    control = twin(MLP, accumulated)
    driver = GradientAccumulation(accumulated, LOSS, momentum(accumulated.trainable_params()))
    history = driver.train_process(1, WindowedDataset(rows, 32, 100), save=NO_CKPT)
    assert [(r.micro_batches, r.samples, r.samples_seen) for r in history] == [(4, 100, 100)]
    expected = reference_steps(reference, momentum(reference.trainable_params()),
                               windows_by_hand(data, labels, [100]))
    assert_close(params_of(accumulated), expected, "driver")
    # Control: the window cut at the micro-batch (4 x 32 = 128 samples, here the 100 and 28 more).
    more, _, _ = samples(128)
    more_data = np.concatenate([data, np.concatenate([row[0] for row in more[100:]])])
    more_labels = np.concatenate([labels, np.concatenate([row[1] for row in more[100:]])])
    wrong = reference_steps(control, momentum(control.trainable_params()),
                            windows_by_hand(more_data, more_labels, [128]))
    assert max_difference(params_of(accumulated), wrong) > 100 * ATOL


def test_the_cell_under_model_equals_the_steps_on_each_window():
    rows, data, labels = samples(250)
    accumulated = MLP()
    reference = twin(MLP, accumulated)
    cell = GradientAccumulationCell(nn.WithLossCell(accumulated, LOSS), momentum(accumulated.trainable_params()),
                                    windows_from_data=True)
    windowed = WindowedDataset(rows, 32, 100)
    Model(cell).train(2, windowed.as_dataset(), dataset_sink_mode=False)
    by_hand = windows_by_hand(np.concatenate([data, data]), np.concatenate([labels, labels]), [100, 100, 50] * 2)
    expected = reference_steps(reference, momentum(reference.trainable_params()), by_hand)
    assert_close(params_of(accumulated), expected, "Cell, 2 epochs of 100, 100, 50")


def test_the_cell_takes_a_ramp_on_one_graph():
    rows, data, labels = samples(250)
    accumulated = MLP()
    reference = twin(MLP, accumulated)
    cell = GradientAccumulationCell(nn.WithLossCell(accumulated, LOSS), momentum(accumulated.trainable_params()),
                                    windows_from_data=True)
    windowed = WindowedDataset(rows, 32, schedule=BatchSchedule(128, rampup=(32, 32, 192)))
    Model(cell).train(2, windowed.as_dataset(), dataset_sink_mode=False)
    sizes = [32, 32, 64, 96, 26] + [128, 122]  # epoch 2 opens at 250 consumed: the ramp is over
    expected = reference_steps(reference, momentum(reference.trainable_params()),
                               windows_by_hand(np.concatenate([data, data]), np.concatenate([labels, labels]), sizes))
    assert_close(params_of(accumulated), expected, "Cell, a ramp over 2 epochs")


def test_a_ramp_equals_the_plain_steps_on_its_windows():
    rows, data, labels = samples(400)
    schedule = BatchSchedule(128, rampup=(32, 32, 192))
    accumulated = MLP()
    reference, control = twin(MLP, accumulated), twin(MLP, accumulated)
    driver = GradientAccumulation(accumulated, LOSS, momentum(accumulated.trainable_params()))
    history = driver.train_process(1, WindowedDataset(rows, 32, schedule=schedule), save=NO_CKPT)
    sizes = [32, 32, 64, 96, 128, 48]
    assert [r.samples for r in history] == sizes
    # One graph per micro-batch shape (32, and 16 of the last 48), not one per window.
    assert sum(len(step.compile_cache) for step in driver._steps.values()) == 2
    assert [r.samples_seen for r in history] == list(np.cumsum(sizes))
    expected = reference_steps(reference, momentum(reference.trainable_params()),
                               windows_by_hand(data, labels, sizes))
    assert_close(params_of(accumulated), expected, "ramp")
    # Control: the ramp counted in micro-batches of 32 (one increment every 2 micro-batches, not 64 samples).
    by_micro_batches = [32, 64, 96, 128, 80]
    wrong = reference_steps(control, momentum(control.trainable_params()),
                            windows_by_hand(data, labels, by_micro_batches))
    assert max_difference(params_of(accumulated), wrong) > 100 * ATOL


# Resume: mid-ramp and mid-window, from a shuffled MindSpore pipeline positioned at a sample.

def shuffled_samples(count=60, seed=5):
    """A shuffling mindspore.dataset pipeline of single samples (batches of one)."""
    import mindspore.dataset as ds
    _, data, labels = samples(count, seed=3)
    ds.config.set_seed(seed)
    return ds.NumpySlicesDataset({"data": data, "label": labels}, shuffle=True).batch(1)


class StopAt(DriverCallback):
    """SIGINT after micro-batch ``at`` = (epoch, micro-batch)."""

    def __init__(self, at):
        self.at = at

    def micro_step(self, epoch, micro_batch, loss, samples):
        if (epoch, micro_batch) == self.at:
            os.kill(os.getpid(), signal.SIGINT)


def ramp_run(state_dir, schedule, **kwargs):
    ms.set_seed(kwargs.pop("init_seed", 0))
    network = MLP()
    driver = GradientAccumulation(network, LOSS, nn.Adam(network.trainable_params(), 0.01))
    windowed = WindowedDataset(shuffled_samples(), 8, schedule=schedule)
    history = driver.train_process(3, windowed, save=SaveConfig(ckpt_path=None, state_dir=str(state_dir),
                                                                  resume=kwargs.pop("resume", None)), **kwargs)
    return driver, history


RAMP = BatchSchedule(48, rampup=(16, 16, 96))  # 16 until 48 samples, 32 until 96, then 48; 60 samples an epoch


def test_a_resume_mid_ramp_and_mid_window_is_bit_exact(tmp_path):
    whole, expected = ramp_run(tmp_path / "whole", RAMP)
    # Epoch 1: 16, 16, 16, 12. Epoch 2 starts at 60 samples: 32 (4 micro-batches of 8), then 28 (8, 8, 8, 4) where
    # 48 would not fit: its micro-batch 6 is mid-window.
    assert [r.samples for r in expected] == [16, 16, 16, 12, 32, 28, 48, 12]
    with pytest.raises(TrainingInterrupted) as stopped:
        ramp_run(tmp_path / "cut", RAMP, callbacks=[StopAt((2, 6))])
    resumed, history = ramp_run(tmp_path / "cut", RAMP, init_seed=7, resume=stopped.value.state_path)
    for name, value in params_of(whole.network).items():
        np.testing.assert_array_equal(params_of(resumed.network)[name], value, err_msg=name)
    # The 5 windows before the stop are the first run's; the resumed run makes the rest, records and all.
    assert [dataclasses.astuple(r) for r in history] == [dataclasses.astuple(r) for r in expected[5:]]
    # Control: resumed from weights that were not restored, the run differs.
    other, _ = ramp_run(tmp_path / "other", BatchSchedule(48, rampup=(16, 16, 96)), init_seed=7)
    assert max_difference(params_of(other.network), params_of(whole.network)) > 1e-4


def test_a_resume_that_changes_the_schedule_is_refused_by_name(tmp_path):
    with pytest.raises(TrainingInterrupted) as stopped:
        ramp_run(tmp_path, RAMP, callbacks=[StopAt((1, 3))])
    with pytest.raises(ValueError, match="batch_rampup"):
        ramp_run(tmp_path, BatchSchedule(48, rampup=(16, 32, 96)), resume=stopped.value.state_path)
