"""Train with gradient accumulation inside mindspore.train.Model, with MindSpore's own callbacks.

    python scripts/train_model.py --data_path data/mnist --mini_steps 4
    python scripts/eval.py --data_path data/mnist --ckpt_path ckpt

Like the model zoo's LeNet train.py: Model.train with a LossMonitor, TimeMonitor
and checkpoint callbacks. --ckpt_path is a directory. It receives <model>-<epoch>_<step>.ckpt,
the bare network for eval.py, and train/train-<epoch>_<step>.ckpt, the whole
train Cell (network, optimizer, accumulation buffer, counters, loss scale) to
resume from, exactly, even mid-window:

    python scripts/train_model.py --data_path data/mnist --mini_steps 4 --resume ckpt/train/train-2_1875.ckpt

(--resume ckpt takes the newest.) Every training flag is train.py's too (scripts/training.py); only
--save_steps and --dataset_sink_mode are this engine's own.
"""

import os
import signal

from mindspore import Model, nn
from mindspore.train import TimeMonitor

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
from mindspore_accum import GradientAccumulationCell
from mindspore_accum.core.engine import amp_network, default_loss_scaler
from mindspore_accum.model.callbacks import CountOnFrom, EvaluateEachEpoch, ModelProgressBar
from mindspore_accum.model.guards import EpochSizeCheck, NetworkCheckpoint, ResumableLossMonitor, TrainCellCheckpoint
from mindspore_accum.run.checkpoint import check_writable_directory, load_initial_weights
from mindspore_accum.run.lock import own_outputs
from mindspore_accum.run.signals import StopSignals
from mindspore_accum.run.state import (
    TRAIN_PREFIX,
    find_train_cell_checkpoint,
    load_train_cell_checkpoint,
    read_train_cell_checkpoint,
    settings_record,
)
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


def parse_args(argv=None):
    """The flags of ``argv`` (default: the command line): the shared core and the Model path's own."""
    parser = training_parser(__doc__, "ckpt", "a directory, as in the model zoo: <model>-<epoch>_<step>.ckpt (the "
                                              "network, for eval.py) and train/ (the train Cell, to resume from)",
                             schedules=False)
    parser.add_argument("--save_steps", type=positive_int, default=None,
                        help="micro-steps between train-Cell checkpoints (default: one per epoch)")
    parser.add_argument("--dataset_sink_mode", action="store_true",
                        help="GPU/Ascend only (not run here): one sink per epoch, callbacks at its last micro-step")
    args = parse_flags(parser, argv)
    if args.ckpt_path.endswith(".ckpt"):
        raise ValueError(f"--ckpt_path {args.ckpt_path!r} names a file, but train_model.py writes ModelCheckpoint's "
                         f"directory of checkpoints: pass a directory, e.g. --ckpt_path "
                         f"{os.path.splitext(args.ckpt_path)[0] or 'ckpt'}")
    return args


