"""Evaluate a checkpoint on the test split, with the model flags it was trained with.

    python scripts/eval.py --data_path data/mnist --ckpt_path gradient_accumulation.ckpt
    python scripts/eval.py --model resnet18 --norm group --image_size 32 --data_path cifar-10-batches-bin \
        --ckpt_path resnet18.ckpt

    python scripts/eval.py --model gpt_tiny --data_path pydoc --ckpt_path gpt.ckpt

--ckpt_path may be a directory: its newest .ckpt file is taken. A training state
(state-*.ckpt, or a <name>_state/ directory) is accepted too: the network it holds is evaluated, its raw
weights or (--weights ema) their moving average. The number of classes is the checkpoint's head's.
"""

from build import build_dataset, build_network, setup_mindspore
from flags import Parser, add_common_args, parse_flags
from mindspore_accum import load_network_checkpoint
from mindspore_accum.run.checkpoint import WEIGHTS, holds_average
from report import evaluate, run, setup_logging
from resolve import resolve_eval


def parse_args(argv=None):
    """The flags of ``argv`` (default: the command line)."""
    parser = Parser(description=__doc__)
    add_common_args(parser)
    parser.add_argument("--per_class", action="store_true", help="also per-class accuracy and the confusion matrix")
    parser.add_argument("--weights", choices=WEIGHTS, default="raw",
                        help="a training state's (or train-Cell checkpoint's) network: its raw weights, or their "
                             "moving average (a run with --ema_decay); a model checkpoint holds one set")
    return parse_flags(parser, argv)


def say_which_weights(ckpt_path, weights):
    """A training state of an EMA run holds two sets of weights: say which one is scored."""
    if weights == "ema":
        print(f"scored: the moving average of the weights in {ckpt_path}")
    elif holds_average(ckpt_path):
        print(f"scored: the raw weights in {ckpt_path}; it also holds their moving average (the run's "
              f"--ema_decay), which its model checkpoint holds too: --weights ema scores that")


def main():
    args = parse_args()
    setup_logging()
    setup_mindspore(args.device_target)
    config = resolve_eval(args)
    if config.task == "lm" and config.per_class:
        raise ValueError(f"--per_class applies to classifiers, not the language model --model {config.model}: "
                         f"drop --per_class")
    network = load_network_checkpoint(build_network(config), config.ckpt_path, config.weights)
    say_which_weights(config.ckpt_path, config.weights)
    dataset = build_dataset(config, train=False, num_samples=config.num_samples, drop_remainder=False)
    if config.task == "lm":
        result = evaluate(network, dataset, lm=True)
        print(f"test loss: {result['Loss']:.6f} nats per byte over {result['Tokens']} held-out bytes, "
              f"{result['BitsPerByte']:.4f} bits per byte")
        print({"Loss": result["Loss"], "BitsPerByte": result["BitsPerByte"]})  # last line, as the classifiers'
        return
    result = evaluate(network, dataset, config.num_classes if config.per_class else None)
    if config.per_class:
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
