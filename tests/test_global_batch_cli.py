"""--global_batch_size and the batch schedules from the command line, against plain steps on hand-cut windows.

Reference: the scripts' own MNIST pipeline read sample by sample under the same seed (two epochs: the second
reshuffled), cut into windows by NumPy slicing, one ``nn.TrainOneStepCell`` Momentum step per window, from the
same initial checkpoint (--init_ckpt). Tolerance as test_equivalence's LeNet cases (rtol 1e-5, atol 1e-6): the
same gradient summed in another order. Control: windows cut at the micro-batch (24 = 8 x 3) must differ.
"""

import os

import mindspore as ms
import numpy as np
import pytest
from cli import SCRIPTS, assert_refused, parse_in_process, run_script
from mindspore import Tensor, nn

from model_zoo_adapters.lenet import LeNet5, create_dataset
from nets import LOSS

RTOL, ATOL = 1e-5, 1e-6
FLAGS = ("--batch_size", 8, "--epochs", 2, "--no_progress", "--conv_impl", "native", "--seed", 1)


def load_script(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(name[:-3], os.path.join(SCRIPTS, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def hand_cut_steps(data_path, initial, sizes_per_epoch):
    """Plain steps on the pipeline's samples cut at ``sizes_per_epoch`` (each epoch's window sizes)."""
    ms.dataset.config.set_seed(1)
    samples = create_dataset(str(data_path), 1, train=True, drop_remainder=False)
    iterator = samples.create_tuple_iterator(num_epochs=len(sizes_per_epoch), output_numpy=True)
    network = LeNet5(conv_impl="native")
    ms.load_param_into_net(network, initial)
    step = nn.TrainOneStepCell(nn.WithLossCell(network, LOSS), nn.Momentum(network.trainable_params(), 0.01, 0.9))
    for sizes in sizes_per_epoch:
        rows = list(iterator)
        images, labels = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
        start = 0
        for size in sizes:
            step(Tensor(images[start:start + size]), Tensor(labels[start:start + size]))
            start += size
    return {p.name: p.asnumpy() for p in network.get_parameters()}


@pytest.fixture(scope="module")
def initial(tmp_path_factory):
    ms.set_seed(3)
    path = tmp_path_factory.mktemp("initial") / "init.ckpt"
    ms.save_checkpoint(LeNet5(conv_impl="native"), str(path))
    return path


def trained(script, out):
    if script == "train.py":
        return ms.load_checkpoint(str(out / "gradient_accumulation.ckpt"))
    (path,) = [f for f in os.listdir(out / "ckpt") if f.startswith("lenet-2_")]
    return ms.load_checkpoint(str(out / "ckpt" / path))


@pytest.mark.parametrize("script", ["train.py", "train_model.py"])
def test_a_global_batch_of_20_in_micro_batches_of_8_equals_plain_steps_on_its_windows(tmp_path, tiny_mnist, initial,
                                                                                      script):
    result = run_script(script, "--data_path", tiny_mnist, *FLAGS, "--global_batch_size", 20, "--init_ckpt", initial,
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "global batch: 20 samples per window over 1 rank(s): mini_steps 3 = ceil(20 / (8 x 1))" in result.stdout
    assert "epoch 1: windows of 20, 20, 20, 4" in result.stdout
    params = trained(script, tmp_path)
    initial_params = ms.load_checkpoint(str(initial))
    expected = hand_cut_steps(tiny_mnist, initial_params, [[20, 20, 20, 4]] * 2)
    for name, value in expected.items():
        np.testing.assert_allclose(params[name].asnumpy(), value, rtol=RTOL, atol=ATOL, err_msg=name)
    wrong = hand_cut_steps(tiny_mnist, ms.load_checkpoint(str(initial)), [[24, 24, 16]] * 2)
    assert max(float(np.abs(params[n].asnumpy() - wrong[n]).max()) for n in wrong) > 100 * ATOL


def test_a_ramp_from_the_command_line_equals_the_plain_steps_and_its_records_carry_the_window(tmp_path, tiny_mnist,
                                                                                             initial):
    # 8 to 24 by 8 over 32 samples: 8 until 16 consumed, 16 until 32, then 24.
    result = run_script("train.py", "--data_path", tiny_mnist, *FLAGS, "--global_batch_size", 24, "--batch_rampup",
                        8, 8, 32, "--init_ckpt", initial, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    epochs = [[8, 8, 16, 24, 8], [24, 24, 16]]
    expected = hand_cut_steps(tiny_mnist, ms.load_checkpoint(str(initial)), epochs)
    params = trained("train.py", tmp_path)
    for name, value in expected.items():
        np.testing.assert_allclose(params[name].asnumpy(), value, rtol=RTOL, atol=ATOL, err_msg=name)
    import json
    with open(tmp_path / "gradient_accumulation_metrics.jsonl", encoding="utf-8") as lines:
        updates = [json.loads(line) for line in lines if '"update"' in line]
    assert [u["samples"] for u in updates] == [s for sizes in epochs for s in sizes]
    # plot.py draws the effective batch over training from those records.
    plot = load_script("plot.py")
    x, y = plot.plot_batch(updates, tmp_path / "batch.png")
    assert y == [8, 8, 16, 24, 8, 24, 24, 16] and x == [8, 16, 32, 56, 64, 88, 112, 128]
    assert (tmp_path / "batch.png").stat().st_size > 1000
    # Control: the ramp counted in micro-batches of 8 (8 until 2 micro-batches, ...) cuts other windows.
    wrong = hand_cut_steps(tiny_mnist, ms.load_checkpoint(str(initial)), [[8, 16, 24, 16], [24, 24, 16]])
    assert max(float(np.abs(params[n].asnumpy() - wrong[n]).max()) for n in wrong) > 100 * ATOL
    # The schedule is recorded: a resume that changes it is refused by name.
    again = run_script("train.py", "--data_path", tiny_mnist, *FLAGS[:2], "--epochs", 3, "--no_progress",
                       "--conv_impl", "native", "--global_batch_size", 24, "--batch_rampup", 8, 8, 64, "--resume",
                       "gradient_accumulation_state", cwd=tmp_path)
    # One key per setting: the ramp is the WindowedDataset's own setting, so the engine's name is the one recorded.
    assert_refused(again, "batch_rampup=[8, 8, 32] in the state vs [8, 8, 64] in this run")


@pytest.mark.parametrize("flags, words", [
    (("--global_batch_size", 100, "--mini_steps", 3), ["--global_batch_size 100, --batch_size 8 and --mini_steps 3",
                                                      "take 13 micro-steps"]),
    (("--global_batch_size", 4), ["--global_batch_size 4 is below the micro-batch, --batch_size 8"]),
    (("--global_batch_size", 16, "--batch_rampup", 16, 8, 100), ["--batch_rampup 16 8 100", "a ramp must increase"]),
    (("--batch_rampup", 8, 8, 100), ["--batch_rampup needs --global_batch_size"]),
    (("--accumulation_schedule", "1:2", "--mini_steps", 2), ["drop --mini_steps"]),
])
def test_bad_batch_settings_are_refused_in_one_line(tmp_path, tiny_mnist, flags, words):
    assert_refused(run_script("train.py", "--data_path", tiny_mnist, "--batch_size", 8, *flags, cwd=tmp_path), *words)


@pytest.mark.parametrize("flags, words", [
    (("--accumulation_schedule", "1:2,3:x"), ["'3:x' is not EPOCH:MINI_STEPS in whole numbers"]),
    (("--accumulation_schedule", "1:2,3:4,2:1"), ["are not increasing"]),
    (("--batch_rampup", 8, 2.5, 100), ["--batch_rampup: must be a whole number from 0 to 2147483647, got '2.5'"]),
    (("--global_batch_size", "1e2"), ["--global_batch_size"]),
])
def test_non_integer_and_unordered_entries_are_refused_by_the_parser(flags, words):
    result = parse_in_process("train.py", *flags)
    assert_refused(result, *words)


def test_train_model_py_refuses_the_schedules_it_cannot_count(tmp_path):
    assert_refused(parse_in_process("train_model.py", "--batch_rampup", 8, 8, 100), "--batch_rampup")


def test_train_model_py_resumes_a_global_batch_mid_window_bit_exact(tmp_path, tiny_mnist, initial):
    # Windows of 20 = 8 + 8 + 4 and the epoch's last 4: 10 micro-batches an epoch; micro-step 15 is in epoch 2's
    # second window.
    flags = ("--data_path", tiny_mnist, *FLAGS, "--global_batch_size", 20, "--init_ckpt", initial)
    whole = run_script("train_model.py", *flags, "--save_steps", 5, cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    resumed = run_script("train_model.py", *flags[:-2], "--ckpt_path", "again", "--resume",
                         tmp_path / "ckpt" / "train" / "train-2_5.ckpt", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at micro-step 15" in resumed.stdout
    expected = ms.load_checkpoint(str(tmp_path / "ckpt" / "lenet-2_10.ckpt"))
    actual = ms.load_checkpoint(str(tmp_path / "again" / "lenet-2_10.ckpt"))
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name].asnumpy(), value.asnumpy(), err_msg=name)
    # Control: the checkpoint it resumed from is behind the end.
    start = ms.load_checkpoint(str(tmp_path / "ckpt" / "train" / "train-2_5.ckpt"))
    assert not np.array_equal(start["network/conv1.weight"].asnumpy(), expected["conv1.weight"].asnumpy())
