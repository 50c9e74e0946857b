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

from mindspore import Model, amp, load_checkpoint, load_param_into_net, nn
from mindspore.train import Callback, CheckpointConfig, LossMonitor, ModelCheckpoint, TimeMonitor

from common import (
    add_common_args,
    build_dataset,
    build_loss,
    build_network,
    positive_float,
    positive_int,
    resolve_model_args,
    run,
    setup_logging,
    setup_mindspore,
)
from mindspore_accum import GradientAccumulationCell
from mindspore_accum.driver import AMP_LEVELS
from mindspore_accum.schedule import WindowSchedule
from mindspore_accum.weighting import WEIGHTINGS


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     conflict_handler="resolve")
    add_common_args(parser)
    parser.add_argument("--ckpt_path", default="ckpt", help="checkpoint directory, as in the model zoo")
    parser.add_argument("--mini_steps", type=positive_int, default=4, help="micro-batches per optimizer update")
    parser.add_argument("--epochs", type=positive_int, default=10, help="epochs in all, counting resumed ones")
    parser.add_argument("--lr", type=positive_float, default=0.01)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weighting", choices=WEIGHTINGS, default=None,
                        help="what a window is weighted by: samples, or items (valid tokens); default items for gpt_*")
    parser.add_argument("--amp_level", choices=AMP_LEVELS, default="O0",
                        help="applied to the network before the Cell is built; O1-O3 add dynamic loss scaling")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--save_steps", type=positive_int, default=None,
                        help="micro-steps between train-Cell checkpoints (default: one per epoch)")
    parser.add_argument("--dataset_sink_mode", action="store_true",
                        help="GPU/Ascend only (not run here): one sink per epoch, callbacks at its last micro-step")
    parser.add_argument("--resume", default=None, metavar="FILE", help="a train/train-*.ckpt to continue from")
    return parser.parse_args()


class CountOnFrom(Callback):
    """Model.train counts micro-steps from 0; after a resume, count on from the resumed one.

    First in the list: LossMonitor's and ModelCheckpoint's step numbers (file
    names, step_num) are then the uninterrupted run's.
    """

    def __init__(self, step):
        self.step = step

    def on_train_begin(self, run_context):
        run_context.original_args().cur_step_num = self.step


def resume(cell, path, dataset, epochs):
    """Loads the train Cell's checkpoint; positions the dataset; returns the global micro-step it was taken at."""
    params = load_checkpoint(path)
    if "step_num" not in params:
        raise ValueError(f"--resume {path!r} is not a train-Cell checkpoint (no step_num): pass a file from "
                         f"<ckpt_path>/train/")
    step = int(params.pop("step_num").asnumpy())
    params.pop("epoch_num", None)
    not_loaded, _ = load_param_into_net(cell, params)
    if not_loaded:
        raise ValueError(f"--resume {path!r} does not fit this model: missing {', '.join(not_loaded[:5])}")
    if step >= epochs * dataset.get_dataset_size():
        raise ValueError(f"--resume {path!r} is already at micro-step {step}, the end of --epochs {epochs}: "
                         f"pass a larger --epochs")
    dataset.set_init_step(step)  # MindSpore's cursor: the pipeline restarts at that micro-batch, same shuffle
    return step


def main():
    args = parse_args()
    resolve_model_args(args, train=True)
    setup_logging()
    device = setup_mindspore(args.device_target, args.seed)
    dataset = build_dataset(args, train=True, num_samples=args.num_samples)
    micro_batches = dataset.get_dataset_size()
    network = build_network(args)
    compute = network if args.amp_level == "O0" else amp.auto_mixed_precision(network, args.amp_level)
    loss_scaler = None if args.amp_level == "O0" else amp.DynamicLossScaler(2 ** 16, 2, 2000)
    optimizer = nn.Momentum(network.trainable_params(), args.lr, args.momentum)
    cell = GradientAccumulationCell(nn.WithLossCell(compute, build_loss(args)), optimizer, args.mini_steps,
                                    micro_batches_per_epoch=micro_batches, loss_scaler=loss_scaler,
                                    weighting=args.weighting)
    start = resume(cell, args.resume, dataset, args.epochs) if args.resume else 0

    print(f"device: {device} (GRAPH_MODE), model: {args.model}, amp_level: {args.amp_level}, seed: {args.seed}, "
          f"weighting: {args.weighting}")
    print(f"effective batch: {args.batch_size * args.mini_steps} = {args.batch_size} x {args.mini_steps} "
          f"(batch_size x mini_steps), lr: {args.lr}, momentum: {args.momentum}")
    print(f"micro-batches per epoch: {micro_batches}, updates per epoch: "
          f"{WindowSchedule(args.mini_steps).updates_per_epoch(micro_batches)}, epochs: {args.epochs}"
          + (f", resuming at micro-step {start} from {args.resume}" if args.resume else ""))
    bare = CheckpointConfig(save_checkpoint_steps=micro_batches, keep_checkpoint_max=1, saved_network=network)
    # step_num: the global micro-step, which --resume reads back.
    whole = CheckpointConfig(save_checkpoint_steps=args.save_steps or micro_batches, keep_checkpoint_max=5,
                             append_info=["epoch_num", "step_num"])
    callbacks = [CountOnFrom(start), LossMonitor(per_print_times=args.mini_steps), TimeMonitor(),
                 ModelCheckpoint(args.model, args.ckpt_path, bare),
                 ModelCheckpoint("train", os.path.join(args.ckpt_path, "train"), whole)]
    # sink_size -1: a sink is an epoch, and callbacks see its last micro-step, which closes a window.
    Model(cell).train(args.epochs, dataset, callbacks=callbacks, dataset_sink_mode=args.dataset_sink_mode,
                      sink_size=-1, initial_epoch=start // micro_batches)


if __name__ == "__main__":
    run(main)
