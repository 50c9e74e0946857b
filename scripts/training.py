"""Step 4, run: the one ``main`` of both training scripts, which differ only in the :class:`Engine` they pass.

flags (flags.py) -> resolve (resolve.py: one frozen Config) -> build (build.py) -> the engine's ``train`` ->
report (report.py). train.py's engine is the driver, train_model.py's ``Model`` with ``GradientAccumulationCell``.
"""

import argparse
import dataclasses
from typing import Callable

from build import build_dataset, build_training_data, seed_everything, setup_mindspore
from flags import parse_flags, training_parser
from mindspore_accum import init_data_parallel
from mindspore_accum.core.distributed import check_same_settings
from report import epoch_evaluator, print_plan, setup_logging
from resolve import Config, resolve_training

__all__ = ["Engine", "Run", "parse_args", "main"]


@dataclasses.dataclass(frozen=True)
class Engine:
    """What a training script is: its flags and outputs, its kind of resume file, and how it trains."""

    #: The script's docstring: its --help.
    description: str
    ckpt_default: str
    ckpt_help: str
    #: The kind of training state its --resume reads (``mindspore_accum.run.checkpoint.RESUMED_BY``).
    resume_kind: str
    #: ``callable(parser)``: the script's own flags of flags.ENGINE_FLAGS.
    add_own_flags: Callable[[argparse.ArgumentParser], None]
    #: ``callable(args)``: checks (and spells) the outputs, before anything else is resolved.
    check_outputs: Callable[[argparse.Namespace], None]
    #: ``callable(run)``: trains.
    train: Callable[["Run"], None]


@dataclasses.dataclass(frozen=True)
class Run:
    """What an engine's ``train`` gets: the configuration, the device, the ranks, the data, and rank 0's voice."""

    config: Config
    device: str
    rank: int
    ranks: int
    data: object
    say: Callable

    def evaluator(self, network, ema):
        """``--eval_every_epoch``'s ``evaluate(epoch) -> dict``, or None; with EMA on it scores the average."""
        if not self.config.eval_every_epoch:
            return None
        test_set = build_dataset(self.config, train=False, drop_remainder=False)
        return epoch_evaluator(self.config, test_set, network, ema, self.say)


def parse_args(engine, argv=None):
    """The flags of ``argv`` (default: the command line): every training flag and the engine's own."""
    return parse_flags(training_parser(engine.description, engine.ckpt_default, engine.ckpt_help,
                                       engine.add_own_flags), argv)


def main(engine, argv=None):
    """Parses, sets MindSpore up, joins the ranks, resolves, seeds, builds the data, prints the plan, trains."""
    args = parse_args(engine, argv)
    device = setup_mindspore(args.device_target)
    rank, ranks = init_data_parallel() if args.distribute else (0, 1)
    setup_logging(quiet=rank != 0)
    config = resolve_training(args, engine, ranks)
    seed_everything(config.seed)  # every rank alike: the same initial weights
    if config.distribute:  # before any rank trains; --epochs too, which a resume may change but every rank shares
        check_same_settings({**config.settings, "--epochs": config.epochs})
    say = print if rank == 0 else _silent  # one copy of the output: rank 0's
    data = build_training_data(config, rank, ranks)
    print_plan(say, config, device, ranks, data)
    engine.train(Run(config, device, rank, ranks, data, say))


def _silent(*_args, **_kwargs):
    pass
