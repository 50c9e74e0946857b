"""``Accumulator`` in a user's own MindSpore 2.x step equals one ordinary step on each concatenated window.

The step is the quick start's: ``mindspore.value_and_grad`` of a forward
function, then ``accumulator(grads, items, loss)`` where the step would call
the optimizer. It runs in three places: a ``@mindspore.jit`` function, a
Cell's ``construct`` in GRAPH_MODE, and eagerly under PYNATIVE_MODE.

References, computed another way: ``nn.TrainOneStepCell`` on each window's
micro-batches concatenated (padded, for tokens), from the same initial
weights with a fresh optimizer of the same kind; for clipping, the
concatenated window's gradient clipped and applied in NumPy; for the EMA, the
reference's weights after each window averaged in NumPy. Tolerance rtol 1e-5,
atol 1e-6, as test_equivalence.py: the same sums in another order; at O2,
half precision's 1e-2. Controls: MindSpore's old docs' summing
``Accumulator`` and a per-micro-step update both miss the reference.
"""

import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, ParameterTuple, Tensor, amp, nn, ops
from mindspore.experimental import optim

from mindspore_accum import Accumulator, TrainForwardBackward
from mindspore_accum.core.weighting import count_items
from model_zoo_adapters.transformer import TokenCrossEntropy
from nets import LOSS, MLP, TokenMLP, concat, micro_batches, pad_concat, params_of, reference_steps, token_batches, twin

HERE = os.path.dirname(os.path.abspath(__file__))
RTOL, ATOL = 1e-5, 1e-6
PLACES = ("jit", "cell", "eager")
TOKEN_LOSS = TokenCrossEntropy()


def samples_of(x, label):
    return x.shape[0]


def tokens_of(x, label):
    return count_items(label, -100)


class UserStep(nn.Cell):
    """A user's step as a Cell (``auto_prefix=False``, as ``nn.TrainOneStepCell``: the weights keep their names)."""

    def __init__(self, network, loss_fn, accumulator, weigh=samples_of, scaler=None):
        super().__init__(auto_prefix=False)
        self.network, self.loss_fn, self.accumulator, self.weigh, self.scaler = \
            network, loss_fn, accumulator, weigh, scaler
        self.grad_fn = ms.value_and_grad(self.forward, None, accumulator.weights, has_aux=True)

    def forward(self, x, label):
        loss = self.loss_fn(self.network(x), label)
        return (loss if self.scaler is None else self.scaler.scale(loss)), loss

    def construct(self, x, label):
        (_, loss), grads = self.grad_fn(x, label)
        return self.accumulator(grads, self.weigh(x, label), loss)


def user_function(network, loss_fn, accumulator, weigh=samples_of, scaler=None):
    """The same step as a plain function, the quick start's form."""
    def forward_fn(x, label):
        loss = loss_fn(network(x), label)
        return (loss if scaler is None else scaler.scale(loss)), loss

    grad_fn = ms.value_and_grad(forward_fn, None, accumulator.weights, has_aux=True)

    def train_step(x, label):
        (_, loss), grads = grad_fn(x, label)
        return accumulator(grads, weigh(x, label), loss)
    return train_step


def user_step(place, *args, **kwargs):
    if place == "cell":
        return UserStep(*args, **kwargs)
    step = user_function(*args, **kwargs)
    return ms.jit(step) if place == "jit" else step


@pytest.fixture(params=PLACES)
def place(request):
    """Where the user's step runs; "eager" switches to PYNATIVE_MODE for the test."""
    if request.param == "eager":
        ms.set_context(mode=ms.PYNATIVE_MODE)
        yield request.param
        ms.set_context(mode=ms.GRAPH_MODE)
    else:
        yield request.param


def train(step, accumulator, windows):
    """Each window's micro-batches through ``step``; a window shorter than the rest is flushed. Returns applied."""
    applied = [bool(step(*batch)) for window in windows for batch in window]
    return applied + [accumulator.flush()]


def assert_close(actual, expected, context=""):
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=RTOL, atol=ATOL, err_msg=f"{context} {name}")


def worst_miss(actual, expected):
    """The largest relative miss beyond the tolerance's scale: > 100 * RTOL means not the same update."""
    return max(np.max(np.abs(actual[n] - v) / (np.abs(v) + ATOL / RTOL)) for n, v in expected.items())


