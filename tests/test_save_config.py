"""SaveConfig and the training-state record, against values written out by hand.

``SaveConfig`` groups train_process's saving options (issue 14); its refusals
name the argument. The state's JSON record stays one flat object, as states
written before the counters moved into ``Progress`` are: a record typed out
here, in that older form, must read back to the same state.
"""

import json

import pytest
from mindspore import nn

from mindspore_accum import GradientAccumulation, SaveConfig, read_training_state
from mindspore_accum.checkpoint import DEFAULT_CKPT_PATH
from mindspore_accum.training_state import Progress, TrainingState
from nets import LOSS, MLP, micro_batches


def test_the_default_writes_the_tutorials_checkpoint_and_nothing_else():
    config = SaveConfig()
    assert (config.ckpt_path, config.state_dir, config.resume) == (DEFAULT_CKPT_PATH, None, None)
    assert DEFAULT_CKPT_PATH == "gradient_accumulation.ckpt"  # the tutorial's file name


@pytest.mark.parametrize("kwargs, error, words", [
    ({"save_every": 2}, ValueError, "save_every=2 needs a state_dir"),
    ({"state_dir": "s", "save_every": 0}, ValueError, "save_every must be a whole number >= 1, got 0"),
    ({"keep_checkpoints": 0}, ValueError, "keep_checkpoints must be a whole number >= 1, got 0"),
    ({"keep_checkpoints": 2.5}, TypeError, "keep_checkpoints must be a whole number >= 1, got 2.5"),
])
def test_bad_saving_options_are_refused_by_name(kwargs, error, words):
    with pytest.raises(error, match=words):
        SaveConfig(**kwargs)
    SaveConfig(**{**kwargs, "state_dir": "s", "save_every": 2, "keep_checkpoints": 2})  # the control: fixed, accepted


def test_save_must_be_a_save_config():
    network = MLP()
    model = GradientAccumulation(network, LOSS, nn.Momentum(network.trainable_params(), 0.1, 0.9))
    with pytest.raises(TypeError, match=r"save must be a mindspore_accum.SaveConfig or None, got 'm.ckpt': pass "
                                        r"save=SaveConfig\(ckpt_path=..., state_dir=...\)"):
        model.train_process(1, micro_batches([4], (8,), 4), mini_steps=1, save="m.ckpt")


# A record as states were written before Progress: flat counters, and ``micro_steps`` in the epoch's records.
OLDER_RECORD = {
    "model": "MLP", "optimizer": "Momentum", "mini_steps": 4, "remainder": "flush", "batch_size": 4,
    "micro_batches_per_epoch": 10, "seed": 5, "amp_level": "O0", "loss_scaler": None, "clip_grad_norm": None,
    "ranks": 1, "epoch": 2, "micro_batch": 6, "epoch_done": False, "total_updates": 4, "total_micro_steps": 16,
    "total_samples": 64, "skipped_updates": 0, "window_losses": [2.25, 2.0], "window_samples": [4, 4],
    "epoch_records": [{"epoch": 2, "update": 1, "micro_steps": 4, "samples": 16, "loss": 2.5, "lr": 0.1,
                       "total_updates": 4, "samples_seen": 56, "skipped": False, "loss_scale": None}],
    "format": 1,
}


def test_an_older_record_reads_back_with_its_counters_and_records():
    state = TrainingState.from_json(json.dumps(OLDER_RECORD))
    assert state.progress == Progress(total_updates=4, total_micro_steps=16, total_samples=64, skipped_updates=0)
    assert state.epoch_records[0]["micro_batches"] == 4 and "micro_steps" not in state.epoch_records[0]
    # The open window's rows, summed: its losses are in the buffer's tensors, not the record.
    assert (state.epoch, state.micro_batch, state.window_samples) == (2, 6, 8)


#: The format-1 fields that were settings, typed out again here (not taken from the module's list).
OLDER_SETTINGS = ("model", "optimizer", "mini_steps", "remainder", "batch_size", "micro_batches_per_epoch", "seed",
                  "amp_level", "loss_scaler", "clip_grad_norm", "ranks")


def test_the_record_written_is_flat_with_its_settings_in_one_object():
    state = TrainingState.from_json(json.dumps(OLDER_RECORD))
    written = json.loads(state.to_json())
    # A record from before 0.3 reads as weighting="samples" over labels other than -100, no EMA, no run id.
    settings = {name: OLDER_RECORD[name] for name in OLDER_SETTINGS}
    settings.update(weighting="samples", ignore_index=-100, ema_decay=None)
    expected = {name: value for name, value in OLDER_RECORD.items() if name not in OLDER_SETTINGS}
    expected.pop("window_losses")
    expected.update(epoch_records=[dict(OLDER_RECORD["epoch_records"][0])], settings=settings, window_samples=8,
                    run_id=None, format=2)
    expected["epoch_records"][0]["micro_batches"] = expected["epoch_records"][0].pop("micro_steps")
    assert written == expected
    assert TrainingState.from_json(state.to_json()) == state  # format 2 reads back to the same state


def test_another_format_is_refused():
    with pytest.raises(ValueError, match="format 3, expected 2"):
        TrainingState.from_json(json.dumps(dict(OLDER_RECORD, format=3)))


def test_the_counters_have_one_home_shared_by_the_driver_and_its_saved_state(tmp_path):
    network = MLP()
    model = GradientAccumulation(network, LOSS, nn.Momentum(network.trainable_params(), 0.1, 0.9))
    history = model.train_process(2, micro_batches([4] * 10, (8,), 4), mini_steps=4,
                                  save=SaveConfig(ckpt_path=None, state_dir=tmp_path))
    # Counted another way: from the records and the micro-batches given.
    assert model.progress == Progress(total_updates=len(history), total_micro_steps=20, total_samples=80)
    assert model.total_updates == len(history) == 6
    saved, _ = read_training_state(tmp_path)
    assert saved.progress == model.progress
