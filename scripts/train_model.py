"""Train with gradient accumulation inside mindspore.train.Model, with MindSpore's own callbacks.

    python scripts/train_model.py --data_path data/mnist --mini_steps 4
    python scripts/eval.py --data_path data/mnist --ckpt_path ckpt

Like the model zoo's LeNet train.py: Model.train with LossMonitor, TimeMonitor
and ModelCheckpoint. --ckpt_path is a directory. It receives <model>-<epoch>_<step>.ckpt,
the bare network for eval.py, and train/train-<epoch>_<step>.ckpt, the whole
train Cell (network, optimizer, accumulation buffer, counters, loss scale) to
resume from, exactly, even mid-window:

    python scripts/train_model.py --data_path data/mnist --mini_steps 4 --resume ckpt/train/train-2_1875.ckpt
"""

import argparse
import os
import signal
import sys
import time

from mindspore import Model, amp, nn
from mindspore.train import Callback, CheckpointConfig, TimeMonitor

from common import (
    add_common_args,
    add_optimizer_args,
    build_dataset,
    build_loss,
    build_network,
    build_optimizer,
    optimizer_words,
    parse_flags,
    positive_int,
    resolve_model_args,
    resume_command,
    run,
    setup_logging,
    setup_mindspore,
    training_settings,
)
from mindspore_accum import GradientAccumulationCell
from mindspore_accum.checkpoint import check_writable_directory, load_initial_weights
from mindspore_accum.driver import AMP_LEVELS
from mindspore_accum.files import remove_partial_files
from mindspore_accum.model_guards import (
    AverageCheckpoint,
    EpochSizeCheck,
    ResumableCheckpoint,
    ResumableLossMonitor,
    SaveOnSignal,
    load_train_cell_checkpoint,
    settings_record,
)
from mindspore_accum.run_lock import run_lock
from mindspore_accum.schedule import WindowSchedule
from mindspore_accum.weighting import WEIGHTINGS


def parse_args(argv=None):
    """The flags of ``argv`` (default: the command line)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     conflict_handler="resolve")
    add_common_args(parser)
    parser.add_argument("--ckpt_path", default="ckpt", help="checkpoint directory, as in the model zoo")
    parser.add_argument("--mini_steps", type=positive_int, default=4, help="micro-batches per optimizer update")
    parser.add_argument("--epochs", type=positive_int, default=10, help="epochs in all, counting resumed ones")
    add_optimizer_args(parser)
    parser.add_argument("--weighting", choices=WEIGHTINGS, default=None,
                        help="what a window is weighted by: samples, or items (valid tokens); default items for gpt_*")
    parser.add_argument("--amp_level", choices=AMP_LEVELS, default="O0",
                        help="applied to the network before the Cell is built; O1-O3 add dynamic loss scaling")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--save_steps", type=positive_int, default=None,
                        help="micro-steps between train-Cell checkpoints (default: one per epoch)")
    parser.add_argument("--dataset_sink_mode", action="store_true",
                        help="GPU/Ascend only (not run here): one sink per epoch, callbacks at its last micro-step")
    parser.add_argument("--init_ckpt", default=None, metavar="PATH",
                        help="fine-tune: start from this checkpoint's network weights; a head of another shape is "
                             "re-initialised")
    parser.add_argument("--resume", default=None, metavar="FILE", help="a train/train-*.ckpt to continue from")
    return parse_flags(parser, argv)


class CountOnFrom(Callback):
    """Model.train counts micro-steps from 0; after a resume, count on from the resumed one.

    First in the list: LossMonitor's and ModelCheckpoint's step numbers (file
    names, step_num) are then the uninterrupted run's.
    """

    def __init__(self, step):
        self.step = step

    def on_train_begin(self, run_context):
        run_context.original_args().cur_step_num = self.step


def resume(cell, path, dataset, epochs, settings):
    """Loads the train Cell's checkpoint if it fits; positions the dataset; returns the global micro-step."""
    step = load_train_cell_checkpoint(cell, path, settings)
    if step >= epochs * dataset.get_dataset_size():
        raise ValueError(f"--resume {path!r} is already at micro-step {step}, the end of --epochs {epochs}: "
                         f"pass a larger --epochs")
    dataset.set_init_step(step)  # MindSpore's cursor: the pipeline restarts at that micro-batch, same shuffle
    return step