def test_samples_weighted_windows_and_a_flushed_partial_one_equal_the_concatenated_steps(place):
    # A full window whose last micro-batch is short, then a partial window of 2 that only flush() applies.
    windows = [micro_batches([4, 4, 4, 2], (8,), 4, seed=1), micro_batches([3, 5], (8,), 4, seed=2)]
    network = MLP()
    reference = twin(MLP, network)
    accumulator = Accumulator(nn.Momentum(network.trainable_params(), 0.1, 0.9), mini_steps=4)
    applied = train(user_step(place, network, LOSS, accumulator), accumulator, windows)
    assert applied == [False, False, False, True, False, False, True]
    expected = reference_steps(reference, nn.Momentum(reference.trainable_params(), 0.1, 0.9), windows)
    assert_close(params_of(network), expected, place)
    assert int(accumulator.window_micro_steps.asnumpy()) == 0 and not accumulator.flush(), "flush cleared the window"


def test_items_weighted_windows_equal_one_step_on_the_windows_valid_tokens(place):
    # 1, 3, 17 and 40 valid tokens at four padded lengths, then a flushed window with one empty micro-batch.
    windows = [token_batches([(2, 5, 1), (2, 8, 3), (3, 12, 17), (4, 14, 40)], seed=1),
               token_batches([(2, 6, 7), (2, 4, 0)], seed=2)]
    network = TokenMLP()
    reference = twin(TokenMLP, network)
    accumulator = Accumulator(nn.SGD(network.trainable_params(), 0.5), mini_steps=4)
    applied = train(user_step(place, network, TOKEN_LOSS, accumulator, weigh=tokens_of), accumulator, windows)
    assert applied == [False, False, False, True, False, False, True]
    step = nn.TrainOneStepCell(nn.WithLossCell(reference, TOKEN_LOSS), nn.SGD(reference.trainable_params(), 0.5))
    for window in windows:
        step(*pad_concat(window))
    assert_close(params_of(network), params_of(reference), place)


def poisoned_windows():
    """3 windows of 4 micro-batches of 4; window 1's third holds 1e5: finite in float32, inf in float16 (O2)."""
    batches = micro_batches([4] * 12, (8,), 4, seed=3)
    data = batches[6][0].asnumpy().copy()
    data[0, 0] = 1e5
    batches[6] = (Tensor(data), batches[6][1])
    return [batches[0:4], batches[4:8], batches[8:12]]


def test_o2_with_a_dynamic_scaler_skips_the_overflowing_window_once_and_steps_on_the_others(place):
    windows = poisoned_windows()
    network = MLP()
    reference = twin(MLP, network)
    scaler = amp.DynamicLossScaler(2 ** 10, 2, 1000)
    accumulator = Accumulator(nn.SGD(network.trainable_params(), 0.1), mini_steps=4, loss_scaler=scaler)
    step = user_step(place, amp.auto_mixed_precision(network, "O2"), LOSS, accumulator, scaler=scaler)
    after = []
    for window in windows:
        for batch in window:
            step(*batch)
        after.append(params_of(network))
    for name, value in after[0].items():  # the overflowing window changed nothing, to the bit
        np.testing.assert_array_equal(after[1][name], value, err_msg=name)
    assert float(scaler.scale_value.asnumpy()) == 512.0, "the scale is halved once, on the overflow"
    assert int(accumulator.skipped_windows.asnumpy()) == 1

    initial = params_of(reference)
    reference_step = nn.TrainOneStepCell(nn.WithLossCell(amp.auto_mixed_precision(reference, "O2"), LOSS),
                                         nn.SGD(reference.trainable_params(), 0.1))
    for window in (windows[0], windows[2]):
        reference_step(*concat(window))
    expected = {name: value - initial[name] for name, value in params_of(reference).items()}
    for name, delta in expected.items():
        # rtol 1e-2, as half precision allows; atol relative to the update's size, for entries near 0.
        np.testing.assert_allclose(after[2][name] - initial[name], delta, rtol=1e-2,
                                   atol=1e-2 * np.max(np.abs(delta)), err_msg=f"{place} {name}")


def test_clipping_applies_once_to_the_windows_mean_gradient(place):
    window = micro_batches([4, 4, 3], (8,), 4, seed=4)
    network = MLP()
    reference = twin(MLP, network)
    lr, max_norm = 0.5, 0.05
    accumulator = Accumulator(nn.SGD(network.trainable_params(), lr), mini_steps=3, clip_grad_norm=max_norm)
    assert train(user_step(place, network, LOSS, accumulator), accumulator, [window]) == [False, False, True, False]

    # NumPy: the concatenated window's gradient, clipped by its global norm, one SGD step.
    weights = reference.trainable_params()
    grads = ms.value_and_grad(nn.WithLossCell(reference, LOSS), None, ParameterTuple(weights))(*concat(window))[1]
    grads = [g.asnumpy().astype(np.float64) for g in grads]
    norm = np.sqrt(sum((g ** 2).sum() for g in grads))
    assert norm > 2 * max_norm, f"the case needs clipping to bite: norm {norm}"
    expected = {w.name: w.asnumpy() - lr * g * max_norm / norm for w, g in zip(weights, grads)}
    assert_close(params_of(network), expected, place)


