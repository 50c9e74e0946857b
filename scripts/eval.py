"""Evaluate a LeNet5 checkpoint on the MNIST test set.

    python scripts/eval.py --data_path data/mnist --ckpt_path gradient_accumulation.ckpt

--ckpt_path may be a directory: its newest .ckpt file is taken.
"""

import argparse
import glob
import os

from common import add_common_args, evaluate, run, setup_logging, setup_mindspore

from mindspore_accum import load_network_checkpoint
from model_zoo_adapters.lenet import LeNet5, create_dataset

NUM_CLASSES = 10


def newest_checkpoint(path):
    """``path`` itself, or the newest ``.ckpt`` in it if it is a directory."""
    if not os.path.isdir(path):
        return path
    found = glob.glob(os.path.join(path, "*.ckpt"))
    if not found:
        raise ValueError(f"--ckpt_path {path!r} is a directory with no .ckpt file: give a checkpoint file")
    return max(found, key=os.path.getmtime)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--per_class", action="store_true", help="also per-class accuracy and the confusion matrix")
    args = parser.parse_args()
    setup_logging()

    setup_mindspore(args.device_target)
    ckpt_path = newest_checkpoint(args.ckpt_path)
    network = load_network_checkpoint(LeNet5(conv_impl=args.conv_impl), ckpt_path)
    dataset = create_dataset(args.data_path, args.batch_size, train=False, num_samples=args.num_samples,
                             drop_remainder=False)
    result = evaluate(network, dataset, NUM_CLASSES if args.per_class else None)
    if args.per_class:
        matrix = result["ConfusionMatrix"]  # rows: true class, columns: predicted class
        print("class  samples  accuracy")
        for label, row in enumerate(matrix):
            print(f"{label:>5}  {row.sum():>7}  " + (f"{row[label] / row.sum():.4f}" if row.sum() else "     -"))
        print("confusion matrix (rows: true class, columns: predicted):")
        for row in matrix:
            print(" ".join(f"{count:>5}" for count in row))
    print({"Accuracy": result["Accuracy"]})  # the tutorial's format, last line


if __name__ == "__main__":
    run(main)
