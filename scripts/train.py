"""Train with gradient accumulation and write the network's checkpoint.

    python scripts/train.py --data_path data/mnist --mini_steps 4
    python scripts/train.py --model resnet18 --norm group --image_size 32 --data_path cifar-10-batches-bin \
        --mini_steps 4 --ckpt_path resnet18.ckpt
    python scripts/train.py --model gpt_tiny --dataset text --data_path pydoc --weighting items --mini_steps 4 \
        --ckpt_path gpt.ckpt

Beside the checkpoint it writes <ckpt name>_metrics.jsonl (see docs/cli.md for its
format) and a directory of training states, <ckpt name>_state/, to resume from:

    python scripts/train.py --data_path data/mnist --mini_steps 4 --resume gradient_accumulation_state

Data parallel, one process per rank, started by MindSpore's launcher:

    msrun --worker_num=2 --local_worker_num=2 --master_port=8118 scripts/train.py --distribute --mini_steps 4
"""

import argparse
import contextlib
import os
import signal
import sys

from common import (
    add_common_args,
    add_optimizer_args,
    build_dataset,
    build_loss,
    build_network,
    build_optimizer,
    evaluate,
    non_negative_int,
    optimizer_words,
    parse_flags,
    positive_float,
    positive_int,
    resolve_model_args,
    resume_command,
    run,
    setup_logging,
    setup_mindspore,
    task_of,
    training_settings,
)
from mindspore_accum import (
    GradFlowSaver,
    GradientAccumulation,
    MetricsLog,
    ProgressBar,
    SaveConfig,
    TrainingInterrupted,
    init_data_parallel,
    learning_rates,
    read_training_state,
)
from mindspore_accum.checkpoint import check_ckpt_path, check_writable_directory, load_initial_weights
from mindspore_accum.distributed import check_same_settings
from mindspore_accum.driver import AMP_LEVELS
from mindspore_accum.lr_schedule import LR_SCHEDULES
from mindspore_accum.schedule import REMAINDER_POLICIES, WindowSchedule
from mindspore_accum.training_state import find_training_state
from mindspore_accum.weighting import WEIGHTINGS