def test_the_ema_follows_each_update_and_not_each_micro_step(place):
    decay = 0.5
    windows = [micro_batches([4, 4], (8,), 4, seed=s) for s in (5, 6, 7)]
    network = MLP()
    reference = twin(MLP, network)
    accumulator = Accumulator(nn.Momentum(network.trainable_params(), 0.1, 0.9), mini_steps=2, ema_decay=decay)
    train(user_step(place, network, LOSS, accumulator), accumulator, windows)

    step = nn.TrainOneStepCell(nn.WithLossCell(reference, LOSS), nn.Momentum(reference.trainable_params(), 0.1, 0.9))
    average = params_of(reference)
    for window in windows:  # NumPy: after each update, ema = decay * ema + (1 - decay) * weights
        step(*concat(window))
        average = {n: decay * a + (1 - decay) * params_of(reference)[n] for n, a in average.items()}
    ema = {a.name[len("ema."):]: a.asnumpy() for a in accumulator.ema.averages}
    assert_close(ema, average, place)
    assert_close(params_of(network), params_of(reference), place)


def test_experimental_optim_adamw_equals_its_concatenated_steps(place):
    windows = [micro_batches([4, 4, 4, 2], (8,), 4, seed=8), micro_batches([3], (8,), 4, seed=9)]
    network = MLP()
    reference = twin(MLP, network)

    def adamw(weights):  # eps 1e-6: see nets.OPTIMIZERS, Adam's slope where a gradient cancels
        return optim.AdamW(weights, lr=0.01, eps=1e-6, weight_decay=0.1)
    accumulator = Accumulator(adamw(network.trainable_params()), mini_steps=4)
    train(user_step(place, network, LOSS, accumulator), accumulator, windows)
    expected = reference_steps(reference, adamw(reference.trainable_params()), windows)
    assert_close(params_of(network), expected, place)


class SummingAccumulator(nn.Cell):
    """MindSpore's docs r2.0-r2.5 ``Accumulator``, faithfully: sums the gradients, applies every ``accumulate_step``."""

    def __init__(self, optimizer, accumulate_step):
        super().__init__(auto_prefix=False)  # the docs' default prefix renames the weights; the sum is what counts
        self.optimizer = optimizer
        self.inner_grads = optimizer.parameters.clone(prefix="accumulate_", init="zeros")
        self.zeros = optimizer.parameters.clone(prefix="zeros_", init="zeros")
        self.counter = Parameter(Tensor(1, ms.int32), "counter_")
        self.accumulate_step = accumulate_step
        self.map = ops.HyperMap()

    def construct(self, grads):
        self.map(ops.partial(ops.assign_add), self.inner_grads, grads)
        if self.counter % self.accumulate_step == 0:
            self.optimizer(self.inner_grads)
            self.map(ops.partial(ops.assign), self.inner_grads, self.zeros)
        ops.assign_add(self.counter, Tensor(1, ms.int32))
        return True


def test_controls_the_old_docs_sum_and_a_per_micro_step_update_miss_the_reference():
    window = micro_batches([4, 4, 4, 4], (8,), 4, seed=10)
    network = MLP()
    summed, per_micro_step, reference = (twin(MLP, network) for _ in range(3))
    expected = reference_steps(reference, nn.Momentum(reference.trainable_params(), 0.1, 0.9), [window])

    accumulator = Accumulator(nn.Momentum(network.trainable_params(), 0.1, 0.9), mini_steps=4)
    train(user_step("jit", network, LOSS, accumulator), accumulator, [window])
    assert_close(params_of(network), expected)

    summing = SummingAccumulator(nn.Momentum(summed.trainable_params(), 0.1, 0.9), 4)
    grad_fn = ms.value_and_grad(nn.WithLossCell(summed, LOSS), None, summing.optimizer.parameters)
    for batch in window:
        summing(grad_fn(*batch)[1])
    assert worst_miss(params_of(summed), expected) > 100 * RTOL

    optimizer = nn.Momentum(per_micro_step.trainable_params(), 0.1, 0.9)
    grad_fn = ms.value_and_grad(nn.WithLossCell(per_micro_step, LOSS), None, optimizer.parameters)
    for batch in window:
        optimizer(grad_fn(*batch)[1])
    assert worst_miss(params_of(per_micro_step), expected) > 100 * RTOL


