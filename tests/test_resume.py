"""Training state: a run stopped by a signal and resumed ends where an uninterrupted run ends.

The reference is the same training run without the interruption; the
tolerance is the issue's rtol 1e-6, atol 0 (the runs are in fact the same
float operations on the same data, so they agree to the bit).
"""

import dataclasses
import os
import signal

import mindspore as ms
import numpy as np
import pytest
from mindspore import dataset as ds
from mindspore import nn

from mindspore_accum import (
    CheckpointError,
    DriverCallback,
    GradientAccumulation,
    NonFiniteError,
    SaveConfig,
    TrainingInterrupted,
    load_network_checkpoint,
    read_training_state,
    save_network_checkpoint,
)
from mindspore_accum.run.signals import StopSignals
from mindspore_accum.run.state import StateDirectory
from nets import LOSS, MLP, params_of

SAMPLES, BATCH, MINI_STEPS, EPOCHS, DATA_SEED = 40, 4, 4, 3, 5  # 10 micro-batches an epoch: windows 4, 4, 2

SAVE_OPTIONS = [field.name for field in dataclasses.fields(SaveConfig)]
OPTIMIZERS = {
    "momentum": lambda params: nn.Momentum(params, 0.1, 0.9),
    # Adam carries the most state: two moments, beta powers and a step counter.
    "adam": lambda params: nn.Adam(params, 0.01),
}


def arrays():
    rng = np.random.default_rng(21)
    return rng.standard_normal((SAMPLES, 8)).astype(np.float32), rng.integers(0, 4, SAMPLES).astype(np.int32)


def shuffled_dataset(batch=BATCH):
    """A shuffling mindspore.dataset pipeline: resuming must reproduce each epoch's order."""
    features, labels = arrays()
    ds.config.set_seed(DATA_SEED)
    rows = lambda: ((features[i], labels[i]) for i in range(SAMPLES))  # noqa: E731
    return ds.GeneratorDataset(rows, ["data", "label"], shuffle=True).batch(batch)


def driver(optimizer="adam", init_seed=0, network_cls=MLP):
    """``optimizer`` is a key of OPTIMIZERS, with "-O2" for mixed precision and its dynamic loss scaler."""
    ms.set_seed(init_seed)  # a resumed run starts from other weights: the state must overwrite them all
    network = network_cls()
    name, _, amp_level = optimizer.partition("-")
    return GradientAccumulation(network, LOSS, OPTIMIZERS[name](network.trainable_params()),
                                amp_level=amp_level or "O0")


class SignalAt(DriverCallback):
    """Sends ``signum`` to this process after micro-batch ``at`` = (epoch, micro-batch), or at an epoch's end."""

    def __init__(self, at, signum=signal.SIGINT):
        self.at, self.signum = at, signum

    def micro_step(self, epoch, micro_batch, loss, samples):
        if (epoch, micro_batch) == self.at:
            os.kill(os.getpid(), self.signum)

    def epoch_end(self, epoch, records):
        if (epoch, "end") == self.at:
            os.kill(os.getpid(), self.signum)


def train(model, state_dir, **kwargs):
    """train_process over the shuffled dataset; ``kwargs`` may mix its arguments and SaveConfig's."""
    saving = {name: kwargs.pop(name) for name in SAVE_OPTIONS if name in kwargs}
    return model.train_process(EPOCHS, kwargs.pop("dataset", None) or shuffled_dataset(), mini_steps=MINI_STEPS,
                               save=SaveConfig(**{"ckpt_path": None, "state_dir": state_dir, **saving}),
                               seed=DATA_SEED, **kwargs)


def summary(records):
    return [(r.epoch, r.update, r.micro_batches, r.samples, r.loss, r.total_updates, r.samples_seen, r.skipped,
             r.loss_scale) for r in records]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    runs = {}
    for name in (*OPTIMIZERS, "adam-O2"):
        model = driver(name)
        history = train(model, tmp_path_factory.mktemp("uninterrupted"))
        runs[name] = params_of(model.network), summary(history)
    return runs


