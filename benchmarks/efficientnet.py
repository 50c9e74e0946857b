"""EfficientNet-B0's micro-step on the CPU: mindcv's network as built (native) against ``use_im2col``.

Two ``GradientAccumulationCell``s over twin EfficientNet-B0 networks (mindcv,
1 input channel, 32x32, GroupNorm at the default groups) run the same
micro-batches held in memory, in rotated rounds; the figure is the median of
the per-round ratios. ``use_im2col`` replaces only the convolutions it can
(group 1, kernels above 1x1): in EfficientNet-B0 that is the 3x3 stem, since
its other convolutions are 1x1 or depthwise.

    python benchmarks/efficientnet.py [--rounds 11] [--micro_batches 8] [--batch_size 32]
"""

import argparse
import os
import sys

os.environ.setdefault("GLOG_v", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from mindspore import Tensor, nn  # noqa: E402

from mindspore_accum import GradientAccumulationCell  # noqa: E402
from model_zoo_adapters.conv import use_im2col  # noqa: E402
from model_zoo_adapters.mindcv_models import create_mindcv_model  # noqa: E402
from rounds import report_ratio, set_up_cpu_graph_mode, time_cells  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--micro_batches", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=32)
    args = parser.parse_args()
    set_up_cpu_graph_mode()
    rng = np.random.default_rng(0)
    batches = [(Tensor(rng.standard_normal((args.batch_size, 1, 32, 32)).astype(np.float32)),
                Tensor(rng.integers(0, 10, args.batch_size).astype(np.int32))) for _ in range(args.micro_batches)]
    cells, replaced = {}, []
    native = create_mindcv_model("efficientnet_b0", 10, in_channels=1, norm="group", conv_impl="native")
    for name in ("native", "im2col"):
        network = native if name == "native" else create_mindcv_model("efficientnet_b0", 10, in_channels=1,
                                                                      norm="group", conv_impl="native")
        if name == "im2col":
            for mine, theirs in zip(network.get_parameters(), native.get_parameters()):
                mine.set_data(theirs.data.copy())
            replaced = use_im2col(network, "auto")
        loss = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
        cells[name] = GradientAccumulationCell(nn.WithLossCell(network, loss),
                                               nn.AdamWeightDecay(network.trainable_params(), 3e-4), 4,
                                               micro_batches_per_epoch=len(batches))

    times = time_cells(cells, batches, args.rounds)
    print(f"use_im2col replaced {len(replaced)} convolution(s): {', '.join(replaced)}; micro-batches of "
          f"{args.batch_size}")
    report_ratio(times, "im2col", "native")


if __name__ == "__main__":
    main()