def test_mini_steps_1_is_bit_identical_to_train_one_step_cell():
    batches = micro_batches([4, 3], (8,), 4, seed=11)
    network = MLP()
    reference = twin(MLP, network)
    accumulator = Accumulator(nn.Momentum(network.trainable_params(), 0.1, 0.9), mini_steps=1)
    step = UserStep(network, LOSS, accumulator)
    assert [bool(step(*batch)) for batch in batches] == [True, True]
    expected = reference_steps(reference, nn.Momentum(reference.trainable_params(), 0.1, 0.9), [[b] for b in batches])
    for name, value in expected.items():
        np.testing.assert_array_equal(params_of(network)[name], value, err_msg=name)


def test_a_window_size_passed_in_closes_windows_of_any_size():
    """``window=``: the count of micro-batches of each window, as WindowedDataset yields it (3 then 2)."""
    windows = [micro_batches([4, 4, 2], (8,), 4, seed=12), micro_batches([4, 1], (8,), 4, seed=13)]
    network = MLP()
    reference = twin(MLP, network)
    accumulator = Accumulator(nn.SGD(network.trainable_params(), 0.1), mini_steps=99)
    grad_fn = ms.value_and_grad(nn.WithLossCell(network, LOSS), None, accumulator.weights)

    @ms.jit
    def step(x, label, window):
        loss, grads = grad_fn(x, label)
        return accumulator(grads, x.shape[0], loss, window)
    applied = [bool(step(*batch, Tensor(len(w), ms.int32))) for w in windows for batch in w]
    assert applied == [False, False, True, False, True]
    assert_close(params_of(network), reference_steps(reference, nn.SGD(reference.trainable_params(), 0.1), windows))


def run_worker(tmp_path, name, *args):
    out = tmp_path / f"{name}.npz"
    done = subprocess.run([sys.executable, os.path.join(HERE, "own_loop_worker.py"), "--out", str(out),
                           *map(str, args)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with np.load(out) as data:
        return {name: data[name] for name in data.files}


def test_a_save_mid_window_loaded_into_a_fresh_process_goes_on_bit_for_bit(tmp_path):
    """Reference: the same 11 micro-batches in one process. Control: a load without the open window's state."""
    whole = run_worker(tmp_path, "whole")
    state = tmp_path / "mid_window.ckpt"
    first = run_worker(tmp_path, "first", "--stop", 6, "--save", state)  # 2 micro-batches into the second window
    assert int(first["window_micro_steps"]) == 2 and int(first["state_step"]) == 1, "the save is mid-window"
    resumed = run_worker(tmp_path, "resumed", "--seed", 7, "--start", 6, "--load", state)
    assert set(resumed) == set(whole)
    assert float(whole["scale_value"]) > 2 ** 10 and int(whole["state_step"]) == 3, "the scaler and AdamW moved"
    for name, value in whole.items():
        np.testing.assert_array_equal(resumed[name], value, err_msg=name)

    control = run_worker(tmp_path, "control", "--seed", 7, "--start", 6, "--load", state, "--without_window")
    assert any(not np.array_equal(control[n], whole[n]) for n in ("fc1.weight", "fc2.weight"))


@pytest.mark.parametrize("kwargs, message", [
    ({"mini_steps": 0}, "mini_steps must be"),
    ({"mini_steps": 2.5}, "mini_steps must be"),
    ({"mini_steps": True}, "mini_steps must be"),
    ({"clip_grad_norm": -1.0}, "clip_grad_norm must be"),
    ({"loss_scaler": 1024}, "loss_scaler must be"),
    ({"ema_decay": 1.5}, "ema_decay must be"),
])
def test_bad_settings_are_refused_in_one_line_naming_the_argument(kwargs, message):
    network = MLP()
    with pytest.raises((TypeError, ValueError)) as raised:
        Accumulator(nn.SGD(network.trainable_params(), 0.1), **kwargs)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value), str(raised.value)


def test_an_optimizer_that_is_none_is_refused_by_name():
    with pytest.raises(TypeError, match=r"^optimizer must be a mindspore.nn or mindspore.experimental.optim optim"):
        Accumulator(MLP(), 4)


def grads_and_batch():
    network = MLP()
    accumulator = Accumulator(nn.SGD(network.trainable_params(), 0.1), 2)
    x, label = micro_batches([4], (8,), 4, seed=14)[0]
    grads = ms.value_and_grad(nn.WithLossCell(network, LOSS), None, accumulator.weights)(x, label)[1]
    return accumulator, grads, x


#: (what the step passes: gradients and items, from (grads, x); the start of the one-line refusal)
BAD_CALLS = [
    (lambda grads, x: (grads[:3], 4), "grads has 3 tensors but the optimizer has 4 parameters"),
    (lambda grads, x: (grads[::-1], 4), "grads[0] has shape [4] but the optimizer's parameter 0 has [16, 8]"),
    (lambda grads, x: (grads[0], 4), "grads must be the tuple of gradients"),
    (lambda grads, x: (grads, 0), "items must be positive, got 0"),
    (lambda grads, x: (grads, -3.0), "items must be positive, got -3.0"),
    (lambda grads, x: (grads, True), "items must be a positive number or a scalar Tensor"),
    (lambda grads, x: (grads, x), "items must be a scalar Tensor, got shape (4, 8)"),
]


@pytest.mark.parametrize("bad, message", BAD_CALLS)
def test_bad_calls_are_refused_in_one_line_eagerly(bad, message):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        accumulator, grads, x = grads_and_batch()
        with pytest.raises((TypeError, ValueError)) as raised:
            accumulator(*bad(grads, x))
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value), str(raised.value)
    assert int(accumulator.window_micro_steps.asnumpy()) == 0, "a refused call added nothing"


