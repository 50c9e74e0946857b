"""Five ways to train LeNet5 on the real MNIST pipeline, timed per micro-step against plain Model.train.

* plain: ``Model(nn.TrainOneStepCell(...)).train``, an update every micro-batch;
* boost: ``Model(..., boost_level="O1")`` with ``mindspore.boost``'s gradient accumulation;
* driver: ``GradientAccumulation.train_process``, one graph per micro-step, Python once per window;
* cell: ``Model(GradientAccumulationCell(...)).train``, one graph per micro-step;
* mindcv: ``mindcv.utils.create_trainer(..., gradient_accumulation_steps=mini_steps)``,
  mindcv's own accumulation (its ``TrainStep``), a peer path;
* pipeline: the same pipeline iterated with no training at all, the floor
  every path stands on.

Besides each path's ratio to plain, it prints the ratio of the *training
part*: a round's time less that round's pipeline time, over plain's less the
same. On a CPU the pipeline's decoding shares the cores with training, so this
subtraction is an estimate, not a measurement of the overlap.

Every path reads the same ``create_dataset`` pipeline (decode, resize,
normalise, batch) for ``--epochs`` epochs per round, with no callbacks. The
paths run in rounds, each round in a rotated order so none always goes first,
and each round's time is divided by its micro-steps; the ratio to plain is the
median of the per-round ratios, since a 2-core machine shared with other work
is too noisy for a ratio of medians.

    python benchmarks/engines.py [--rounds 21] [--num_samples 2048] [--epochs 2] [--mini_steps 4]
"""

import os
import statistics
import sys

os.environ.setdefault("GLOG_v", "3")

from mindspore import Model, nn  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from mindspore_accum import GradientAccumulation, GradientAccumulationCell, SaveConfig  # noqa: E402
from model_zoo_adapters.lenet import LeNet5, create_dataset  # noqa: E402
from rounds import lenet_parser, set_up_cpu_graph_mode, time_rotated  # noqa: E402

PATHS = ("plain", "boost", "mindcv", "driver", "cell", "pipeline")


def build(path, args):
    """A ``run()`` that trains ``args.epochs`` epochs by ``path`` on a pipeline of its own."""
    dataset = create_dataset(args.data_path, args.batch_size, num_samples=args.num_samples)
    if path == "pipeline":
        return lambda: [None for _ in range(args.epochs) for _ in dataset.create_tuple_iterator(num_epochs=1)]
    network = LeNet5(conv_impl=args.conv_impl)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    optimizer = nn.Momentum(network.trainable_params(), 0.01, 0.9)
    if path == "driver":
        driver = GradientAccumulation(network, loss_fn, optimizer)
        return lambda: driver.train_process(args.epochs, dataset, mini_steps=args.mini_steps,
                                            save=SaveConfig(ckpt_path=None, handle_signals=False),
                                            log_every=None)
    if path == "plain":
        model = Model(nn.TrainOneStepCell(nn.WithLossCell(network, loss_fn), optimizer))
    elif path == "mindcv":
        from mindcv.utils import create_trainer  # the vision extra
        model = create_trainer(network, loss_fn, optimizer, metrics=None, amp_level="O0", amp_cast_list=None,
                               loss_scale_type="fixed", gradient_accumulation_steps=args.mini_steps)
    elif path == "boost":
        config = {"boost": {"mode": "manual", "grad_accumulation": True},
                  "grad_accumulation": {"grad_accumulation_step": args.mini_steps}}
        model = Model(network, loss_fn, optimizer, boost_level="O1", boost_config_dict=config)
    else:
        model = Model(GradientAccumulationCell(nn.WithLossCell(network, loss_fn), optimizer, args.mini_steps,
                                               micro_batches_per_epoch=dataset.get_dataset_size()))
    return lambda: model.train(args.epochs, dataset, dataset_sink_mode=False)


def main():
    parser = lenet_parser(__doc__)
    parser.add_argument("--num_samples", type=int, default=2048)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per round")
    args = parser.parse_args()

    set_up_cpu_graph_mode()
    micro_steps = args.epochs * (args.num_samples // args.batch_size)
    times = time_rotated({path: build(path, args) for path in PATHS}, args.rounds, micro_steps)

    print(f"LeNet5 (conv_impl {args.conv_impl}) on the MNIST pipeline, batch {args.batch_size}, mini_steps "
          f"{args.mini_steps}, CPU GRAPH_MODE: {args.rounds} rounds x {micro_steps} micro-steps per path")
    print(f"{'path':<8} {'ms / micro-step (median)':>25} {'x plain (median of rounds)':>28} {'min':>6} {'max':>6}"
          f" {'training part x plain':>22}")
    floor = times["pipeline"]
    for path in PATHS:
        ratios = [t / p for t, p in zip(times[path], times["plain"])]
        training = [(t - f) / (p - f) for t, p, f in zip(times[path], times["plain"], floor) if p > f]
        print(f"{path:<8} {statistics.median(times[path]):>25.2f} {statistics.median(ratios):>28.3f} "
              f"{min(ratios):>6.3f} {max(ratios):>6.3f} "
              f"{statistics.median(training) if path != 'pipeline' and training else float('nan'):>22.3f}")
    for path in ("driver", "cell"):
        versus_boost = statistics.median(c / b for c, b in zip(times[path], times["boost"]))
        print(f"{path} / boost: median {versus_boost:.3f}; targets: {path} <= 0.85 x plain, and below boost")
    driver_vs_cell = statistics.median(d / c for d, c in zip(times["driver"], times["cell"]))
    print(f"driver / cell (the same graph, the driver's Python loop around it): median {driver_vs_cell:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
