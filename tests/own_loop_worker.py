"""A user's own step with ``Accumulator``, run over part of a fixed data set; started by test_accumulator.py.

Every kind of state is in play: ``experimental.optim.AdamW`` (moments and step
count), a dynamic loss scaler, clipping and an EMA. ``--save`` writes
``mindspore.save_checkpoint(accumulator)`` after micro-batch ``--stop``;
``--load`` reads one with ``mindspore.load_checkpoint`` and ``load_param_into_net`` into this fresh
set-up, whose initial weights ``--seed`` makes different. The run ends by
writing every Parameter of the accumulator to ``--out`` (NumPy).
"""

import argparse
import os
import sys

os.environ.setdefault("GLOG_v", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import amp  # noqa: E402
from mindspore.experimental import optim  # noqa: E402

from mindspore_accum import Accumulator  # noqa: E402
from nets import LOSS, MLP, micro_batches  # noqa: E402

#: 11 micro-batches: windows of 4, 4 and a partial 3 that flush() applies.
BATCHES = [4, 4, 3, 4, 4, 2, 4, 4, 1, 4, 3]
#: What a save must hold beyond the weights and the optimizer: the --without_window control leaves these out.
WINDOW_STATE = ("grad_sum.", "window_")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--stop", type=int, default=len(BATCHES))
    parser.add_argument("--save")
    parser.add_argument("--load")
    parser.add_argument("--without_window", action="store_true", help="load all but the open window's state")
    args = parser.parse_args()
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(args.seed)
    network = MLP()
    scaler = amp.DynamicLossScaler(2 ** 10, 2, 3)  # a window of 3: the scale rises during the run
    accumulator = Accumulator(optim.AdamW(network.trainable_params(), lr=0.01), mini_steps=4, loss_scaler=scaler,
                              clip_grad_norm=1.0, ema_decay=0.9)
    if args.load:
        keep = (lambda name: not name.startswith(WINDOW_STATE)) if args.without_window else None
        not_loaded, _ = ms.load_param_into_net(accumulator, ms.load_checkpoint(args.load, choice_func=keep))
        assert args.without_window or not not_loaded, not_loaded

    def forward_fn(x, label):
        loss = LOSS(network(x), label)
        return scaler.scale(loss), loss
    grad_fn = ms.value_and_grad(forward_fn, None, accumulator.weights, has_aux=True)

    @ms.jit
    def train_step(x, label):
        (_, loss), grads = grad_fn(x, label)
        return accumulator(grads, x.shape[0], loss)

    for x, label in micro_batches(BATCHES, (8,), 4, seed=21)[args.start:args.stop]:
        train_step(x, label)
    if args.save:
        ms.save_checkpoint(accumulator, args.save)
    if args.stop == len(BATCHES):
        accumulator.flush()
    np.savez(args.out, **{p.name: p.asnumpy() for p in accumulator.get_parameters()})


if __name__ == "__main__":
    main()
