"""Issue 22: the Model path keeps the driver's promises, and the last silent wrong results of the API.

scripts/train_model.py as a user runs it: a resume that changes a setting,
a corrupt checkpoint, another model shape and a second run on the same
directory are each refused in one line; SIGTERM saves the train Cell and the
resumed run equals the uninterrupted one to the bit. In the API: losses that
keep their reduction in ``average``/``reduce`` flags, and a Cell built for
another epoch size, are refused.
"""

import os
import signal
import subprocess
import sys

import mindspore as ms
import mindspore.dataset as ds
import numpy as np
import pytest
from cli import SCRIPTS, assert_refused, run_script
from mindspore import Model, nn

from mindspore_accum import GradientAccumulation, GradientAccumulationCell, read_training_state
from mindspore_accum.model.guards import EpochSizeCheck
from nets import MLP, micro_batches

FLAGS = ("--batch_size", 8, "--mini_steps", 3, "--epochs", 2, "--log_every", 1)  # a LossMonitor line per window


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_mnist):
    """A train_model.py run with a train-Cell checkpoint mid-window (micro-step 5)."""
    out = tmp_path_factory.mktemp("model_run")
    result = run_script("train_model.py", "--data_path", tiny_mnist, *FLAGS, "--save_steps", 5, cwd=out)
    assert result.returncode == 0, result.stderr
    return out / "ckpt" / "train" / "train-1_5.ckpt"


@pytest.mark.parametrize("change, fragment", [
    (("--lr", 0.5), "lr=0.01 in the state vs 0.5 in this run"),
    (("--momentum", 0.0), "momentum=0.9 in the state vs 0.0 in this run"),
    (("--mini_steps", 2), "mini_steps=3 in the state vs 2 in this run"),
    (("--batch_size", 4), "batch_size=8 in the state vs 4 in this run"),
    (("--num_samples", 32), "micro_batches_per_epoch=8 in the state vs 4 in this run"),
    (("--num_classes", 12), "fc3.weight (10, 84) in the file vs (12, 84) in the model"),
])
def test_a_resume_that_changes_a_setting_or_the_shape_is_refused_by_name(tmp_path, tiny_mnist, trained, change,
                                                                          fragment):
    settings = {"--batch_size": 8, "--mini_steps": 3, "--epochs": 2, **dict([change])}
    args = [item for pair in settings.items() for item in pair]
    result = run_script("train_model.py", "--data_path", tiny_mnist, *args, "--resume", trained, cwd=tmp_path)
    assert_refused(result, "cannot resume from", "train-1_5.ckpt", "does not fit this run", fragment)


