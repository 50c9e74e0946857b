"""CPU convolution: native nn.Conv2d against im2col, per layer shape, per LeNet5 step and per MNIST epoch.

Three tables, all from one run (the machine is noisy; compare within a table):

1. layer shapes: forward + backward of one convolution, native against im2col,
   and what ``conv_impl="auto"`` picks - the measurements behind its rule;
2. a LeNet5 training micro-step at batch 32 through the accumulation Cells,
   native against auto;
3. one MNIST epoch with ``mini_steps 4`` (``--epoch_samples`` shortens it),
   native against auto.

    python benchmarks/cpu_conv.py [--rounds 5] [--epoch_samples 60000] [--skip_epoch]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("GLOG_v", "3")

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import Tensor, nn, ops  # noqa: E402

from mindspore_accum import GradientAccumulation, SaveConfig  # noqa: E402
from model_zoo_adapters.conv import Im2ColConv2d, im2col_is_faster  # noqa: E402
from model_zoo_adapters.lenet import LeNet5, create_dataset  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOSS = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")

# (in, out, kernel, height=width, batch): LeNet5's two layers, then wider ones up to ResNet's.
LAYER_SHAPES = [
    (1, 6, 5, 32, 32), (6, 16, 5, 14, 32),
    (3, 16, 3, 32, 32), (3, 64, 7, 64, 8), (16, 16, 3, 32, 32), (16, 32, 3, 16, 32),
    (32, 32, 3, 16, 32), (32, 64, 3, 16, 16), (64, 64, 3, 32, 16), (64, 64, 3, 8, 32),
    (64, 128, 3, 8, 32), (128, 128, 3, 8, 16), (256, 256, 3, 14, 8), (512, 512, 3, 7, 8),
    (64, 64, 1, 32, 16), (256, 64, 1, 16, 16), (64, 256, 1, 16, 16),
]


class ConvGrad(nn.Cell):
    """Forward and backward of one convolution: weight gradients, and input gradients if asked.

    Every layer of a network but the first needs its input gradient, and that
    is where the native CPU kernel is slow.
    """

    def __init__(self, conv, input_grad=True):
        super().__init__()
        self.conv = conv
        self.grad = ops.GradOperation(get_all=input_grad, get_by_list=True)
        self.weights = ms.ParameterTuple(conv.trainable_params())

    def construct(self, x):
        return self.grad(self.conv, self.weights)(x)


def last_tensor(output):
    """The weight gradient, read to wait for the step: outputs are nested tuples of Tensors."""
    while isinstance(output, tuple):
        output = output[-1]
    return output


def median_ms(function, rounds, repeats):
    function()  # compile
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            function()
        times.append((time.perf_counter() - start) * 1000 / repeats)
    return statistics.median(times)


def layer_table(rounds):
    print("1. one convolution, forward + backward (input and weight gradients), ms (median of rounds);")
    print("   'native, no dx' leaves out the input gradient, as for a network's first layer")
    print(f"{'in':>4} {'out':>4} {'k':>2} {'hw':>3} {'N':>3} {'native':>8} {'im2col':>8} {'speed-up':>9} "
          f"{'auto picks':>10} {'right?':>6} {'native, no dx':>14}")
    rng = np.random.default_rng(0)
    for cin, cout, k, hw, n in LAYER_SHAPES:
        x = Tensor(rng.standard_normal((n, cin, hw, hw)).astype(np.float32))
        timings = []
        for cls, input_grad in ((nn.Conv2d, True), (Im2ColConv2d, True), (nn.Conv2d, False)):
            step = ConvGrad(cls(cin, cout, k, pad_mode="same"), input_grad)
            timings.append(median_ms(lambda s=step, x=x: last_tensor(s(x)).asnumpy(), rounds, 3))
        faster = "im2col" if timings[1] < timings[0] else "native"
        picks = "im2col" if im2col_is_faster(cin, cout, k) else "native"
        print(f"{cin:>4} {cout:>4} {k:>2} {hw:>3} {n:>3} {timings[0]:>8.2f} {timings[1]:>8.2f} "
              f"{timings[0] / timings[1]:>8.2f}x {picks:>10} {'yes' if picks == faster else 'NO':>6} "
              f"{timings[2]:>14.2f}")


def lenet_models(conv_impls):
    models = {}
    for conv_impl in conv_impls:
        ms.set_seed(1)
        network = LeNet5(conv_impl=conv_impl)
        models[conv_impl] = GradientAccumulation(network, LOSS, nn.Momentum(network.trainable_params(), 0.01, 0.9))
    return models


def step_table(data_path, rounds):
    print("\n2. LeNet5 training micro-step, batch 32 (TrainForwardBackward), ms (median of rounds)")
    batches = list(create_dataset(data_path, 32, num_samples=32 * 20).create_tuple_iterator())
    results = {}
    for conv_impl, model in lenet_models(("native", "auto")).items():
        def run(model=model):
            for data, label in batches:
                model.train_forward_backward(data, label).asnumpy()
            model.train_clear()
        results[conv_impl] = median_ms(run, rounds, 1) / len(batches)
    print(f"{'native':>10} {'auto':>10} {'speed-up':>10}")
    print(f"{results['native']:>10.2f} {results['auto']:>10.2f} {results['native'] / results['auto']:>9.2f}x")


def epoch_table(data_path, samples):
    print(f"\n3. one MNIST epoch ({samples} samples, batch 32, mini_steps 4, train_process), seconds")
    results = {}
    for conv_impl, model in lenet_models(("native", "auto")).items():
        dataset = create_dataset(data_path, 32, num_samples=samples)
        start = time.perf_counter()
        model.train_process(1, dataset, mini_steps=4, save=SaveConfig(ckpt_path=None), log_every=10**9)
        results[conv_impl] = time.perf_counter() - start
    print(f"{'native':>10} {'auto':>10} {'speed-up':>10}")
    print(f"{results['native']:>10.1f} {results['auto']:>10.1f} {results['native'] / results['auto']:>9.2f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_path", default=os.path.join(REPO, "data", "mnist"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epoch_samples", type=int, default=60000)
    parser.add_argument("--skip_layers", action="store_true")
    parser.add_argument("--skip_epoch", action="store_true")
    args = parser.parse_args()
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    print(f"MindSpore {ms.__version__}, CPU, GRAPH_MODE, {os.cpu_count()} cores\n")
    if not args.skip_layers:
        layer_table(args.rounds)
    step_table(args.data_path, args.rounds)
    if not args.skip_epoch:
        epoch_table(args.data_path, args.epoch_samples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
