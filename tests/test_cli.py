"""scripts/train.py and scripts/eval.py as a user runs them: bad input is one line and exit status 2."""

import ast

import numpy as np
import pytest
from cli import assert_refused, parse_in_process, run_script

from mindspore_accum import load_network_checkpoint, save_network_checkpoint
from model_zoo_adapters.lenet import LeNet5
from nets import numpy_scores


@pytest.mark.parametrize("value", ["0", "-1", "2.5", "True", "four"])
def test_bad_mini_steps(tiny_mnist, value):
    result = parse_in_process("train.py", "--data_path", tiny_mnist, "--mini_steps", value)
    assert_refused(result, "--mini_steps", repr(value), "whole number from 1 to 2147483647")


def test_a_bad_flag_as_a_user_sees_it(tmp_path, tiny_mnist):
    """The in-process checks above, once as a real process: exit 2, one line, no traceback."""
    result = run_script("train.py", "--data_path", tiny_mnist, "--mini_steps", "0", cwd=tmp_path)
    assert_refused(result, "train.py: error: argument --mini_steps: must be a whole number from 1 to 2147483647, "
                           "got '0' (see train.py --help)")


def test_missing_data_directory(tmp_path):
    result = run_script("train.py", "--data_path", tmp_path / "no_such_dir", cwd=tmp_path)
    assert_refused(result, "no_such_dir", "is not a directory")


def test_empty_data_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_script("train.py", "--data_path", tmp_path / "empty", cwd=tmp_path)
    assert_refused(result, "empty", "expected train-images-idx3-ubyte and train-labels-idx1-ubyte")


def test_checkpoint_that_does_not_fit_the_model(tmp_path, tiny_mnist):
    save_network_checkpoint(LeNet5(num_class=5), str(tmp_path / "other.ckpt"))
    result = run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path", tmp_path / "other.ckpt", cwd=tmp_path)
    # The class count is the checkpoint's head's (issue 30): 5, fewer than the test split's labels.
    assert_refused(result, "other.ckpt", "scores 5 classes, but the test split", "has labels up to 9")
    stated = run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path", tmp_path / "other.ckpt",
                        "--num_classes", 10, cwd=tmp_path)
    assert_refused(stated, "other.ckpt", "does not fit LeNet5", "fc3.bias (5,) in the file vs (10,) in the model")


def test_missing_checkpoint(tmp_path, tiny_mnist):
    result = run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path", tmp_path / "none.ckpt", cwd=tmp_path)
    assert_refused(result, "none.ckpt", "does not exist")


def test_train_then_eval_on_a_tiny_set(tmp_path, tiny_mnist):
    """The scripts' plumbing, in seconds; the real-MNIST run is in test_end_to_end.py."""
    trained = run_script("train.py", "--data_path", tiny_mnist, "--epochs", 1, "--batch_size", 8, "--mini_steps", 3,
                         cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "effective batch: 24 = 8 x 3" in trained.stdout
    assert "micro-batches per epoch: 8, updates per epoch: 3" in trained.stdout
    assert "epoch: 1 step: 3 loss is" in trained.stdout  # the flushed partial window is the third update
    assert (tmp_path / "gradient_accumulation.ckpt").is_file()
    evaluated = run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path", "gradient_accumulation.ckpt",
                           cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.strip().splitlines()[-1].startswith("{'Accuracy': ")


def eval_scores(result):
    """eval.py's ``test loss: ...`` line and its last line, ``{'Accuracy': ...}``."""
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[-2].startswith("test loss: "), lines[-2:]
    return float(lines[-2].split(": ")[1]), ast.literal_eval(lines[-1])["Accuracy"]


def test_eval_takes_a_training_state_file_or_directory_and_a_directory_named_with_glob_characters(tmp_path,
                                                                                                  tiny_mnist):
    """Issue 15 (2, 7): eval.py crashed on a state; a directory like gl[ob]* was "a directory with no .ckpt".

    Reference: the state's network run in this process, scored in NumPy. The
    loss, not only the accuracy, is compared: on 20 noise images every model
    scores about 0.1, the trained and the untrained alike. Control: the
    state after update 1 scores another loss.
    """
    import shutil
    trained = run_script("train.py", "--data_path", tiny_mnist, "--epochs", 1, "--batch_size", 8, "--mini_steps", 3,
                         "--save_every", 1, "--keep_checkpoints", 9, "--no_progress", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    states = tmp_path / "gradient_accumulation_state"
    expected_loss, expected_accuracy = numpy_scores(states / "state-1_8.ckpt", tiny_mnist)[:2]

    globbed = tmp_path / "gl[ob]*"
    globbed.mkdir()
    shutil.copy(tmp_path / "gradient_accumulation.ckpt", globbed / "model.ckpt")
    (states / "state-1_8.ckpt").touch()  # the directory's newest state: the end of the epoch
    for path in ("gradient_accumulation.ckpt", states / "state-1_8.ckpt", globbed, states):
        loss, accuracy = eval_scores(run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path", path,
                                                "--per_class", cwd=tmp_path))
        # The printed loss has 6 decimals; float32 logits against float64 here differ far less.
        assert loss == pytest.approx(expected_loss, abs=2e-6), path
        assert accuracy == pytest.approx(expected_accuracy), path

    earlier_loss, _ = eval_scores(run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path",
                                             states / "state-1_3.ckpt", cwd=tmp_path))
    assert earlier_loss == pytest.approx(numpy_scores(states / "state-1_3.ckpt", tiny_mnist)[0], abs=2e-6)
    assert abs(earlier_loss - expected_loss) > 1e-5, "control: the state after update 1 scores the same"


