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

import training
from build import build_loss, build_network, build_optimizer, learning_rate
from flags import epoch_schedule, non_negative_int, positive_int
from mindspore_accum import (
    GradFlowSaver,
    GradientAccumulation,
    MetricsLog,
    ProgressBar,
    SaveConfig,
    TrainingInterrupted,
)
from mindspore_accum.run.checkpoint import DRIVER, check_ckpt_path, check_writable_directory
from report import exit_interrupted, run

#: train.py's --ckpt_path names a file; a directory (no .ckpt suffix) gets this file inside it.
CHECKPOINT_NAME = "gradient_accumulation.ckpt"


def add_own_flags(parser):
    """The driver's own flags (flags.ENGINE_FLAGS says why train_model.py has none of them)."""
    parser.add_argument("--grad_flow_every", type=positive_int, default=None,
                        help="save a gradient-flow PNG every N updates, beside the checkpoint")
    parser.add_argument("--save_every", type=positive_int, default=None,
                        help="also save the training state every N updates (it is saved at every epoch's end, "
                             "and on SIGINT/SIGTERM)")
    parser.add_argument("--batch_rampup", type=non_negative_int, nargs=3, default=None,
                        metavar=("START", "INCREMENT", "SAMPLES"),
                        help="Megatron's ramp: the global batch starts at START and grows by INCREMENT up to "
                             "--global_batch_size over SAMPLES samples")
    parser.add_argument("--accumulation_schedule", type=epoch_schedule, default=None, metavar="EPOCH:MINI_STEPS,...",
                        help="Lightning's: mini_steps from each epoch on (1-based), e.g. 1:1,3:4")


def beside(ckpt_path, suffix):
    """A file or directory named after the checkpoint: model.ckpt -> model_state/, model_metrics.jsonl."""
    return os.path.splitext(os.path.abspath(ckpt_path))[0] + suffix


def check_outputs(args):
    """Every output now, not after an hour of training: the checkpoint and metrics, the states, the pictures."""
    if not args.ckpt_path.endswith(".ckpt"):  # the zoo's spelling, train_model.py's: a directory
        args.ckpt_path = os.path.join(args.ckpt_path, CHECKPOINT_NAME)
    check_ckpt_path(args.ckpt_path)
    check_writable_directory(beside(args.ckpt_path, "_state"), "training-state directory")
    if args.grad_flow_every:
        check_writable_directory(os.path.join(os.path.dirname(os.path.abspath(args.ckpt_path)), "grad_flow"),
                                 "gradient-flow directory")


def train(run_):
    """The driver over the data, with rank 0's callbacks; it takes the run lock itself: it owns the outputs."""
    config, say = run_.config, run_.say
    say(f"training states: {beside(config.ckpt_path, '_state')} (every epoch"
        + (f" and every {config.save_every} updates" if config.save_every else "")
        + f", newest {config.keep_checkpoints} kept)")
    if config.resumed is not None:
        say(f"resuming from {config.resume}: {config.resumed.where()}")
    network = build_network(config, config.init_ckpt)
    optimizer = build_optimizer(config, network.trainable_params(), learning_rate(config, run_.data.total_updates))
    driver = GradientAccumulation(network, build_loss(config), optimizer, amp_level=config.amp_level,
                                  clip_grad_norm=config.clip_grad_norm, distributed=config.distribute,
                                  weighting=config.weighting, ema_decay=config.ema_decay)
    callbacks = build_callbacks(run_, driver) if run_.rank == 0 else []  # the others write nothing
    progress = next((c for c in callbacks if isinstance(c, ProgressBar)), None)
    save = SaveConfig(ckpt_path=config.ckpt_path, state_dir=beside(config.ckpt_path, "_state"),
                      save_every=config.save_every, keep_checkpoints=config.keep_checkpoints, resume=config.resume,
                      # Data parallel: a rank that stopped alone would leave the others
                      # waiting in the all-reduce; a signal ends every rank at once.
                      handle_signals=not config.distribute)
    try:
        driver.train_process(config.epochs, run_.data.dataset, mini_steps=config.mini_steps,
                             remainder=config.remainder, save=save,
                             log_every=None if progress is not None and progress.replaces_log_lines
                             else config.log_every, callbacks=callbacks, seed=config.seed, settings=config.settings)
    except TrainingInterrupted as stopped:
        exit_interrupted(str(stopped), stopped.state_path, stopped.signum)
    # Done, the checkpoint whole: a signal in the last moments (MindSpore's teardown takes ~0.6 s) ends nothing.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)
    say(f"checkpoint: {config.ckpt_path} ({driver.total_updates} updates), metrics: "
        f"{beside(config.ckpt_path, '_metrics.jsonl')}")


def build_callbacks(run_, driver):
    """Rank 0's callbacks: the progress bar, the metrics file (with the test set, if asked), gradient flow.

    With --ema_decay the epoch's evaluation scores the moving average: the weights the checkpoint holds.
    """
    config = run_.config
    callbacks = [ProgressBar(enabled=not config.no_progress),
                 MetricsLog(beside(config.ckpt_path, "_metrics.jsonl"), run_.evaluator(driver.network, driver.ema),
                            resume=config.resumed)]
    if config.grad_flow_every:
        out_dir = os.path.dirname(os.path.abspath(config.ckpt_path))
        callbacks.append(GradFlowSaver(os.path.join(out_dir, "grad_flow"), config.grad_flow_every))
    return callbacks


ENGINE = training.Engine(__doc__, CHECKPOINT_NAME, "the model checkpoint (eval.py reads it), its states and metrics "
                         f"beside it; or a directory for them all ({CHECKPOINT_NAME} inside)", DRIVER,
                         add_own_flags, check_outputs, train)


def parse_args(argv=None):
    """The flags of ``argv`` (default: the command line)."""
    return training.parse_args(ENGINE, argv)


if __name__ == "__main__":
    run(lambda: training.main(ENGINE))