def test_resume_with_more_epochs_and_nothing_else_changed_is_accepted(tmp_path, tiny_mnist, trained):
    """The control for the refusals above."""
    result = run_script("train_model.py", "--data_path", tiny_mnist, "--batch_size", 8, "--mini_steps", 3,
                        "--epochs", 3, "--resume", trained, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("where", [0.5, 0.9])
def test_a_byte_flipped_train_checkpoint_is_refused_by_its_crc(tmp_path, tiny_mnist, trained, where):
    data = bytearray(trained.read_bytes())
    data[int(len(data) * where)] ^= 0x5A  # inside the tensors: still a well-formed protobuf
    damaged = tmp_path / "train-1_5.ckpt"
    damaged.write_bytes(bytes(data))
    result = run_script("train_model.py", "--data_path", tiny_mnist, *FLAGS, "--resume", damaged, cwd=tmp_path)
    assert_refused(result, "train-1_5.ckpt", "is not a readable MindSpore checkpoint")


def test_a_second_run_on_the_same_directory_is_refused(tmp_path, tiny_mnist):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom mindspore_accum.run.lock import run_lock\n"
                               "with run_lock(sys.argv[1]):\n    print('locked', flush=True)\n    time.sleep(600)",
                               str(tmp_path / "ckpt")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        result = run_script("train_model.py", "--data_path", tiny_mnist, *FLAGS, cwd=tmp_path)
        assert_refused(result, "'ckpt' is in use by another run", f"(process {holder.pid})")
    finally:
        holder.kill()
        holder.communicate()
    assert not (tmp_path / "ckpt" / "lenet-2_8.ckpt").exists()


def test_sigterm_saves_the_train_cell_and_the_resumed_run_equals_the_uninterrupted_one(tmp_path, tiny_mnist):
    flags = ("--data_path", tiny_mnist, "--batch_size", 8, "--mini_steps", 3, "--epochs", 40, "--log_every", 1)
    whole = run_script("train_model.py", *flags, "--ckpt_path", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    process = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "train_model.py"), *map(str, flags),
                                "--ckpt_path", "cut"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=dict(os.environ, GLOG_v="3"))
    for line in process.stdout:
        if line.startswith("epoch: 3 step:"):
            process.send_signal(signal.SIGTERM)
            break
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 143, stderr
    lines = stderr.strip().splitlines()
    assert lines[-3].startswith("interrupted by SIGTERM; the train Cell is saved to cut/train/train-"), lines
    assert lines[-2] == "resume with:" and lines[-1].endswith(".ckpt"), lines
    saved = lines[-3].rsplit(" ", 1)[1]
    cut_at = read_training_state(tmp_path / saved, "train-Cell checkpoint")[0].progress.total_micro_steps
    assert cut_at < 320, "the run was not cut short"
    resumed = run_script("train_model.py", *flags, "--ckpt_path", "cut", "--resume", tmp_path / saved, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    # Issue 22 (6): resumed into its own directory, the files are the uninterrupted run's, names and steps alike.
    for folder in ("", "train"):
        names = [sorted(p.name for p in (tmp_path / run / folder).glob("*.ckpt")) for run in ("whole", "cut")]
        assert names[1] == names[0], folder
    expected = ms.load_checkpoint(str(tmp_path / "whole" / "lenet-40_8.ckpt"))
    actual = ms.load_checkpoint(str(tmp_path / "cut" / "lenet-40_8.ckpt"))
    for name in expected:
        np.testing.assert_array_equal(actual[name].asnumpy(), expected[name].asnumpy(), err_msg=name)


@pytest.mark.parametrize("loss", [nn.MSELoss(reduction="sum"), nn.L1Loss(reduction="sum"),
                                  nn.MSELoss(reduction="none")])
def test_losses_that_do_not_reduce_to_a_mean_are_refused_by_the_cell_and_the_driver(loss):
    """Issue 22 (9): MSELoss keeps reduction=None and average/reduce flags; "sum" slipped through."""
    network = MLP()
    optimizer = nn.SGD(network.trainable_params(), 0.1)
    with pytest.raises(ValueError, match="reduction must be 'mean', got '(sum|none)'"):
        GradientAccumulationCell(nn.WithLossCell(network, loss), optimizer, 2)
    with pytest.raises(ValueError, match="reduction must be 'mean', got '(sum|none)'"):
        GradientAccumulation(network, loss, optimizer)
    # Control: the same losses reducing to a mean are accepted.
    GradientAccumulation(network, type(loss)(), optimizer)


def test_a_cell_built_for_another_epoch_size_is_refused_when_training_begins():
    """Issue 22 (10): micro_batches_per_epoch=4 on a 3-micro-batch dataset let windows leak across epochs."""
    batches = micro_batches([4, 4, 4], (8,), 4)
    x = np.concatenate([b[0].asnumpy() for b in batches])
    y = np.concatenate([b[1].asnumpy() for b in batches])
    network = MLP()
    for size, refused in ((4, True), (3, False)):
        dataset = ds.NumpySlicesDataset({"x": x, "label": y}, shuffle=False).batch(4)
        cell = GradientAccumulationCell(nn.WithLossCell(network, nn.SoftmaxCrossEntropyWithLogits(
            sparse=True, reduction="mean")), nn.SGD(network.trainable_params(), 0.1), 2, micro_batches_per_epoch=size)
        if refused:
            with pytest.raises(ValueError, match="micro_batches_per_epoch=4 but the dataset gives 3 micro-batches"):
                Model(cell).train(1, dataset, callbacks=[EpochSizeCheck(cell)], dataset_sink_mode=False)
        else:
            Model(cell).train(1, dataset, callbacks=[EpochSizeCheck(cell)], dataset_sink_mode=False)


@pytest.mark.parametrize("script", ["train.py", "train_model.py"])
def test_a_momentum_that_is_not_a_finite_number_is_refused(script):
    from cli import parse_in_process
    assert_refused(parse_in_process(script, "--momentum", "nan"),
                   "argument --momentum: must be a finite number >= 0, got 'nan'")


def test_train_model_warns_when_mini_steps_exceeds_an_epoch_and_its_banner_says_so(tmp_path, tiny_mnist):
    result = run_script("train_model.py", "--data_path", tiny_mnist, "--batch_size", 8, "--mini_steps", 20,
                        "--epochs", 1, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "mini_steps=20 is larger than the 8 micro-batches of an epoch" in result.stdout
    assert "effective batch: 64 = 8 x 8 (batch_size x the epoch's micro-batches, fewer than mini_steps 20)" \
        in result.stdout


def test_kill_9_then_resume_from_the_newest_train_checkpoint_equals_the_uninterrupted_run(tmp_path, tiny_mnist):
    """train.py's kill -9 harness on train_model.py: partial files are removed, and the resume is exact."""
    flags = ("--data_path", tiny_mnist, "--batch_size", 8, "--mini_steps", 3, "--epochs", 40, "--save_steps", 5,
             "--log_every", 1)
    whole = run_script("train_model.py", *flags, "--ckpt_path", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    process = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "train_model.py"), *map(str, flags),
                                "--ckpt_path", "cut"], cwd=tmp_path, stdout=subprocess.PIPE, text=True,
                               env=dict(os.environ, GLOG_v="3"))
    for line in process.stdout:
        if line.startswith("epoch: 5 step:"):
            process.kill()
            break
    process.communicate(timeout=120)
    # As a kill mid-write leaves them: the write's temporary and save_checkpoint's own partial file, of the dead pid.
    partial = [tmp_path / "cut" / "train" / f".train-9_9.ckpt.{process.pid}.tmp{suffix}"
               for suffix in (".ckpt", ".tmp")]
    for path in partial:
        path.write_bytes(b"half a checkpoint")
    newest = max((tmp_path / "cut" / "train").glob("train-*.ckpt"), key=os.path.getmtime)
    resumed = run_script("train_model.py", *flags, "--ckpt_path", "cut", "--resume", newest, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [path.exists() for path in partial] == [False, False], "a partial file stayed"
    expected = ms.load_checkpoint(str(tmp_path / "whole" / "lenet-40_8.ckpt"))
    actual = ms.load_checkpoint(str(tmp_path / "cut" / "lenet-40_8.ckpt"))
    for name in expected:
        np.testing.assert_array_equal(actual[name].asnumpy(), expected[name].asnumpy(), err_msg=name)
