"""--optimizer against its formula written out in NumPy (issue 28): three updates of a Dense layer under
softmax cross-entropy, through the scripts' own build_optimizer and GradientAccumulationCell (two micro-batches
a window), at lr 0.1 and weight decay 0.1, where a missing bias correction or a misplaced decay shows.

The gradient is NumPy's too: softmax minus one-hot, over the window's 8 samples. Tolerance 2e-6: float32
arithmetic over three updates; a wrong constant moves a weight by 1e-3 or more. The control: MindSpore's
uncorrected AdamWeightDecay, against the torch AdamW formula, must differ.
"""

import argparse

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindspore_accum import GradientAccumulationCell

LR, DECAY, UPDATES = 0.1, 0.1, 3
RNG = np.random.default_rng(0)
X = RNG.standard_normal((8, 4)).astype(np.float32)
Y = np.array([0, 1, 2, 0, 1, 2, 0, 1], np.int32)
W0 = (RNG.standard_normal((3, 4)) * 0.5).astype(np.float32)
B0 = (RNG.standard_normal(3) * 0.5).astype(np.float32)


def gradients(w, b):
    logits = X.astype(np.float64) @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p[np.arange(len(Y)), Y] -= 1
    p /= len(Y)
    return p.T @ X, p.sum(0)


def by_hand(name, rates):
    """The optimizer's update rule, in float64: torch's for adam/adamw, MindSpore's own for the rest."""
    params = [W0.astype(np.float64), B0.astype(np.float64)]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1, b2 = 0.9, 0.999
    for t, lr in enumerate(rates, start=1):
        grads = gradients(*params)
        for i, (p, g) in enumerate(zip(params, grads)):
            if name in ("momentum", "sgd", "adam"):
                g = g + DECAY * p  # L2: the decay joins the gradient
            if name == "momentum":
                m[i] = 0.9 * m[i] + g
                p = p - lr * m[i]
            elif name == "sgd":
                p = p - lr * g
            else:
                m[i] = b1 * m[i] + (1 - b1) * g
                v[i] = b2 * v[i] + (1 - b2) * g * g
                if name == "adamweightdecay":  # no bias correction; the decay joins the update; eps 1e-6
                    p = p - lr * (m[i] / (np.sqrt(v[i]) + 1e-6) + DECAY * p)
                else:
                    if name == "adamw":
                        p = p * (1 - lr * DECAY)  # decoupled, before the step, as torch
                    m_hat, v_hat = m[i] / (1 - b1 ** t), v[i] / (1 - b2 ** t)
                    p = p - lr * m_hat / (np.sqrt(v_hat) + 1e-8)
            params[i] = p
    return params


def trained(name, lr):
    from build import build_optimizer

    network = nn.Dense(4, 3)
    network.weight.set_data(Tensor(W0))
    network.bias.set_data(Tensor(B0))
    args = argparse.Namespace(optimizer=name, momentum=0.9, weight_decay=DECAY)
    optimizer = build_optimizer(args, network.trainable_params(), lr)
    cell = GradientAccumulationCell(nn.WithLossCell(network, nn.SoftmaxCrossEntropyWithLogits(sparse=True,
                                                                                              reduction="mean")),
                                    optimizer, 2, micro_batches_per_epoch=2)
    for _ in range(UPDATES):
        cell(Tensor(X[:4]), Tensor(Y[:4]))
        cell(Tensor(X[4:]), Tensor(Y[4:]))
    return [network.weight.asnumpy(), network.bias.asnumpy()]


@pytest.mark.parametrize("name", ["momentum", "sgd", "adam", "adamw", "adamweightdecay"])
def test_each_optimizer_flag_is_its_formula(name):
    ms.set_context(mode=ms.GRAPH_MODE)
    # AdamWeightDecay's m / (sqrt(v) + 1e-6), uncorrected, is ~ +-3.16 whatever the gradient's size, so a
    # gradient near 0 carries float32's rounding into the step at full size: 2e-5 there, 2e-6 elsewhere.
    atol = 2e-5 if name == "adamweightdecay" else 2e-6
    for actual, expected in zip(trained(name, LR), by_hand(name, [LR] * UPDATES)):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=atol, err_msg=name)


def test_adamw_follows_a_schedule_of_rates_per_update_and_the_uncorrected_variant_differs():
    ms.set_context(mode=ms.GRAPH_MODE)
    rates = [0.1, 0.05, 0.01]
    for actual, expected in zip(trained("adamw", rates), by_hand("adamw", rates)):
        np.testing.assert_allclose(actual, expected, rtol=0, atol=2e-6)
    # Controls: the constant rate, and MindSpore's uncorrected AdamWeightDecay, are other weights.
    assert np.abs(by_hand("adamw", [0.1] * 3)[0] - by_hand("adamw", rates)[0]).max() > 1e-3
    uncorrected = trained("adamweightdecay", LR)[0]
    assert np.abs(uncorrected - by_hand("adamw", [LR] * UPDATES)[0]).max() > 1e-2


@pytest.mark.parametrize("script", ["train.py", "train_model.py"])
def test_adamw_with_a_schedule_resumes_exactly_on_both_scripts(tmp_path, tiny_mnist, script):
    """A resume from the end of epoch 1 against two epochs in one go: the moments, the step count and the
    scheduled rate come back (the schedule is read on the device from the restored step count)."""
    from cli import run_script

    flags = ("--data_path", tiny_mnist, "--batch_size", 8, "--mini_steps", 3, "--no_progress", "--log_every", 1,
             "--optimizer", "adamw", "--lr", 0.01, "--weight_decay", 0.1, "--lr_schedule", "cosine")
    out = {"train.py": lambda d: tmp_path / d / "gradient_accumulation.ckpt",
           "train_model.py": lambda d: tmp_path / d / "lenet-2_8.ckpt"}[script]
    epoch_1 = {"train.py": tmp_path / "whole" / "gradient_accumulation_state" / "state-1_8.ckpt",
               "train_model.py": tmp_path / "whole" / "train" / "train-1_8.ckpt"}[script]
    whole = run_script(script, *flags, "--epochs", 2, "--ckpt_path", "whole", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    again = run_script(script, *flags, "--epochs", 2, "--ckpt_path", "cut", "--resume", epoch_1, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    expected = ms.load_checkpoint(str(out("whole")))
    actual = ms.load_checkpoint(str(out("cut")))
    for name, value in expected.items():
        np.testing.assert_array_equal(actual[name].asnumpy(), value.asnumpy(), err_msg=name)
    # Control: a constant rate is another run.
    constant = run_script(script, *[f for f in flags if f not in ("--lr_schedule", "cosine")], "--epochs", 2,
                          "--ckpt_path", "constant", cwd=tmp_path)
    assert constant.returncode == 0, constant.stderr
    other = ms.load_checkpoint(str(out("constant")))
    assert any(not np.array_equal(other[n].asnumpy(), v.asnumpy()) for n, v in expected.items())


def test_a_resume_that_changes_adamweightdecay_for_adamw_is_refused_by_name(tmp_path, tiny_mnist):
    from cli import assert_refused, run_script

    flags = ("--data_path", tiny_mnist, "--batch_size", 8, "--mini_steps", 3, "--no_progress")
    first = run_script("train.py", *flags, "--epochs", 1, "--optimizer", "adamweightdecay", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    refused = run_script("train.py", *flags, "--epochs", 2, "--optimizer", "adamw", "--resume",
                         "gradient_accumulation_state", cwd=tmp_path)
    assert_refused(refused, "'AdamWeightDecay' in the state vs 'AdamW' in this run")
