"""SaveConfig and the training-state record, against values written out by hand.

``SaveConfig`` groups train_process's saving options (issue 14); its refusals
name the argument. The state's JSON record is one flat object: a record typed
out here must read back to the same state and write back as it was; another
format is refused by name.
"""

import json
import re

import pytest
from mindspore import nn

from mindspore_accum import GradientAccumulation, SaveConfig, read_training_state
from mindspore_accum.run.checkpoint import DEFAULT_CKPT_PATH
from mindspore_accum.run.state import Progress, TrainingState
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


#: A format-2 record, typed out by hand: the counters flat beside the position, the settings one object.
RECORD = {
    "settings": {"model": "MLP", "optimizer": "Momentum", "mini_steps": 4, "remainder": "flush", "batch_size": 4,
                 "micro_batches_per_epoch": 10, "seed": 5, "weighting": "samples"},
    "epoch": 2, "micro_batch": 6, "epoch_done": False, "window_samples": 8,
    "epoch_records": [{"epoch": 2, "update": 1, "micro_batches": 4, "samples": 16, "loss": 2.5, "lr": 0.1,
                       "total_updates": 4, "samples_seen": 56, "skipped": False, "loss_scale": None, "items": 16}],
    "run_id": "0123", "kind": "training state", "format": 2,
    "total_updates": 4, "total_micro_steps": 16, "total_samples": 64, "skipped_updates": 0,
}


def test_a_record_reads_back_with_its_counters_settings_and_records_and_writes_as_it_was():
    state = TrainingState.from_json(json.dumps(RECORD))
    assert state.progress == Progress(total_updates=4, total_micro_steps=16, total_samples=64, skipped_updates=0)
    assert (state.epoch, state.micro_batch, state.window_samples, state.run_id) == (2, 6, 8, "0123")
    assert state.settings.values == RECORD["settings"]
    assert json.loads(state.to_json()) == RECORD
    # A record written before the Model path wrote training states has no kind: it is the driver's.
    assert TrainingState.from_json(json.dumps({k: v for k, v in RECORD.items() if k != "kind"})).kind == \
        "training state"


@pytest.mark.parametrize("found, words", [
    (1, "format 1, written by mindspore-accum 0.3 or before: finish that run with mindspore-accum 0.4, or start "
        "afresh from its weights with --init_ckpt"),
    (3, "format 3, expected 2"),
])
def test_another_format_is_refused_by_name(found, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        TrainingState.from_json(json.dumps(dict(RECORD, format=found)))
    TrainingState.from_json(json.dumps(RECORD))  # the control: format 2 reads


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
