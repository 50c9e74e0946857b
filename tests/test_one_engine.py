"""Issue 26: the defects that the two engines' drift caused, each against a reference computed another way.

1. An EMA averaged from the weights the driver was built with, not the ones
   loaded after (train.py --init_ckpt): checked against the average written
   out in NumPy from the loaded weights.
2. A resume that changed --augment, --gn_groups or the data was accepted:
   every flag but the run flags is now a setting, and the data is compared by
   its fingerprint (a moved copy resumes, other data does not).
3. No test noticed a Model-path resume that stopped refusing --weight_decay.
4. A run into a live run's output directory (or holding one) got past the lock.
5. The Model path with EMA wrote mid-epoch averages under an epoch's name on
   a signal; its loss lines moved after a resume; eval.py could not read a
   train-Cell checkpoint.
"""

import dataclasses
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import types

import mindspore as ms
import numpy as np
import pytest
from cli import SCRIPTS, assert_refused, run_script
from mindspore import Tensor, nn
from mindspore.train import LossMonitor
from test_run_lock import HOLDER

from mindspore_accum import GradientAccumulation, SaveConfig, load_network_checkpoint
from mindspore_accum.model.guards import NetworkCheckpoint, ResumableLossMonitor
from mindspore_accum.run.lock import RunInUseError, run_lock
from mindspore_accum.run.settings import RunSettings, data_fingerprint
from model_zoo_adapters.lenet import LeNet5
from nets import LOSS, MLP, micro_batches, params_of

ROOT = os.path.dirname(SCRIPTS)


def script(name):
    """``scripts/<name>`` as a module, for its parser (no MindSpore run)."""
    spec = importlib.util.spec_from_file_location(f"engine_test_{name[:-3]}", os.path.join(SCRIPTS, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# 1. The EMA starts from the weights training starts from.

def test_the_ema_starts_from_weights_loaded_after_the_driver_was_built(tmp_path):
    network = MLP()
    built = params_of(network)
    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), 0.5), ema_decay=0.9)
    for param, value in zip(network.get_parameters(), MLP().get_parameters()):  # as --init_ckpt loaded them
        param.set_data(value.data.copy())
    loaded = params_of(network)
    model.train_process(1, micro_batches([4, 4], (8,), 4), mini_steps=2,
                        save=SaveConfig(ckpt_path=str(tmp_path / "m.ckpt")))
    after = params_of(network)
    saved = {name: value.asnumpy() for name, value in ms.load_checkpoint(str(tmp_path / "m.ckpt")).items()}
    for name in loaded:  # one update: ema = d * start + (1 - d) * weights after it, in float32
        np.testing.assert_allclose(saved[name], 0.9 * loaded[name] + 0.1 * after[name], rtol=1e-6, atol=1e-7,
                                   err_msg=name)
    # The control: averaged from the weights the driver was built with (the defect), it is far off.
    assert max(np.abs(saved[n] - (0.9 * built[n] + 0.1 * after[n])).max() for n in built) > 1e-2


# 2. Every flag but the run flags is a setting; the data is compared by its contents.

@pytest.mark.parametrize("name", ["train.py", "train_model.py"])
def test_every_flag_but_the_run_flags_is_a_setting(name):
    from resolve import resolve_training
    module = script(name)
    args = module.parse_args(["--augment", "hflip", "--data_path", os.path.join(ROOT, "data", "mnist")])
    engine = dataclasses.replace(module.ENGINE, check_outputs=lambda args: None)  # no directory made here
    settings = RunSettings.of(resolve_training(args, engine, ranks=1).settings)
    for flag in ("augment", "gn_groups", "norm", "weight_decay", "optimizer", "lr", "mini_steps", "batch_size",
                 "seed", "ema_decay", "amp_level", "weighting", "seq_len", "bucket", "conv_impl"):
        assert f"--{flag}" in settings.values, f"--{flag} is no setting of {name}"
    for flag in ("data_path", "ckpt_path", "resume", "epochs"):
        assert f"--{flag}" not in settings.values, f"--{flag} should be free to change on resume"
    # A changed flag is named; the control: the same flags differ in nothing.
    changed = RunSettings.of({**settings.values, "--gn_groups": 3})
    assert settings.differences(changed) == ["--gn_groups=None in the state vs 3 in this run"]
    assert settings.differences(RunSettings.of(settings.values)) == []
    assert settings.values["data"] == data_fingerprint(os.path.join(ROOT, "data", "mnist"))


