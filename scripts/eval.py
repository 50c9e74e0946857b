"""Evaluate a LeNet5 checkpoint on the MNIST test set.

    python scripts/eval.py --data_path data/mnist --ckpt_path gradient_accumulation.ckpt
"""

import argparse

from common import add_common_args, run, setup_logging, setup_mindspore
from mindspore import Model, nn

from mindspore_accum import load_network_checkpoint
from model_zoo_adapters.lenet import LeNet5, create_dataset


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    args = parser.parse_args()
    setup_logging()

    setup_mindspore(args.device_target)
    network = load_network_checkpoint(LeNet5(conv_impl=args.conv_impl), args.ckpt_path)
    dataset = create_dataset(args.data_path, args.batch_size, train=False, num_samples=args.num_samples,
                             drop_remainder=False)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    model = Model(network, loss_fn, metrics={"Accuracy": nn.Accuracy()})
    print(model.eval(dataset, dataset_sink_mode=False))


if __name__ == "__main__":
    run(main)
