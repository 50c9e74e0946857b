"""Step 1, the flags: every script's parser and argument types; every refusal one line, every number bounded.

The parsers are built here and nowhere else: the flags every script takes, the training flags both engines take,
and :data:`ENGINE_FLAGS`, the few one engine has and the other has not (docs/cli.md prints that table, and a test
keeps both in step). Importing this module starts no MindSpore, so that plot.py starts at once; the registries are
read when a parser is built.
"""

import argparse
import os
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ [WARNING] flood; must be set before MindSpore's import

__all__ = ["EXIT_BAD_INPUT", "INT32_MAX", "SEED_MAX", "Parser", "positive_int", "non_negative_int", "seed_int",
           "positive_float", "non_negative_float", "ema_decay", "RUN_FLAGS", "ENGINE_FLAGS", "add_common_args",
           "training_parser", "parse_flags"]

#: The exit status of bad input, argparse's own.
EXIT_BAD_INPUT = 2
#: The micro-batch when no flag gives it, and ``mini_steps`` when neither it nor a global batch does.
MICRO_BATCH, MINI_STEPS = 32, 4


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose refusal is one line and a pointer to ``--help``, not the usage block."""

    def __init__(self, **kwargs):
        super().__init__(formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


#: The largest count a flag takes: the device's counters (micro-steps, samples, updates) are int32.
INT32_MAX = 2 ** 31 - 1
#: The largest seed: MindSpore's and NumPy's seeds are unsigned 32-bit.
SEED_MAX = 2 ** 32 - 1


def _whole_number(minimum, maximum=INT32_MAX):
    """An argparse type: a whole number in ``[minimum, maximum]``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be a whole number from {minimum} to {maximum}, got {text!r}")
        return value
    return parse


positive_int = _whole_number(1)
non_negative_int = _whole_number(0)
seed_int = _whole_number(0, SEED_MAX)


def _float_in(low, high, low_open, what):
    """An argparse type: a number in ``[low, high)`` (or ``(low, high)`` with ``low_open``); ``what`` says so."""
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not (low < value if low_open else low <= value) or not value < high:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    return parse


positive_float = _float_in(0, float("inf"), True, "a finite number > 0")
#: A momentum, a weight decay.
non_negative_float = _float_in(0, float("inf"), False, "a finite number >= 0")
ema_decay = _float_in(0, 1, False, "a number in [0, 1), e.g. 0.999")
label_smoothing = _float_in(0, 1, False, "a number in [0, 1), e.g. 0.1")


def model_name(text):
    """An argparse type: a registered model, or ``mindcv:<name>`` for any of mindcv's networks."""
    from model_zoo_adapters import registry
    from model_zoo_adapters.mindcv_models import MINDCV_PREFIX
    if text in registry.MODELS or (text.startswith(MINDCV_PREFIX) and len(text) > len(MINDCV_PREFIX)):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                     f"{', '.join(map(repr, registry.model_names()))}, or mindcv:<name>)")


def dataset_name(text):
    """An argparse type: a registered dataset, looked up when the flags are parsed (a --user_module's included)."""
    from model_zoo_adapters import registry
    if text in registry.DATASETS:
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                     f"{', '.join(map(repr, registry.DATASETS))})")


def augment_names(text):
    """An argparse type: comma-separated augmentation names."""
    from model_zoo_adapters.augment import AUGMENTATIONS
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown augmentation {unknown[0]!r} (choose from "
                                         f"{', '.join(AUGMENTATIONS)}, comma-separated)")
    return tuple(names)


def epoch_schedule(text):
    """``--accumulation_schedule``'s ``EPOCH:MINI_STEPS,...`` as ``{epoch: mini_steps}``, checked."""
    from mindspore_accum.core.batch_size import BatchSchedule
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


#: The flags that are no setting: where the files are, how the run is shown, how long it runs, how it is launched.
#: Every other flag is a setting, recorded in each state and train checkpoint and compared on resume, so a flag
#: added later is compared without anyone touching a list. The data is compared by its fingerprint, not its path.
RUN_FLAGS = frozenset(("help", "user_module", "data_path", "ckpt_path", "resume", "init_ckpt", "device_target",
                       "epochs", "log_every", "no_progress", "keep_checkpoints", "save_every", "save_steps",
                       "eval_every_epoch", "grad_flow_every", "distribute", "dataset_sink_mode"))

