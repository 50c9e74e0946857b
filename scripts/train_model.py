"""Train with gradient accumulation inside mindspore.train.Model, with MindSpore's own callbacks.

    python scripts/train_model.py --data_path data/mnist --mini_steps 4
    python scripts/eval.py --data_path data/mnist --ckpt_path ckpt

Like the model zoo's LeNet train.py: Model.train with a LossMonitor, TimeMonitor
and checkpoint callbacks. --ckpt_path is a directory. It receives <model>-<epoch>_<step>.ckpt,
the bare network for eval.py, and train/train-<epoch>_<step>.ckpt, the whole
train Cell (network, optimizer, accumulation buffer, counters, loss scale) to
resume from, exactly, even mid-window:

    python scripts/train_model.py --data_path data/mnist --mini_steps 4 --resume ckpt/train/train-2_1875.ckpt

(--resume ckpt takes the newest; train.py's training states resume here too.) Every training flag is
train.py's too (scripts/training.py); only --save_steps and --dataset_sink_mode are this engine's own.
"""

import os
import signal

from mindspore import Model, nn
from mindspore.train import TimeMonitor

import training
from build import build_loss, build_network, build_optimizer, learning_rate
from flags import positive_int
from mindspore_accum import GradientAccumulationCell
from mindspore_accum.core.engine import amp_network, default_loss_scaler
from mindspore_accum.data.cursor import dataset_from
from mindspore_accum.model.callbacks import CountOnFrom, EvaluateEachEpoch, ModelProgressBar
from mindspore_accum.model.guards import EpochSizeCheck, NetworkCheckpoint, ResumableLossMonitor, TrainCellCheckpoint
from mindspore_accum.run.checkpoint import check_writable_directory
from mindspore_accum.run.lock import own_outputs
from mindspore_accum.run.signals import StopSignals
from mindspore_accum.run.state import TRAIN_CELL, TRAIN_PREFIX, TrainingState, restore_training_state
from report import exit_interrupted, run


def add_own_flags(parser):
    """Model.train's own flags (flags.ENGINE_FLAGS says why train.py has none of them)."""
    parser.add_argument("--save_steps", type=positive_int, default=None,
                        help="micro-steps between train-Cell checkpoints (default: one per epoch)")
    parser.add_argument("--dataset_sink_mode", action="store_true",
                        help="GPU/Ascend only (not run here): one sink per epoch, callbacks at its last micro-step")


def check_outputs(args):
    """--ckpt_path is a directory, as in the model zoo: refused as a file name, checked writable now."""
    if args.ckpt_path.endswith(".ckpt"):
        raise ValueError(f"--ckpt_path {args.ckpt_path!r} names a file, but train_model.py writes a directory of "
                         f"checkpoints: pass a directory, e.g. --ckpt_path "
                         f"{os.path.splitext(args.ckpt_path)[0] or 'ckpt'}")
    check_writable_directory(args.ckpt_path, "checkpoint directory")


def train(run_):
    """Rank 0 holds the run lock (the driver's own_outputs, for train.py) around training: only it writes."""
    if run_.rank != 0:
        return _train(run_)
    with own_outputs(run_.config.ckpt_path):
        return _train(run_)


