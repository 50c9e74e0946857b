"""The user's own MindSpore 2.x step, timed per micro-step: with ``Accumulator`` and without, as a Cell and as jit.

Paths, all LeNet5 on the same preloaded micro-batches of 32 (no pipeline),
``nn.Momentum``, each in GRAPH_MODE:

* plain_cell: ``value_and_grad`` then ``optimizer(grads)`` in a Cell's ``construct``, an update per micro-step;
* accum_cell: the same Cell calling ``Accumulator(optimizer, mini_steps)`` instead;
* plain_jit, accum_jit: the same two steps as ``@mindspore.jit`` functions (the quick start's form);
* engine: ``GradientAccumulationCell``, the project's own train Cell;
* reference: ``nn.TrainOneStepCell``.

MindSpore runs a jit function through PyNative's asynchronous dispatch
queues, whose waits spin (``AsyncRQueue::Wait`` is a busy loop); on a
machine with few cores the spinning threads take the cores from the kernels.
``--host_blocking`` sets MindSpore's ``MS_DEV_HOST_BLOCKING_RUN=1`` (dispatch
from one thread) before MindSpore loads, to measure that. docs/performance.md
has the figures.

    python benchmarks/own_loop.py [--rounds 21] [--mini_steps 4] [--host_blocking]
"""

import os
import sys

os.environ.setdefault("GLOG_v", "3")
if "--host_blocking" in sys.argv:  # read once by MindSpore, at its first dispatch: set before it loads
    os.environ["MS_DEV_HOST_BLOCKING_RUN"] = "1"

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mindspore_accum import Accumulator, GradientAccumulationCell  # noqa: E402
from model_zoo_adapters.lenet import LeNet5  # noqa: E402
from rounds import lenet_parser, report_ratio, set_up_cpu_graph_mode, time_cells  # noqa: E402

LOSS = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
PATHS = ("plain_cell", "accum_cell", "plain_jit", "accum_jit", "engine", "reference")


class OwnStep(nn.Cell):
    """The user's step as a Cell: ``optimizer(grads)``, or ``accumulator(grads, items, loss)``."""

    def __init__(self, network, update):
        super().__init__(auto_prefix=False)
        self.network, self.update = network, update
        self.accumulates = isinstance(update, Accumulator)
        weights = update.weights if self.accumulates else update.parameters
        self.grad_fn = ms.value_and_grad(self.forward, None, weights)

    def forward(self, x, label):
        return LOSS(self.network(x), label)

    def construct(self, x, label):
        loss, grads = self.grad_fn(x, label)
        if self.accumulates:
            return ops.depend(loss, self.update(grads, x.shape[0], loss))
        return ops.depend(loss, self.update(grads))


def own_function(network, update):
    """The same step as a ``@mindspore.jit`` function."""
    accumulates = isinstance(update, Accumulator)

    def forward_fn(x, label):
        return LOSS(network(x), label)
    grad_fn = ms.value_and_grad(forward_fn, None, update.weights if accumulates else update.parameters)

    def train_step(x, label):
        loss, grads = grad_fn(x, label)
        if accumulates:
            return ops.depend(loss, update(grads, x.shape[0], loss))
        return ops.depend(loss, update(grads))
    return ms.jit(train_step)


def build(path, args):
    network = LeNet5(conv_impl=args.conv_impl)
    optimizer = nn.Momentum(network.trainable_params(), 0.01, 0.9)
    if path == "reference":
        return nn.TrainOneStepCell(nn.WithLossCell(network, LOSS), optimizer)
    if path == "engine":
        return GradientAccumulationCell(nn.WithLossCell(network, LOSS), optimizer, args.mini_steps)
    update = Accumulator(optimizer, args.mini_steps) if path.startswith("accum") else optimizer
    return OwnStep(network, update) if path.endswith("cell") else own_function(network, update)


def main():
    parser = lenet_parser(__doc__)
    parser.add_argument("--micro_batches", type=int, default=16, help="micro-steps per round")
    parser.add_argument("--host_blocking", action="store_true",
                        help="MS_DEV_HOST_BLOCKING_RUN=1: MindSpore dispatches from one thread")
    args = parser.parse_args()
    set_up_cpu_graph_mode()
    rng = np.random.default_rng(0)
    batches = [(Tensor(rng.standard_normal((args.batch_size, 1, 32, 32)).astype(np.float32)),
                Tensor(rng.integers(0, 10, args.batch_size).astype(np.int32))) for _ in range(args.micro_batches)]
    print(f"LeNet5, micro-batch {args.batch_size}, mini_steps {args.mini_steps}, {args.micro_batches} "
          f"micro-steps a round, {args.rounds} rounds; MS_DEV_HOST_BLOCKING_RUN="
          f"{os.environ.get('MS_DEV_HOST_BLOCKING_RUN', 'unset')}")
    times = time_cells({path: build(path, args) for path in PATHS}, batches, args.rounds)
    report_ratio(times, "accum_cell", "plain_cell")
    for path, baseline in (("accum_jit", "plain_jit"), ("accum_cell", "engine"), ("plain_jit", "plain_cell"),
                           ("accum_jit", "accum_cell"), ("plain_cell", "reference")):
        report_ratio({path: times[path], baseline: times[baseline]}, path, baseline, quiet=True)


if __name__ == "__main__":
    main()
