"""Cost of accumulation: a training micro-step through the three Cells, and through
GradientAccumulationCell (the same Cells in one graph), against nn.TrainOneStepCell.

Both run LeNet5 on the same real-MNIST micro-batches (batch 32), held in memory
so the data pipeline is not measured. The accumulation side is timed per
window of ``mini_steps`` micro-batches - every TrainForwardBackward plus the
one TrainOptim and TrainClear - and divided by ``mini_steps``, so its figure is
the full cost of a micro-step, update included. The two are timed in
alternating rounds, in alternating order, and the ratio is the median of the
per-round ratios: the machine is noisy, a ratio within one run is not. The
single-graph Cell is called once per micro-batch, as ``Model.train`` calls it;
no path reads its output before the end of a round.

    python benchmarks/overhead.py [--rounds 7] [--windows 10] [--mini_steps 4]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402
from mindspore import nn  # noqa: E402

from mindspore_accum import GradientAccumulation, GradientAccumulationCell  # noqa: E402
from model_zoo_adapters.lenet import LeNet5, create_dataset  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=os.path.join(REPO, "data", "mnist"))
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--mini_steps", type=int, default=4)
    parser.add_argument("--windows", type=int, default=10, help="windows per round")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--conv_impl", default="auto", choices=("auto", "native", "im2col"))
    args = parser.parse_args()

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(1)
    micro_steps = args.windows * args.mini_steps
    dataset = create_dataset(args.data_path, args.batch_size, num_samples=micro_steps * args.batch_size)
    batches = list(dataset.create_tuple_iterator())

    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    plain_net, accum_net, cell_net = (LeNet5(conv_impl=args.conv_impl) for _ in range(3))
    plain = nn.TrainOneStepCell(nn.WithLossCell(plain_net, loss_fn),
                                nn.Momentum(plain_net.trainable_params(), 0.01, 0.9))
    plain.set_train()
    accum = GradientAccumulation(accum_net, loss_fn, nn.Momentum(accum_net.trainable_params(), 0.01, 0.9))
    accum.network_with_loss.set_train()
    cell = GradientAccumulationCell(nn.WithLossCell(cell_net, loss_fn), nn.Momentum(cell_net.trainable_params(), 0.01,
                                                                                   0.9), args.mini_steps)
    cell.set_train()

    def run_plain():
        for data, label in batches:
            plain(data, label).asnumpy()

    def run_accumulated():
        for start in range(0, micro_steps, args.mini_steps):
            for data, label in batches[start:start + args.mini_steps]:
                accum.train_forward_backward(data, label).asnumpy()  # as the driver: the loss is read each step
            accum.train_optim()
            accum.train_clear()

    def run_cell():
        for data, label in batches:
            loss = cell(data, label)
        loss.asnumpy()

    run_plain(), run_accumulated(), run_cell()  # compile all, warm the caches
    plain_ms, accum_ms, cell_ms = [], [], []
    order = ((plain_ms, run_plain), (accum_ms, run_accumulated), (cell_ms, run_cell))
    for round_index in range(args.rounds):
        shift = round_index % len(order)  # rotate: no first-mover bias
        for times, run in order[shift:] + order[:shift]:
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1000 / micro_steps)
    ratios = [a / p for a, p in zip(accum_ms, plain_ms)]
    cell_ratios = [c / p for c, p in zip(cell_ms, plain_ms)]

    print(f"LeNet5 (conv_impl {args.conv_impl}), MNIST batch {args.batch_size}, CPU GRAPH_MODE, "
          f"{args.rounds} rounds x {micro_steps} micro-steps (mini_steps {args.mini_steps})")
    print(f"{'path':<48} {'ms / micro-step (median)':>24}")
    print(f"{'nn.TrainOneStepCell':<48} {statistics.median(plain_ms):>24.2f}")
    print(f"{'TrainForwardBackward (+ TrainOptim, TrainClear)':<48} {statistics.median(accum_ms):>24.2f}")
    print(f"{'GradientAccumulationCell':<48} {statistics.median(cell_ms):>24.2f}")
    print(f"ratio three Cells / plain: median {statistics.median(ratios):.3f} "
          f"(min {min(ratios):.3f}, max {max(ratios):.3f}); target <= 1.0")
    print(f"ratio GradientAccumulationCell / plain: median {statistics.median(cell_ratios):.3f} "
          f"(min {min(cell_ratios):.3f}, max {max(cell_ratios):.3f}); target <= 0.85")
    return 0


if __name__ == "__main__":
    sys.exit(main())