def _train(run_):
    """Builds the Cell, resumes if asked, and runs Model.train with the zoo's callbacks and the guards."""
    config, data, say = run_.config, run_.data, run_.say
    cell, network = build_cell(config, data)
    settings = cell.settings(amp_level=config.amp_level, ranks=run_.ranks, seed=config.seed).with_flags(
        config.settings)
    start, dataset = resume(cell, config, data, settings) if config.resume else \
        (0, data.windowed.as_dataset() if data.windowed is not None else data.dataset)
    say(f"checkpoints: {config.ckpt_path} (the network every epoch; the train Cell in {config.ckpt_path}/train every "
        + (f"{config.save_steps} micro-steps" if config.save_steps else "epoch")
        + f", newest {config.keep_checkpoints} kept)"
        + (f"; resuming at micro-step {start} from {config.resume}" if config.resume else ""))
    callbacks = [CountOnFrom(start, data.micro_batches), EpochSizeCheck(cell)]
    # Data parallel: a rank that stopped alone would leave the others in the all-reduce (as train.py).
    with StopSignals(enabled=not config.distribute) as stop:
        if run_.rank == 0:
            callbacks += build_callbacks(run_, cell, network, settings, stop)
        # sink_size -1: a sink is an epoch, and callbacks see its last micro-step, which closes a window.
        Model(cell).train(config.epochs, dataset, callbacks=callbacks, dataset_sink_mode=config.dataset_sink_mode,
                          sink_size=-1, initial_epoch=start // data.micro_batches)
    if stop.signum is not None:
        saved = next(callback for callback in callbacks if isinstance(callback, TrainCellCheckpoint)).saved_path
        exit_interrupted(f"interrupted by {signal.Signals(stop.signum).name}; the train Cell is saved to {saved}",
                         saved, stop.signum)


def build_cell(config, data):
    """The network (from --init_ckpt), AMP, the optimizer (rates over updates) and the train Cell."""
    network = build_network(config, config.init_ckpt)
    optimizer = build_optimizer(config, network.trainable_params(), learning_rate(config, data.total_updates))
    windows_from_data = data.windowed is not None
    cell = GradientAccumulationCell(nn.WithLossCell(amp_network(network, config.amp_level), build_loss(config)),
                                    optimizer, config.mini_steps,
                                    micro_batches_per_epoch=None if windows_from_data else data.micro_batches,
                                    remainder=config.remainder, loss_scaler=default_loss_scaler(config.amp_level),
                                    clip_grad_norm=config.clip_grad_norm, all_reduce=config.distribute,
                                    weighting=config.weighting, ema_decay=config.ema_decay,
                                    windows_from_data=windows_from_data)
    return cell, network


def resume(cell, config, data, settings):
    """Loads a training state (the train Cell's, or the driver's) if it fits; returns the global micro-step and the
    dataset positioned there."""
    step = cell.resume_at(config.resumed, data.micro_batches)  # the position resolve.py read: checked before loading
    if step >= config.epochs * data.micro_batches:
        raise ValueError(f"--resume {config.resume!r} is already at micro-step {step}, the end of --epochs "
                         f"{config.epochs}: pass a larger --epochs")
    restore_training_state(cell, config.resume, TrainingState(settings=settings, kind=TRAIN_CELL))
    return step, dataset_from(data.dataset, step, data.micro_batches)  # a global batch: equal epochs


def build_callbacks(run_, cell, network, settings, stop):
    """Rank 0's: progress, loss lines, time, the epoch's evaluation, the network's and the train Cell's checkpoints.

    The loss lines come every ``--log_every`` updates' worth of micro-steps (``log_every x mini_steps``); with
    a global batch, every ``--log_every`` windows where a window closes, whatever its micro-batches. The train
    Cell's checkpoint is last: taken after every other callback has seen the micro-step.
    """
    config, data = run_.config, run_.data
    losses = ResumableLossMonitor(config.log_every, window_ends=data.windowed.window_ends) \
        if data.windowed is not None else ResumableLossMonitor(per_print_times=config.log_every * config.mini_steps)
    callbacks = [ModelProgressBar(config.batch_size, enabled=not config.no_progress), losses, TimeMonitor()]
    evaluate_epoch = run_.evaluator(network, cell.ema)
    if evaluate_epoch is not None:
        callbacks.append(EvaluateEachEpoch(evaluate_epoch))
    callbacks.append(NetworkCheckpoint(network, config.ckpt_path, config.model, cell.ema))
    callbacks.append(TrainCellCheckpoint(os.path.join(config.ckpt_path, TRAIN_PREFIX), settings,
                                         every=config.save_steps, keep=config.keep_checkpoints, stop=stop))
    return callbacks


ENGINE = training.Engine(__doc__, "ckpt", "a directory, as in the model zoo: <model>-<epoch>_<step>.ckpt (the "
                         "network, for eval.py) and train/ (the train Cell, to resume from)", TRAIN_CELL,
                         add_own_flags, check_outputs, train)


def parse_args(argv=None):
    """The flags of ``argv`` (default: the command line)."""
    return training.parse_args(ENGINE, argv)


if __name__ == "__main__":
    run(lambda: training.main(ENGINE))
