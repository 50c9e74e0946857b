"""Step 5, report: what a run says. The derived numbers up front, the evaluations, the exit status.

Bad input ends with one line on stderr and exit status 2, never a traceback (:func:`run`); a signal ends with
the command that resumes and 128 + the signal (:func:`exit_interrupted`).
"""

import contextlib
import logging
import math
import os
import shlex
import signal
import sys

import numpy as np
from mindspore import Model, nn
from mindspore.train import ConfusionMatrix

from flags import EXIT_BAD_INPUT
from mindspore_accum.core.batch_size import resolve_batch_sizes
from mindspore_accum.nets.metrics import MeanCrossEntropy
from model_zoo_adapters import registry, text, transformer

__all__ = ["print_plan", "evaluate", "epoch_evaluator", "setup_logging", "resume_command", "exit_interrupted", "run"]


def print_plan(say, config, device, ranks, data):
    """The derived numbers, up front, so that a wrong setting shows before the run."""
    micro_batches, updates = data.micro_batches, data.updates
    say(f"device: {device} (GRAPH_MODE), conv_impl: {config.conv_impl}, seed: {config.seed}")
    say(f"model: {config.model}" + (f" (norm: {config.norm})" if config.norm else "") + f", dataset: "
        f"{config.dataset} (" + (f"{config.image_size}x{config.image_size}" if config.task == "image" else
                                 f"{config.data_path}, sequences of at most {config.seq_len} bytes"
                                 + (", bucketed" if config.bucket else ""))
        + (f", {config.num_classes} classes" if config.num_classes else "") + f"), weighting: {config.weighting}")
    if data.windowed is not None:
        _print_global_batch(say, config, ranks, data)
    else:
        _print_fixed_windows(say, config, ranks, micro_batches)
    say(f"micro-batches per epoch: {micro_batches}" + (" per rank" if ranks > 1 else "")
        + f", updates per epoch: {updates}" + (" (epoch 1)" if config.batch_schedule is not None and
                                                 data.total_updates != updates * config.epochs else "")
        + f", epochs: {config.epochs}")
    say(f"lr schedule: {config.lr_schedule} over {data.total_updates} updates, warm-up {config.warmup_steps}; "
        f"amp_level: {config.amp_level}, clip_grad_norm: {config.clip_grad_norm}")


def _optimizer_words(config):
    """The banner's words for the optimizer: ``lr: 0.01, momentum: 0.9`` for the zoo's, else its name too."""
    words = f"lr: {config.lr}, " + (f"momentum: {config.momentum}" if config.optimizer == "momentum"
                                     else f"optimizer: {config.optimizer}")
    return words + (f", weight_decay: {config.weight_decay}" if config.weight_decay else "")


def _print_global_batch(say, config, ranks, data):
    sizes = resolve_batch_sizes(config.batch_schedule.global_batch_size, config.batch_size, None, ranks)
    say(f"global batch: {sizes.derivation()}; {config.batch_schedule.describe()}; {_optimizer_words(config)}")
    plan = data.windowed.plan(1)
    say(f"epoch 1: windows of {', '.join(map(str, plan.windows[:6]))}{', ...' if len(plan.windows) > 6 else ''}"
        + (f"; {plan.dropped} samples at its end in no window" if plan.dropped else "")
        + (f"; every rank reads all {data.windowed.rows} samples and keeps its share" if ranks > 1 else ""))


def _print_fixed_windows(say, config, ranks, micro_batches):
    window = min(config.mini_steps, micro_batches)  # an epoch shorter than mini_steps makes every window partial
    steps = "mini_steps" if window == config.mini_steps else \
        f"the epoch's micro-batches, fewer than mini_steps {config.mini_steps}"
    batch = config.batch_size
    if ranks > 1:
        say(f"data parallel: {ranks} ranks, each training on {micro_batches * batch} samples of its shard per epoch")
        say(f"effective batch: {ranks * batch * window} = {ranks} x {batch} x {window} (ranks x batch_size x "
            f"{steps}), {_optimizer_words(config)}")
    else:
        say(f"effective batch: {batch * window} = {batch} x {window} (batch_size x {steps}), "
            f"{_optimizer_words(config)}")


