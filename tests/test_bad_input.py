"""The issue's table of bad input, one test per row, through scripts/train.py and eval.py as a user runs them.

Every refusal is one line on stderr naming the argument or file, exit status 2,
no traceback; and nothing already saved is damaged.
"""

import os

import numpy as np
import pytest
from cli import assert_refused, parse_in_process, run_script
from idx import digits, write_split

from mindspore_accum import load_network_checkpoint, read_training_state
from model_zoo_adapters.lenet import LeNet5

QUICK = ("--batch_size", 8, "--epochs", 1, "--no_progress")


@pytest.mark.parametrize("damage, fragments", [
    ("magic", ("train-images-idx3-ubyte", "wrong magic number")),
    ("truncated", ("train-images-idx3-ubyte", "truncated")),
    ("label count", ("holds 40 images but", "train-labels-idx1-ubyte holds 39 labels")),
])
def test_idx_file_with_a_wrong_magic_number_truncated_or_a_label_count_mismatch(tmp_path, damage, fragments):
    images, labels = digits(40)
    if damage == "label count":
        labels = labels[:39]
    image_file, _ = write_split(tmp_path / "data", "train", images, labels)
    data = image_file.read_bytes()
    if damage == "magic":
        image_file.write_bytes(b"\x00\x00\x08\x01" + data[4:])
    elif damage == "truncated":
        image_file.write_bytes(data[:1000])
    assert_refused(run_script("train.py", "--data_path", tmp_path / "data", cwd=tmp_path), *fragments)


def test_batch_size_larger_than_the_dataset(tmp_path, tiny_mnist):
    result = run_script("train.py", "--data_path", tiny_mnist, "--batch_size", 65, cwd=tmp_path)
    assert_refused(result, "batch_size=65 is larger than the 64 samples", "use a batch_size of at most 64")


def test_mini_steps_larger_than_an_epoch_warns_that_every_update_is_partial_and_trains(tmp_path, tiny_mnist):
    result = run_script("train.py", "--data_path", tiny_mnist, "--batch_size", 32, "--mini_steps", 5, "--epochs", 1,
                        "--no_progress", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert ("mini_steps=5 is larger than the 2 micro-batches of an epoch: every update is a partial window of 2 "
            "micro-batches (flushed at the epoch's end)") in result.stdout, result.stdout
    assert "epoch: 1 step: 1 loss is" in result.stdout  # it went on and made its one update
    assert (tmp_path / "gradient_accumulation.ckpt").is_file()


def test_a_checkpoint_directory_that_cannot_be_written_fails_before_training(tmp_path, tiny_mnist):
    (tmp_path / "a_file").write_text("not a directory")
    result = run_script("train.py", "--data_path", tiny_mnist, *QUICK, "--ckpt_path", tmp_path / "a_file" / "m.ckpt",
                        cwd=tmp_path)
    assert_refused(result, "cannot create the checkpoint directory", "a_file")
    assert "step:" not in result.stdout and "saved" not in result.stdout, result.stdout  # nothing trained


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_mnist):
    """A finished run: its model checkpoint and training states."""
    directory = tmp_path_factory.mktemp("trained")
    result = run_script("train.py", "--data_path", tiny_mnist, *QUICK, "--mini_steps", 2, "--ckpt_path",
                        directory / "m.ckpt", cwd=directory)
    assert result.returncode == 0, result.stderr
    return directory