#: The flags one engine has and the other has not: flag -> (script, why). Every other training flag is both's.
ENGINE_FLAGS = {
    "--save_every": ("train.py", "training states every N updates; train_model.py saves by Model's unit, "
                                 "the micro-step: --save_steps"),
    "--grad_flow_every": ("train.py", "the Cell clears the window's gradient inside its graph, so no Model callback "
                                      "can read it"),
    "--save_steps": ("train_model.py", "micro-steps between train-Cell checkpoints; train.py saves every N "
                                       "updates: --save_every"),
    "--dataset_sink_mode": ("train_model.py", "Model.train's sink mode (GPU/Ascend); the driver runs one graph per "
                                              "micro-step from Python"),
    "--batch_rampup": ("train.py", "epochs of different lengths; Model.train's callbacks count fixed micro-steps "
                                   "an epoch (the Cell itself takes any schedule: windows_from_data)"),
    "--accumulation_schedule": ("train.py", "as --batch_rampup"),
}


def import_user_modules(argv):
    """Imports each ``--user_module`` of ``argv`` (a ``.py`` file or a dotted name) before the flags are parsed.

    Its ``register_model`` and ``register_dataset`` entries then are ``--model`` and ``--dataset`` choices, as
    fairseq's ``--user-dir`` does for its registries. A dotted name is looked up from the working directory too.
    """
    import importlib
    import importlib.util
    before = Parser(add_help=False)
    before.add_argument("--user_module", action="append", default=[])
    for module in before.parse_known_args(list(argv))[0].user_module:
        try:
            if module.endswith(".py") or os.sep in module:
                spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(module))[0], module)
                if spec is None or not os.path.isfile(module):
                    raise FileNotFoundError(f"no file {module!r}")
                spec.loader.exec_module(importlib.util.module_from_spec(spec))
            else:
                if os.getcwd() not in sys.path:
                    sys.path.append(os.getcwd())
                importlib.import_module(module)
        except Exception as error:  # the user's code: whatever it raises, the flag is named
            first = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise ValueError(f"--user_module {module}: importing it failed: {first}") from None


