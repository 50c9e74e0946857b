"""The text models from the command line: train.py, train_model.py and eval.py on text, as a user runs them.

References: eval.py's held-out loss against the checkpoint's network run here
and scored in NumPy; train_model.py's checkpoint against train.py's, to the
bit (the same Cells, seed and micro-batches); the BERT case's windows against
the sample counts worked out by hand.
"""

import ast
import json
import math

import mindspore as ms
import numpy as np
import pytest
from cli import assert_refused, run_script

from mindspore_accum import load_network_checkpoint
from model_zoo_adapters import text
from model_zoo_adapters.transformer import create_text_model

TEXT = "\n\n".join(f"Paragraph {i}: " + "the quick brown fox jumps over the lazy dog. " * (1 + i % 4)
                   for i in range(40))
LM_FLAGS = ("--model", "gpt_tiny", "--seq_len", 16, "--batch_size", 4, "--mini_steps", 3, "--num_samples", 40)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def numpy_lm_loss(ckpt_path, data_path):
    """The held-out mean loss per valid token, from the checkpoint's network run here, in float64 NumPy."""
    network = load_network_checkpoint(create_text_model("gpt_tiny", max_len=16), ckpt_path)
    network.set_train(False)
    total, count = 0.0, 0
    for ids, labels in text.create_lm_dataset(str(data_path), 8, train=False, seq_len=16).create_tuple_iterator():
        logits = network(ids).asnumpy().astype(np.float64)
        labels = labels.asnumpy()
        log_softmax = logits - logits.max(-1, keepdims=True)
        log_softmax -= np.log(np.exp(log_softmax).sum(-1, keepdims=True))
        valid = labels != text.IGNORE_INDEX
        total -= np.take_along_axis(log_softmax, np.maximum(labels, 0)[..., None], -1)[..., 0][valid].sum()
        count += int(valid.sum())
    return total / count, count


def test_gpt_trains_on_a_text_file_and_eval_reports_held_out_loss_and_bits_per_byte(tmp_path, corpus):
    trained = run_script("train.py", "--data_path", corpus, *LM_FLAGS, "--epochs", 2, "--no_progress",
                         "--log_every", 1, "--ckpt_path", "gpt.ckpt", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "weighting: items" in trained.stdout  # the language model's default
    updates = [json.loads(line) for line in (tmp_path / "gpt_metrics.jsonl").read_text().splitlines()
               if '"update"' in line]
    # Reference: the valid labels of the training micro-batches, counted here; padding is no item.
    tokens = sum(int((labels.asnumpy() != text.IGNORE_INDEX).sum()) for _, labels in text.create_lm_dataset(
        str(corpus), 4, train=True, seq_len=16, num_samples=40).create_tuple_iterator(num_epochs=1))
    assert sum(u["items"] for u in updates) == 2 * tokens and tokens < 40 * 16
    losses = [u["loss"] for u in updates]
    assert losses[-1] < losses[0], f"the loss did not fall: {losses}"

    evaluated = run_script("eval.py", "--data_path", corpus, "--model", "gpt_tiny", "--seq_len", 16, "--ckpt_path",
                           "gpt.ckpt", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    scores = ast.literal_eval(evaluated.stdout.strip().splitlines()[-1])
    expected, tokens = numpy_lm_loss(tmp_path / "gpt.ckpt", corpus)
    assert scores["Loss"] == pytest.approx(expected, rel=1e-5)
    assert scores["BitsPerByte"] == pytest.approx(expected / math.log(2), rel=1e-5)
    assert f"over {tokens} held-out bytes" in evaluated.stdout


def test_train_model_py_on_text_equals_train_py_to_the_bit(tmp_path, corpus):
    common = ("--data_path", corpus, *LM_FLAGS, "--epochs", 1)
    driver = run_script("train.py", *common, "--no_progress", "--ckpt_path", "gpt.ckpt", cwd=tmp_path)
    assert driver.returncode == 0, driver.stderr
    model = run_script("train_model.py", *common, cwd=tmp_path)
    assert model.returncode == 0, model.stderr
    expected = ms.load_checkpoint(str(tmp_path / "gpt.ckpt"))
    (bare,) = (tmp_path / "ckpt").glob("gpt_tiny-*.ckpt")
    actual = ms.load_checkpoint(str(bare))
    assert sorted(actual) == sorted(expected)
    for name in expected:
        np.testing.assert_array_equal(actual[name].asnumpy(), expected[name].asnumpy(), err_msg=name)


def test_the_bert_case_trains_every_sample_and_weights_the_last_window_by_its_true_size(tmp_path):
    """110 labelled samples, micro-batch 8, mini_steps 4: 14 micro-batches, windows of 32, 32, 32 and 14 samples."""
    trained = run_script("train.py", "--model", "bert_tiny", "--batch_size", 8, "--mini_steps", 4, "--epochs", 2,
                         "--seq_len", 32, "--no_progress", "--ckpt_path", "bert.ckpt", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "micro-batches per epoch: 14, updates per epoch: 4" in trained.stdout
    assert "4 classes), weighting: samples" in trained.stdout
    updates = [json.loads(line) for line in (tmp_path / "bert_metrics.jsonl").read_text().splitlines()
               if '"update"' in line]
    assert [(u["micro_batches"], u["samples"]) for u in updates] == [(4, 32), (4, 32), (4, 32), (2, 14)] * 2
    evaluated = run_script("eval.py", "--model", "bert_tiny", "--seq_len", 32, "--ckpt_path", "bert.ckpt",
                           "--per_class", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert "class  samples  accuracy" in evaluated.stdout and "Accuracy" in evaluated.stdout.splitlines()[-1]


def test_text_flags_that_do_not_fit_are_refused_in_one_line(tmp_path, corpus):
    trained = run_script("train.py", "--data_path", corpus, *LM_FLAGS, "--epochs", 1, "--no_progress",
                         "--ckpt_path", "gpt.ckpt", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    resumed = run_script("train.py", "--data_path", corpus, *LM_FLAGS, "--epochs", 2, "--weighting", "samples",
                         "--ckpt_path", "other.ckpt", "--resume", tmp_path / "gpt_state", cwd=tmp_path)
    assert_refused(resumed, "weighting='items' in the state vs 'samples' in this run")
    for flags, fragment in ((("--model", "gpt_tiny", "--dataset", "mnist"), "--model gpt_tiny takes --dataset text"),
                            (("--model", "lenet", "--dataset", "text"), "--model lenet takes images"),
                            (("--model", "gpt_tiny", "--image_size", 32), "--image_size 32 applies to the image"),
                            (("--model", "gpt_tiny", "--data_path", tmp_path / "none.txt"), "does not exist")):
        assert_refused(run_script("train.py", *flags, cwd=tmp_path), fragment)