@pytest.mark.parametrize("optimizer, at, signum", [
    ("adam", (1, 6), signal.SIGINT),       # mid-window: the buffer holds 2 micro-batches
    ("momentum", (1, 6), signal.SIGTERM),
    ("adam", (2, 4), signal.SIGINT),       # just after an update: the buffer is empty
    ("adam", (2, 10), signal.SIGINT),      # after the epoch's last micro-batch: its step flushed, before the epoch end
    ("momentum", (1, "end"), signal.SIGTERM),  # after the epoch's end
    ("adam-O2", (2, 6), signal.SIGINT),    # float16 compute: the loss scaler's state comes back too
])
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, uninterrupted, optimizer, at, signum):
    expected_params, expected_history = uninterrupted[optimizer]
    first = driver(optimizer)
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    with pytest.raises(TrainingInterrupted) as stopped:
        train(first, tmp_path, callbacks=[SignalAt(at, signum)])
    assert stopped.value.signum == signum and os.path.isfile(stopped.value.state_path), stopped.value
    assert signal.getsignal(signal.SIGINT) is before  # handlers are given back
    state, tensors = read_training_state(stopped.value.state_path)
    assert (state.epoch, state.micro_batch if at[1] != "end" else "end") == at, state
    # The epoch's last micro-batch (10) closes its window in its own step: the buffer is then empty too.
    open_window = 0 if at[1] in ("end", 10) else at[1] % MINI_STEPS
    assert int(tensors["buffer/window_micro_steps"].asnumpy()) == open_window, state

    resumed = driver(optimizer, init_seed=123)
    history = train(resumed, tmp_path, resume=stopped.value.state_path)
    actual = params_of(resumed.network)
    for name, value in expected_params.items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-6, atol=0, err_msg=f"{name}, stopped at {at}")
    windows_done = (state.epoch - 1) * 3 + len(state.epoch_records)  # 3 windows an epoch; skipped ones count
    assert summary(history) == expected_history[windows_done:], f"stopped at {at} after {windows_done} windows"
    assert resumed.total_updates == expected_history[-1][5]


def test_resume_from_a_directory_takes_the_newest_and_keep_prunes_the_oldest(tmp_path, uninterrupted):
    first = driver()
    with pytest.raises(TrainingInterrupted):
        train(first, tmp_path, save_every=1, keep_checkpoints=2, callbacks=[SignalAt((2, 7))])
    files = sorted(os.listdir(tmp_path))
    # Updates at micro-batches 4 and 8 of epoch 2 were saved; the signal's state (2, 7) came between them.
    assert files == ["state-2_4.ckpt", "state-2_7.ckpt"], files
    resumed = driver(init_seed=7)
    train(resumed, tmp_path, resume=tmp_path)
    actual = params_of(resumed.network)
    for name, value in uninterrupted["adam"][0].items():
        np.testing.assert_allclose(actual[name], value, rtol=1e-6, atol=0, err_msg=name)


class OtherNet(MLP):
    """Same parameters as MLP, another model."""


@pytest.mark.parametrize("change, fragment", [
    (dict(mini_steps=2), "mini_steps=4 in the state vs 2 in this run"),
    (dict(dataset="batch 5"), "batch_size=4 in the state vs 5 in this run"),
    (dict(seed=6), "seed=5 in the state vs 6 in this run"),
    (dict(remainder="drop"), "remainder='flush' in the state vs 'drop' in this run"),
    (dict(network_cls=OtherNet), "model='MLP' in the state vs 'OtherNet' in this run"),
    (dict(optimizer="momentum"), "optimizer='Adam' in the state vs 'Momentum' in this run"),
])
def test_a_state_that_does_not_fit_is_refused_naming_the_difference(tmp_path, change, fragment):
    with pytest.raises(TrainingInterrupted) as stopped:
        train(driver(), tmp_path, callbacks=[SignalAt((1, 5))])
    model = driver(change.pop("optimizer", "adam"), init_seed=3, network_cls=change.pop("network_cls", MLP))
    before = params_of(model.network)
    if change.pop("dataset", None):
        change["dataset"] = shuffled_dataset(batch=5)
    mini_steps = change.pop("mini_steps", MINI_STEPS)
    with pytest.raises(CheckpointError, match="does not fit this run") as refused:
        model.train_process(EPOCHS, change.pop("dataset", None) or shuffled_dataset(), mini_steps=mini_steps,
                            save=SaveConfig(ckpt_path=None, resume=stopped.value.state_path),
                            **{"seed": DATA_SEED, **change})
    assert fragment in str(refused.value), str(refused.value)
    after = params_of(model.network)
    assert all(np.array_equal(before[name], after[name]) for name in before), "a refused state changed the network"