def main():
    args = parse_args()
    resolve_model_args(args, train=True)
    if args.init_ckpt and args.resume:
        raise ValueError("--init_ckpt and --resume together: a resume restores everything, the weights included; "
                         "drop --init_ckpt")
    setup_logging()
    check_writable_directory(args.ckpt_path, "checkpoint directory")
    with run_lock(args.ckpt_path):  # one run per checkpoint directory, as train.py
        # Holding the lock, no one else writes here: partial files are a killed run's (kill -9 mid-write).
        for directory in (args.ckpt_path, os.path.join(args.ckpt_path, "train")):
            remove_partial_files(directory, since=0)
        train(args)


def train(args):
    """Builds the Cell, resumes if asked, and runs Model.train with the zoo's callbacks and the guards."""
    device = setup_mindspore(args.device_target, args.seed)
    dataset = build_dataset(args, train=True, num_samples=args.num_samples)
    micro_batches = dataset.get_dataset_size()
    network = build_network(args)
    if args.init_ckpt:
        load_initial_weights(network, args.init_ckpt)
    compute = network if args.amp_level == "O0" else amp.auto_mixed_precision(network, args.amp_level)
    loss_scaler = None if args.amp_level == "O0" else amp.DynamicLossScaler(2 ** 16, 2, 2000)
    optimizer = build_optimizer(args, network.trainable_params(), args.lr)
    cell = GradientAccumulationCell(nn.WithLossCell(compute, build_loss(args)), optimizer, args.mini_steps,
                                    micro_batches_per_epoch=micro_batches, loss_scaler=loss_scaler,
                                    weighting=args.weighting, ema_decay=args.ema_decay)
    settings = cell.settings(amp_level=args.amp_level).merged(training_settings(args))
    start = resume(cell, args.resume, dataset, args.epochs, settings) if args.resume else 0

    print(f"device: {device} (GRAPH_MODE), model: {args.model}, amp_level: {args.amp_level}, seed: {args.seed}, "
          f"weighting: {args.weighting}")
    window = min(args.mini_steps, micro_batches)  # an epoch shorter than mini_steps makes every window partial
    print(f"effective batch: {args.batch_size * window} = {args.batch_size} x {window} (batch_size x "
          + ("mini_steps" if window == args.mini_steps else f"the epoch's micro-batches, fewer than mini_steps "
                                                              f"{args.mini_steps}")
          + f"), {optimizer_words(args)}")
    print(f"micro-batches per epoch: {micro_batches}, updates per epoch: "
          f"{WindowSchedule(args.mini_steps).updates_per_epoch(micro_batches)}, epochs: {args.epochs}"
          + (f", resuming at micro-step {start} from {args.resume}" if args.resume else ""))
    record = settings_record(settings)
    bare = CheckpointConfig(save_checkpoint_steps=micro_batches, keep_checkpoint_max=1, saved_network=network,
                            crc_check=True)
    # step_num: the global micro-step, which --resume reads back; the settings, which it checks.
    whole = CheckpointConfig(save_checkpoint_steps=args.save_steps or micro_batches, keep_checkpoint_max=5,
                             append_info=["epoch_num", "step_num", record], crc_check=True)
    stop = SaveOnSignal(os.path.join(args.ckpt_path, "train"), record=record)
    callbacks = [CountOnFrom(start), EpochSizeCheck(cell), ResumableLossMonitor(per_print_times=args.mini_steps),
                 TimeMonitor(), ResumableCheckpoint(args.model, args.ckpt_path, bare, resuming=bool(args.resume))
                 if cell.ema is None else AverageCheckpoint(cell.ema, network, args.ckpt_path, args.model),
                 ResumableCheckpoint("train", os.path.join(args.ckpt_path, "train"), whole, resuming=bool(args.resume)),
                 stop]
    # sink_size -1: a sink is an epoch, and callbacks see its last micro-step, which closes a window.
    started = time.time()
    try:
        Model(cell).train(args.epochs, dataset, callbacks=callbacks, dataset_sink_mode=args.dataset_sink_mode,
                          sink_size=-1, initial_epoch=start // micro_batches)
    except OSError as error:  # a full disk: MindSpore's error names no file, and it leaves its partial files
        for directory in (args.ckpt_path, os.path.join(args.ckpt_path, "train")):
            remove_partial_files(directory, since=started)
        raise OSError(error.errno, f"cannot write a checkpoint in {args.ckpt_path!r}: {error.strerror}: free some "
                                   f"space or choose another --ckpt_path") from None
    if stop.signum is not None:
        print(f"interrupted by {signal.Signals(stop.signum).name}; the train Cell is saved to {stop.saved_path}\n"
              f"resume with:\n  {resume_command(stop.saved_path)}", file=sys.stderr)
        sys.exit(128 + stop.signum)  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


if __name__ == "__main__":
    run(main)