def test_a_bad_call_in_a_jit_step_is_refused_when_it_compiles_with_our_line_first():
    accumulator, grads, x = grads_and_batch()

    @ms.jit
    def step(grads):
        return accumulator(grads[:3], 4)
    with pytest.raises(ValueError) as raised:
        step(grads)
    # MindSpore appends its own call stack below the message, quoted.
    first = str(raised.value).splitlines()[0].strip("'")
    assert first.startswith("grads has 3 tensors but the optimizer has 4 parameters: take the gradients"), first


def test_the_tutorials_cell_given_a_function_points_to_accumulator():
    network = MLP()
    with pytest.raises(TypeError, match=r"^network must be a mindspore.nn.Cell, got function: .*Accumulator"):
        TrainForwardBackward(lambda x, y: network(x), network.trainable_params(), None)


def test_the_own_loop_page_runs_as_written_and_eval_py_scores_its_checkpoint(tmp_path, tiny_mnist, repo):
    """docs/own_loop.md's first program on 64 images in micro-batches of 12: 5 a epoch (the pipeline drops 4).

    Reference, by hand: ceil(5 / 4) = 2 updates an epoch, the second by flush().
    """
    text = open(os.path.join(repo, "docs", "own_loop.md"), encoding="utf-8").read()
    program = text.split("```python\n", 1)[1].split("```", 1)[0]
    for old, new in (("EPOCHS, BATCH_SIZE = 10, 32", "EPOCHS, BATCH_SIZE = 2, 12"),
                     ('"data/mnist"', repr(str(tiny_mnist)))):
        assert old in program, f"the page's program no longer has {old}"
        program = program.replace(old, new)
    (tmp_path / "own_loop.py").write_text(program)
    env = {**os.environ, "PYTHONPATH": str(repo)}
    done = subprocess.run([sys.executable, "own_loop.py"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line.split(", last")[0] for line in done.stdout.splitlines()]
    assert lines == ["epoch 1: 2 updates", "epoch 2: 2 updates"], done.stdout
    scored = subprocess.run([sys.executable, os.path.join(repo, "scripts", "eval.py"), "--data_path", str(tiny_mnist),
                             "--ckpt_path", "own_loop.ckpt"], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert scored.returncode == 0 and "Accuracy" in scored.stdout, scored.stdout + scored.stderr[-2000:]


def test_a_rate_list_is_one_rate_per_update_not_per_micro_step():
    """A list of learning rates: the optimizer indexes it by its own calls, which the accumulator makes once per
    window. Reference: TrainOneStepCell stepping once per concatenated window through the same list. Control:
    the list read per micro-step (every micro-batch an update: 0.3, 0.1, 0.03, then 0.03 on) misses."""
    rates = [0.3, 0.1, 0.03]
    windows = [micro_batches([4, 4], (8,), 4, seed=s) for s in (15, 16, 17)]
    network = MLP()
    reference, control = twin(MLP, network), twin(MLP, network)
    accumulator = Accumulator(nn.SGD(network.trainable_params(), rates), mini_steps=2)
    train(user_step("jit", network, LOSS, accumulator), accumulator, windows)
    expected = reference_steps(reference, nn.SGD(reference.trainable_params(), rates), windows)
    assert_close(params_of(network), expected)
    per_micro_step = reference_steps(control, nn.SGD(control.trainable_params(), rates + rates[-1:] * 3),
                                     [[batch] for window in windows for batch in window])
    assert worst_miss(per_micro_step, expected) > 100 * RTOL