def evaluate(network, dataset, num_classes=None, lm=False):
    """Mean loss and accuracy of ``network`` on ``dataset``; with ``num_classes``, the confusion matrix too.

    ``lm``: a language model's mean loss per valid token (nats per byte) and
    bits per byte, over ``Tokens`` tokens, instead of the accuracy.
    """
    # MeanCrossEntropy, not nn.Loss: nn.Loss averages batch means, so a short last batch would weigh as a full one.
    loss = MeanCrossEntropy(text.IGNORE_INDEX)
    metrics = {"Loss": loss} if lm else {"Loss": loss, "Accuracy": nn.Accuracy()}
    if num_classes:
        metrics["ConfusionMatrix"] = ConfusionMatrix(num_classes)
    loss_fn = transformer.TokenCrossEntropy(text.IGNORE_INDEX) if lm else registry.TASKS["image"].loss()
    # ConfusionMatrix computes every normalisation, and a class with no sample divides by 0: NumPy warns, we don't.
    with np.errstate(invalid="ignore", divide="ignore"):
        result = Model(network, loss_fn, metrics=metrics).eval(dataset, dataset_sink_mode=False)
    if lm:
        result["BitsPerByte"] = result["Loss"] / math.log(2)  # a token is a byte
        result["Tokens"] = loss.items
    if num_classes:
        result["ConfusionMatrix"] = np.asarray(result["ConfusionMatrix"]).astype(np.int64)
    return result


def epoch_evaluator(config, test_set, network, ema, say):
    """``--eval_every_epoch``'s ``evaluate(epoch) -> dict`` on ``test_set``; with EMA on it scores the average."""
    def evaluate_epoch(epoch):
        with ema.applied() if ema is not None else contextlib.nullcontext():
            if config.task == "lm":
                result = evaluate(network, test_set, lm=True)
                say(f"epoch: {epoch} test loss: {result['Loss']:.6f} test bits per byte: {result['BitsPerByte']:.4f}")
                return {"test_loss": result["Loss"], "test_bits_per_byte": result["BitsPerByte"]}
            result = evaluate(network, test_set)
            say(f"epoch: {epoch} test loss: {result['Loss']:.6f} test accuracy: {result['Accuracy']:.4f}")
            return {"test_loss": result["Loss"], "test_accuracy": result["Accuracy"]}

    return evaluate_epoch


def setup_logging(quiet=False):
    """The libraries' log lines on stdout; ``quiet`` (data-parallel ranks but 0) keeps errors only."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("mindspore_accum", "model_zoo_adapters"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.ERROR if quiet else logging.INFO)
        logger.propagate = False


#: Flags the printed resume command leaves out: a resume starts from the state, and --init_ckpt with --resume
#: is refused (the state already holds the fine-tuned weights).
NOT_ON_RESUME = ("--resume", "--init_ckpt")


def resume_command(path, argv=None):
    """This very command line (``argv``, default ``sys.argv``), resuming from ``path``."""
    argv = sys.argv if argv is None else argv
    kept, skip = [], False
    for arg in argv[1:]:
        if skip:
            skip = False
        elif arg in NOT_ON_RESUME:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in NOT_ON_RESUME)):
            kept.append(arg)
    return shlex.join(["python", argv[0], *kept, "--resume", path])


def exit_interrupted(message, saved_path, signum):
    """The signal's exit: what was saved, the command that resumes from it, and the shell's status (130, 143)."""
    print(f"{message}\nresume with:\n  {resume_command(saved_path)}", file=sys.stderr)
    sys.exit(128 + signum)


def run(main):
    """Runs ``main()``; bad input becomes one line on stderr and exit status 2."""
    prog = os.path.basename(sys.argv[0])
    try:
        main()
    except (ValueError, TypeError, OSError, ArithmeticError) as error:  # ArithmeticError: training diverged
        lines = str(error).strip().splitlines() or [type(error).__name__]
        print(f"{prog}: error: {lines[0]}", file=sys.stderr)
        sys.exit(EXIT_BAD_INPUT)
    except KeyboardInterrupt as stopped:  # Ctrl-C, or a second signal (StopSignals' AbortedBySignal): 128 + it
        signum = getattr(stopped, "signum", signal.SIGINT)
        print(f"{prog}: interrupted by {signal.Signals(signum).name}", file=sys.stderr)
        sys.exit(128 + signum)
