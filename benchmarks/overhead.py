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

import os
import statistics
import sys

os.environ.setdefault("GLOG_v", "3")

from mindspore import nn  # noqa: E402

from mindspore_accum import GradientAccumulation, GradientAccumulationCell  # noqa: E402
from model_zoo_adapters.lenet import LeNet5, create_dataset  # noqa: E402
from rounds import lenet_parser, set_up_cpu_graph_mode, time_rotated  # noqa: E402


def main():
    parser = lenet_parser(__doc__)
    parser.add_argument("--windows", type=int, default=10, help="windows per round")
    args = parser.parse_args()

    set_up_cpu_graph_mode()
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

    times = time_rotated({"plain": run_plain, "accum": run_accumulated, "cell": run_cell}, args.rounds, micro_steps)
    plain_ms, accum_ms, cell_ms = times["plain"], times["accum"], times["cell"]
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
