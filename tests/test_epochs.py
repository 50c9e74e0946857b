"""End of epoch: a partial window is applied with its true weight (or dropped), and nothing leaks."""

import numpy as np
import pytest
from mindspore import dataset as ds
from mindspore import nn

from mindspore_accum import GradientAccumulation
from nets import LOSS, MLP, NO_CKPT, params_of, reference_steps, twin, window_losses

SAMPLES, BATCH = 40, 4  # 10 micro-batches


def arrays(seed=11):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((SAMPLES, 8)).astype(np.float32), rng.integers(0, 4, SAMPLES).astype(np.int32)


def mnist_like_dataset(features, labels):
    """A real mindspore.dataset pipeline, in order, batched like the training data."""
    rows = lambda: ((features[i], labels[i]) for i in range(len(labels)))  # noqa: E731
    return ds.GeneratorDataset(rows, ["data", "label"], shuffle=False).batch(BATCH)


def windows_of(features, labels, boundaries):
    """Reference windows: lists of (data, label) micro-batches between micro-batch boundaries."""
    from mindspore import Tensor
    batches = [(Tensor(features[i:i + BATCH]), Tensor(labels[i:i + BATCH])) for i in range(0, SAMPLES, BATCH)]
    return [batches[start:stop] for start, stop in boundaries]


@pytest.mark.parametrize("epochs", [1, 2])
def test_ten_micro_batches_with_mini_steps_4_give_three_updates(epochs):
    features, labels = arrays()
    accumulated = MLP()
    reference = twin(MLP, accumulated)
    model = GradientAccumulation(accumulated, LOSS, nn.Momentum(accumulated.trainable_params(), 0.1, 0.9))
    history = model.train_process(epochs, mnist_like_dataset(features, labels), mini_steps=4, save=NO_CKPT)

    assert [(r.epoch, r.update, r.micro_batches, r.samples) for r in history] == [
        (epoch, update, steps, steps * BATCH) for epoch in range(1, epochs + 1)
        for update, steps in ((1, 4), (2, 4), (3, 2))]
    # The third update of each epoch is a plain step on the last 2 micro-batches, then the next epoch starts clean.
    expected = reference_steps(reference, nn.Momentum(reference.trainable_params(), 0.1, 0.9),
                               windows_of(features, labels, [(0, 4), (4, 8), (8, 10)]) * epochs)
    actual = params_of(accumulated)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for buffer in model.buffer.grad_mean:
        np.testing.assert_array_equal(buffer.asnumpy(), np.zeros(buffer.shape, np.float32), err_msg=buffer.name)
    assert model.buffer.window_items.asnumpy() == 0 and model.buffer.window_micro_steps.asnumpy() == 0
    assert model.total_updates == 3 * epochs and model.total_micro_steps == 10 * epochs


def test_drop_policy_discards_the_partial_window():
    features, labels = arrays(seed=12)
    accumulated = MLP()
    reference = twin(MLP, accumulated)
    model = GradientAccumulation(accumulated, LOSS, nn.Momentum(accumulated.trainable_params(), 0.1, 0.9))
    history = model.train_process(1, mnist_like_dataset(features, labels), mini_steps=4, remainder="drop",
                                  save=NO_CKPT)
    assert [r.micro_batches for r in history] == [4, 4]
    expected = reference_steps(reference, nn.Momentum(reference.trainable_params(), 0.1, 0.9),
                               windows_of(features, labels, [(0, 4), (4, 8)]))
    actual = params_of(accumulated)
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for buffer in model.buffer.grad_mean:
        assert not buffer.asnumpy().any(), f"{buffer.name} kept the dropped window"


def test_logged_window_loss_is_the_loss_of_the_concatenated_window():
    """Reference: nn.TrainOneStepCell stepping on each concatenated window, its loss taken before each step.

    A real learning rate, so that a loss taken after the update is another
    number (the control).
    """
    features, labels = arrays(seed=13)
    network = MLP()
    reference = twin(MLP, network)
    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), learning_rate=0.5))
    history = model.train_process(1, mnist_like_dataset(features, labels), mini_steps=4, save=NO_CKPT)
    before, after = window_losses(reference, nn.SGD(reference.trainable_params(), learning_rate=0.5),
                                  [(features[start:stop], labels[start:stop]) for start, stop in
                                   [(0, 16), (16, 32), (32, 40)]])
    logged = [record.loss for record in history]
    np.testing.assert_allclose(logged, before, rtol=1e-6)
    assert not np.allclose(logged, after, rtol=1e-3), "control: the losses after each update are the same"


def test_an_exhausted_one_shot_iterator_is_refused_in_the_epoch_it_runs_dry():
    features, labels = arrays(seed=14)
    network = MLP()
    before = params_of(network)
    model = GradientAccumulation(network, LOSS, nn.SGD(network.trainable_params(), 0.1))
    from mindspore import Tensor
    one_shot = iter([(Tensor(features[:4]), Tensor(labels[:4]))])
    with pytest.raises(ValueError, match=r"no micro-batches in epoch 2: pass a mindspore dataset or a re-iterable"):
        model.train_process(2, one_shot, mini_steps=1, save=NO_CKPT)
    assert model.total_updates == 1  # epoch 1 trained on its one micro-batch, then epoch 2 found nothing
    assert any(not np.array_equal(v, before[n]) for n, v in params_of(network).items())