@pytest.mark.parametrize("script", ["eval.py", "train.py --resume"])
@pytest.mark.parametrize("damage", ["not a checkpoint", "truncated"])
def test_a_checkpoint_that_is_not_a_mindspore_checkpoint_or_is_truncated_is_refused_by_name(
        tmp_path, tiny_mnist, trained, script, damage):
    good = trained / ("m.ckpt" if script == "eval.py" else "m_state/state-1_8.ckpt")
    data = good.read_bytes()
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"this is not a checkpoint\n" * 40 if damage == "not a checkpoint" else data[:len(data) * 2 // 3])
    if script == "eval.py":
        result = run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path", bad, cwd=tmp_path)
    else:
        result = run_script("train.py", "--data_path", tiny_mnist, *QUICK, "--mini_steps", 2, "--resume", bad,
                            cwd=tmp_path)
    assert_refused(result, str(bad), "is not a readable MindSpore checkpoint")


def test_a_non_finite_loss_stops_with_epoch_and_step_and_keeps_the_last_good_state(tmp_path, tiny_mnist):
    args = ("--data_path", tiny_mnist, "--batch_size", 8, "--mini_steps", 2, "--no_progress", "--log_every", 1)
    good = run_script("train.py", *args, "--epochs", 1, cwd=tmp_path)
    assert good.returncode == 0, good.stderr
    model_ckpt = (tmp_path / "gradient_accumulation.ckpt").read_bytes()
    # lr 1e6 sends the weights to ~1e5 after one update: the next micro-batch's logits overflow.
    result = run_script("train.py", *args, "--epochs", 2, "--lr", 1e6, "--save_every", 1, cwd=tmp_path)
    # Read when the window closes, from the buffer. The log-softmax loss (issue 30) stays finite one update longer
    # than SoftmaxCrossEntropyWithLogits did: the third window's is NaN.
    assert_refused(result, "the window's loss is ", " at epoch 1, micro-batch 6 (in update 3 of the epoch, "
                   "micro-batches 5-6): training stopped",
                   "the last good training state", "state-1_4.ckpt, is kept")
    state, tensors = read_training_state(tmp_path / "gradient_accumulation_state" / "state-1_4.ckpt")
    assert state.progress.total_updates == 2 and all(np.isfinite(t.asnumpy()).all() for t in tensors.values())
    assert (tmp_path / "gradient_accumulation.ckpt").read_bytes() == model_ckpt, "the good checkpoint was replaced"
    load_network_checkpoint(LeNet5(), str(tmp_path / "gradient_accumulation.ckpt"))


@pytest.mark.parametrize("flag, value, fragment", [
    ("--lr", "0", "argument --lr: must be a finite number > 0, got '0'"),
    ("--lr", "-0.1", "argument --lr: must be a finite number > 0, got '-0.1'"),
    ("--epochs", "0", "argument --epochs: must be a whole number from 1 to 2147483647, got '0'"),
    ("--device_target", "TPU", "argument --device_target: invalid choice: 'TPU'"),
    ("--save_every", "0", "argument --save_every: must be a whole number from 1 to 2147483647, got '0'"),
    ("--keep_checkpoints", "-2", "argument --keep_checkpoints: must be a whole number from 1 to 2147483647, got '-2'"),
    ("--amp_level", "O4", "argument --amp_level: invalid choice: 'O4' (choose from 'O0', 'O1', 'O2', 'O3')"),
    ("--clip_grad_norm", "0", "argument --clip_grad_norm: must be a finite number > 0, got '0'"),
    ("--clip_grad_norm", "-1", "argument --clip_grad_norm: must be a finite number > 0, got '-1'"),
    ("--warmup_steps", "-1", "argument --warmup_steps: must be a whole number from 0 to 2147483647, got '-1'"),
    ("--lr_schedule", "linear", "argument --lr_schedule: invalid choice: 'linear'"),
])
def test_lr_epochs_device_target_and_other_flags_out_of_range_are_refused(tiny_mnist, flag, value, fragment):
    """argparse's refusals, in this process; test_cli.py runs one as a user does."""
    assert_refused(parse_in_process("train.py", "--data_path", tiny_mnist, f"{flag}={value}"), fragment)


@pytest.mark.parametrize("change, fragment", [
    (("--mini_steps", 3), "mini_steps=2 in the state vs 3 in this run"),
    (("--batch_size", 16), "batch_size=8 in the state vs 16 in this run"),
    (("--num_samples", 48), "micro_batches_per_epoch=8 in the state vs 6 in this run"),
    (("--seed", 7), "seed=1 in the state vs 7 in this run"),
    # Issue 15 (4): these were silently replaced by the state's values.
    (("--lr", 0.5), "learning_rate 0.01 in the state vs 0.5 in this run"),
    (("--momentum", 0.5), "momentum 0.9 in the state vs 0.5 in this run"),
    (("--lr_schedule", "cosine"), "learning_rate 0.01 in the state vs (a schedule of 8 rates, 0.01 to"),
    (("--amp_level", "O2"), "amp_level='O0' in the state vs 'O2' in this run"),
    (("--clip_grad_norm", 1.0), "clip_grad_norm=None in the state vs 1.0 in this run"),
    (("--warmup_steps", 2), "learning_rate 0.01 in the state vs (a schedule of 8 rates, 0.005 to 0.01)"),
    (("--optimizer", "adamw"), "optimizer='Momentum' in the state vs 'AdamW' in this run"),
    (("--weight_decay", 0.01), "optimizer='Momentum' in the state vs 'Momentum(weight_decay=0.01)' in this run"),
])
def test_resume_refuses_a_state_that_does_not_fit_naming_the_difference(tmp_path, tiny_mnist, trained, change,
                                                                         fragment):
    settings = {"--batch_size": 8, "--mini_steps": 2, "--epochs": 2, **dict([change])}
    args = [item for pair in settings.items() for item in pair]
    result = run_script("train.py", "--data_path", tiny_mnist, "--no_progress", *args, "--resume",
                        trained / "m_state", cwd=tmp_path)
    assert_refused(result, "cannot resume from", "state-1_8.ckpt", "does not fit this run", fragment)
    assert not os.path.exists(tmp_path / "gradient_accumulation.ckpt")


def test_resume_with_more_epochs_at_a_constant_rate_is_accepted(tmp_path, tiny_mnist, trained):
    """The control for the refusals above: --epochs may grow (it counts in all), nothing else changed."""
    result = run_script("train.py", "--data_path", tiny_mnist, "--no_progress", "--batch_size", 8, "--mini_steps", 2,
                        "--epochs", 3, "--resume", trained / "m_state", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_each_optimizer_trains_from_the_command_line_and_momentum_is_refused_for_the_others(tmp_path, tiny_mnist):
    result = run_script("train.py", "--data_path", tiny_mnist, *QUICK, "--optimizer", "adamw", "--lr", "0.001",
                        "--weight_decay", "0.01", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "lr: 0.001, optimizer: adamw, weight_decay: 0.01" in result.stdout
    assert_refused(run_script("train.py", "--data_path", tiny_mnist, *QUICK, "--optimizer", "sgd", "--momentum", 0.5,
                              cwd=tmp_path), "--momentum applies to --optimizer momentum, not sgd")


@pytest.mark.parametrize("flags, fragments", [
    (("--model", "lenet", "--dataset", "cifar10"), ("--model lenet takes 1-channel", "--dataset cifar10 has 3-channel",
                                                    "use --model resnet18")),
    (("--model", "resnet18", "--gn_groups", 4), ("--gn_groups applies to a mindcv network with --norm group",)),
    (("--model", "resnet18", "--augment", "spin"), ("argument --augment: unknown augmentation 'spin'",)),
    (("--model", "notanet"), ("argument --model: invalid choice: 'notanet'",)),
    (("--model", "resnet18", "--num_classes", 5), ("--num_classes 5 is fewer than the 10 classes",
                                                  "pass --num_classes 10")),
    (("--model", "lenet", "--image_size", 64), ("--image_size 64 does not fit --model lenet",)),
    (("--model", "lenet", "--norm", "group"), ("--norm group applies to the ResNets",)),
])
def test_a_model_and_dataset_that_do_not_fit_together_are_refused(tmp_path, tiny_cifar10, flags, fragments):
    assert_refused(run_script("train.py", "--data_path", tiny_cifar10, *flags, cwd=tmp_path), *fragments)


def test_cifar10_without_training_files_or_with_a_truncated_one_is_refused_by_name(tmp_path, tiny_cifar10):
    (tmp_path / "only_test").mkdir()
    os.symlink(os.path.join(tiny_cifar10, "test_batch.bin"), tmp_path / "only_test" / "test_batch.bin")
    result = run_script("train.py", "--model", "resnet18", "--data_path", tmp_path / "only_test", cwd=tmp_path)
    assert_refused(result, "has no CIFAR-10 train files: expected data_batch_*.bin")

    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "data_batch_1.bin").write_bytes(b"\x01" * 3073 * 20)
    result = run_script("train.py", "--model", "resnet18", "--data_path", tmp_path / "cut", cwd=tmp_path)
    assert_refused(result, "data_batch_1.bin has 61460 bytes", "truncated or not CIFAR-10's binary version")


def test_an_image_folder_without_class_subfolders_is_refused(tmp_path):
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "0.jpg").write_bytes(b"not really")
    result = run_script("train.py", "--model", "resnet18", "--dataset", "imagefolder", "--data_path",
                        tmp_path / "flat", cwd=tmp_path)
    assert_refused(result, "has no class subfolders", "<data_path>/<class name>/")


@pytest.mark.parametrize("label", [10, 12, 200])
def test_an_mnist_label_out_of_range_is_refused_by_name_and_sample(tmp_path, label):
    """Issue 15 (6): 12 and 200 ended in a loss-kernel traceback; 10 trained silently (the CPU kernel doesn't check)."""
    images, labels = digits(40)
    labels[37] = label
    _, label_file = write_split(tmp_path / "data", "train", images, labels)
    result = run_script("train.py", "--data_path", tmp_path / "data", *QUICK, cwd=tmp_path)
    assert_refused(result, str(label_file), f"sample 37 has label {label}, outside 0..9 for 10 classes",
                   f"--num_classes {label + 1}")
    assert not (tmp_path / "gradient_accumulation.ckpt").exists()


def test_a_label_within_num_classes_is_accepted(tmp_path):
    """The control: the bound is --num_classes, not a constant 10."""
    images, labels = digits(40)
    labels[37] = 10
    write_split(tmp_path / "data", "train", images, labels)
    result = run_script("train.py", "--data_path", tmp_path / "data", *QUICK, "--num_classes", 11, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_a_cifar10_label_out_of_range_is_refused_by_name_and_sample(tmp_path):
    from images import write_cifar10

    from model_zoo_adapters.image_files import CIFAR10_RECORD_BYTES
    data = write_cifar10(tmp_path, train_files=1, seed=4)
    path = os.path.join(data, "data_batch_1.bin")
    records = np.fromfile(path, np.uint8).reshape(-1, CIFAR10_RECORD_BYTES)
    records[4321, 0] = 10
    records.tofile(path)
    result = run_script("train.py", "--model", "resnet18", "--norm", "group", "--image_size", 32, "--data_path", data,
                        "--num_samples", 16, *QUICK, cwd=tmp_path)
    assert_refused(result, path, "sample 4321 has label 10, outside 0..9 for 10 classes")


@pytest.mark.parametrize("flags, fragments", [
    (("--ckpt_path", "/proc/m.ckpt"), ("the checkpoint directory '/proc' cannot be written", "--ckpt_path")),
    (("--ckpt_path", "out/m.ckpt", "--grad_flow_every", 1), ("cannot create the gradient-flow directory",
                                                             "out/grad_flow")),
])
def test_every_output_is_checked_before_the_data_is_read(tmp_path, flags, fragments):
    """Issue 15 (8): /proc/m.ckpt failed only after the data and network were built, on '/proc/metrics.jsonl'.

    --data_path names nothing, so a refusal about the output proves the outputs are checked first.
    """
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "grad_flow").write_text("a file where the directory goes")
    result = run_script("train.py", "--data_path", tmp_path / "no_data", *flags, cwd=tmp_path)
    assert_refused(result, *fragments)


def test_a_corrupt_newest_state_is_refused_in_one_line_naming_the_newest_intact_one(tmp_path, tiny_mnist):
    """Issue 22 (12): MindSpore's own [ERROR] line came first, and the intact older state went unnamed."""
    flags = ("--data_path", tiny_mnist, "--batch_size", 8, "--mini_steps", 2, "--no_progress")
    first = run_script("train.py", *flags, "--epochs", 2, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    states = tmp_path / "gradient_accumulation_state"
    newest = states / "state-2_8.ckpt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x55
    newest.write_bytes(bytes(data))
    result = run_script("train.py", *flags, "--epochs", 3, "--resume", states, cwd=tmp_path)
    assert_refused(result, "state-2_8.ckpt' is not a readable MindSpore checkpoint",
                   f"the newest intact state beside it is {states / 'state-1_8.ckpt'}: resume with --resume "
                   f"{states / 'state-1_8.ckpt'}")
    assert [line for line in result.stderr.splitlines() if line.strip()] == [result.stderr.strip()], result.stderr


# Issue 30: the last inputs that ended in a traceback or a misleading line.

TEXT = "\n\n".join(f"Paragraph {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 3)
                   for i in range(30))
GPT = ("--model", "gpt_tiny", "--seq_len", 16, "--batch_size", 4, "--epochs", 1, "--no_progress")


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def write_jsonl(path, labels, prefix=""):
    import json
    path.write_text(prefix + "".join(json.dumps({"text": f"text number {i} " * 3, "label": label}) + "\n"
                                     for i, label in enumerate(labels)), encoding="utf-8")
    return path


def test_a_text_batch_larger_than_the_data_is_refused(tmp_path, corpus):
    result = run_script("train.py", "--data_path", corpus, *GPT[:4], "--batch_size", 200000, cwd=tmp_path)
    assert_refused(result, "batch_size=200000 is larger than the", "sequences of", "use a batch_size of at most")


def test_bucket_is_refused_for_bert_whose_texts_are_padded_as_they_come(tmp_path):
    result = run_script("train.py", "--model", "bert_tiny", "--bucket", cwd=tmp_path)
    assert_refused(result, "--bucket groups a language model's sequences", "drop --bucket")


def test_adding_bucket_on_resume_names_bucket_not_the_batch_size(tmp_path, corpus):
    first = run_script("train.py", "--data_path", corpus, *GPT, "--ckpt_path", "gpt.ckpt", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    again = run_script("train.py", "--data_path", corpus, *GPT[:-3], "--epochs", 2, "--no_progress", "--bucket",
                       "--ckpt_path", "gpt.ckpt", "--resume", "gpt_state", cwd=tmp_path)
    # The flag first; what it changes in the pipeline (no fixed micro-batch, other sizes) follows it.
    assert_refused(again, "it does not fit this run: --bucket=False in the state vs True in this run; ")
    assert "batch_size=4 in the state vs 1" not in again.stderr  # the bucketed pipeline's meaningless size
    # Control: resuming as it ran is accepted.
    same = run_script("train.py", "--data_path", corpus, *GPT[:-3], "--epochs", 2, "--no_progress", "--ckpt_path",
                      "gpt.ckpt", "--resume", "gpt_state", cwd=tmp_path)
    assert same.returncode == 0, same.stderr


def test_a_corpus_of_fewer_than_10_paragraphs_names_the_empty_held_out_split(tmp_path):
    (tmp_path / "short.txt").write_text("\n\n".join(["a paragraph long enough to count " * 2] * 9), encoding="utf-8")
    result = run_script("train.py", *GPT, "--data_path", tmp_path / "short.txt", "--eval_every_epoch", cwd=tmp_path)
    assert_refused(result, "short.txt: its 9 paragraphs leave the held-out split empty", "give at least 10")


@pytest.mark.parametrize("label, fragments", [
    (10 ** 18, ("data.jsonl:3: label 1000000000000000000 is beyond 2147483646",)),
])
def test_a_jsonl_label_too_large_is_refused_by_file_and_line(tmp_path, label, fragments):
    path = write_jsonl(tmp_path / "data.jsonl", [0, 1, label, 2])
    result = run_script("train.py", "--model", "bert_tiny", "--data_path", path, cwd=tmp_path)
    assert_refused(result, *fragments)
    assert "CRITICAL" not in result.stderr


def test_gn_groups_that_do_not_divide_name_the_flag_and_the_counts_that_do(tmp_path, tiny_cifar10):
    pytest.importorskip("mindcv")
    result = run_script("train.py", "--model", "mindcv:resnet18", "--norm", "group", "--gn_groups", 3,
                        "--data_path", tiny_cifar10, "--image_size", 32, "--num_samples", 16, "--batch_size", 8,
                        cwd=tmp_path)
    assert_refused(result, "--gn_groups 3 does not divide the 64 channels", "here 1, 2, 4, 8, 16, 32, 64")
    assert "num_groups" not in result.stderr


def test_a_byte_order_mark_is_no_text(tmp_path):
    path = write_jsonl(tmp_path / "bom.jsonl", [0, 1, 2] * 4, prefix="\ufeff")
    result = run_script("train.py", "--model", "bert_tiny", "--data_path", path, "--batch_size", 4, "--epochs", 1,
                        "--no_progress", "--ckpt_path", "b.ckpt", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # Control: the same file with a mark in the middle of line 1 is still refused at that line.
    path.write_text('{"text": "a", \ufeff"label": 0}\n', encoding="utf-8")
    assert_refused(run_script("train.py", "--model", "bert_tiny", "--data_path", path, cwd=tmp_path),
                   "bom.jsonl:1: not a JSON object")


def test_a_jsonl_file_given_to_a_language_model_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "labelled.jsonl", [0, 1] * 6)
    result = run_script("train.py", *GPT[:2], "--data_path", path, cwd=tmp_path)
    assert_refused(result, "labelled.jsonl' holds labelled JSON lines", "give a .txt file")


def test_plot_py_on_a_binary_file_names_the_file(tmp_path):
    import subprocess
    import sys
    (tmp_path / "model.ckpt").write_bytes(bytes(range(256)) * 4)
    result = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts",
                                                          "plot.py"), "--metrics", str(tmp_path / "model.ckpt"),
                             "--out", str(tmp_path / "plots")], capture_output=True, text=True)
    assert_refused(result, "model.ckpt", "not a text file")


