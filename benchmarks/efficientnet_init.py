"""Does mindcv's EfficientNet-B0 initialisation need timm's fix? The initial loss, with and without it.

timm's ``_init_weight_goog`` draws a convolution's weights with std
sqrt(2 / fan_out), fan_out = kh * kw * out_channels / groups
(``fix_group_fanout``); mindcv's EfficientNet leaves out ``/ groups``, so its
depthwise convolutions start 6 to 34 times smaller (the square root of their channels). Both draw the head from
U(+-1 / sqrt(classes)), which at 10 classes (not ImageNet's 1000) gives large
initial logits. This prints, per seed, the loss and logit spread of the
recipe's network (1 channel, 32x32, GroupNorm(1, C), dropout off) on one
batch of 128 MNIST images, as mindcv builds it and with timm's fix; ln 10 =
2.303 is an even guess.

    python benchmarks/efficientnet_init.py [--seeds 1 2 3]
"""

import argparse
import os
import sys

os.environ.setdefault("GLOG_v", "3")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import mindspore as ms  # noqa: E402
import numpy as np  # noqa: E402
from mindspore import nn  # noqa: E402
from mindspore.common.initializer import Normal, initializer  # noqa: E402

from model_zoo_adapters.mindcv_models import create_mindcv_model, disable_dropout  # noqa: E402
from model_zoo_adapters.registry import create_dataset  # noqa: E402


def fix_group_fanout(network):
    """timm's initialisation of grouped convolutions: std sqrt(2 / (kh * kw * out_channels / groups))."""
    for _, cell in network.cells_and_names():
        if isinstance(cell, nn.Conv2d) and cell.group > 1:
            out, _, kernel_h, kernel_w = cell.weight.shape
            sigma = np.sqrt(2 / (kernel_h * kernel_w * out // cell.group))
            cell.weight.set_data(initializer(Normal(sigma=sigma), cell.weight.shape, cell.weight.dtype))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    args = parser.parse_args()
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    images, labels = next(create_dataset("mnist", os.path.join(REPO, "data", "mnist"), 128, train=True,
                                         image_size=32).create_tuple_iterator(num_epochs=1))
    loss = nn.CrossEntropyLoss()
    for seed in args.seeds:
        for name, fix in (("mindcv", None), ("timm's fix", fix_group_fanout)):
            ms.set_seed(seed)
            network = create_mindcv_model("efficientnet_b0", 10, in_channels=1, norm="group", gn_groups=1,
                                          conv_impl="native")
            if fix:
                fix(network)
            disable_dropout(network)
            network.set_train(False)
            logits = network(images)
            print(f"seed {seed}, {name:10s}: initial loss {float(loss(logits, labels)):.3f}, "
                  f"logit std {float(logits.std()):.2f}")


if __name__ == "__main__":
    main()