def resume(cell, path, data, epochs, settings):
    """Loads the train Cell's checkpoint if it fits; returns the global micro-step and the dataset positioned there."""
    step = load_train_cell_checkpoint(cell, path, settings)
    if step >= epochs * data.micro_batches:
        raise ValueError(f"--resume {path!r} is already at micro-step {step}, the end of --epochs {epochs}: "
                         f"pass a larger --epochs")
    if data.windowed is not None:  # the plan starts at any micro-batch (a constant global batch: equal epochs)
        return step, data.windowed.as_dataset(step // data.micro_batches + 1, step % data.micro_batches)
    data.dataset.set_init_step(step)  # MindSpore's cursor: the pipeline restarts at that micro-batch, same shuffle
    return step, data.dataset


def main():
    args = parse_args()
    resolve_model_args(args, train=True)
    check_training_flags(args)
    saved_seed = None
    if args.resume:
        args.resume = find_train_cell_checkpoint(args.resume)
        saved_seed = read_train_cell_checkpoint(args.resume)[2].get("--seed")
    resolve_seed(args, saved_seed)
    device = setup_mindspore(args.device_target, args.seed)  # every rank seeds alike: the same initial weights
    rank, ranks, shards = join_ranks(args)
    setup_logging(quiet=rank != 0)
    if rank != 0:  # only rank 0 writes
        return train(args, device, rank, ranks, shards)
    check_writable_directory(args.ckpt_path, "checkpoint directory")
    with own_outputs(args.ckpt_path):  # one run per checkpoint directory, as the driver takes it for train.py
        return train(args, device, rank, ranks, shards)


def build_cell(args, data, all_reduce):
    """The network (from --init_ckpt), AMP, the optimizer (rates over updates) and the train Cell."""
    network = build_network(args)
    if args.init_ckpt:  # before the Cell: the EMA starts from these weights
        load_initial_weights(network, args.init_ckpt)
    optimizer = build_optimizer(args, network.trainable_params(), learning_rate(args, data.total_updates))
    windows_from_data = data.windowed is not None
    cell = GradientAccumulationCell(nn.WithLossCell(amp_network(network, args.amp_level), build_loss(args)),
                                    optimizer, args.mini_steps,
                                    micro_batches_per_epoch=None if windows_from_data else data.micro_batches,
                                    remainder=args.remainder, loss_scaler=default_loss_scaler(args.amp_level),
                                    clip_grad_norm=args.clip_grad_norm, all_reduce=all_reduce,
                                    weighting=args.weighting, ema_decay=args.ema_decay,
                                    windows_from_data=windows_from_data)
    return cell, network


def train(args, device, rank, ranks, shards):
    """Builds the Cell, resumes if asked, and runs Model.train with the zoo's callbacks and the guards."""
    say = print if rank == 0 else _silent
    data = build_training_data(args, rank, ranks, shards)
    micro_batches = data.micro_batches
    cell, network = build_cell(args, data, all_reduce=args.distribute)
    settings = cell.settings(amp_level=args.amp_level, ranks=ranks).merged(training_settings(args))
    start, dataset = resume(cell, args.resume, data, args.epochs, settings) if args.resume else \
        (0, data.windowed.as_dataset() if data.windowed is not None else data.dataset)
    print_plan(say, args, device, ranks, data)
    say(f"checkpoints: {args.ckpt_path} (the network every epoch; the train Cell in {args.ckpt_path}/train every "
        + (f"{args.save_steps} micro-steps" if args.save_steps else "epoch")
        + f", newest {args.keep_checkpoints} kept)"
        + (f"; resuming at micro-step {start} from {args.resume}" if args.resume else ""))
    callbacks = [CountOnFrom(start, micro_batches), EpochSizeCheck(cell)]
    # Data parallel: a rank that stopped alone would leave the others in the all-reduce (as train.py).
    with StopSignals(enabled=not args.distribute) as stop:
        if rank == 0:
            callbacks += build_callbacks(args, cell, network, data, settings_record(settings), stop, say)
        # sink_size -1: a sink is an epoch, and callbacks see its last micro-step, which closes a window.
        Model(cell).train(args.epochs, dataset, callbacks=callbacks, dataset_sink_mode=args.dataset_sink_mode,
                          sink_size=-1, initial_epoch=start // micro_batches)
    if stop.signum is not None:
        saved = next(callback for callback in callbacks if isinstance(callback, TrainCellCheckpoint)).saved_path
        exit_interrupted(f"interrupted by {signal.Signals(stop.signum).name}; the train Cell is saved to {saved}",
                         saved, stop.signum)


def build_callbacks(args, cell, network, data, record, stop, say):
    """Rank 0's: progress, loss lines, time, the epoch's evaluation, the network's and the train Cell's checkpoints.

    The loss lines come every ``--log_every`` updates' worth of micro-steps (``log_every x mini_steps``); with
    a global batch, every ``--log_every`` windows where a window closes, whatever its micro-batches. The train
    Cell's checkpoint is last: taken after every other callback has seen the micro-step.
    """
    # A line every --log_every windows, where a window closes: counted in windows when their sizes vary.
    losses = ResumableLossMonitor(args.log_every, window_ends=data.windowed.window_ends) if data.windowed is not None \
        else ResumableLossMonitor(per_print_times=args.log_every * args.mini_steps)
    callbacks = [ModelProgressBar(args.batch_size, enabled=not args.no_progress), losses, TimeMonitor()]
    evaluate_epoch = epoch_evaluator(args, network, cell.ema, say)
    if evaluate_epoch is not None:
        callbacks.append(EvaluateEachEpoch(evaluate_epoch))
    callbacks.append(NetworkCheckpoint(network, args.ckpt_path, args.model, cell.ema))
    callbacks.append(TrainCellCheckpoint(os.path.join(args.ckpt_path, TRAIN_PREFIX), record, every=args.save_steps,
                                         keep=args.keep_checkpoints, stop=stop))
    return callbacks


def _silent(*_args, **_kwargs):
    pass


if __name__ == "__main__":
    run(main)
