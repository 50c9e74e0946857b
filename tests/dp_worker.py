"""One rank of the two-rank equivalence test; started by msrun (see test_data_parallel.py).

Every rank builds the same MLP from the same seed, reads its shard of one
deterministic dataset, trains, and saves, as NumPy files in ``--out``: the
micro-batches it saw, in order, and its final parameters. Rank 0 also saves
the initial parameters. It trains with ``GradientAccumulation(distributed=True)``;
with ``--engine model``, ``Model.train`` of a ``GradientAccumulationCell`` with
``all_reduce=True``; with ``--engine accumulator``, a user's own step Cell
calling ``Accumulator(all_reduce=True)`` and ``flush()`` at each epoch's end.
"""

import argparse
import os
import sys

os.environ.setdefault("GLOG_v", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mindspore as ms  # noqa: E402
import mindspore.dataset as ds  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Model, nn  # noqa: E402
from mindspore.train import Callback  # noqa: E402

from mindspore_accum import (  # noqa: E402
    Accumulator,
    GradientAccumulation,
    GradientAccumulationCell,
    NonFiniteError,
    SaveConfig,
    init_data_parallel,
)
from mindspore_accum.data.windowed_data import WindowedDataset  # noqa: E402
from model_zoo_adapters.transformer import TokenCrossEntropy  # noqa: E402
from nets import LOSS, MLP, TokenMLP, params_of, token_batches  # noqa: E402


def samples(count, seed=5):
    """The dataset: ``count`` rows of 8 features and a label in 0-3."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, 8)).astype(np.float32), rng.integers(0, 4, count).astype(np.int32)


class Rows:
    def __init__(self, features, labels):
        self.features, self.labels = features, labels

    def __getitem__(self, index):
        return self.features[index], self.labels[index]

    def __len__(self):
        return len(self.labels)


class Outputs(Callback):
    """The Cell's output at every micro-step."""

    def __init__(self):
        self.values = []

    def on_train_step_end(self, run_context):
        self.values.append(float(run_context.original_args().net_outputs.asnumpy()))


def train_with_model(network, dataset, args):
    """``Model.train`` of the single-graph Cell; the window losses at the updates' micro-steps."""
    micro_batches = dataset.get_dataset_size()
    cell = GradientAccumulationCell(nn.WithLossCell(network, LOSS), nn.Momentum(network.trainable_params(), 0.1, 0.9),
                                    args.mini_steps, micro_batches_per_epoch=micro_batches, all_reduce=True)
    outputs = Outputs()
    Model(cell).train(args.epochs, dataset, callbacks=[outputs], dataset_sink_mode=False)
    ends = [m for m in range(1, micro_batches + 1) if m % args.mini_steps == 0 or m == micro_batches]
    return {"loss": [outputs.values[e * micro_batches + m - 1] for e in range(args.epochs) for m in ends]}


class OwnStep(nn.Cell):
    """A user's MindSpore 2.x step: value_and_grad of a forward function, then the Accumulator."""

    def __init__(self, network, accumulator):
        super().__init__(auto_prefix=False)
        self.network, self.accumulator = network, accumulator
        self.grad_fn = ms.value_and_grad(self.forward, None, accumulator.weights)

    def forward(self, x, label):
        return LOSS(self.network(x), label)

    def construct(self, x, label):
        loss, grads = self.grad_fn(x, label)
        return self.accumulator(grads, x.shape[0], loss)


def train_own_loop(network, dataset, args):
    """The epochs through ``OwnStep``, flushed at each epoch's end; no window loss is recorded."""
    accumulator = Accumulator(nn.Momentum(network.trainable_params(), 0.1, 0.9), args.mini_steps, all_reduce=True)
    step = OwnStep(network, accumulator)
    applied = []
    for _ in range(args.epochs):
        for x, label in dataset.create_tuple_iterator(num_epochs=1):
            applied.append(bool(step(x, label)))
        applied.append(accumulator.flush())
    return {"applied": applied}


#: Each rank's token micro-batches: (rows, padded length, valid tokens). Windows of 2: 22 and 49 tokens in all.
TOKEN_SHAPES = {0: [(2, 5, 1), (2, 8, 3), (3, 6, 17), (2, 4, 2)], 1: [(2, 7, 12), (2, 6, 6), (3, 10, 30), (2, 3, 0)]}


def train_tokens(rank, args):
    """weighting="items" over two ranks whose windows hold different numbers of valid tokens."""
    network = TokenMLP()
    if rank == 0:
        np.savez(os.path.join(args.out, "initial.npz"), **params_of(network))
    batches = token_batches(TOKEN_SHAPES[rank], seed=10 + rank)
    np.savez(os.path.join(args.out, f"seen{rank}.npz"),
             **{f"{kind}{index}": batch[column].asnumpy() for index, batch in enumerate(batches)
                for column, kind in enumerate(("ids", "labels"))})
    model = GradientAccumulation(network, TokenCrossEntropy(), nn.SGD(network.trainable_params(), 0.5),
                                 distributed=True, weighting="items")
    history = model.train_process(1, batches, mini_steps=args.mini_steps,
                                  save=SaveConfig(ckpt_path=None, handle_signals=False), log_every=None)
    np.savez(os.path.join(args.out, f"final{rank}.npz"), **params_of(network))
    np.savez(os.path.join(args.out, f"records{rank}.npz"), items=[r.items for r in history],
             samples=[r.samples for r in history], loss=[r.loss for r in history])


def train_global_batch(network, rank, ranks, args):
    """A global batch over the ranks' unequal shares: every rank reads every sample and keeps its own."""
    features, labels = samples(args.samples)
    rows = ds.GeneratorDataset(Rows(features, labels), ["x", "label"], shuffle=False).batch(1)
    windowed = WindowedDataset(rows, args.batch_size, args.global_batch_size, rank=rank, ranks=ranks)
    optimizer = nn.Momentum(network.trainable_params(), 0.1, 0.9)
    if args.engine == "model":
        cell = GradientAccumulationCell(nn.WithLossCell(network, LOSS), optimizer, all_reduce=True,
                                        windows_from_data=True)
        Model(cell).train(args.epochs, windowed.as_dataset(), dataset_sink_mode=False)
        return {"micro_batches": [windowed.micro_batches_in(1)]}
    history = GradientAccumulation(network, LOSS, optimizer, distributed=True).train_process(
        args.epochs, windowed, save=SaveConfig(ckpt_path=None, handle_signals=False), log_every=None)
    return {"samples": [r.samples for r in history], "micro_batches": [r.micro_batches for r in history],
            "samples_seen": [r.samples_seen for r in history]}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, required=True)
    parser.add_argument("--batch_size", type=int, required=True)
    parser.add_argument("--mini_steps", type=int, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--engine", choices=("driver", "model", "accumulator"), default="driver")
    parser.add_argument("--weighting", choices=("samples", "items"), default="samples",
                        help="items: TokenMLP on token micro-batches whose valid tokens differ between the ranks")
    parser.add_argument("--global_batch_size", type=int, default=None,
                        help="windows of this many samples over both ranks (WindowedDataset), shares unequal")
    parser.add_argument("--poison_rank", type=int, default=None,
                        help="this rank's 5th micro-batch gets a NaN (driver engine): every rank must stop together")
    args = parser.parse_args()
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    rank, ranks = init_data_parallel()
    ms.set_seed(1)
    if args.weighting == "items":
        return train_tokens(rank, args)
    network = MLP()
    if rank == 0:
        np.savez(os.path.join(args.out, "initial.npz"), **params_of(network))
    if args.global_batch_size:
        records = train_global_batch(network, rank, ranks, args)
        np.savez(os.path.join(args.out, f"final{rank}.npz"), **params_of(network))
        return np.savez(os.path.join(args.out, f"records{rank}.npz"), **records)
    features, labels = samples(args.samples)
    features[:, 1] = np.arange(args.samples) / 64  # every row carries its index (exact in float32): the shards
    dataset = ds.GeneratorDataset(Rows(features, labels), ["x", "label"], shuffle=False,
                                  num_shards=ranks, shard_id=rank).batch(args.batch_size, drop_remainder=True)
    seen = [(x, y) for x, y in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)]
    np.savez(os.path.join(args.out, f"seen{rank}.npz"), x=np.stack([x for x, _ in seen]),
             label=np.stack([y for _, y in seen]))
    if args.poison_rank == rank:  # train on what the pipeline gave, with a NaN in the 5th micro-batch
        poisoned = [(x.copy(), y) for x, y in seen]
        poisoned[4][0][0, 0] = np.nan
        dataset = [(ms.Tensor(x), ms.Tensor(y)) for x, y in poisoned]
    if args.engine == "model":
        records = train_with_model(network, dataset, args)
    elif args.engine == "accumulator":
        records = train_own_loop(network, dataset, args)
    else:
        model = GradientAccumulation(network, LOSS, nn.Momentum(network.trainable_params(), 0.1, 0.9),
                                     distributed=True)
        try:
            history = model.train_process(args.epochs, dataset, mini_steps=args.mini_steps,
                                          save=SaveConfig(ckpt_path=None, handle_signals=False),
                                          log_every=None)
        except NonFiniteError as error:
            with open(os.path.join(args.out, f"stopped{rank}.txt"), "w", encoding="utf-8") as handle:
                handle.write(str(error))
            history = []
        records = {"samples": [r.samples for r in history], "loss": [r.loss for r in history],
                   "micro_batches": [r.micro_batches for r in history]}
    np.savez(os.path.join(args.out, f"final{rank}.npz"), **params_of(network))
    np.savez(os.path.join(args.out, f"records{rank}.npz"), **records)


if __name__ == "__main__":
    main()
