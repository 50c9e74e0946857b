"""Small networks and data for the tests, and the reference training step."""

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal

from mindspore_accum import SaveConfig
from model_zoo_adapters.lenet import LeNet5

LOSS = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
#: train_process saving nothing: the tests compare parameters in memory.
NO_CKPT = SaveConfig(ckpt_path=None)


class MLP(nn.Cell):
    """Two dense layers on 8 features; no BatchNorm, so accumulation is exact."""

    def __init__(self, batchnorm=False):
        super().__init__()
        self.fc1 = nn.Dense(8, 16, weight_init=Normal(0.5))
        self.bn = nn.BatchNorm1d(16) if batchnorm else None
        self.fc2 = nn.Dense(16, 4, weight_init=Normal(0.5))
        self.relu = nn.ReLU()

    def construct(self, x):
        x = self.fc1(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.fc2(self.relu(x))


class MeanOfInputs(nn.Cell):
    """loss = mean(x) * w with one scalar weight, so d loss / d w = mean(x) exactly."""

    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(np.ones((1,), np.float32)), name="w")

    def construct(self, x, label):
        return ops.reduce_mean(x) * self.w[0]


NETWORKS = {
    "mlp": (MLP, (8,), 4),
    "lenet": (LeNet5, (1, 32, 32), 10),
}
OPTIMIZERS = {
    "momentum": lambda params: nn.Momentum(params, learning_rate=0.1, momentum=0.9),
    # Adam's first update is lr * g / (|g| + eps): where a gradient cancels to
    # ~0 its slope is lr / (4 eps), which turns float32 reordering of the same
    # sum into ~1e-5 at the default eps=1e-8. eps=1e-6 keeps the comparison
    # about accumulation (worst excess over rtol measured here: 5e-8).
    "adam": lambda params: nn.Adam(params, learning_rate=0.01, eps=1e-6),
    "sgd": lambda params: nn.SGD(params, learning_rate=0.1),
    # AdamW with its decoupled weight decay; eps as Adam's above.
    "adamw": lambda params: nn.AdamWeightDecay(params, learning_rate=0.01, eps=1e-6, weight_decay=0.01),
}


def twin(network_cls, reference, **kwargs):
    """A second network of ``network_cls`` holding a copy of ``reference``'s parameters."""
    copy = network_cls(**kwargs)
    for mine, theirs in zip(copy.get_parameters(), reference.get_parameters()):
        assert mine.name == theirs.name
        mine.set_data(theirs.data.copy())
    return copy


def micro_batches(sizes, feature_shape, num_classes, seed=0):
    """A list of (data, label) Tensors, one per micro-batch size."""
    rng = np.random.default_rng(seed)
    return [(Tensor(rng.standard_normal((size, *feature_shape)).astype(np.float32)),
             Tensor(rng.integers(0, num_classes, size).astype(np.int32))) for size in sizes]


def concat(batches):
    return tuple(Tensor(np.concatenate([b[i].asnumpy() for b in batches])) for i in range(len(batches[0])))


def params_of(network):
    return {p.name: p.asnumpy().copy() for p in network.get_parameters()}


def reference_steps(network, optimizer, windows):
    """One ordinary nn.TrainOneStepCell step per window, on the window's concatenated micro-batches."""
    step = nn.TrainOneStepCell(nn.WithLossCell(network, LOSS), optimizer)
    step.set_train()
    for window in windows:
        step(*concat(window))
    return params_of(network)


def numpy_scores(ckpt_path, data_path):
    """The reference for eval.py and the metrics file: LeNet5 from ``ckpt_path`` run on the MNIST test split here.

    Returns its mean cross-entropy and accuracy, computed in NumPy (float64)
    from the logits, and the per-sample predictions and labels.
    """
    from mindspore_accum import load_network_checkpoint
    from model_zoo_adapters.lenet import create_dataset
    network = load_network_checkpoint(LeNet5(), ckpt_path)
    network.set_train(False)
    logits, labels = [], []
    for images, label in create_dataset(data_path, batch_size=8, train=False, drop_remainder=False) \
            .create_tuple_iterator(num_epochs=1):
        logits.append(network(images).asnumpy().astype(np.float64))
        labels.append(label.asnumpy())
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    log_softmax = logits - logits.max(1, keepdims=True)
    log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
    predictions = logits.argmax(1)
    return (-log_softmax[np.arange(len(labels)), labels].mean(), (predictions == labels).mean(), predictions,
            labels)


def window_losses(network, optimizer, windows):
    """Steps once per (data, label) window; returns each window's loss before its step, and after it."""
    step = nn.TrainOneStepCell(nn.WithLossCell(network, LOSS), optimizer)
    loss_of = nn.WithLossCell(network, LOSS)
    before, after = [], []
    for data, label in windows:
        data, label = Tensor(data), Tensor(label)
        before.append(float(step(data, label).asnumpy()))  # TrainOneStepCell returns the loss it stepped on
        after.append(float(loss_of(data, label).asnumpy()))
    return before, after


class TokenMLP(nn.Cell):
    """A per-token classifier over a vocabulary of 20: ids (batch, length) -> logits (batch, length, 20).

    No attention, so it is fast; what matters here is a loss that is a mean over valid tokens.
    """

    def __init__(self, vocab=20, width=8):
        super().__init__()
        self.embed = nn.Embedding(vocab, width, embedding_table=Normal(0.5))
        self.out = nn.Dense(width, vocab, weight_init=Normal(0.5))

    def construct(self, ids):
        return self.out(ops.tanh(self.embed(ids)))


def token_batches(shapes, seed=0, vocab=20):
    """A list of (ids, labels) int32 micro-batches, one per (rows, length, valid tokens) in ``shapes``.

    The first ``valid`` labels in row-major order are tokens; the rest are
    -100 (nn.CrossEntropyLoss's ignore_index), and their ids are 0 (padding).
    """
    rng = np.random.default_rng(seed)
    batches = []
    for rows, length, valid in shapes:
        ids = rng.integers(1, vocab, (rows, length)).astype(np.int32)
        labels = rng.integers(0, vocab, (rows, length)).astype(np.int32)
        keep = (np.arange(rows * length) < valid).reshape(rows, length)
        batches.append((Tensor(np.where(keep, ids, 0).astype(np.int32)),
                        Tensor(np.where(keep, labels, -100).astype(np.int32))))
    return batches


def pad_concat(batches):
    """The micro-batches concatenated into one, padded to the longest: ids with 0, labels with -100."""
    length = max(b[0].shape[1] for b in batches)
    ids = [np.pad(b[0].asnumpy(), ((0, 0), (0, length - b[0].shape[1]))) for b in batches]
    labels = [np.pad(b[1].asnumpy(), ((0, 0), (0, length - b[1].shape[1])), constant_values=-100) for b in batches]
    return Tensor(np.concatenate(ids)), Tensor(np.concatenate(labels))