def parse_flags(parser, argv=None):
    """``parser.parse_args(argv)`` after the ``--user_module`` imports, with ``setting_flags``: the flags that are
    settings (all but :data:`RUN_FLAGS`)."""
    import_user_modules(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.setting_flags = tuple(action.dest for action in parser._actions if action.dest not in RUN_FLAGS)
    return args


def add_common_args(parser, ckpt_help="model checkpoint file"):
    """Flags every script takes (train.py, train_model.py, eval.py), named as in MindSpore's model zoo."""
    from mindspore_accum.run.device import DEVICE_TARGETS
    from model_zoo_adapters import registry, resnet
    from model_zoo_adapters.augment import AUGMENTATIONS
    from model_zoo_adapters.conv import CONV_IMPLS
    parser.add_argument("--data_path", default=None,
                        help="the dataset's directory: MNIST files, raw or .gz (default: the shipped data/mnist); "
                             "CIFAR-10's binary files; or a folder of class subfolders. Text: a .txt or .jsonl file, "
                             "a directory with train and valid files, or pydoc (the default: Python's own docs)")
    parser.add_argument("--ckpt_path", default="gradient_accumulation.ckpt", help=ckpt_help)
    parser.add_argument("--device_target", default="auto", choices=DEVICE_TARGETS,
                        help="auto: GPU where this MindSpore can use one, else CPU")
    parser.add_argument("--conv_impl", default="auto", choices=CONV_IMPLS,
                        help="convolutions: auto (im2col where faster on the CPU, native on GPU/Ascend), "
                             "native (nn.Conv2d) or im2col; checkpoints are the same either way")
    parser.add_argument("--batch_size", type=positive_int, default=MICRO_BATCH, help="samples per micro-batch")
    parser.add_argument("--model", type=model_name, default="lenet",
                        help=f"{', '.join(registry.model_names())}, or mindcv:<name> for any network of mindcv (an "
                             f"optional extra)")
    parser.add_argument("--dataset", type=dataset_name, default=None,
                        help="default: mnist for lenet, cifar10 for the ResNets and mindcv's, text for gpt_*, "
                             "text_classification for bert_*")
    parser.add_argument("--seq_len", type=positive_int, default=None,
                        help="text models: tokens (bytes) per sequence at most; default 64 for gpt_*, 128 for bert_*")
    parser.add_argument("--bucket", action="store_true",
                        help="text: batch sequences of similar length together (bucket_batch_by_length)")
    parser.add_argument("--image_size", type=positive_int, default=None,
                        help="image side the network sees (ResNets; default 224 as in the model zoo, 32 is "
                             "CIFAR-10's own and much faster on a CPU); LeNet5 takes 32 only")
    parser.add_argument("--num_classes", type=positive_int, default=None,
                        help="default: 10 for mnist and cifar10, the number of class folders for imagefolder")
    parser.add_argument("--norm", choices=resnet.NORMS, default=None,
                        help="ResNets and mindcv networks: batch (BatchNorm, the zoo's) or group (GroupNorm: "
                             "accumulation is exact)")
    parser.add_argument("--gn_groups", type=positive_int, default=None,
                        help="mindcv networks with --norm group: groups per GroupNorm (default: the largest "
                             "divisor of each layer's channels not above 32; 1 is the EfficientNet recipe's)")
    parser.add_argument("--augment", type=augment_names, default=(),
                        help=f"training augmentations, comma-separated: {', '.join(AUGMENTATIONS)}")
    parser.add_argument("--num_samples", type=positive_int, default=None,
                        help="use only this many samples of the split (a quick run)")
    parser.add_argument("--user_module", action="append", default=None, metavar="MODULE",
                        help="import this module first (a .py file or a dotted name; repeatable): its "
                             "register_model and register_dataset entries become --model and --dataset choices")
    parser.add_argument("--no_dropout", action="store_true",
                        help="dropout and stochastic depth off (timm's drop and drop-path rates of 0): each draws "
                             "other masks for a micro-batch than for the large batch, so only without them is an "
                             "accumulated update the large batch's to the bit")


def training_parser(description, ckpt_default, ckpt_help, add_own_flags):
    """Both training scripts' parser: every training flag, then ``add_own_flags(parser)``, the script's own of
    :data:`ENGINE_FLAGS`."""
    from mindspore_accum.core.engine import AMP_LEVELS
    from mindspore_accum.core.lr_schedule import LR_SCHEDULES
    from mindspore_accum.core.optimizers import OPTIMIZERS
    from mindspore_accum.core.schedule import REMAINDER_POLICIES
    from mindspore_accum.core.weighting import WEIGHTINGS
    parser = Parser(description=description)
    add_common_args(parser, ckpt_help)
    parser.set_defaults(ckpt_path=ckpt_default, batch_size=None)
    parser.add_argument("--mini_steps", type=positive_int, default=None,
                        help=f"micro-batches per optimizer update (default {MINI_STEPS}, or derived from "
                             f"--global_batch_size)")
    parser.add_argument("--global_batch_size", type=positive_int, default=None, metavar="N",
                        help=f"samples per update over all ranks, any size: with --batch_size (the micro-batch, "
                             f"default {MICRO_BATCH}) it gives --mini_steps; a window is cut at exactly N (see "
                             f"docs/batch_size.md)")
    parser.add_argument("--epochs", type=positive_int, default=10,
                        help="epochs in all; a resumed run counts the epochs before the interruption")
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="momentum",
                        help="; ".join(f"{name}: {about}" for name, (_, about) in OPTIMIZERS.items()))
    parser.add_argument("--lr", type=positive_float, default=0.01)
    parser.add_argument("--momentum", type=non_negative_float, default=None,
                        help="--optimizer momentum only (default 0.9)")
    parser.add_argument("--weight_decay", type=non_negative_float, default=0.0)
    parser.add_argument("--label_smoothing", type=label_smoothing, default=0.0,
                        help="classifiers: the cross-entropy's target is this much uniform over the classes "
                             "(nn.CrossEntropyLoss's label_smoothing; timm's --smoothing)")
    parser.add_argument("--ema_decay", type=ema_decay, default=None,
                        help="keep a moving average of the weights, updated once per optimizer update; the model "
                             "checkpoint then holds it (e.g. 0.999)")
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
                             "(train.py), a train/train-*.ckpt (train_model.py, which resumes train.py's too)")
    parser.add_argument("--distribute", action="store_true",
                        help="data parallel over the ranks msrun started: each reads its shard, one all-reduce "
                             "per update; only rank 0 writes")
    add_own_flags(parser)
    return parser
