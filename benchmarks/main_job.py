"""A profile of the main job (`make mnist`): where a micro-step's time goes, part by part.

Each part is timed on its own, in rotated rounds of one run, LeNet5 at micro-batch 32 with `--mini_steps 4`:

* step: ``nn.TrainOneStepCell`` on preloaded tensors, the floor;
* driver: ``GradientAccumulation.train_process`` on the same preloaded tensors, with train.py's callbacks
  (metrics file, no progress bar): the step plus accumulation plus the driver's host work;
* all-in: the driver on the MNIST pipeline train.py uses, which decodes the split once
  (``create_dataset(decode_once=True)``: model_zoo_adapters/decoded.py);
* all-in streamed: all-in with the driver fetching one micro-batch at a time, as on a GPU, not a chunk at a
  time as on the CPU (mindspore_accum/data/fetch.py);
* all-in decoding: the driver on the pipeline that decodes, resizes and normalises every image every epoch;
* pipeline, pipeline decoding: each pipeline iterated with no training;
* all-in batch source, pipeline batch source: the same decoded micro-batches from a ``GeneratorDataset`` whose
  source hands over a whole micro-batch at a time, in its own order. Not an alternative (train.py's order is
  ``MnistDataset``'s sampler's, sample by sample), but the bound: what the pipeline would cost without
  MindSpore's per-sample reader.

Derived: host work = driver - step; the pipeline's cost inside training = all-in - driver (on a CPU the
pipeline's threads share the cores with the kernels). Beside each part's wall time, its CPU time (all the
process's threads), which the machine's noise moves less: the step's shows how many cores its kernels keep busy,
the pipeline's what it takes from them. Once each: decoding the split into the table, the
compile (the first micro-step's extra time) and eval.py's evaluation of the test split.

    python benchmarks/main_job.py [--rounds 3] [--num_samples 16000]
"""

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("GLOG_v", "3")

import mindspore.dataset as ds  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "scripts"))

from mindspore_accum import GradientAccumulation, MetricsLog, SaveConfig  # noqa: E402
from mindspore_accum.driver import loop  # noqa: E402
from model_zoo_adapters.lenet import LeNet5, create_dataset  # noqa: E402
from rounds import lenet_parser, set_up_cpu_graph_mode, time_rotated  # noqa: E402

LOSS = nn.CrossEntropyLoss()


def build(args, workdir):
    """``{part: run()}``; each run trains (or reads) ``args.num_samples`` samples once."""
    start = time.perf_counter()
    dataset = create_dataset(args.data_path, args.batch_size, num_samples=args.num_samples, decode_once=True)
    print(f"decoding the training split once: {time.perf_counter() - start:.2f} s")
    decoding = create_dataset(args.data_path, args.batch_size, num_samples=args.num_samples, decode_once=False)
    preloaded = [(Tensor(x), Tensor(y)) for x, y in dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)]

    def driver_on(data):
        network = LeNet5(conv_impl=args.conv_impl)
        driver = GradientAccumulation(network, LOSS, nn.Momentum(network.trainable_params(), 0.01, 0.9))
        metrics = os.path.join(workdir, f"metrics_{id(data)}.jsonl")
        return lambda: driver.train_process(1, data, mini_steps=args.mini_steps, log_every=None,
                                            save=SaveConfig(ckpt_path=None, handle_signals=False),
                                            callbacks=[MetricsLog(metrics)])

    network = LeNet5(conv_impl=args.conv_impl)
    step = nn.TrainOneStepCell(nn.WithLossCell(network, LOSS), nn.Momentum(network.trainable_params(), 0.01, 0.9))

    def step_run():
        for inputs in preloaded:
            out = step(*inputs)
        out.asnumpy()
    batches = batch_source(preloaded)
    return {"step": step_run, "driver": driver_on(preloaded), "all-in": driver_on(dataset),
            "all-in streamed": streamed(driver_on(dataset)),
            "all-in decoding": driver_on(decoding), "all-in batch source": driver_on(batches),
            "pipeline": lambda: [None for _ in dataset.create_tuple_iterator(num_epochs=1)],
            "pipeline decoding": lambda: [None for _ in decoding.create_tuple_iterator(num_epochs=1)],
            "pipeline batch source": lambda: [None for _ in batches.create_tuple_iterator(num_epochs=1)]}, \
        len(preloaded)


