"""What people see: metrics.jsonl, progress, plots, gradient flow and per-class evaluation."""

import ast
import json
import math
import os
import pty
import subprocess
import sys

import numpy as np
import pytest
from cli import SCRIPTS, run_script
from idx import digits, write_split
from mindspore import Tensor, nn, ops
from PIL import Image
from test_epochs import window_losses

from mindspore_accum import DriverCallback, GradientAccumulation, MetricsLog, plot_grad_flow
from nets import LOSS, MLP, NO_CKPT, micro_batches, numpy_scores, twin

TRAIN_SAMPLES, BATCH, MINI_STEPS, EPOCHS = 64, 8, 3, 2  # 8 micro-batches: updates of 3, 3 and a flushed 2


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One short train.py run with every output switched on, shared by the tests below."""
    data = tmp_path_factory.mktemp("mnist")
    write_split(data, "train", *digits(TRAIN_SAMPLES, seed=1))
    write_split(data, "test", *digits(30, seed=2))
    out = tmp_path_factory.mktemp("run")
    result = run_script("train.py", "--data_path", data, "--epochs", EPOCHS, "--batch_size", BATCH,
                        "--mini_steps", MINI_STEPS, "--ckpt_path", out / "lenet.ckpt", "--eval_every_epoch",
                        "--grad_flow_every", 2, "--log_every", 1, cwd=out)
    assert result.returncode == 0, result.stderr
    return data, out, result


def read_jsonl(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_metrics_jsonl_has_an_update_record_per_window_and_an_epoch_record_per_epoch(trained_run):
    data, out, _ = trained_run
    records = read_jsonl(out / "lenet_metrics.jsonl")  # every line parses, or this raises
    updates = [r for r in records if r["kind"] == "update"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    micro_batches_per_epoch = TRAIN_SAMPLES // BATCH
    expected_per_epoch = math.ceil(micro_batches_per_epoch / MINI_STEPS)
    for epoch in range(1, EPOCHS + 1):
        mine = [u for u in updates if u["epoch"] == epoch]
        assert len(mine) == expected_per_epoch, f"epoch {epoch}: {len(mine)} updates, expected {expected_per_epoch}"
        assert [u["micro_batches"] for u in mine] == [3, 3, 2]
    assert [u["total_updates"] for u in updates] == list(range(1, EPOCHS * expected_per_epoch + 1))
    assert [u["samples_seen"] for u in updates] == list(np.cumsum([u["samples"] for u in updates]))
    assert all(u["lr"] == pytest.approx(0.01) for u in updates)
    assert [e["epoch"] for e in epochs] == [1, 2]
    for epoch_record in epochs:
        mine = [u for u in updates if u["epoch"] == epoch_record["epoch"]]
        expected = sum(u["loss"] * u["samples"] for u in mine) / sum(u["samples"] for u in mine)
        assert epoch_record["train_loss"] == pytest.approx(expected, rel=1e-9)
    # The test numbers, against the network of each epoch's end run here and scored in NumPy: epoch 1's from its
    # training state, epoch 2's from the checkpoint. 30 test images in batches of 8: a mean of batch means
    # (nn.Loss) would differ.
    for epoch_record, ckpt in zip(epochs, (out / "lenet_state" / "state-1_8.ckpt", out / "lenet.ckpt")):
        loss, accuracy, _, _ = numpy_scores(ckpt, data)
        assert epoch_record["test_loss"] == pytest.approx(loss, rel=1e-5), epoch_record
        assert epoch_record["test_accuracy"] == pytest.approx(accuracy), epoch_record
    assert abs(epochs[0]["test_loss"] - epochs[1]["test_loss"]) > 1e-5, "control: the two epochs score alike"


def test_progress_on_a_non_terminal_is_plain_lines_without_carriage_returns(trained_run):
    _, _, result = trained_run
    assert "\r" not in result.stdout and "\r" not in result.stderr
    assert "epoch: 2 step: 3 loss is" in result.stdout
    assert "epoch: 1 test loss:" in result.stdout


def test_progress_on_a_terminal_is_a_tqdm_bar(trained_run, tmp_path):
    """The positive control: under a pseudo-terminal the bar is drawn.

    (A terminal turns every newline into a carriage return and a newline, so
    here the bar itself is what is looked for.)
    """
    data, _, _ = trained_run
    controller, terminal = pty.openpty()
    process = subprocess.Popen([sys.executable, os.path.join(SCRIPTS, "train.py"), "--data_path", str(data),
                                "--epochs", "1", "--batch_size", str(BATCH), "--mini_steps", str(MINI_STEPS)],
                               cwd=tmp_path, stdout=terminal, stderr=terminal, env=dict(os.environ, GLOG_v="3"))
    os.close(terminal)
    output = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the terminal closed: the process is done
            break
        if not chunk:
            break
        output += chunk
    assert process.wait(timeout=300) == 0, output.decode(errors="replace")[-2000:]
    text = output.decode(errors="replace")
    assert all(field in text for field in ("epoch 1: 100%", "img/s=", "loss=", "update=")), text[-2000:]
    assert "epoch: 1 step:" not in text  # no log lines under the bar


def test_logged_window_loss_equals_the_loss_of_the_window_recomputed_independently(tmp_path):
    """Reference: nn.TrainOneStepCell on each concatenated window, its loss before each step; control: after it."""
    batches = micro_batches([4, 4, 4, 4, 2], (8,), 4, seed=21)
    network = MLP()
    reference = twin(MLP, network)
    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), learning_rate=0.5))
    log = MetricsLog(tmp_path / "metrics.jsonl")
    model.train_process(1, batches, mini_steps=2, save=NO_CKPT, callbacks=[log])
    log.close()
    updates = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "update"]
    assert [r["update"] for r in updates] == [1, 2, 3]
    windows = [tuple(np.concatenate([b[i].asnumpy() for b in window]) for i in range(2))
               for window in (batches[0:2], batches[2:4], batches[4:5])]
    before, after = window_losses(reference, nn.SGD(reference.trainable_params(), learning_rate=0.5), windows)
    logged = [record["loss"] for record in updates]
    np.testing.assert_allclose(logged, before, rtol=1e-6)
    assert not np.allclose(logged, after, rtol=1e-3), "control: the losses after each update are the same"


def test_update_callbacks_see_the_window_gradient_before_the_clear():
    window = micro_batches([4, 4, 3], (8,), 4, seed=22)
    network = MLP()
    frozen = twin(MLP, network)

    class Capture(DriverCallback):
        def update(self, record, driver):
            self.grads = {p.name: p.asnumpy().copy() for p in driver.buffer.grad_mean}

    capture = Capture()
    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), learning_rate=0.0))
    model.train_process(1, window, mini_steps=3, save=NO_CKPT, callbacks=[capture])
    concatenated = [Tensor(np.concatenate([b[i].asnumpy() for b in window])) for i in range(2)]
    weights = frozen.trainable_params()
    expected = ops.GradOperation(get_by_list=True)(nn.WithLossCell(frozen, LOSS), weights)(*concatenated)
    for weight, grad in zip(weights, expected):
        np.testing.assert_allclose(capture.grads["grad_sum." + weight.name], grad.asnumpy(), rtol=1e-5, atol=1e-7)
    assert not any(p.asnumpy().any() for p in model.buffer.grad_mean), "cleared after the callback"


def test_plot_grad_flow_draws_the_mean_absolute_gradient_of_each_weight(tmp_path):
    grads = {"conv1.weight": np.array([[1.0, -3.0]]), "conv1.bias": np.array([100.0]),
             "fc.weight": np.array([-0.5, 0.5, -0.5, 0.5])}
    drawn = plot_grad_flow(grads, tmp_path / "flow.png")
    assert drawn == {"conv1.weight": 2.0, "fc.weight": 0.5}  # bias left out
    with Image.open(tmp_path / "flow.png") as image:
        assert image.format == "PNG" and image.size[0] > 100


def test_grad_flow_pngs_every_n_updates(trained_run):
    _, out, _ = trained_run
    names = sorted(os.listdir(out / "grad_flow"))
    assert names == [f"grad_flow_{n:06d}.png" for n in (2, 4, 6)]  # 6 updates, every 2nd


def test_plot_script_writes_pngs_that_open(trained_run, tmp_path):
    _, out, _ = trained_run
    result = subprocess.run([sys.executable, os.path.join(SCRIPTS, "plot.py"), "--metrics",
                             str(out / "lenet_metrics.jsonl"), "--out", str(tmp_path / "plots")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for name in ("loss.png", "accuracy.png"):
        path = tmp_path / "plots" / name
        assert path.stat().st_size > 1000
        with Image.open(path) as image:
            image.verify()


def test_plot_script_refuses_a_file_that_is_not_metrics(tmp_path):
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    result = subprocess.run([sys.executable, os.path.join(SCRIPTS, "plot.py"), "--metrics",
                             str(tmp_path / "bad.jsonl")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "bad.jsonl:1: not a JSON line" in result.stderr
    assert "Traceback" not in result.stderr


def test_eval_per_class_and_a_checkpoint_directory(trained_run):
    data, out, _ = trained_run
    result = run_script("eval.py", "--data_path", data, "--ckpt_path", out, "--per_class", cwd=out)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    accuracy = ast.literal_eval(lines[-1])["Accuracy"]  # the tutorial's {'Accuracy': ...} line
    start = lines.index("confusion matrix (rows: true class, columns: predicted):")
    matrix = np.array([[int(v) for v in line.split()] for line in lines[start + 1:start + 11]])
    assert matrix.shape == (10, 10) and matrix.sum() == 30
    assert np.trace(matrix) / matrix.sum() == pytest.approx(accuracy)
    header = lines.index("class  samples  accuracy")
    rows = [line.split() for line in lines[header + 1:header + 11]]
    _, expected_accuracy, predictions, labels = numpy_scores(out / "lenet.ckpt", data)
    assert accuracy == pytest.approx(expected_accuracy)
    for label, (name, samples, class_accuracy) in enumerate(rows):
        mine = labels == label
        assert (int(name), int(samples)) == (label, int(mine.sum()))  # digits(30): labels 0..9, three each
        assert float(class_accuracy) == pytest.approx(np.mean(predictions[mine] == label), abs=5e-5), rows[label]
        np.testing.assert_array_equal(matrix[label], np.bincount(predictions[mine], minlength=10))


def test_a_metrics_write_that_fails_names_the_file(tmp_path):
    """Issue 15 (8): every OSError line names the path; /dev/full fails every write with ENOSPC."""
    import errno

    from mindspore_accum import MetricsLog
    log = MetricsLog("/dev/full")
    log._open = lambda: setattr(log, "_file", open("/dev/full", "w", encoding="utf-8"))  # no rewrite of /dev/full
    with pytest.raises(OSError) as error:
        log.epoch_end(1, [])
    assert error.value.errno == errno.ENOSPC
    # Issue 30 (10): one line in our words, without "[Errno 28]".
    assert str(error.value) == "cannot write the metrics file '/dev/full': No space left on device"


@pytest.mark.parametrize("content, message", [
    ('[1, 2]\n', "bad.jsonl:1: not a metrics record (a JSON object whose kind is update or epoch)"),
    ('{"kind": "update", "epoch": 1, "loss": 2.3}\n', "bad.jsonl:1: a update record without total_updates"),
])
def test_plot_script_names_the_line_of_a_record_it_cannot_plot(tmp_path, content, message):
    """Issue 22 (14): a JSON array line or a missing field ended in a traceback."""
    (tmp_path / "bad.jsonl").write_text(content)
    result = subprocess.run([sys.executable, os.path.join(SCRIPTS, "plot.py"), "--metrics",
                             str(tmp_path / "bad.jsonl")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.strip() == f"plot.py: error: {tmp_path / message}", result.stderr


def test_plot_script_skips_a_killed_runs_cut_short_last_line(trained_run, tmp_path):
    _, out, _ = trained_run
    text = (out / "lenet_metrics.jsonl").read_text()
    (tmp_path / "killed.jsonl").write_text(text + '{"kind": "upd')
    result = subprocess.run([sys.executable, os.path.join(SCRIPTS, "plot.py"), "--metrics",
                             str(tmp_path / "killed.jsonl"), "--out", str(tmp_path / "plots")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "cut short" in result.stderr and (tmp_path / "plots" / "loss.png").stat().st_size > 1000
