"""What train.py and train_model.py share: the training flags, their checks, the banner, the ranks, the signal exit.

The two scripts are two engines over the same accumulation step (the driver,
and ``Model`` with ``GradientAccumulationCell``); everything a user types is
here, once. :data:`ENGINE_FLAGS` lists the few flags that only one engine
has, and why; docs/cli.md prints that table and a test keeps both in step.
"""

import argparse
import contextlib
import dataclasses
import logging
import sys
from typing import Optional

from common import (
    INT32_MAX,
    Parser,
    add_common_args,
    add_optimizer_args,
    build_dataset,
    check_memory,
    evaluate,
    non_negative_int,
    optimizer_words,
    positive_float,
    positive_int,
    resolve_optimizer_args,
    resume_command,
    seed_int,
    task_of,
    training_settings,
)
from mindspore_accum import init_data_parallel, learning_rates
from mindspore_accum.core.batch_size import BatchSchedule, resolve_batch_sizes
from mindspore_accum.core.distributed import check_same_settings
from mindspore_accum.core.engine import AMP_LEVELS
from mindspore_accum.core.lr_schedule import LR_SCHEDULES
from mindspore_accum.core.schedule import REMAINDER_POLICIES, WindowSchedule
from mindspore_accum.core.weighting import WEIGHTINGS
from mindspore_accum.data.windowed_data import WindowedDataset
from model_zoo_adapters import registry

__all__ = ["ENGINE_FLAGS", "training_parser", "check_training_flags", "resolve_seed", "learning_rate",
           "join_ranks", "TrainingData", "build_training_data", "print_plan", "epoch_evaluator", "exit_interrupted"]

logger = logging.getLogger("mindspore_accum.scripts")

#: The flags one engine has and the other has not: flag -> (script, why). Every other training flag is both's.
ENGINE_FLAGS = {
    "--save_every": ("train.py", "training states every N updates; train_model.py saves by ModelCheckpoint's unit, "
                                 "the micro-step: --save_steps"),
    "--grad_flow_every": ("train.py", "the Cell clears the window's gradient inside its graph, so no Model callback "
                                      "can read it"),
    "--save_steps": ("train_model.py", "micro-steps between train-Cell checkpoints, ModelCheckpoint's "
                                       "save_checkpoint_steps; train.py saves every N updates: --save_every"),
    "--dataset_sink_mode": ("train_model.py", "Model.train's sink mode (GPU/Ascend); the driver runs one graph per "
                                              "micro-step from Python"),
    "--batch_rampup": ("train.py", "epochs of different lengths; ModelCheckpoint and LossMonitor count fixed "
                                   "micro-steps (the Cell itself takes any schedule: windows_from_data)"),
    "--accumulation_schedule": ("train.py", "as --batch_rampup"),
}

#: The API's batch-size names as the flags spell them, for the messages.
BATCH_FLAGS = {"global_batch_size": "--global_batch_size", "micro_batch_size": "--batch_size",
               "mini_steps": "--mini_steps"}


def training_parser(description, ckpt_default, ckpt_help, schedules=True):
    """The parser core of both training scripts: every flag but the script's own (:data:`ENGINE_FLAGS`).

    ``schedules``: the batch schedules (train.py's: :data:`ENGINE_FLAGS` says why).
    """
    parser = Parser(description=description)
    add_common_args(parser, ckpt_help)
    parser.set_defaults(ckpt_path=ckpt_default, batch_size=None)
    add_batch_args(parser, schedules)
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
    parser.add_argument("--seed", type=seed_int, default=None,
                        help="seeds the initial weights and the shuffle (default 1, or the resumed run's)")
    parser.add_argument("--remainder", choices=REMAINDER_POLICIES, default="flush",
                        help="a partial window at the end of an epoch: apply it (flush) or discard it (drop)")
    parser.add_argument("--log_every", type=positive_int, default=50,
                        help="log every this many updates (train.py: when no progress bar is shown)")
    parser.add_argument("--no_progress", action="store_true", help="no progress bar, plain log lines")
    parser.add_argument("--eval_every_epoch", action="store_true",
                        help="test loss and accuracy on the test split after every epoch (train.py: into the "
                             "metrics file too)")
    parser.add_argument("--keep_checkpoints", type=positive_int, default=5,
                        help="training states (train.py) or train-Cell checkpoints (train_model.py) to keep; older "
                             "ones are deleted")
    parser.add_argument("--init_ckpt", default=None, metavar="PATH",
                        help="fine-tune: start from this checkpoint's network weights (a model checkpoint or a "
                             "training state); a head of another shape is re-initialised")
    parser.add_argument("--resume", default=None, metavar="PATH",
                        help="continue from a run's file, or the newest in its directory: a training state "
                             "(train.py), a train/train-*.ckpt (train_model.py)")
    parser.add_argument("--distribute", action="store_true",
                        help="data parallel over the ranks msrun started: each reads its shard, one all-reduce "
                             "per update; only rank 0 writes")
    return parser