@pytest.mark.parametrize("kind", ["training state", "model checkpoint"])
def test_a_file_truncated_at_random_lengths_is_refused_and_never_half_loaded(tmp_path, kind):
    model = driver()
    if kind == "training state":
        with pytest.raises(TrainingInterrupted) as stopped:
            train(model, tmp_path / "states", callbacks=[SignalAt((1, 6))])
        good = stopped.value.state_path
    else:
        good = save_network_checkpoint(model.network, str(tmp_path / "model.ckpt"))
    data = open(good, "rb").read()
    rng = np.random.default_rng(0)
    lengths = sorted({0, 1, len(data) // 2, len(data) - 1, *rng.integers(1, len(data), 25).tolist()})
    for length in lengths:
        target = driver(init_seed=9)
        before = params_of(target.network)
        cut = tmp_path / f"cut_{length}.ckpt"
        cut.write_bytes(data[:length])
        with pytest.raises(CheckpointError) as refused:
            if kind == "training state":
                target.train_process(EPOCHS, shuffled_dataset(), mini_steps=MINI_STEPS,
                                     save=SaveConfig(ckpt_path=None, resume=str(cut)), seed=DATA_SEED)
            else:
                load_network_checkpoint(target.network, str(cut))
        assert str(cut) in str(refused.value), f"length {length}: {refused.value}"
        after = params_of(target.network)
        assert all(np.array_equal(before[name], after[name]) for name in before), f"half-loaded at length {length}"


@pytest.mark.parametrize("poison, message", [
    # A NaN input: the ReLU maps it to 0 on the way forward, so the loss stays finite, but the
    # first layer's weight gradient is NaN - caught once per window, on the accumulated gradient.
    (np.nan, r"the window.s accumulated gradient is not finite \(NaN or inf\) at epoch 1, micro-batch 8 "
             r"\(in update 2 of the epoch, micro-batches 5-8\)"),
    # A huge input: the logits overflow, so the loss itself is inf - read from the buffer when the window closes.
    (3e38, r"the window.s loss is (inf|nan) at epoch 1, micro-batch 8 \(in update 2 of the epoch, micro-batches 5-8\)"),
])
def test_divergence_stops_with_its_position_and_keeps_the_last_good_state(tmp_path, poison, message):
    model = driver("momentum")
    good_ckpt = save_network_checkpoint(model.network, str(tmp_path / "model.ckpt"))
    good_bytes = open(good_ckpt, "rb").read()
    # shuffle=False here, so sample 25 is in micro-batch 7 of epoch 1 (samples 24-27).
    features, labels = arrays()
    features[25] = poison
    rows = lambda: ((features[i], labels[i]) for i in range(SAMPLES))  # noqa: E731
    dataset = ds.GeneratorDataset(rows, ["data", "label"], shuffle=False).batch(BATCH)
    with pytest.raises(NonFiniteError, match=message) as stopped:
        model.train_process(EPOCHS, dataset, mini_steps=MINI_STEPS,
                            save=SaveConfig(ckpt_path=good_ckpt, state_dir=tmp_path / "states", save_every=1))
    assert "state-1_4.ckpt, is kept" in str(stopped.value), stopped.value
    assert os.listdir(tmp_path / "states") == ["state-1_4.ckpt"]
    state, tensors = read_training_state(tmp_path / "states")
    assert state.progress.total_updates == 1 and all(np.isfinite(t.asnumpy()).all() for t in tensors.values())
    assert all(np.isfinite(p.asnumpy()).all() for p in model.network.get_parameters()), "the update was applied"
    assert open(good_ckpt, "rb").read() == good_bytes, "the good model checkpoint was overwritten"


def test_resuming_a_finished_run_only_writes_the_checkpoint_and_too_few_epochs_are_refused(tmp_path,
                                                                                           uninterrupted):
    train(driver(), tmp_path / "states")
    finished = driver(init_seed=4)
    assert finished.train_process(EPOCHS, shuffled_dataset(), mini_steps=MINI_STEPS, seed=DATA_SEED,
                                  save=SaveConfig(ckpt_path=str(tmp_path / "final.ckpt"),
                                                  resume=tmp_path / "states")) == []
    restored = MLP()
    load_network_checkpoint(restored, str(tmp_path / "final.ckpt"))
    for name, value in uninterrupted["adam"][0].items():
        np.testing.assert_array_equal(params_of(restored)[name], value, err_msg=name)
    with pytest.raises(ValueError, match=r"epoch=2 but the state .*state-3_10.ckpt is already at epoch 3, "
                                         r"micro-batch 10 \(end of epoch\), after 9 updates: pass an epoch of "
                                         r"at least 3"):
        driver().train_process(2, shuffled_dataset(), mini_steps=MINI_STEPS, seed=DATA_SEED,
                               save=SaveConfig(ckpt_path=None, resume=tmp_path / "states"))


def test_bad_state_arguments_are_refused_before_training(tmp_path):
    model = driver()
    with pytest.raises(ValueError, match="save_every=2 needs a state_dir"):
        model.train_process(1, shuffled_dataset(), save=SaveConfig(ckpt_path=None, save_every=2))
    with pytest.raises(ValueError, match="keep_checkpoints must be"):
        StateDirectory(tmp_path, keep=0)
    with pytest.raises(CheckpointError, match="is a model checkpoint \\(the network alone"):
        bare = save_network_checkpoint(model.network, str(tmp_path / "model.ckpt"))
        model.train_process(1, shuffled_dataset(), save=SaveConfig(ckpt_path=None, resume=bare))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="is a directory with no state-\\*.ckpt training state"):
        model.train_process(1, shuffled_dataset(), save=SaveConfig(ckpt_path=None, resume=tmp_path / "empty"))


def test_a_second_signal_aborts_at_once_and_handlers_are_given_back():
    before = signal.getsignal(signal.SIGTERM)
    before_int = signal.getsignal(signal.SIGINT)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.signum == signal.SIGTERM  # recorded, not acted on: the micro-step in flight finishes
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) is before and signal.getsignal(signal.SIGINT) is before_int
