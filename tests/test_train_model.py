"""scripts/train_model.py: accumulation inside ``Model.train``, with MindSpore's callbacks, as a user runs it.

Reference: scripts/train.py, the three-Cell driver, with the same seed, data
and flags. Both start from the same weights and see the same shuffled
micro-batches, and the Cell is built from the driver's Cells, so the bare
checkpoints must be equal **to the bit**.
"""

import re

import mindspore as ms
import numpy as np
from cli import assert_refused, run_script

from mindspore_accum import load_network_checkpoint, read_training_state, save_network_checkpoint
from model_zoo_adapters.lenet import LeNet5

# tiny_mnist: 64 images; batch 8 gives 8 micro-batches an epoch, mini_steps 3: windows of 3, 3 and a flushed 2.
FLAGS = ("--batch_size", 8, "--mini_steps", 3, "--epochs", 2, "--log_every", 1)  # a LossMonitor line per window


def bare(path):
    return {name: value.asnumpy() for name, value in ms.load_checkpoint(str(path)).items()}


def test_model_train_script_equals_train_py_and_eval_py_scores_its_checkpoint(tmp_path, tiny_mnist):
    trained = run_script("train_model.py", "--data_path", tiny_mnist, *FLAGS, cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "effective batch: 24 = 8 x 3 (batch_size x mini_steps)" in trained.stdout
    steps = re.findall(r"^epoch: (\d) step: (\d+), loss is \S+$", trained.stdout, re.MULTILINE)
    assert steps == [("1", "3"), ("1", "6"), ("2", "1"), ("2", "4"), ("2", "7")], trained.stdout  # every 3 micro-steps
    assert "Train epoch time:" in trained.stdout  # TimeMonitor
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt")) == ["lenet-2_8.ckpt"]

    driver = run_script("train.py", "--data_path", tiny_mnist, *FLAGS, "--no_progress", cwd=tmp_path)
    assert driver.returncode == 0, driver.stderr
    expected = bare(tmp_path / "gradient_accumulation.ckpt")
    actual = bare(tmp_path / "ckpt" / "lenet-2_8.ckpt")
    assert sorted(actual) == sorted(expected), "the bare checkpoint holds the network and nothing else"
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=f"{name}: Model.train vs train.py")
    load_network_checkpoint(LeNet5(), tmp_path / "ckpt" / "lenet-2_8.ckpt")  # the zoo's LeNet5, strictly

    evaluated = run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path", "ckpt", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.strip().splitlines()[-1].startswith("{'Accuracy': ")


def test_resume_mid_window_from_the_train_cell_checkpoint_equals_the_uninterrupted_run(tmp_path, tiny_mnist):
    # --save_steps 5: train-Cell checkpoints at micro-steps 5 (epoch 1, mid-window) and 10 (epoch 2, mid-window).
    whole = run_script("train_model.py", "--data_path", tiny_mnist, *FLAGS, "--save_steps", 5, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    assert (tmp_path / "ckpt" / "train" / "train-2_2.ckpt").is_file()
    resumed = run_script("train_model.py", "--data_path", tiny_mnist, *FLAGS, "--ckpt_path", "again",
                         "--resume", tmp_path / "ckpt" / "train" / "train-2_2.ckpt", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at micro-step 10" in resumed.stdout
    expected, actual = bare(tmp_path / "ckpt" / "lenet-2_8.ckpt"), bare(tmp_path / "again" / "lenet-2_8.ckpt")
    for name in expected:
        np.testing.assert_array_equal(actual[name], expected[name], err_msg=f"{name}: resumed vs uninterrupted")
    # The resumed run counts micro-steps on from 10, so its own checkpoints can be resumed from again, and its
    # loss lines are the uninterrupted run's after micro-step 10 (epoch 2, step 2), the same values to the bit.
    lines = lambda out: re.findall(r"^epoch: (\d) step: (\d+), loss is (\S+)$", out, re.MULTILINE)  # noqa: E731
    after = [line for line in lines(whole.stdout) if (int(line[0]), int(line[1])) > (2, 2)]
    assert lines(resumed.stdout) == after and after, (resumed.stdout, whole.stdout)
    state, _ = read_training_state(tmp_path / "again" / "train" / "train-2_8.ckpt", "train-Cell checkpoint")
    assert (state.epoch, state.micro_batch, state.progress.total_micro_steps) == (2, 8, 16)


def test_resume_from_a_bare_checkpoint_is_refused(tmp_path, tiny_mnist):
    save_network_checkpoint(LeNet5(), tmp_path / "lenet-2_8.ckpt")  # what a run leaves beside train/: the bare network
    result = run_script("train_model.py", "--data_path", tiny_mnist, *FLAGS, "--resume", tmp_path / "lenet-2_8.ckpt",
                        cwd=tmp_path)
    assert_refused(result, "lenet-2_8.ckpt", "is a model checkpoint (the network alone, with no optimizer state or "
                           "position): resume from a train-Cell checkpoint, or start afresh from its weights with "
                           "--init_ckpt")
