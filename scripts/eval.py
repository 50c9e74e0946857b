"""Evaluate a checkpoint on the test split, with the model flags it was trained with.

    python scripts/eval.py --data_path data/mnist --ckpt_path gradient_accumulation.ckpt
    python scripts/eval.py --model resnet18 --norm group --image_size 32 --data_path cifar-10-batches-bin \
        --ckpt_path resnet18.ckpt

    python scripts/eval.py --model gpt_tiny --data_path pydoc --ckpt_path gpt.ckpt

--ckpt_path may be a directory: its newest .ckpt file is taken. A training state
(state-*.ckpt, or a <name>_state/ directory) is accepted too: the network it holds is evaluated.
"""

import argparse
import os

from common import (
    add_common_args,
    build_dataset,
    build_network,
    evaluate,
    resolve_model_args,
    run,
    setup_logging,
    setup_mindspore,
    task_of,
)
from mindspore_accum import load_network_checkpoint
from mindspore_accum.files import newest_file


def newest_checkpoint(path):
    """``path`` itself, or the newest ``.ckpt`` in it if it is a directory."""
    if not os.path.isdir(path):
        return path
    found = newest_file(path)
    if found is None:
        raise ValueError(f"--ckpt_path {path!r} is a directory with no .ckpt file: give a checkpoint file")
    return found


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--per_class", action="store_true", help="also per-class accuracy and the confusion matrix")
    args = parser.parse_args()
    setup_logging()
    resolve_model_args(args, train=False)

    setup_mindspore(args.device_target)
    ckpt_path = newest_checkpoint(args.ckpt_path)
    network = load_network_checkpoint(build_network(args), ckpt_path)
    dataset = build_dataset(args, train=False, num_samples=args.num_samples, drop_remainder=False)
    if task_of(args.model) == "lm":
        if args.per_class:
            raise ValueError(f"--per_class applies to classifiers, not the language model --model {args.model}: "
                             f"drop --per_class")
        result = evaluate(network, dataset, lm=True)
        print(f"test loss: {result['Loss']:.6f} nats per byte over {result['Tokens']} held-out bytes, "
              f"{result['BitsPerByte']:.4f} bits per byte")
        print({"Loss": result["Loss"], "BitsPerByte": result["BitsPerByte"]})  # last line, as the classifiers'
        return
    result = evaluate(network, dataset, args.num_classes if args.per_class else None)
    if args.per_class:
        matrix = result["ConfusionMatrix"]  # rows: true class, columns: predicted class
        print("class  samples  accuracy")
        for label, row in enumerate(matrix):
            print(f"{label:>5}  {row.sum():>7}  " + (f"{row[label] / row.sum():.4f}" if row.sum() else "     -"))
        print("confusion matrix (rows: true class, columns: predicted):")
        for row in matrix:
            print(" ".join(f"{count:>5}" for count in row))
    print(f"test loss: {result['Loss']:.6f}")  # the mean cross-entropy: it tells two models apart where accuracy ties
    print({"Accuracy": result["Accuracy"]})  # the tutorial's format, last line


if __name__ == "__main__":
    run(main)