def parse_args(argv=None):
    """The flags of ``argv`` (default: the command line)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--mini_steps", type=positive_int, default=4, help="micro-batches per optimizer update")
    parser.add_argument("--epochs", type=positive_int, default=10,
                        help="epochs in all; a resumed run counts the epochs before the interruption")
    add_optimizer_args(parser)
    parser.add_argument("--lr_schedule", choices=LR_SCHEDULES, default="constant",
                        help="over optimizer updates, not micro-batches: constant, cosine (to 0), or step "
                             "(/10 at half, /100 at three quarters)")
    parser.add_argument("--warmup_steps", type=non_negative_int, default=0,
                        help="optimizer updates of linear warm-up to --lr")
    parser.add_argument("--amp_level", choices=AMP_LEVELS, default="O0",
                        help="mixed precision (mindspore.amp.auto_mixed_precision); O1-O3 add dynamic loss scaling")
    parser.add_argument("--weighting", choices=WEIGHTINGS, default=None,
                        help="what a window is weighted by: samples, or items (valid tokens: the labels that are not "
                             "-100); default items for gpt_*, samples otherwise")
    parser.add_argument("--clip_grad_norm", type=positive_float, default=None, metavar="MAX",
                        help="clip the window's mean gradient to this global norm, once per update")
    parser.add_argument("--seed", type=int, default=None,
                        help="seeds the initial weights and the shuffle (default 1, or the resumed state's)")
    parser.add_argument("--remainder", choices=REMAINDER_POLICIES, default="flush",
                        help="a partial window at the end of an epoch: apply it (flush) or discard it (drop)")
    parser.add_argument("--log_every", type=positive_int, default=50,
                        help="log every this many updates when no progress bar is shown")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar, plain log lines")
    parser.add_argument("--eval_every_epoch", action="store_true",
                        help="test loss and accuracy on the test split after every epoch, into the metrics file")
    parser.add_argument("--grad_flow_every", type=positive_int, default=None,
                        help="save a gradient-flow PNG every N updates, beside the checkpoint")
    parser.add_argument("--save_every", type=positive_int, default=None,
                        help="also save the training state every N updates (it is saved at every epoch's end, "
                             "and on SIGINT/SIGTERM)")
    parser.add_argument("--keep_checkpoints", type=positive_int, default=5,
                        help="training states to keep; older ones are deleted")
    parser.add_argument("--init_ckpt", default=None, metavar="PATH",
                        help="fine-tune: start from this checkpoint's network weights (a model checkpoint or a "
                             "training state); a head of another shape is re-initialised")
    parser.add_argument("--resume", default=None, metavar="PATH",
                        help="continue from a training state file, or the newest in a state directory")
    parser.add_argument("--distribute", action="store_true",
                        help="data parallel over the ranks msrun started: each reads its shard, one all-reduce "
                             "per update; only rank 0 writes")
    return parse_flags(parser, argv)


def state_dir_for(ckpt_path):
    """Training states go beside the model checkpoint: model.ckpt -> model_state/."""
    root, _ = os.path.splitext(os.path.abspath(ckpt_path))
    return root + "_state"


def metrics_path_for(ckpt_path):
    """The metrics belong to the checkpoint they describe: model.ckpt -> model_metrics.jsonl."""
    root, _ = os.path.splitext(os.path.abspath(ckpt_path))
    return root + "_metrics.jsonl"


def _silent(*_args, **_kwargs):
    pass


def main():
    args = parse_args()
    rank, ranks = 0, 1
    # Every output now, not after an hour of training: checkpoint and metrics, states, plots.
    check_ckpt_path(args.ckpt_path)
    check_writable_directory(state_dir_for(args.ckpt_path), "training-state directory")
    if args.grad_flow_every:
        check_writable_directory(os.path.join(os.path.dirname(os.path.abspath(args.ckpt_path)), "grad_flow"),
                                 "gradient-flow directory")
    resolve_model_args(args, train=True)
    if args.init_ckpt and args.resume:
        raise ValueError("--init_ckpt and --resume together: a resume restores everything, the weights included; "
                         "drop --init_ckpt")
    resumed = None
    if args.resume is not None:
        args.resume = find_training_state(args.resume)
        resumed, _ = read_training_state(args.resume)
    if args.seed is None:
        saved_seed = resumed.settings.get("seed") if resumed is not None else None
        args.seed = saved_seed if saved_seed is not None else 1
    # Every rank seeds alike, so that every rank starts from the same weights.
    device = setup_mindspore(args.device_target, args.seed)
    shards = {}
    if args.distribute:
        rank, ranks = init_data_parallel()
        # Before any rank trains; --epochs too, which a resume may change but every rank must share.
        check_same_settings({**training_settings(args), "--epochs": args.epochs})
        shards = {"num_shards": ranks, "shard_id": rank}
        if args.num_samples:  # MindSpore's num_samples counts per shard; the flag counts in all
            args.num_samples = -(-args.num_samples // ranks)
    setup_logging(quiet=rank != 0)
    train(args, rank, ranks, shards, resumed, device)  # the driver takes the run lock: it owns the outputs


def train(args, rank, ranks, shards, resumed, device):
    """Builds the data, the network and the callbacks, prints the derived numbers, and trains."""
    say = print if rank == 0 else _silent  # one copy of the output: rank 0's
    dataset = build_dataset(args, train=True, num_samples=args.num_samples, **shards)
    updates = WindowSchedule(args.mini_steps, args.remainder).updates_per_epoch(dataset.get_dataset_size())
    print_plan(say, args, device, ranks, dataset.get_dataset_size(), updates, resumed)
    model = build_model(args, updates * args.epochs)
    callbacks = build_callbacks(say, args, model, resumed) if rank == 0 else []  # the others write nothing
    progress = next((c for c in callbacks if isinstance(c, ProgressBar)), None)
    save = SaveConfig(ckpt_path=args.ckpt_path, state_dir=state_dir_for(args.ckpt_path), save_every=args.save_every,
                      keep_checkpoints=args.keep_checkpoints, resume=args.resume,
                      # Data parallel: a rank that stopped alone would leave the others
                      # waiting in the all-reduce; a signal ends every rank at once.
                      handle_signals=not args.distribute)
    try:
        model.train_process(args.epochs, dataset, mini_steps=args.mini_steps, remainder=args.remainder, save=save,
                            log_every=None if progress is not None and progress.replaces_log_lines
                            else args.log_every, callbacks=callbacks, seed=args.seed,
                            settings=training_settings(args))
    except TrainingInterrupted as stopped:
        print(f"{stopped}\nresume with:\n  {resume_command(stopped.state_path)}", file=sys.stderr)
        sys.exit(128 + stopped.signum)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
    # Done, the checkpoint whole: a signal in the last moments (MindSpore's teardown takes ~0.6 s) ends nothing.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    say(f"checkpoint: {args.ckpt_path} ({model.total_updates} updates), metrics: "
        f"{metrics_path_for(args.ckpt_path)}")


def print_plan(say, args, device, ranks, micro_batches, updates, resumed):
    """The derived numbers, up front, so that a wrong setting shows before the run."""
    say(f"device: {device} (GRAPH_MODE), conv_impl: {args.conv_impl}, seed: {args.seed}")
    say(f"model: {args.model}" + (f" (norm: {args.norm})" if args.norm else "") + f", dataset: {args.dataset} ("
        + (f"{args.image_size}x{args.image_size}" if task_of(args.model) == "image" else
           f"{args.data_path}, sequences of at most {args.seq_len} bytes" + (", bucketed" if args.bucket else ""))
        + (f", {args.num_classes} classes" if args.num_classes else "") + f"), weighting: {args.weighting}")
    if args.distribute:
        say(f"data parallel: {ranks} ranks, each training on {micro_batches * args.batch_size} samples of its "
            f"shard per epoch")
        say(f"effective batch: {ranks * args.batch_size * args.mini_steps} = {ranks} x {args.batch_size} x "
            f"{args.mini_steps} (ranks x batch_size x mini_steps), {optimizer_words(args)}")
    else:
        say(f"effective batch: {args.batch_size * args.mini_steps} = {args.batch_size} x {args.mini_steps} "
            f"(batch_size x mini_steps), {optimizer_words(args)}")
    say(f"micro-batches per epoch: {micro_batches}" + (" per rank" if args.distribute else "")
        + f", updates per epoch: {updates}, epochs: {args.epochs}")
    say(f"lr schedule: {args.lr_schedule} over {updates * args.epochs} updates, warm-up {args.warmup_steps}; "
        f"amp_level: {args.amp_level}, clip_grad_norm: {args.clip_grad_norm}")
    say(f"training states: {state_dir_for(args.ckpt_path)} (every epoch"
        + (f" and every {args.save_every} updates" if args.save_every else "")
        + f", newest {args.keep_checkpoints} kept)")
    if resumed is not None:
        say(f"resuming from {args.resume}: {resumed.where()}")


def build_model(args, total_updates):
    """The network (from --init_ckpt), the zoo's loss, the optimizer (rates over updates), and the driver."""
    network = build_network(args)
    if args.init_ckpt:  # before the driver: everything built from the weights (the EMA) starts from these
        load_initial_weights(network, args.init_ckpt)
    loss_fn = build_loss(args)
    lr = args.lr
    if args.lr_schedule != "constant" or args.warmup_steps:
        lr = learning_rates(args.lr_schedule, args.lr, total_updates, args.warmup_steps)
    optimizer = build_optimizer(args, network.trainable_params(), lr)
    return GradientAccumulation(network, loss_fn, optimizer, amp_level=args.amp_level,
                                clip_grad_norm=args.clip_grad_norm, distributed=args.distribute,
                                weighting=args.weighting, ema_decay=args.ema_decay)