def test_a_fresh_run_into_a_state_directory_of_an_earlier_run_says_so_and_a_resumed_run_does_not(tmp_path,
                                                                                                  tiny_mnist):
    """Issue 15 (10): the earlier run's states were pushed out without a word."""
    flags = ("--data_path", tiny_mnist, "--epochs", 1, "--batch_size", 8, "--mini_steps", 3, "--no_progress")
    first = run_script("train.py", *flags, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "holds" not in first.stdout  # nothing to warn about in an empty directory
    again = run_script("train.py", *flags, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    states = tmp_path / "gradient_accumulation_state"
    assert (f"the training-state directory {states} holds 1 states of an earlier run, which this run's states will "
            f"push out (newest 5 kept); to continue that run instead, pass resume={states} (--resume)") in again.stdout
    resumed = run_script("train.py", *flags[:2], "--epochs", 2, *flags[4:], "--resume", states, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "of an earlier run" not in resumed.stdout


def test_mini_steps_4_of_batch_8_equals_mini_steps_1_of_batch_32_as_the_user_runs_it(tmp_path, tiny_mnist):
    """The mission at script level: same seed, same shuffled samples, so each window of 4 x 8 is one batch of 32.

    rtol 1e-5, as test_equivalence.py: the same sums in another order, over 4
    updates. Control: batch 8 without accumulation, 4 times the updates, differs.
    """
    import mindspore as ms

    def final(name, batch_size, mini_steps):
        result = run_script("train.py", "--data_path", tiny_mnist, "--epochs", 2, "--batch_size", batch_size,
                            "--mini_steps", mini_steps, "--no_progress", "--ckpt_path", f"{name}.ckpt", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return {n: v.asnumpy() for n, v in ms.load_checkpoint(str(tmp_path / f"{name}.ckpt")).items()}

    accumulated, large, small = final("accumulated", 8, 4), final("large", 32, 1), final("small", 8, 1)
    for name, value in large.items():
        np.testing.assert_allclose(accumulated[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
    assert not all(np.allclose(small[n], v, rtol=1e-5, atol=1e-6) for n, v in large.items())


def test_amp_level_and_clip_grad_norm_in_a_real_run_equal_the_driver_built_by_hand(tmp_path, tiny_mnist):
    """Reference: the same driver built here from the API with the same seed; the log line names the scale.

    The flags must reach the driver: without --amp_level the run would be
    float32 with no scaler, without --clip_grad_norm unclipped (the control).
    """
    import re

    import mindspore as ms
    from mindspore import nn

    from mindspore_accum import GradientAccumulation
    from model_zoo_adapters.lenet import create_dataset
    from nets import NO_CKPT

    flags = ("--data_path", tiny_mnist, "--epochs", 1, "--batch_size", 8, "--mini_steps", 3, "--no_progress",
             "--log_every", 1)
    result = run_script("train.py", *flags, "--amp_level", "O2", "--clip_grad_norm", 0.01, "--ckpt_path", "amp.ckpt",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "amp_level: O2, clip_grad_norm: 0.01" in result.stdout
    logged = re.findall(r"^epoch: 1 step: (\d) loss is \S+ \(loss scale (\d+), (\d+) skipped\)$", result.stdout,
                        re.MULTILINE)
    assert logged == [("1", "65536", "0"), ("2", "65536", "0"), ("3", "65536", "0")], result.stdout

    def by_hand(amp_level, clip_grad_norm):
        ms.set_seed(1)  # train.py's default seed, for the weights and the shuffle
        ms.dataset.config.set_seed(1)
        dataset = create_dataset(tiny_mnist, 8, train=True)
        network = LeNet5()
        GradientAccumulation(network, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"),
                             nn.Momentum(network.trainable_params(), 0.01, 0.9), amp_level=amp_level,
                             clip_grad_norm=clip_grad_norm).train_process(1, dataset, mini_steps=3, save=NO_CKPT,
                                                                          log_every=None)
        return {p.name: p.asnumpy() for p in network.get_parameters()}

    saved = {name: value.asnumpy() for name, value in ms.load_checkpoint(str(tmp_path / "amp.ckpt")).items()}
    expected = by_hand("O2", 0.01)
    for name, value in expected.items():
        np.testing.assert_array_equal(saved[name], value, err_msg=name)
    for control in (by_hand("O0", 0.01), by_hand("O2", None)):
        assert not all(np.allclose(saved[n], v, rtol=1e-6, atol=0) for n, v in control.items())


def test_a_signal_just_after_the_run_completed_ends_nothing(tmp_path, tiny_mnist):
    """Issue 22 (14): a SIGTERM in the ~0.6 s after 'checkpoint: ...' ended the process with 143 and no word."""
    import os
    import signal
    import subprocess
    import sys

    from cli import SCRIPTS
    process = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "train.py"), "--data_path", str(tiny_mnist),
                                "--epochs", "1", "--batch_size", "8", "--no_progress"], cwd=tmp_path,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, GLOG_v="3"))
    for line in process.stdout:
        if line.startswith("checkpoint: "):
            process.send_signal(signal.SIGTERM)
            break
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    load_network_checkpoint(LeNet5(), tmp_path / "gradient_accumulation.ckpt")


def test_a_directory_named_like_a_state_is_left_alone(tmp_path, tiny_mnist):
    """Issue 22 (14): state-old.ckpt, a directory in the state directory, killed a fresh run at its first save."""
    (tmp_path / "gradient_accumulation_state" / "state-old.ckpt").mkdir(parents=True)
    result = run_script("train.py", "--data_path", tiny_mnist, "--epochs", 1, "--batch_size", 8, "--no_progress",
                        "--keep_checkpoints", 1, "--save_every", 1, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "gradient_accumulation_state" / "state-old.ckpt").is_dir()
    evaluated = run_script("eval.py", "--data_path", tiny_mnist, "--per_class", cwd=tmp_path)
    assert evaluated.returncode == 0 and "Warning" not in evaluated.stderr, evaluated.stderr


def test_fine_tuning_from_a_training_state_with_a_new_head_and_init_ckpt_with_resume_is_refused(tmp_path,
                                                                                               tiny_mnist):
    flags = ("--data_path", tiny_mnist, "--epochs", 1, "--batch_size", 8, "--no_progress")
    first = run_script("train.py", *flags, "--ckpt_path", "base.ckpt", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    tuned = run_script("train.py", *flags, "--num_classes", 12, "--init_ckpt", "base_state", "--ckpt_path",
                       "tuned.ckpt", cwd=tmp_path)
    assert tuned.returncode == 0, tuned.stderr
    assert "re-initialised the head, whose shape differs: fc3.weight (10, 84) -> (12, 84)" in tuned.stdout
    assert_refused(run_script("train.py", *flags, "--init_ckpt", "base.ckpt", "--resume", "base_state",
                              cwd=tmp_path), "--init_ckpt and --resume together")