class _MicroBatches:
    """A random-access source of whole micro-batches: one Python call hands over one micro-batch."""

    def __init__(self, preloaded):
        self.images = np.stack([images.asnumpy() for images, _ in preloaded])
        self.labels = np.stack([labels.asnumpy() for _, labels in preloaded])

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def __len__(self):
        return len(self.images)


def streamed(run):
    """``run`` with the driver fetching one micro-batch at a time, as it does on a GPU: the chunks' gain, in one run
    (mindspore_accum/data/fetch.py)."""
    def run_streamed():
        chosen = loop.chunk_for
        loop.chunk_for = lambda device_target: 1
        try:
            run()
        finally:
            loop.chunk_for = chosen
    return run_streamed


def batch_source(preloaded):
    return ds.GeneratorDataset(_MicroBatches(preloaded), ["image", "label"], shuffle=True,
                               python_multiprocessing=False)


def with_cpu_time(run, into, micro_batches):
    """``run``, appending its CPU time (every thread of the process) per micro-batch, in ms, to ``into``."""
    def timed():
        start = time.process_time()
        run()
        into.append((time.process_time() - start) * 1000 / micro_batches)
    return timed


def compile_seconds(args):
    """The first micro-step's time less a later one's: the step graph's compile."""
    network = LeNet5(conv_impl=args.conv_impl)
    step = nn.TrainOneStepCell(nn.WithLossCell(network, LOSS), nn.Momentum(network.trainable_params(), 0.01, 0.9))
    x = Tensor(np.zeros((args.batch_size, 1, 32, 32), np.float32))
    y = Tensor(np.zeros((args.batch_size,), np.int32))
    start = time.perf_counter()
    step(x, y).asnumpy()
    first = time.perf_counter() - start
    start = time.perf_counter()
    step(x, y).asnumpy()
    return first - (time.perf_counter() - start)


def eval_seconds(args):
    from report import evaluate
    network = LeNet5(conv_impl=args.conv_impl)
    test_set = create_dataset(args.data_path, args.batch_size, train=False, drop_remainder=False)
    start = time.perf_counter()
    evaluate(network, test_set)
    return time.perf_counter() - start


def main():
    parser = lenet_parser(__doc__)
    parser.set_defaults(rounds=3)
    parser.add_argument("--num_samples", type=int, default=16000, help="samples a round trains on")
    args = parser.parse_args()
    set_up_cpu_graph_mode()
    with tempfile.TemporaryDirectory() as workdir:
        runs, micro_batches = build(args, workdir)
        cpu = {part: [] for part in runs}
        times = time_rotated({part: with_cpu_time(run, cpu[part], micro_batches) for part, run in runs.items()},
                             args.rounds, micro_batches)
    median = {part: statistics.median(values) for part, values in times.items()}
    cpu = {part: statistics.median(values[1:]) for part, values in cpu.items()}  # [1:]: not the warm-up
    print(f"LeNet5, micro-batch {args.batch_size}, mini_steps {args.mini_steps}, {micro_batches} micro-batches a "
          f"round, {args.rounds} rounds; ms per micro-step (medians): wall, CPU")
    for part, value in median.items():
        print(f"{part:>21}: {value:.2f}, {cpu[part]:.2f}")
    print(f"host work (driver - step): {median['driver'] - median['step']:.2f}, CPU "
          f"{cpu['driver'] - cpu['step']:.2f}; the step keeps {cpu['step'] / median['step']:.2f} cores busy")
    for kind in ("", " decoding", " batch source"):
        print(f"pipeline{kind}: inside training (all-in - driver) {median['all-in' + kind] - median['driver']:.2f}, "
              f"CPU {cpu['all-in' + kind] - cpu['driver']:.2f} (alone {cpu['pipeline' + kind]:.2f}); "
              f"alone {1000 / median['pipeline' + kind]:.0f} micro-batches/s, "
              f"{median['step'] / median['pipeline' + kind]:.1f}x the step's {1000 / median['step']:.0f}; "
              f"all-in / step: {median['all-in' + kind] / median['step']:.3f}")
    print(f"fetching in chunks: all-in {median['all-in']:.2f}, streamed {median['all-in streamed']:.2f} "
          f"(CPU {cpu['all-in']:.2f}, {cpu['all-in streamed']:.2f}); all-in streamed / step: "
          f"{median['all-in streamed'] / median['step']:.3f}")
    print(f"compile: {compile_seconds(args):.2f} s; eval of the test split: {eval_seconds(args):.2f} s")


if __name__ == "__main__":
    main()
