"""Cost of a global batch cut at any size and of a batch ramp, against fixed windows, in one run; and compilations.

Three drivers over twin LeNet5s train one epoch of the same MNIST samples (``--samples``, read once into
memory, so that the figure is the engine's and the cutting's, not the disk's):

* ``fixed``: micro-batches of 32, ``mini_steps`` 4 (train.py without --global_batch_size);
* ``cut128``: ``WindowedDataset`` with a global batch of 128: the same windows as ``fixed``, so the ratio is
  the price of the mechanism alone (stacking samples on the host, the window's count as an input);
* ``n100``: ``WindowedDataset`` with a global batch of 100 (micro-batches of 32, 32, 32, 4);
* ``ramp``: ``WindowedDataset`` with Megatron's ramp 32 -> 128 by 32 over the epoch's samples.

The figure is ms per micro-step, and each path over ``fixed`` as the median of per-round ratios (rounds rotate
the order: the machine is two shared cores). The WindowedDataset paths include stacking the samples into
micro-batches on the host. The ramp's early windows are one micro-batch each, so it also pays an update per
micro-step there: that part is the schedule's arithmetic, not the mechanism's. Then the graphs each step Cell
compiled: one per micro-batch shape, never one per window. Last, reading the samples one by one from
MindSpore's MNIST pipeline against reading micro-batches of 32, the price every rank pays for the exact cut,
per sample.

    python benchmarks/batch_ramp.py [--rounds 15] [--samples 1024]
"""

import os
import sys
import time

os.environ.setdefault("GLOG_v", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

from mindspore_accum import GradientAccumulation, SaveConfig  # noqa: E402
from mindspore_accum.core.batch_size import BatchSchedule  # noqa: E402
from mindspore_accum.data.windowed_data import WindowedDataset  # noqa: E402
from model_zoo_adapters.lenet import LeNet5, create_dataset  # noqa: E402
from rounds import lenet_parser, report_ratio, set_up_cpu_graph_mode, time_rotated  # noqa: E402


def read_samples(data_path, count):
    dataset = create_dataset(data_path, 1, train=True, num_samples=count, shuffle=False, drop_remainder=False)
    return [tuple(row) for row in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)]


def pipeline_seconds(data_path, count, batch_size):
    dataset = create_dataset(data_path, batch_size, train=True, num_samples=count, shuffle=False,
                             drop_remainder=False)
    start = time.perf_counter()
    for _ in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True):
        pass
    return time.perf_counter() - start


def main():
    parser = lenet_parser(__doc__)
    parser.add_argument("--samples", type=int, default=1024)
    parser.set_defaults(rounds=15)
    args = parser.parse_args()
    set_up_cpu_graph_mode()
    rows = read_samples(args.data_path, args.samples)
    images, labels = np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
    b = args.batch_size
    fixed = [(Tensor(images[i:i + b]), Tensor(labels[i:i + b])) for i in range(0, len(rows) - b + 1, b)]
    data = {"fixed": fixed,
            "cut128": WindowedDataset(rows, b, 4 * b),
            "n100": WindowedDataset(rows, b, 100),
            "ramp": WindowedDataset(rows, b, schedule=BatchSchedule(4 * b, rampup=(b, b, len(rows))))}
    first = LeNet5(conv_impl=args.conv_impl)
    drivers = {}
    for name in data:
        network = LeNet5(conv_impl=args.conv_impl)
        for mine, theirs in zip(network.get_parameters(), first.get_parameters()):
            mine.set_data(theirs.data.copy())
        drivers[name] = GradientAccumulation(network, nn.SoftmaxCrossEntropyWithLogits(sparse=True,
                                                                                       reduction="mean"),
                                             nn.Momentum(network.trainable_params(), 0.01, 0.9))
    micro_steps = {name: len(fixed) if name == "fixed" else data[name].micro_batches_in(1) for name in data}
    print(f"{len(rows)} samples; micro-steps an epoch: {micro_steps}; windows of the ramp: "
          f"{data['ramp'].plan(1).windows}")

    def runner(name):
        def run():
            drivers[name].train_process(1, data[name], mini_steps=args.mini_steps,
                                        save=SaveConfig(ckpt_path=None, handle_signals=False), log_every=None)
        return run

    runs = {name: runner(name) for name in data}
    times = time_rotated(runs, args.rounds, 1)
    per_micro_step = {name: [t / micro_steps[name] for t in values] for name, values in times.items()}
    for name in ("cut128", "n100", "ramp"):
        report_ratio({key: per_micro_step[key] for key in ("fixed", name)}, name, "fixed")
    for name, driver in drivers.items():
        shapes = sorted({len(batch[0]) for batch in (fixed if name == "fixed" else data[name].iterate(1))})
        compiled = sum(len(step.compile_cache) for step in driver._steps.values())
        print(f"{name:>8}: {compiled} graph(s) compiled over {args.rounds + 1} epochs, micro-batch sizes {shapes}")

    reads = {"one by one": [], f"batches of {b}": []}
    for _ in range(5):
        reads["one by one"].append(pipeline_seconds(args.data_path, args.samples, 1) * 1e3 / args.samples)
        reads[f"batches of {b}"].append(pipeline_seconds(args.data_path, args.samples, b) * 1e3 / args.samples)
    report_ratio(reads, "one by one", f"batches of {b}", what="sample read")


if __name__ == "__main__":
    main()