def epoch_schedule(text):
    """``--accumulation_schedule``'s ``EPOCH:MINI_STEPS,...`` as ``{epoch: mini_steps}``, checked."""
    schedule = {}
    for entry in text.split(","):
        epoch, _, mini_steps = entry.partition(":")
        try:
            epoch, mini_steps = positive_int(epoch), positive_int(mini_steps)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"{entry!r} is not EPOCH:MINI_STEPS in whole numbers from 1 to "
                                             f"{INT32_MAX}, e.g. 1:1,3:4") from None
        if epoch in schedule:
            raise argparse.ArgumentTypeError(f"epoch {epoch} is given twice ({epoch}:{schedule[epoch]} and "
                                             f"{entry}): give each epoch once, in increasing order")
        schedule[epoch] = mini_steps
    try:
        BatchSchedule.from_mini_steps(schedule, 1)
    except (TypeError, ValueError) as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return schedule


def add_batch_args(parser, schedules):
    """The batch as users state it: two of the global batch, the micro-batch and mini_steps; the schedules."""
    parser.add_argument("--mini_steps", type=positive_int, default=None,
                        help="micro-batches per optimizer update (default 4, or derived from --global_batch_size)")
    parser.add_argument("--global_batch_size", type=positive_int, default=None, metavar="N",
                        help="samples per update over all ranks, any size: with --batch_size (the micro-batch, "
                             "default 32) it gives --mini_steps; a window is cut at exactly N (see "
                             "docs/batch_size.md)")
    if not schedules:
        return
    parser.add_argument("--batch_rampup", type=non_negative_int, nargs=3, default=None,
                        metavar=("START", "INCREMENT", "SAMPLES"),
                        help="Megatron's ramp: the global batch starts at START and grows by INCREMENT up to "
                             "--global_batch_size over SAMPLES samples")
    parser.add_argument("--accumulation_schedule", type=epoch_schedule, default=None, metavar="EPOCH:MINI_STEPS,...",
                        help="Lightning's: mini_steps from each epoch on (1-based), e.g. 1:1,3:4")


