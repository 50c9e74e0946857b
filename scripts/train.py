"""Train LeNet5 on MNIST with gradient accumulation and write its checkpoint.

    python scripts/train.py --data_path data/mnist --mini_steps 4

Beside the checkpoint it writes metrics.jsonl (see the README for its format).
"""

import argparse
import os

from common import (add_common_args, evaluate, positive_float, positive_int, run, setup_logging,
                    setup_mindspore)
from mindspore import nn

from mindspore_accum import (REMAINDER_POLICIES, GradFlowSaver, GradientAccumulation, MetricsLog, ProgressBar,
                             WindowSchedule)
from model_zoo_adapters.lenet import LeNet5, create_dataset


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--mini_steps", type=positive_int, default=4, help="micro-batches per optimizer update")
    parser.add_argument("--epochs", type=positive_int, default=10)
    parser.add_argument("--lr", type=positive_float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--remainder", choices=REMAINDER_POLICIES, default="flush",
                        help="a partial window at the end of an epoch: apply it (flush) or discard it (drop)")
    parser.add_argument("--log_every", type=positive_int, default=50,
                        help="log every this many updates when no progress bar is shown")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar, plain log lines")
    parser.add_argument("--eval_every_epoch", action="store_true",
                        help="test loss and accuracy on the test split after every epoch, into metrics.jsonl")
    parser.add_argument("--grad_flow_every", type=positive_int, default=None,
                        help="save a gradient-flow PNG every N updates, beside the checkpoint")
    return parser.parse_args()


def main():
    args = parse_args()
    setup_logging()
    device = setup_mindspore(args.device_target, args.seed)
    dataset = create_dataset(args.data_path, args.batch_size, train=True, num_samples=args.num_samples)
    micro_batches = dataset.get_dataset_size()
    updates = WindowSchedule(args.mini_steps, args.remainder).updates_per_epoch(micro_batches)
    # Derived numbers up front, so that a wrong setting shows before the run.
    print(f"device: {device} (GRAPH_MODE), conv_impl: {args.conv_impl}, seed: {args.seed}")
    print(f"effective batch: {args.batch_size * args.mini_steps} = {args.batch_size} x {args.mini_steps} "
          f"(batch_size x mini_steps), lr: {args.lr}, momentum: {args.momentum}")
    print(f"micro-batches per epoch: {micro_batches}, updates per epoch: {updates}, epochs: {args.epochs}")

    network = LeNet5(conv_impl=args.conv_impl)
    loss_fn = nn.SoftmaxCrossEntropyWithLogits(sparse=True, reduction="mean")
    optimizer = nn.Momentum(network.trainable_params(), args.lr, args.momentum)
    model = GradientAccumulation(network, loss_fn, optimizer)

    out_dir = os.path.dirname(os.path.abspath(args.ckpt_path))
    evaluate_epoch = None
    if args.eval_every_epoch:
        test_set = create_dataset(args.data_path, args.batch_size, train=False, drop_remainder=False)

        def evaluate_epoch(epoch):
            result = evaluate(network, test_set)
            print(f"epoch: {epoch} test loss: {result['Loss']:.6f} test accuracy: {result['Accuracy']:.4f}")
            return {"test_loss": result["Loss"], "test_accuracy": result["Accuracy"]}

    progress = ProgressBar(enabled=not args.no_progress)
    callbacks = [progress, MetricsLog(os.path.join(out_dir, "metrics.jsonl"), evaluate_epoch)]
    if args.grad_flow_every:
        callbacks.append(GradFlowSaver(os.path.join(out_dir, "grad_flow"), args.grad_flow_every))
    model.train_process(args.epochs, dataset, mini_steps=args.mini_steps, remainder=args.remainder,
                        ckpt_path=args.ckpt_path, log_every=None if progress.replaces_log_lines else args.log_every,
                        callbacks=callbacks)
    print(f"checkpoint: {args.ckpt_path} ({model.total_updates} updates), metrics: "
          f"{os.path.join(out_dir, 'metrics.jsonl')}")


if __name__ == "__main__":
    run(main)