def build_callbacks(say, args, model, resumed):
    """Rank 0's callbacks: the progress bar, the metrics file (with the test set, if asked), gradient flow.

    With --ema_decay the epoch's evaluation scores the moving average: the weights the checkpoint holds.
    """
    network = model.network
    evaluate_epoch = None
    if args.eval_every_epoch:
        test_set = build_dataset(args, train=False, drop_remainder=False)

        def evaluate_epoch(epoch):
            with model.ema.applied() if model.ema is not None else contextlib.nullcontext():
                return score_epoch(epoch)

        def score_epoch(epoch):
            if task_of(args.model) == "lm":
                result = evaluate(network, test_set, lm=True)
                say(f"epoch: {epoch} test loss: {result['Loss']:.6f} test bits per byte: {result['BitsPerByte']:.4f}")
                return {"test_loss": result["Loss"], "test_bits_per_byte": result["BitsPerByte"]}
            result = evaluate(network, test_set)
            say(f"epoch: {epoch} test loss: {result['Loss']:.6f} test accuracy: {result['Accuracy']:.4f}")
            return {"test_loss": result["Loss"], "test_accuracy": result["Accuracy"]}

    callbacks = [ProgressBar(enabled=not args.no_progress),
                 MetricsLog(metrics_path_for(args.ckpt_path), evaluate_epoch, resume=resumed)]
    if args.grad_flow_every:
        out_dir = os.path.dirname(os.path.abspath(args.ckpt_path))
        callbacks.append(GradFlowSaver(os.path.join(out_dir, "grad_flow"), args.grad_flow_every))
    return callbacks


if __name__ == "__main__":
    run(main)