def test_the_data_fingerprint_names_the_data_not_its_path(tmp_path, tiny_mnist):
    moved = shutil.copytree(tiny_mnist, tmp_path / "moved")
    assert data_fingerprint(moved) == data_fingerprint(tiny_mnist)
    (tmp_path / "moved" / ".moved.lock").write_text("123")  # a lock or temporary is no data
    assert data_fingerprint(moved) == data_fingerprint(tiny_mnist)
    other = shutil.copytree(tiny_mnist, tmp_path / "other")
    first = sorted(os.listdir(other))[0]
    content = bytearray((other / first).read_bytes())
    content[-1] ^= 1
    (other / first).write_bytes(bytes(content))  # one bit of one file
    assert data_fingerprint(other) != data_fingerprint(tiny_mnist)


def test_a_resume_that_changes_the_augmentation_or_the_data_is_refused_and_a_moved_copy_resumes(tmp_path,
                                                                                                 tiny_mnist):
    flags = ("--batch_size", 16, "--mini_steps", 2, "--no_progress")
    first = run_script("train.py", "--data_path", tiny_mnist, *flags, "--epochs", 1, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    state = tmp_path / "gradient_accumulation_state"
    augmented = run_script("train.py", "--data_path", tiny_mnist, *flags, "--epochs", 2, "--augment", "hflip",
                           "--resume", state, cwd=tmp_path)
    assert_refused(augmented, "--augment=[] in the state vs ['hflip'] in this run")
    other = shutil.copytree(tiny_mnist, tmp_path / "other")
    labels = next(p for p in sorted(os.listdir(other)) if "train-labels" in p)
    content = bytearray((other / labels).read_bytes())
    content[-1] = (content[-1] + 1) % 10  # one label changed
    (other / labels).write_bytes(bytes(content))
    refused = run_script("train.py", "--data_path", other, *flags, "--epochs", 2, "--resume", state, cwd=tmp_path)
    assert_refused(refused, "data=", "in the state vs", "in this run")
    moved = shutil.copytree(tiny_mnist, tmp_path / "moved")  # the control: the same data elsewhere resumes
    resumed = run_script("train.py", "--data_path", moved, *flags, "--epochs", 2, "--resume", state, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr


# 3. The Model path refuses a changed --weight_decay; and eval.py reads its train-Cell checkpoint.

def test_a_model_path_resume_that_changes_weight_decay_is_refused(tmp_path, tiny_mnist):
    flags = ("--data_path", tiny_mnist, "--batch_size", 8, "--mini_steps", 3)
    first = run_script("train_model.py", *flags, "--epochs", 1, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    train_ckpt = tmp_path / "ckpt" / "train" / "train-1_8.ckpt"
    refused = run_script("train_model.py", *flags, "--epochs", 2, "--weight_decay", 0.01, "--ckpt_path", "again",
                         "--resume", train_ckpt, cwd=tmp_path)
    assert_refused(refused, "--weight_decay=0.0 in the state vs 0.01 in this run")
    # eval.py's loader on the train-Cell checkpoint: the network's weights, those of the bare checkpoint.
    from_train = params_of(load_network_checkpoint(LeNet5(), train_ckpt))
    from_bare = params_of(load_network_checkpoint(LeNet5(), tmp_path / "ckpt" / "lenet-1_8.ckpt"))
    assert sorted(from_train) == sorted(from_bare)
    for name in from_bare:
        np.testing.assert_array_equal(from_train[name], from_bare[name], err_msg=name)
    evaluated = run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path", train_ckpt, cwd=tmp_path)
    assert evaluated.returncode == 0 and "Traceback" not in evaluated.stderr, evaluated.stderr


# 4. Nested outputs.

def hold(path, cwd):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], cwd=cwd, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline() == "locked\n"
    return holder


def release(holder):
    holder.send_signal(signal.SIGKILL)
    holder.communicate()


def test_a_run_inside_a_live_runs_output_directory_is_refused_and_touches_nothing(tmp_path, tiny_mnist):
    live = tmp_path / "d"
    (live / "train").mkdir(parents=True)
    graph = live / "train" / "train-graph.meta"
    graph.write_bytes(b"the live run's graph")
    holder = hold(live, tmp_path)
    try:
        with pytest.raises(RunInUseError, match=r"lies inside .*/d', the output of another run \(process \d+\)"):
            with run_lock(live / "train"):
                pass
        with pytest.raises(RunInUseError, match="lies inside"):
            with run_lock(live / "model.ckpt"):  # train.py's --ckpt_path d/model.ckpt
                pass
        with run_lock(tmp_path / "e"):  # the control: a sibling is free
            pass
        nested = run_script("train_model.py", "--data_path", tiny_mnist, "--batch_size", 8, "--epochs", 1,
                            "--ckpt_path", live / "train", cwd=tmp_path)
        assert_refused(nested, "lies inside", "the output of another run")
        assert graph.read_bytes() == b"the live run's graph", "the refused run touched the live run's files"
    finally:
        release(holder)
    with run_lock(live / "train"):  # once the live run is gone, the same path is free
        pass


def test_a_run_whose_output_holds_a_live_runs_output_is_refused(tmp_path):
    live = tmp_path / "d" / "model.ckpt"
    live.parent.mkdir()
    holder = hold(live, tmp_path)
    try:
        with pytest.raises(RunInUseError, match=r"holds .*model.ckpt', the output of another run"):
            with run_lock(tmp_path / "d"):
                pass
    finally:
        release(holder)
    with run_lock(tmp_path / "d"):  # the control: the same path, once that run ended
        pass


# 5. The Model path's EMA checkpoint and loss lines.

def run_context(step, per_epoch=12, loss=1.5):
    params = types.SimpleNamespace(cur_step_num=step, batch_num=per_epoch, cur_epoch_num=(step - 1) // per_epoch + 1,
                                   net_outputs=Tensor(np.float32(loss)), dataset_sink_mode=False)
    params.get = lambda name, default=None: getattr(params, name, default)
    return types.SimpleNamespace(original_args=lambda: params)


def test_the_ema_checkpoint_is_written_at_an_epochs_end_only(tmp_path):
    network = MLP()
    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), 0.1), ema_decay=0.9)
    saver = NetworkCheckpoint(network, tmp_path, "mlp", model.ema)
    saver.on_train_epoch_end(run_context(6))  # Model.train stopped by a signal at micro-step 6 of 12
    assert os.listdir(tmp_path) == []
    saver.on_train_epoch_end(run_context(12))  # the control: the epoch's real end
    assert os.listdir(tmp_path) == ["mlp-1_12.ckpt"]


def printed_steps(monitor, steps, capsys, caplog):
    """The micro-steps of the loss lines: LossMonitor prints them, ResumableLossMonitor logs them."""
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mindspore_accum"):
        monitor.on_train_begin(run_context(steps[0] - 1))
        for step in steps:
            monitor.step_end(run_context(step, per_epoch=100))
    lines = capsys.readouterr().out.splitlines() + [record.getMessage() for record in caplog.records]
    return [int(line.split("step: ")[1].split(",")[0]) for line in lines if "loss is" in line]


def test_loss_lines_after_a_resume_fall_where_the_uninterrupted_runs_do(capsys, caplog):
    uninterrupted = printed_steps(LossMonitor(3), list(range(1, 16)), capsys, caplog)
    assert uninterrupted == [3, 6, 9, 12, 15]
    resumed = printed_steps(ResumableLossMonitor(3), list(range(11, 16)), capsys, caplog)  # resumed at micro-step 10
    assert resumed == [s for s in uninterrupted if s > 10]
    assert printed_steps(LossMonitor(3), list(range(11, 16)), capsys, caplog) != resumed  # the control: MindSpore's