def resolve_batch_args(args, ranks):
    """Fills ``--batch_size`` and ``--mini_steps`` by the rule of two; returns the BatchSchedule, or None when the
    run states neither a global batch nor a schedule (fixed windows of ``mini_steps`` micro-batches)."""
    rampup, by_epoch = getattr(args, "batch_rampup", None), getattr(args, "accumulation_schedule", None)
    if rampup is not None and args.global_batch_size is None:
        raise ValueError("--batch_rampup needs --global_batch_size, the batch it ramps up to")
    if by_epoch is not None:
        for flag in ("global_batch_size", "mini_steps", "batch_rampup"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--accumulation_schedule gives every epoch's mini_steps: drop --{flag}")
        args.batch_size = args.batch_size or 32
        args.mini_steps = by_epoch[1]
        return BatchSchedule.from_mini_steps(by_epoch, args.batch_size, ranks)
    if args.global_batch_size is None:
        args.batch_size, args.mini_steps = args.batch_size or 32, args.mini_steps or 4
        return None
    if args.bucket:
        raise ValueError("--bucket with --global_batch_size: bucketing groups sequences by length, which would move "
                         "samples between windows; drop --bucket")
    if args.batch_size is None and args.mini_steps is None:
        args.batch_size = 32
    sizes = resolve_batch_sizes(args.global_batch_size, args.batch_size, args.mini_steps, ranks, names=BATCH_FLAGS)
    args.batch_size, args.mini_steps = sizes.micro_batch_size, sizes.mini_steps
    try:
        return BatchSchedule(sizes.global_batch_size, rampup=rampup)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--batch_rampup {' '.join(map(str, rampup))}: {error}") from None


def check_training_flags(args):
    """Refuses the combinations no engine can run; fills the optimizer's defaults."""
    resolve_optimizer_args(args)
    if args.init_ckpt and args.resume:
        raise ValueError("--init_ckpt and --resume together: a resume restores everything, the weights included; "
                         "drop --init_ckpt")


def resolve_seed(args, saved_seed=None):
    """``--seed``, else the resumed run's, else 1."""
    if args.seed is None:
        args.seed = saved_seed if saved_seed is not None else 1


#: The most updates a schedule's list of rates may cover: a list of Python floats of 16.7M entries peaks near 2 GB
#: while MindSpore's helpers build it.
MAX_SCHEDULED_UPDATES = 2 ** 24


def learning_rate(args, total_updates):
    """``--lr``, or with a schedule or warm-up its rates over ``total_updates`` updates (one per update).

    A warm-up longer than the run is accepted, with a warning: the rate then never reaches ``--lr``.
    """
    if args.lr_schedule == "constant" and not args.warmup_steps:
        return args.lr
    if total_updates > MAX_SCHEDULED_UPDATES:
        flag = f"--lr_schedule {args.lr_schedule}" if args.lr_schedule != "constant" else "--warmup_steps"
        raise ValueError(f"{flag} over {total_updates:,} updates is a list of that many rates, more than the "
                         f"{MAX_SCHEDULED_UPDATES:,} it takes: use fewer --epochs (at most "
                         f"{max(1, MAX_SCHEDULED_UPDATES * args.epochs // total_updates):,})")
    if args.warmup_steps > total_updates:
        logger.warning("--warmup_steps %d is longer than the run's %d updates: the rate ends at %.3g, never reaching "
                       "--lr %g; use --warmup_steps %d or fewer", args.warmup_steps, total_updates,
                       args.lr * total_updates / args.warmup_steps, args.lr, total_updates)
    return learning_rates(args.lr_schedule, args.lr, total_updates, args.warmup_steps)


def join_ranks(args):
    """``(rank, ranks, shards)``; with ``--distribute``, after every rank has agreed on every setting.

    ``shards`` are the dataset's ``num_shards``/``shard_id``; ``--num_samples`` (which counts in all) becomes
    MindSpore's count per shard.
    """
    if not args.distribute:
        return 0, 1, {}
    rank, ranks = init_data_parallel()
    # Before any rank trains; --epochs too, which a resume may change but every rank must share.
    check_same_settings({**training_settings(args), "--epochs": args.epochs})
    return rank, ranks, {"num_shards": ranks, "shard_id": rank}


@dataclasses.dataclass
class TrainingData:
    """What an engine trains on, and the derived numbers the banner and the schedules need."""

    #: A batched Dataset, or a WindowedDataset (a global batch or a schedule).
    dataset: object
    #: This rank's micro-batches in epoch 1.
    micro_batches: int
    #: Updates in epoch 1.
    updates: int
    #: Updates in all --epochs: what the learning-rate schedule counts.
    total_updates: int
    windowed: Optional[WindowedDataset] = None
    schedule: Optional[BatchSchedule] = None


def build_training_data(args, rank, ranks, shards):
    """The training set, after the rule of two has filled ``--batch_size`` and ``--mini_steps``.

    Fixed windows read this rank's shard in micro-batches (``--num_samples``, which counts in all, becomes
    MindSpore's count per shard). A global batch or a schedule reads every sample on every rank, one by one, and
    cuts each window at its size (:class:`~mindspore_accum.data.windowed_data.WindowedDataset`).
    """
    schedule = resolve_batch_args(args, ranks)
    check_memory(args)
    if schedule is None:
        num_samples = -(-args.num_samples // ranks) if args.num_samples and ranks > 1 else args.num_samples
        dataset = build_dataset(args, train=True, num_samples=num_samples, **shards)
        micro_batches = dataset.get_dataset_size()
        updates = WindowSchedule(args.mini_steps, args.remainder).updates_per_epoch(micro_batches)
        return TrainingData(dataset, micro_batches, updates, updates * args.epochs)
    samples = build_dataset(args, train=True, num_samples=args.num_samples, batch_size=1, drop_remainder=False)
    windowed = WindowedDataset(samples, args.batch_size, schedule=schedule, rank=rank, ranks=ranks,
                               remainder=args.remainder, pad_values=registry.dataset_entry(args.dataset).pad_values)
    return TrainingData(windowed, windowed.micro_batches_in(1), windowed.updates_in(1),
                        windowed.total_updates(args.epochs), windowed, schedule)


def print_plan(say, args, device, ranks, data):
    """The derived numbers, up front, so that a wrong setting shows before the run."""
    micro_batches, updates = data.micro_batches, data.updates
    say(f"device: {device} (GRAPH_MODE), conv_impl: {args.conv_impl}, seed: {args.seed}")
    say(f"model: {args.model}" + (f" (norm: {args.norm})" if args.norm else "") + f", dataset: {args.dataset} ("
        + (f"{args.image_size}x{args.image_size}" if task_of(args.model) == "image" else
           f"{args.data_path}, sequences of at most {args.seq_len} bytes" + (", bucketed" if args.bucket else ""))
        + (f", {args.num_classes} classes" if args.num_classes else "") + f"), weighting: {args.weighting}")
    if data.windowed is not None:
        _print_global_batch(say, args, ranks, data)
    else:
        _print_fixed_windows(say, args, ranks, micro_batches)
    say(f"micro-batches per epoch: {micro_batches}" + (" per rank" if ranks > 1 else "")
        + f", updates per epoch: {updates}" + (" (epoch 1)" if data.schedule is not None and
                                                 data.total_updates != updates * args.epochs else "")
        + f", epochs: {args.epochs}")
    say(f"lr schedule: {args.lr_schedule} over {data.total_updates} updates, warm-up {args.warmup_steps}; "
        f"amp_level: {args.amp_level}, clip_grad_norm: {args.clip_grad_norm}")


def _print_global_batch(say, args, ranks, data):
    sizes = resolve_batch_sizes(data.schedule.global_batch_size, args.batch_size, None, ranks)
    say(f"global batch: {sizes.derivation()}; {data.schedule.describe()}; {optimizer_words(args)}")
    plan = data.windowed.plan(1)
    say(f"epoch 1: windows of {', '.join(map(str, plan.windows[:6]))}{', ...' if len(plan.windows) > 6 else ''}"
        + (f"; {plan.dropped} samples at its end in no window" if plan.dropped else "")
        + (f"; every rank reads all {data.windowed.rows} samples and keeps its share" if ranks > 1 else ""))


def _print_fixed_windows(say, args, ranks, micro_batches):
    window = min(args.mini_steps, micro_batches)  # an epoch shorter than mini_steps makes every window partial
    steps = "mini_steps" if window == args.mini_steps else \
        f"the epoch's micro-batches, fewer than mini_steps {args.mini_steps}"
    if ranks > 1:
        say(f"data parallel: {ranks} ranks, each training on {micro_batches * args.batch_size} samples of its "
            f"shard per epoch")
        say(f"effective batch: {ranks * args.batch_size * window} = {ranks} x {args.batch_size} x {window} "
            f"(ranks x batch_size x {steps}), {optimizer_words(args)}")
    else:
        say(f"effective batch: {args.batch_size * window} = {args.batch_size} x {window} (batch_size x {steps}), "
            f"{optimizer_words(args)}")


def epoch_evaluator(args, network, ema, say):
    """``--eval_every_epoch``'s ``evaluate(epoch) -> dict``, or None; with EMA on it scores the average."""
    if not args.eval_every_epoch:
        return None
    test_set = build_dataset(args, train=False, drop_remainder=False)

    def evaluate_epoch(epoch):
        with ema.applied() if ema is not None else contextlib.nullcontext():
            if task_of(args.model) == "lm":
                result = evaluate(network, test_set, lm=True)
                say(f"epoch: {epoch} test loss: {result['Loss']:.6f} test bits per byte: {result['BitsPerByte']:.4f}")
                return {"test_loss": result["Loss"], "test_bits_per_byte": result["BitsPerByte"]}
            result = evaluate(network, test_set)
            say(f"epoch: {epoch} test loss: {result['Loss']:.6f} test accuracy: {result['Accuracy']:.4f}")
            return {"test_loss": result["Loss"], "test_accuracy": result["Accuracy"]}

    return evaluate_epoch


def exit_interrupted(message, saved_path, signum):
    """The signal's exit: what was saved, the command that resumes from it, and the shell's status (130, 143)."""
    print(f"{message}\nresume with:\n  {resume_command(saved_path)}", file=sys.stderr)
    sys.exit(128 + signum)