def test_eval_takes_the_class_count_from_the_checkpoint_not_the_test_split(tmp_path):
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "train.jsonl", [0, 1, 2, 3, 4] * 4)
    write_jsonl(tmp_path / "data" / "valid.jsonl", [0, 1, 2, 1])  # three classes shown, the run has five
    trained = run_script("train.py", "--model", "bert_tiny", "--data_path", tmp_path / "data", "--batch_size", 4,
                         "--epochs", 1, "--no_progress", "--ckpt_path", "bert.ckpt", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    evaluated = run_script("eval.py", "--model", "bert_tiny", "--data_path", tmp_path / "data", "--ckpt_path",
                           "bert.ckpt", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert evaluated.stdout.strip().splitlines()[-1].startswith("{'Accuracy': ")
    # Control: the three classes stated by hand do not fit the checkpoint, and say so.
    forced = run_script("eval.py", "--model", "bert_tiny", "--data_path", tmp_path / "data", "--ckpt_path",
                        "bert.ckpt", "--num_classes", 3, cwd=tmp_path)
    assert_refused(forced, "does not fit", "(5,) in the file vs (3,)")


def test_eval_on_an_ema_training_state_says_which_weights_it_scored(tmp_path, tiny_mnist):
    trained = run_script("train.py", "--data_path", tiny_mnist, *QUICK, "--ema_decay", 0.5, "--ckpt_path", "m.ckpt",
                         cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    state = tmp_path / "m_state"
    raw = run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path", state, cwd=tmp_path)
    assert raw.returncode == 0, raw.stderr
    assert "scored: the raw weights in" in raw.stdout and "--weights ema scores that" in raw.stdout
    average = run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path", state, "--weights", "ema",
                         cwd=tmp_path)
    model = run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path", "m.ckpt", cwd=tmp_path)
    # Reference: the model checkpoint holds the averages; scored alike, to the printed digit.
    assert average.stdout.splitlines()[-2:] == model.stdout.splitlines()[-2:], (average.stdout, model.stdout)
    assert raw.stdout.splitlines()[-2] != model.stdout.splitlines()[-2]  # control: the raw weights score otherwise
    assert_refused(run_script("eval.py", "--data_path", tiny_mnist, "--ckpt_path", "m.ckpt", "--weights", "ema",
                              cwd=tmp_path), "is a model checkpoint", "drop --weights ema")


def test_a_loss_beyond_float32_softmax_range_trains_instead_of_reading_as_divergence():
    """Issue 30 (13): the true class's logit 1400 below the top one. The scripts' loss (log-softmax) gives the
    finite value NumPy gives in float64; MindSpore's SoftmaxCrossEntropyWithLogits (the control) reads inf."""
    from mindspore import Tensor, nn

    from mindspore_accum import GradientAccumulation, NonFiniteError, SaveConfig
    from model_zoo_adapters.registry import TASKS
    from nets import MLP

    data = np.zeros((2, 8), np.float32)
    data[:, 0] = 1.0
    labels = np.array([0, 1], np.int32)

    def network():
        net = MLP()
        for param in net.get_parameters():
            param.set_data(Tensor(np.zeros(param.shape, np.float32)))
        net.fc2.bias.set_data(Tensor(np.array([0.0, 1400.0, 5.0, 0.0], np.float32)))  # class 0 far below
        return net

    batches = [(Tensor(data), Tensor(labels))]
    logits = np.array([[0.0, 1400.0, 5.0, 0.0]] * 2)
    log_softmax = logits - logits.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    expected = -log_softmax[np.arange(2), labels].mean()  # 700.0
    net = network()
    history = GradientAccumulation(net, TASKS["image"].loss(), nn.SGD(net.trainable_params(), 1e-3)).train_process(
        1, batches, mini_steps=1, save=SaveConfig(ckpt_path=None), log_every=None)
    assert history[0].loss == pytest.approx(expected, rel=1e-6) and not history[0].skipped
    control = network()
    with pytest.raises(NonFiniteError, match="loss"):
        GradientAccumulation(control, nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean"),
                             nn.SGD(control.trainable_params(), 1e-3)).train_process(
            1, batches, mini_steps=1, save=SaveConfig(ckpt_path=None), log_every=None)


def test_a_second_sigterm_exits_143_as_the_first_and_a_second_sigint_130():
    """Issue 30 (11): a second SIGTERM during train_model.py's save exited 130, "interrupted".

    The real handler (StopSignals) takes two signals; the scripts' run() turns the abort into the shell's status.
    """
    import signal

    from mindspore_accum.run.signals import AbortedBySignal, StopSignals
    from report import run

    for signum, status in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        def main(signum=signum):
            with StopSignals() as stop:
                os.kill(os.getpid(), signum)  # the first: recorded, training would save and stop
                assert stop.signum == signum
                os.kill(os.getpid(), signum)  # the second, mid-save: aborts at once

        with pytest.raises(SystemExit) as exited:
            run(main)
        assert exited.value.code == status, signal.Signals(signum).name
    with pytest.raises(AbortedBySignal):  # a KeyboardInterrupt, as Python's own Ctrl-C
        with StopSignals():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("flags, fragments", [
    (("--model", "gpt_tiny", "--seq_len", 10 ** 7), ("--seq_len 10000000 needs at least 191,107,392 GiB",
                                                     "attention scores", "use a --seq_len of at most")),
    (("--model", "bert_tiny", "--num_classes", 10 ** 9), ("--num_classes 1000000000 needs at least 969 GiB",
                                                          "a head of 1000000000 classes x 64 inputs")),
    (("--model", "efficientnet_b0", "--image_size", 10 ** 7), ("--image_size 10000000 needs at least 35,762,787 GiB",
                                                               "use an --image_size of at most")),
])
def test_absurd_sizes_are_refused_with_an_estimate_before_anything_is_allocated(tmp_path, tiny_cifar10, flags,
                                                                              fragments):
    """Issue 30 (1): --seq_len 100000, --num_classes 10^9 and --image_size 100000 ended in MemoryError or
    RuntimeError here; ten to a hundred times those, so that no machine holds them. The estimates, worked by hand,
    at the default micro-batch of 32: (10^7)^2 x (2 x 2 layers x 4 heads x 32 + 1) x 4 bytes (scores, softmax and
    the causal mask); 10^9 x (64 + 1) x 4 bytes x 4 (weight, gradient, buffer, momentum); 32 x 3 x (10^7)^2 x 4
    bytes (mindcv's network says nothing of its activations: the input alone)."""
    data = ("--data_path", tiny_cifar10) if "efficientnet_b0" in flags else ()
    assert_refused(run_script("train.py", *flags, *data, cwd=tmp_path), *fragments)


def test_a_jsonl_label_of_a_billion_is_refused_with_the_head_it_would_need(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [0, 1, 2 * 10 ** 9, 2])  # (2e9 + 1) x 65 x 4 bytes x 4 = 1,937 GiB
    result = run_script("train.py", "--model", "bert_tiny", "--data_path", path, cwd=tmp_path)
    assert_refused(result, "the labels of", "data.jsonl (up to 2000000000) needs at least 1,937 GiB",
                   "number the classes from 0")
    # Control: a label the machine can hold trains on.
    write_jsonl(tmp_path / "data.jsonl", [0, 1, 2, 3] * 3)
    fits = run_script("train.py", "--model", "bert_tiny", "--data_path", path, "--batch_size", 4, "--epochs", 1,
                      "--no_progress", "--ckpt_path", "b.ckpt", cwd=tmp_path)
    assert fits.returncode == 0, fits.stderr


# Issue 37: a hostile test's findings. Each test would have failed before its fix (the issue quotes the output).

USER_MODULE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "user_nets.py")
USER_RUN = ("--user_module", USER_MODULE, "--model", "user_mlp", "--batch_size", 8, "--no_progress")


def test_a_resume_onto_other_data_without_a_fingerprint_is_refused_by_the_datas_name(tmp_path):
    """Item 1: user_random makes its data from the --data_path name, so no file can be hashed; before, the record
    held data: None on both sides and a resume onto other data went on. Control: the same name resumes."""
    first = run_script("train.py", *USER_RUN, "--data_path", "setA", "--epochs", 1, "--ckpt_path", "r/dd.ckpt",
                       cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    other = run_script("train.py", *USER_RUN, "--data_path", "otherB", "--epochs", 2, "--ckpt_path", "r/dd.ckpt",
                       "--resume", "r/dd_state", cwd=tmp_path)
    assert_refused(other, "does not fit this run: data=", "--data_path 'setA' (no file or directory: compared by its "
                   "name)", "--data_path 'otherB'")
    same = run_script("train.py", *USER_RUN, "--data_path", "setA", "--epochs", 2, "--ckpt_path", "r/dd.ckpt",
                      "--resume", "r/dd_state", cwd=tmp_path)
    assert same.returncode == 0 and "resuming from" in same.stdout, same.stderr


def test_momentum_given_with_an_optimizer_without_one_is_refused_whatever_its_value(tmp_path, tiny_mnist):
    """Item 2: `--optimizer sgd --momentum 0.9` (the default's value) was silently dropped; `was it given?` was
    tested as `!= 0.9`. Control: --optimizer momentum takes it, and sgd without it trains."""
    given = run_script("train.py", "--data_path", tiny_mnist, *QUICK, "--optimizer", "sgd", "--momentum", 0.9,
                       cwd=tmp_path)
    assert_refused(given, "--momentum applies to --optimizer momentum, not sgd, which has none (given --momentum 0.9)")
    plain = run_script("train.py", "--data_path", tiny_mnist, *QUICK, "--optimizer", "sgd", "--ckpt_path", "s.ckpt",
                       cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr


@pytest.mark.parametrize("schedule, entry", [("1:2,1:4", "epoch 1 is given twice (1:2 and 1:4)"),
                                             ("1:2,2:4,2:1", "epoch 2 is given twice (2:4 and 2:1)")])
def test_an_accumulation_schedule_that_repeats_an_epoch_is_refused(schedule, entry):
    """Item 3: the last entry won. Control: each epoch once parses."""
    assert_refused(parse_in_process("train.py", "--accumulation_schedule", schedule), entry)
    assert parse_in_process("train.py", "--accumulation_schedule", "1:2,2:4").returncode == 0


def integer_flags(script):
    """Every flag of ``script`` whose values are whole numbers, with how many it takes."""
    from flags import non_negative_int, positive_int, seed_int
    parser = _parser_of(script)
    types = (positive_int, non_negative_int, seed_int)
    return [(action.option_strings[0], action.nargs or 1) for action in parser._actions
            if action.type in types]


def _parser_of(script):
    """The script's parser, as its parse_args builds it (captured, not run)."""
    import argparse
    from unittest import mock
    captured = {}
    original = argparse.ArgumentParser.parse_args

    def capture(parser, args=None, namespace=None):
        captured["parser"] = parser
        return original(parser, [], namespace)
    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture):
        parse_in_process(script)
    return captured["parser"]


@pytest.mark.parametrize("script", ["train.py", "train_model.py"])
def test_ten_to_the_twentieth_in_every_integer_flag_is_one_line_naming_the_flag(script):
    """Items 6-8: 10^20 raised MemoryError, a C++ cast error, or MindSpore's words; every refusal printed the
    23-line usage block first. Reference: the flags whose type is a whole number, read off the parser."""
    flags = integer_flags(script)
    assert {"--mini_steps", "--batch_size", "--epochs", "--seed", "--num_samples"} <= {f for f, _ in flags}, flags
    for flag, count in flags:
        result = parse_in_process(script, flag, *[10 ** 20] * (count if isinstance(count, int) else 1))
        assert_refused(result, f"argument {flag}", "100000000000000000000", " --help)")  # prog: in-process


@pytest.mark.parametrize("args, fragment", [
    (("--accumulation_schedule", "1:99999999999999999999"), "argument --accumulation_schedule: '1:9999"),
    (("--seed", -1), "argument --seed: must be a whole number from 0 to 4294967295, got '-1'"),
    (("--seed", "1e20"), "argument --seed"),
    (("--mini_steps", "1e20"), "argument --mini_steps"),
])
def test_numbers_out_of_range_are_refused_by_the_parser_naming_the_flag(args, fragment):
    """Item 7: these gave "cannot fit 'int' into an index-sized integer", "ufunc 'isinf' not supported" or
    MindSpore's "'seed' must be int and must >= 0"."""
    assert_refused(parse_in_process("train.py", *args), fragment)


def test_a_batch_too_large_for_memory_names_batch_size_and_a_schedule_too_long_names_epochs(tmp_path, tiny_mnist):
    """Item 7: --batch_size 10^20 was blamed on --image_size ("at most 0"); LeNet5's image size is fixed, so the
    fix is the batch. A cosine schedule over 2^31 epochs built its list of rates until the process died."""
    import psutil
    result = run_script("train.py", "--data_path", tiny_mnist, "--batch_size", 2 ** 31 - 1, cwd=tmp_path)
    largest = psutil.virtual_memory().total // 2 // (32 * 32 * 1 * 4)  # by hand: 1-channel 32x32 float32 images
    assert_refused(result, "--batch_size 2147483647 needs at least 8,192 GiB",
                   f"use a --batch_size of at most {largest:,}")
    long = run_script("train.py", "--data_path", tiny_mnist, *QUICK, "--epochs", 2 ** 31 - 1, "--lr_schedule",
                      "cosine", cwd=tmp_path)
    # By hand: 64 samples in micro-batches of 8, mini_steps 4: 2 updates an epoch; 2^24 / 2 epochs at most.
    assert_refused(long, "--lr_schedule cosine over 4,294,967,294 updates", "use fewer --epochs (at most 8,388,608)")


@pytest.mark.parametrize("flags, fragments", [
    # Item 4: LeNet5's head is 84 wide, not 16: 10^8 x 85 x 4 bytes x 4 copies (weight, gradient, buffer, momentum).
    (("--num_classes", 10 ** 8), ("--num_classes 100000000 needs at least 127 GiB", "x 84 inputs, 4 copies")),
    # Item 4: the stem's activations, not the input alone: 4 x 20000^2 x (1 + 48) x 4 bytes.
    (("--model", "resnet18", "--norm", "group", "--dataset", "mnist", "--image_size", 20000, "--batch_size", 4),
     ("--image_size 20000 needs at least 292 GiB", "48 activations per pixel")),
])
def test_the_memory_estimate_counts_the_heads_width_and_the_activations(tmp_path, tiny_mnist, flags, fragments):
    """Item 4: both were accepted and then crashed (numpy's 31.3 GiB array; the OOM killer, exit 137). The
    figures are worked by hand in the comments; the suggestion must itself fit in half the machine."""
    result = run_script("train.py", "--data_path", tiny_mnist, *flags, cwd=tmp_path)
    assert_refused(result, *fragments)
    suggested = int(result.stderr.rsplit("at most ", 1)[1].split()[0].rstrip(",").replace(",", ""))
    import psutil
    per = 4 * 85 * 4 if "--num_classes" in flags else 4 * (1 + 48) * 4
    needs = suggested * per if "--num_classes" in flags else suggested ** 2 * per
    assert needs <= psutil.virtual_memory().total // 2, (suggested, needs)


def test_bert_with_a_sequence_length_the_old_estimate_refused_trains(tmp_path):
    """Item 5: bert pads each micro-batch to its own longest text and builds no seq_len x seq_len tensor, so
    --seq_len 100000 (refused before as 149 GiB of attention scores) trains on the 110 labelled samples. Control:
    gpt_tiny, which does build them, is still refused."""
    fits = run_script("train.py", "--model", "bert_tiny", "--seq_len", 100000, "--batch_size", 8, "--epochs", 1,
                      "--num_samples", 16, "--no_progress", "--ckpt_path", "b.ckpt", cwd=tmp_path)
    assert fits.returncode == 0, fits.stderr
    assert_refused(run_script("train.py", "--model", "gpt_tiny", "--seq_len", 100000, cwd=tmp_path),
                   "--seq_len 100000 needs at least", "attention scores")


def test_resume_from_a_directory_takes_the_furthest_state_not_the_last_written(tmp_path, tiny_mnist):
    """Item 9: after `cp -r` every file has a fresh time, and the resume went back to epoch 1. Reference: the
    positions in the names. Control: by write time, the epoch-1 state would be picked."""
    from mindspore_accum.run.files import files_in
    from mindspore_accum.run.state import DRIVER, find_resume_file
    result = run_script("train.py", "--data_path", tiny_mnist, *QUICK, "--epochs", 2, "--ckpt_path", "m.ckpt",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    states = tmp_path / "m_state"
    first, second = states / "state-1_8.ckpt", states / "state-2_8.ckpt"
    os.utime(second, (1, 1))  # as a copy may leave them: the furthest state is now the oldest written
    assert max(files_in(states), key=os.path.getmtime) == str(first), "the control needs epoch 1 written last"
    assert find_resume_file(str(states), DRIVER) == str(second)
    resumed = run_script("train.py", "--data_path", tiny_mnist, *QUICK, "--epochs", 3, "--ckpt_path", "m.ckpt",
                         "--resume", states, cwd=tmp_path)
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout and "state-2_8.ckpt" in resumed.stdout, \
        resumed.stdout + resumed.stderr


@pytest.mark.parametrize("call, error, message", [
    (lambda r: r.create_model("lenet", image_size=64), ValueError, "image_size=64 does not fit 'lenet', which "
                                                                   "takes 32 only"),
    (lambda r: r.create_model("gpt_tiny", seq_len=0), ValueError, "seq_len must be a whole number >= 1, got 0"),
    (lambda r: r.create_model("gpt_tiny", seq_len=-5), ValueError, "seq_len must be a whole number >= 1, got -5"),
    (lambda r: r.create_model(None), TypeError, "the model's name must be a string such as 'lenet', got None"),
    (lambda r: r.create_model("lenet", num_classes=0), ValueError, "num_classes must be a whole number >= 1"),
    (lambda r: r.register_model(None), ValueError, "a model's name must be a non-empty string"),
    (lambda r: r.register_model(5), ValueError, "a model's name must be a non-empty string"),
    (lambda r: r.register_model("mindcv:x"), ValueError, "a model's name must be a non-empty string not starting "
                                                        "with 'mindcv:', got 'mindcv:x'"),
    (lambda r: r.register_model("zz", task="audio"), ValueError, "task 'audio' is none of image, lm, classify"),
    (lambda r: r.register_model("zz2")(5), TypeError, "register_model('zz2') decorates the function that builds"),
])
def test_the_registries_refuse_what_they_cannot_honour_by_the_argument(call, error, message):
    """Item 10: each was accepted (a 32x32 LeNet for image_size=64, seq_len 0 as 64) or failed in another's
    words (`'int' object is not callable` later). Control: nothing was registered by a refused call."""
    from model_zoo_adapters import registry
    before = set(registry.MODELS)
    with pytest.raises(error, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        call(registry)
    assert set(registry.MODELS) == before


def test_a_users_own_network_runs_through_user_module_and_eval_scores_it(tmp_path):
    """Item 10: registering "before training_parser" gave no way to run train.py. Control: without
    --user_module the name is no choice."""
    trained = run_script("train.py", *USER_RUN, "--data_path", "setA", "--epochs", 1, "--ckpt_path", "u.ckpt",
                         cwd=tmp_path)
    assert trained.returncode == 0 and "model: user_mlp" in trained.stdout, trained.stderr
    scored = run_script("eval.py", "--user_module", USER_MODULE, "--model", "user_mlp", "--data_path", "setA",
                        "--batch_size", 8, "--ckpt_path", "u.ckpt", cwd=tmp_path)
    assert scored.returncode == 0 and "Accuracy" in scored.stdout, scored.stderr
    assert_refused(parse_in_process("train.py", "--model", "user_mlp"), "argument --model: invalid choice: "
                                                                        "'user_mlp'")
    assert_refused(run_script("train.py", "--user_module", "no_such_module_here", cwd=tmp_path),
                   "--user_module no_such_module_here: importing it failed")


def test_a_warm_up_longer_than_the_run_warns_with_the_numbers(tmp_path, tiny_mnist):
    """Item 11: accepted without a word, so the rate never reached --lr. 64 samples in 8s, mini_steps 4: 2
    updates, and a rate of 0.01 x 2 / 1000 at the end. Control: a warm-up within the run says nothing."""
    result = run_script("train.py", "--data_path", tiny_mnist, *QUICK, "--warmup_steps", 1000, "--ckpt_path", "w.ckpt",
                        cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "--warmup_steps 1000 is longer than the run's 2 updates: the rate ends at 2e-05, never reaching --lr " \
           "0.01; use --warmup_steps 2 or fewer" in result.stdout, result.stdout
    within = run_script("train.py", "--data_path", tiny_mnist, *QUICK, "--warmup_steps", 2, "--ckpt_path", "w.ckpt",
                        cwd=tmp_path)
    assert within.returncode == 0 and "is longer than the run" not in within.stdout, within.stdout


def test_gpt_at_o2_trains_without_an_overflow_warning(tmp_path):
    """Item 12: the -1e9 attention mask, folded to float16 at compile time, printed `RuntimeWarning: overflow
    encountered in cast`. Run with warnings as errors: the warning would fail the run."""
    env = dict(os.environ, GLOG_v="3", PYTHONWARNINGS="error::RuntimeWarning")
    import subprocess
    import sys

    from cli import SCRIPTS
    result = subprocess.run([sys.executable, os.path.join(SCRIPTS, "train.py"), "--model", "gpt_tiny",
                             "--amp_level", "O2", "--epochs", "1", "--num_samples", "16", "--batch_size", "4",
                             "--no_progress", "--ckpt_path", "g.ckpt"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and "overflow" not in result.stderr, result.stderr[-2000:]


def test_train_model_prints_loss_lines_where_windows_close_with_a_global_batch(tmp_path, tiny_mnist):
    """Item 13: with windows of varying micro-batches, LossMonitor's every `log_every x mini_steps` micro-steps
    put lines mid-window from epoch 2 on. 64 samples, global batch 40 in micro-batches of 16: windows of 16+16+8
    and 16+8, so by hand the window ends are micro-steps 3 and 5 of every epoch (the old rule: 3, then 6 = epoch
    2's step 1, mid-window)."""
    result = run_script("train_model.py", "--data_path", tiny_mnist, "--global_batch_size", 40, "--batch_size", 16,
                        "--log_every", 1, "--epochs", 2, "--no_progress", "--ckpt_path", "ck", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line.split(", loss")[0] for line in result.stdout.splitlines() if "loss is" in line]
    assert lines == ["epoch: 1 step: 3", "epoch: 1 step: 5", "epoch: 2 step: 3", "epoch: 2 step: 5"], result.stdout


def test_a_driver_state_resumes_under_the_model_path_and_a_train_cell_checkpoint_is_refused_by_train_py(tmp_path,
                                                                                                      tiny_mnist):
    """Issue 38: one state format. train_model.py resumes train.py's state, mid-epoch, to the bit of train.py's
    uninterrupted run (the reference: the other engine, never interrupted). The reverse is refused by name,
    saying why: the train Cell keeps no update counts or records for the driver's to continue. Both kinds are
    read with MindSpore's own load_checkpoint and json. Controls: the Model path started from the state's
    weights alone (--init_ckpt) misses; each engine resumes its own; a model checkpoint is refused."""
    import json

    import mindspore as ms
    flags = ("--data_path", tiny_mnist, *QUICK, "--mini_steps", 3, "--epochs", 2)
    whole = run_script("train.py", *flags, "--save_every", 1, "--ckpt_path", "m.ckpt", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    made = run_script("train_model.py", *flags, "--epochs", 1, "--ckpt_path", "ck", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    state, cell = tmp_path / "m_state" / "state-2_3.ckpt", tmp_path / "ck" / "train" / "train-1_8.ckpt"
    kinds = [json.loads(ms.load_checkpoint(str(file))["mindspore_accum_training_state"]).get("kind")
             for file in (state, cell)]
    assert kinds == ["training state", "train-Cell checkpoint"], kinds
    expected = ms.load_checkpoint(str(tmp_path / "m.ckpt"))
    for how, out in (("--resume", "r"), ("--init_ckpt", "i")):
        other = run_script("train_model.py", *flags, "--ckpt_path", out, how, state, cwd=tmp_path)
        assert other.returncode == 0, other.stderr
        actual = ms.load_checkpoint(str(tmp_path / out / "lenet-2_8.ckpt"))
        same = [np.array_equal(actual[name].asnumpy(), value.asnumpy()) for name, value in expected.items()]
        assert all(same) if how == "--resume" else not any(same), (how, same)
    # The state directory's newest is the run's end, epoch 2's done: micro-step 16 of 16.
    assert_refused(run_script("train_model.py", *flags, "--ckpt_path", "r2", "--resume", state.parent, cwd=tmp_path),
                   "state-2_8.ckpt' is already at micro-step 16, the end of --epochs 2")
    for given in (cell, tmp_path / "ck"):  # the file, and the directory train_model.py wrote
        refused = run_script("train.py", *flags, "--ckpt_path", "m2.ckpt", "--resume", given, cwd=tmp_path)
        assert_refused(refused, "train-1_8.ckpt' is a train-Cell checkpoint, which train_model.py (Model.train) "
                                "writes and resumes; this engine resumes a training state, whose update counts and "
                                "records a train-Cell checkpoint does not keep: resume it with train_model.py, or "
                                "start afresh from its weights with --init_ckpt")
    for script, own, out in (("train.py", state, "m3.ckpt"), ("train_model.py", cell, "c3")):  # the controls
        resumed = run_script(script, *flags, "--ckpt_path", out, "--resume", own, cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
    refused = run_script("train_model.py", *flags, "--ckpt_path", "c4", "--resume", tmp_path / "m.ckpt",
                         cwd=tmp_path)
    assert_refused(refused, "m.ckpt' is a model checkpoint (the network alone")


def test_a_train_cell_checkpoint_of_0_4_is_refused_by_name_and_its_weights_still_start_a_run(tmp_path, tiny_mnist):
    """0.4's train-Cell checkpoint was the Cell's Parameters under their own names, with ``step_num``: 0.5 does
    not resume it, and says what to do. Built here as 0.4 wrote it: the network's, an optimizer moment and the
    counter. Control: --init_ckpt starts a run from its network's weights."""
    import mindspore as ms
    done = run_script("train.py", "--data_path", tiny_mnist, *QUICK, "--ckpt_path", "m.ckpt", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    network = ms.load_checkpoint(str(tmp_path / "m.ckpt"))
    old = tmp_path / "old" / "train-1_8.ckpt"
    old.parent.mkdir()
    ms.save_checkpoint([{"name": name, "data": value} for name, value in network.items()]
                       + [{"name": "moments." + name, "data": value} for name, value in network.items()],
                       str(old), append_dict={"epoch_num": 1, "step_num": 8})
    refused = run_script("train_model.py", "--data_path", tiny_mnist, *QUICK, "--epochs", 2, "--ckpt_path", "c",
                         "--resume", old, cwd=tmp_path)
    assert_refused(refused, "train-1_8.ckpt' is a train-Cell checkpoint of mindspore-accum 0.4, whose format 0.5 "
                            "does not resume: finish that run with mindspore-accum 0.4, or start afresh from its "
                            "weights with --init_ckpt")
    started = run_script("train_model.py", "--data_path", tiny_mnist, *QUICK, "--ckpt_path", "c2", "--init_ckpt",
                         old, cwd=tmp_path)
    assert started.returncode == 0, started.stderr


def test_label_smoothing_reaches_the_classifiers_loss_and_a_language_model_refuses_it(tmp_path):
    """Issue 38's new setting, counted on a real addition. Reference: the smoothed cross-entropy by NumPy,
    (1 - e) * -log p_y + e * mean_k -log p_k over a micro-batch; control: without smoothing it differs."""
    import types

    from mindspore import Tensor

    from build import build_loss

    logits = np.array([[2.0, -1.0, 0.5], [0.1, 0.2, 3.0]], np.float32)
    labels = np.array([0, 1], np.int32)
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = np.mean(0.9 * -log_p[np.arange(2), labels] + 0.1 * -log_p.mean(axis=1))
    for smoothing, reference in ((0.1, expected), (0.0, np.mean(-log_p[np.arange(2), labels]))):
        loss = build_loss(types.SimpleNamespace(task="image", label_smoothing=smoothing))
        np.testing.assert_allclose(float(loss(Tensor(logits), Tensor(labels)).asnumpy()), reference, rtol=1e-6)
    assert abs(expected - np.mean(-log_p[np.arange(2), labels])) > 1e-2  # the two references differ
    assert_refused(run_script("train.py", "--model", "gpt_tiny", "--label_smoothing", 0.1, cwd=tmp_path),
                   "--label_smoothing applies to the classifiers, not the language model --model gpt_tiny")
