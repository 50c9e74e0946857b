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

import os
import signal

from common import (
    build_loss,
    build_network,
    build_optimizer,
    parse_flags,
    positive_int,
    resolve_model_args,
    run,
    setup_logging,
    setup_mindspore,
    training_settings,
)
from mindspore_accum import (
    GradFlowSaver,
    GradientAccumulation,
    MetricsLog,
    ProgressBar,
    SaveConfig,
    TrainingInterrupted,
    read_training_state,
)
from mindspore_accum.run.checkpoint import check_ckpt_path, check_writable_directory, load_initial_weights
from mindspore_accum.run.state import find_training_state
from training import (
    build_training_data,
    check_training_flags,
    epoch_evaluator,
    exit_interrupted,
    join_ranks,
    learning_rate,
    print_plan,
    resolve_seed,
    training_parser,
)

#: train.py's --ckpt_path names a file; a directory (no .ckpt suffix) gets this file inside it.
CHECKPOINT_NAME = "gradient_accumulation.ckpt"


def parse_args(argv=None):
    """The flags of ``argv`` (default: the command line): the shared core and the driver's own."""
    parser = training_parser(__doc__, CHECKPOINT_NAME,
                             "the model checkpoint (eval.py reads it), its states and metrics beside it; or a "
                             f"directory for them all ({CHECKPOINT_NAME} inside)")
    parser.add_argument("--grad_flow_every", type=positive_int, default=None,
                        help="save a gradient-flow PNG every N updates, beside the checkpoint")
    parser.add_argument("--save_every", type=positive_int, default=None,
                        help="also save the training state every N updates (it is saved at every epoch's end, "
                             "and on SIGINT/SIGTERM)")
    args = parse_flags(parser, argv)
    if not args.ckpt_path.endswith(".ckpt"):  # the zoo's spelling, train_model.py's: a directory
        args.ckpt_path = os.path.join(args.ckpt_path, CHECKPOINT_NAME)
    return args


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
    # Every output now, not after an hour of training: checkpoint and metrics, states, plots.
    check_ckpt_path(args.ckpt_path)
    check_writable_directory(state_dir_for(args.ckpt_path), "training-state directory")
    if args.grad_flow_every:
        check_writable_directory(os.path.join(os.path.dirname(os.path.abspath(args.ckpt_path)), "grad_flow"),
                                 "gradient-flow directory")
    resolve_model_args(args, train=True)
    check_training_flags(args)
    resumed = None
    if args.resume is not None:
        args.resume = find_training_state(args.resume)
        resumed, _ = read_training_state(args.resume)
    resolve_seed(args, resumed.settings.get("seed") if resumed is not None else None)
    # Every rank seeds alike, so that every rank starts from the same weights.
    device = setup_mindspore(args.device_target, args.seed)
    rank, ranks, shards = join_ranks(args)
    setup_logging(quiet=rank != 0)
    train(args, rank, ranks, shards, resumed, device)  # the driver takes the run lock: it owns the outputs


def train(args, rank, ranks, shards, resumed, device):
    """Builds the data, the network and the callbacks, prints the derived numbers, and trains."""
    say = print if rank == 0 else _silent  # one copy of the output: rank 0's
    data = build_training_data(args, rank, ranks, shards)
    print_plan(say, args, device, ranks, data)
    say(f"training states: {state_dir_for(args.ckpt_path)} (every epoch"
        + (f" and every {args.save_every} updates" if args.save_every else "")
        + f", newest {args.keep_checkpoints} kept)")
    if resumed is not None:
        say(f"resuming from {args.resume}: {resumed.where()}")
    driver = build_driver(args, data.total_updates)
    callbacks = build_callbacks(say, args, driver, resumed) if rank == 0 else []  # the others write nothing
    progress = next((c for c in callbacks if isinstance(c, ProgressBar)), None)
    save = SaveConfig(ckpt_path=args.ckpt_path, state_dir=state_dir_for(args.ckpt_path), save_every=args.save_every,
                      keep_checkpoints=args.keep_checkpoints, resume=args.resume,
                      # Data parallel: a rank that stopped alone would leave the others
                      # waiting in the all-reduce; a signal ends every rank at once.
                      handle_signals=not args.distribute)
    try:
        driver.train_process(args.epochs, data.dataset, mini_steps=args.mini_steps, remainder=args.remainder, save=save,
                            log_every=None if progress is not None and progress.replaces_log_lines
                            else args.log_every, callbacks=callbacks, seed=args.seed,
                            settings=training_settings(args))
    except TrainingInterrupted as stopped:
        exit_interrupted(str(stopped), stopped.state_path, stopped.signum)
    # Done, the checkpoint whole: a signal in the last moments (MindSpore's teardown takes ~0.6 s) ends nothing.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    say(f"checkpoint: {args.ckpt_path} ({driver.total_updates} updates), metrics: "
        f"{metrics_path_for(args.ckpt_path)}")


def build_driver(args, total_updates):
    """The network (from --init_ckpt), the zoo's loss, the optimizer (rates over updates), and the driver."""
    network = build_network(args)
    if args.init_ckpt:  # before the driver: everything built from the weights (the EMA) starts from these
        load_initial_weights(network, args.init_ckpt)
    loss_fn = build_loss(args)
    optimizer = build_optimizer(args, network.trainable_params(), learning_rate(args, total_updates))
    return GradientAccumulation(network, loss_fn, optimizer, amp_level=args.amp_level,
                                clip_grad_norm=args.clip_grad_norm, distributed=args.distribute,
                                weighting=args.weighting, ema_decay=args.ema_decay)


def build_callbacks(say, args, driver, resumed):
    """Rank 0's callbacks: the progress bar, the metrics file (with the test set, if asked), gradient flow.

    With --ema_decay the epoch's evaluation scores the moving average: the weights the checkpoint holds.
    """
    evaluate_epoch = epoch_evaluator(args, driver.network, driver.ema, say)
    callbacks = [ProgressBar(enabled=not args.no_progress),
                 MetricsLog(metrics_path_for(args.ckpt_path), evaluate_epoch, resume=resumed)]
    if args.grad_flow_every:
        out_dir = os.path.dirname(os.path.abspath(args.ckpt_path))
        callbacks.append(GradFlowSaver(os.path.join(out_dir, "grad_flow"), args.grad_flow_every))
    return callbacks


if __name__ == "__main__":
    run(main)
