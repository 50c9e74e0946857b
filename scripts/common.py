"""What every script shares (train.py, train_model.py, eval.py): argument types, the model flags resolved through
the registries (model_zoo_adapters.registry), device setup, evaluation, and clean failure.

Bad input ends with one line on stderr and exit status 2, never a traceback.
"""

import argparse
import logging
import math
import os
import shlex
import signal
import sys

os.environ.setdefault("GLOG_v", "3")  # MindSpore's C++ [WARNING] flood; must be set before the import

import mindspore as ms  # noqa: E402
import mindspore.dataset as ds  # noqa: E402
import numpy as np  # noqa: E402
from flags import (  # noqa: E402,F401 (the argument types, for the scripts)
    EXIT_BAD_INPUT,
    INT32_MAX,
    Parser,
    ema_decay,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    seed_int,
)
from mindspore import Model, nn  # noqa: E402
from mindspore.train import ConfusionMatrix  # noqa: E402

from mindspore_accum.core.optimizers import OPTIMIZERS, STATES_PER_WEIGHT, create_optimizer  # noqa: E402
from mindspore_accum.nets.metrics import MeanCrossEntropy  # noqa: E402
from mindspore_accum.run.device import DEVICE_TARGETS, resolve_device_target  # noqa: E402
from mindspore_accum.run.settings import data_fingerprint  # noqa: E402
from model_zoo_adapters import registry, resnet, text, transformer  # noqa: E402
from model_zoo_adapters.augment import AUGMENTATIONS  # noqa: E402
from model_zoo_adapters.conv import CONV_IMPLS  # noqa: E402
from model_zoo_adapters.mindcv_models import MINDCV_PREFIX, disable_dropout  # noqa: E402

MODELS = registry.model_names()


def model_name(text):
    """An argparse type: one of :data:`MODELS`, or ``mindcv:<name>`` for any of mindcv's networks."""
    if text in registry.MODELS or (text.startswith(MINDCV_PREFIX) and len(text) > len(MINDCV_PREFIX)):
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                     f"{', '.join(map(repr, registry.model_names()))}, "
                                     f"or mindcv:<name>)")


def dataset_name(text):
    """An argparse type: a registered dataset, looked up when the flags are parsed (a --user_module's included)."""
    if text in registry.DATASETS:
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from "
                                     f"{', '.join(map(repr, registry.DATASETS))})")


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


def augment_names(text):
    """An argparse type: comma-separated augmentation names."""
    names = [name for name in text.split(",") if name]
    unknown = [name for name in names if name not in AUGMENTATIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown augmentation {unknown[0]!r} (choose from "
                                         f"{', '.join(AUGMENTATIONS)}, comma-separated)")
    return tuple(names)


def task_of(model):
    """``"image"``, ``"lm"`` (a causal LM) or ``"classify"`` (a sequence classifier): the registry's task."""
    return registry.model_entry(model).task


#: The flags that are no setting: where the files are, how the run is shown, how long it runs, how it is launched.
#: Every other flag is a setting, recorded in each state and train checkpoint and compared on resume, so a flag
#: added later is compared without anyone touching a list. The data is compared by its fingerprint, not its path.
RUN_FLAGS = frozenset(("help", "user_module", "data_path", "ckpt_path", "resume", "init_ckpt", "device_target",
                       "epochs", "log_every", "no_progress", "keep_checkpoints", "save_every", "save_steps",
                       "eval_every_epoch", "grad_flow_every", "distribute", "dataset_sink_mode"))


def parse_flags(parser, argv=None):
    """``parser.parse_args(argv)`` after the ``--user_module`` imports, with ``setting_flags``: the flags that are
    settings (all but :data:`RUN_FLAGS`)."""
    import_user_modules(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.setting_flags = tuple(action.dest for action in parser._actions if action.dest not in RUN_FLAGS)
    return args


def training_settings(args):
    """The run's settings as the scripts record them: ``{"--<flag>": value}`` and ``"data"``, the data's fingerprint.

    After :func:`resolve_model_args`, so that defaults are filled in.
    """
    settings = {f"--{name}": getattr(args, name) for name in args.setting_flags}
    settings["data"] = fingerprint_of(args.data_path)
    return settings


def fingerprint_of(data_path):
    """:func:`~mindspore_accum.run.settings.data_fingerprint` of ``data_path``; the built-in corpus by its text.

    A path that is no file or directory (a registered dataset that makes its data from the name) has nothing to
    hash: it is compared by its name, and the record says so, so that other data is never accepted silently.
    """
    if data_path == "pydoc":
        import hashlib
        return "pydoc:" + hashlib.sha256(repr(sorted(text._pydoc_topics().items())).encode()).hexdigest()[:16]
    return data_fingerprint(data_path) or f"--data_path {data_path!r} (no file or directory: compared by its name)"


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


def add_optimizer_args(parser):
    """The optimizer flags both training scripts take."""
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="momentum",
                        help="; ".join(f"{name}: {about}" for name, (_, about) in OPTIMIZERS.items()))
    parser.add_argument("--lr", type=positive_float, default=0.01)
    parser.add_argument("--momentum", type=non_negative_float, default=None,
                        help="--optimizer momentum only (default 0.9)")
    parser.add_argument("--weight_decay", type=non_negative_float, default=0.0)
    parser.add_argument("--ema_decay", type=ema_decay, default=None,
                        help="keep a moving average of the weights, updated once per optimizer update; the model "
                             "checkpoint then holds it (e.g. 0.999)")


def optimizer_words(args):
    """The banner's words for the optimizer: ``lr: 0.01, momentum: 0.9`` for the zoo's, else its name too."""
    words = f"lr: {args.lr}, " + (f"momentum: {args.momentum}" if args.optimizer == "momentum"
                                   else f"optimizer: {args.optimizer}")
    return words + (f", weight_decay: {args.weight_decay}" if args.weight_decay else "")


def resolve_optimizer_args(args):
    """Refuses ``--momentum`` given with an optimizer that has none, whatever its value; then fills its default.

    The default is filled for every optimizer, as the records of earlier runs hold it.
    """
    if args.momentum is not None and args.optimizer != "momentum":
        raise ValueError(f"--momentum applies to --optimizer momentum, not {args.optimizer}, which has none (given "
                         f"--momentum {args.momentum:g}): drop --momentum")
    if args.momentum is None:
        args.momentum = 0.9


def build_optimizer(args, params, lr):
    """The optimizer ``args`` names over ``params``, at ``lr`` (a rate or a list of rates, one per update)."""
    return create_optimizer(args.optimizer, params, lr, args.momentum, args.weight_decay)


def add_common_args(parser, ckpt_help="model checkpoint file"):
    """Flags every script takes (train.py, train_model.py, eval.py), named as in MindSpore's model zoo."""
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
    parser.add_argument("--batch_size", type=positive_int, default=32, help="samples per micro-batch")
    parser.add_argument("--model", type=model_name, default="lenet",
                        help=f"{', '.join(MODELS)}, or mindcv:<name> for any network of mindcv (an optional extra)")
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


def resolve_model_args(args, train):
    """Fills in the model flags' defaults from the registries' entries and refuses combinations that cannot work."""
    classes_given = args.num_classes is not None
    model = registry.model_entry(args.model)
    if args.dataset is None:
        args.dataset = model.datasets[0] if model.datasets else "cifar10"
    data = registry.dataset_entry(args.dataset)
    if model.task != "image":
        _resolve_text_args(args, model, data)
    else:
        _resolve_image_args(args, model, data)
    args.data_path = args.data_path or data.default_path
    if args.data_path is None:
        raise ValueError(f"--dataset {args.dataset} needs --data_path: the directory of its files")
    if data.classes is not None:
        _set_num_classes(args, data.classes(args.data_path, train))
    elif args.num_classes is not None:
        raise ValueError(f"--num_classes does not apply to --model {args.model}: its outputs are the "
                         f"{text.VOCAB_SIZE} byte tokens")
    if hasattr(args, "weighting") and args.weighting is None:
        args.weighting = registry.TASKS[model.task].weighting
    #: The class count came from the data, not --num_classes: the memory check names the data.
    args.classes_from_data = data.classes is not None and not classes_given
    if not train:  # a training script checks once the rule of two has given it the micro-batch
        check_memory(args)
    return args


_FLOAT = 4  # bytes of a float32


def check_memory(args):
    """Refuses a size whose tensors cannot fit in this machine's memory, before anything is allocated.

    It counts what the network's registry entry says it allocates (``head_width``, ``activations_per_pixel``,
    ``attention``): the head's weights with their gradient, buffer, optimizer state and EMA; a micro-batch's
    attention scores and their softmax in every layer and head, and a causal mask, of ``--seq_len`` squared;
    a micro-batch of images with the activations kept for the backward. What an entry does not say is not
    counted, beyond the input itself. A size is refused when that alone exceeds the machine's memory; the
    largest size it suggests takes at most half of it, leaving the rest to the other layers and MindSpore.
    """
    import psutil  # MindSpore's own dependency
    total = psutil.virtual_memory().total
    entry = registry.model_entry(args.model)
    task, classes_from_data = entry.task, getattr(args, "classes_from_data", False)
    batch = getattr(args, "batch_size", None) or 1
    checks = []
    if args.num_classes and entry.head_width:
        # Beside the weight: the backward's gradient, the window's buffer, the optimizer's states, the EMA.
        copies = 2 + STATES_PER_WEIGHT.get(getattr(args, "optimizer", None), 0) + \
            (getattr(args, "ema_decay", None) is not None)
        per_class = (1 + copies) * (entry.head_width + 1) * _FLOAT
        what = f"the labels of {args.data_path} (up to {args.num_classes - 1})" if classes_from_data else \
            f"--num_classes {args.num_classes}"
        fix = "number the classes from 0, at most" if classes_from_data else "use a --num_classes of at most"
        checks.append((what, args.num_classes * per_class,
                       f"a head of {args.num_classes} classes x {entry.head_width} inputs, {1 + copies} copies",
                       f"{fix} {total // 2 // per_class:,}"))
    if task != "image" and args.seq_len and entry.attention:
        layers, heads = entry.attention
        per_square = (2 * layers * heads * batch + 1) * _FLOAT
        checks.append((f"--seq_len {args.seq_len}", args.seq_len ** 2 * per_square,
                       f"{layers} layers x {heads} heads of {args.seq_len} x {args.seq_len} attention scores and "
                       f"their softmax for {batch} sequence{'s' if batch > 1 else ''}, and the causal mask",
                       f"use a --seq_len of at most {math.isqrt(total // 2 // per_square):,}"))
    if task == "image" and args.image_size:
        checks.append(_image_check(args, entry, batch, total))
    for what, needs, of, fix in checks:
        if needs > total:
            raise ValueError(f"{what} needs at least {needs / 2 ** 30:,.0f} GiB ({of}, float32), more than the "
                             f"{total / 2 ** 30:.0f} GiB of this machine: {fix}")


def _image_check(args, entry, batch, total):
    """A micro-batch of images, and what the network keeps of each pixel: the flag at fault, and its fix."""
    channels = getattr(args, "channels", None) or 3
    per_pixel = (channels + (entry.activations_per_pixel or 0)) * _FLOAT
    pixels = args.image_size ** 2
    largest_batch = total // 2 // (pixels * per_pixel)
    largest_size = math.isqrt(total // 2 // (batch * per_pixel))
    kept = f" and {entry.activations_per_pixel} activations per pixel" if entry.activations_per_pixel else ""
    if entry.image_size is not None or largest_size >= args.image_size:  # the size is fixed, or fits alone
        what, fix = f"--batch_size {batch}", f"use a --batch_size of at most {largest_batch:,}"
    elif largest_batch == 0:  # a single image does not fit
        what, fix = f"--image_size {args.image_size}", f"use an --image_size of at most {largest_size:,}"
    else:
        what = f"--image_size {args.image_size} with --batch_size {batch}"
        fix = f"use an --image_size of at most {largest_size:,}, or a --batch_size of at most {largest_batch:,}"
    return (what, batch * pixels * per_pixel,
            f"a micro-batch of {batch} {channels}-channel {args.image_size}x{args.image_size} images{kept}", fix)


def _resolve_image_args(args, model, data):
    if data.task != "image":
        raise ValueError(f"--model {args.model} takes images, but --dataset {args.dataset} is text: use --model "
                         f"gpt_tiny (text) or bert_tiny (text_classification)")
    if args.seq_len is not None or args.bucket:
        raise ValueError(f"--seq_len and --bucket apply to the text models, not --model {args.model}: drop them")
    #: The images' channels: every network but one of fixed inputs (LeNet5) is built for the data's.
    args.channels = data.channels
    if model.channels is not None and model.channels != data.channels:
        raise ValueError(f"--model {args.model} takes {model.channels}-channel {model.image_size}x{model.image_size} "
                         f"images (--dataset {model.datasets[0]}), but --dataset {args.dataset} has "
                         f"{data.channels}-channel images: use --model resnet18 (or another ResNet)")
    if model.image_size is not None and args.image_size not in (None, model.image_size):
        raise ValueError(f"--image_size {args.image_size} does not fit --model {args.model}, which takes "
                         f"{model.image_size}x{model.image_size} images: drop --image_size")
    if not model.norm and args.norm is not None:
        raise ValueError(f"--norm {args.norm} applies to the ResNets; {model.about or args.model} has no "
                         f"normalisation layers: drop --norm")
    args.image_size = model.image_size or args.image_size or data.image_size
    args.norm = (args.norm or "batch") if model.norm else None
    if args.gn_groups is not None and (not model.gn_groups or args.norm != "group"):
        raise ValueError("--gn_groups applies to a mindcv network with --norm group: drop --gn_groups")


def _resolve_text_args(args, model, data):
    wanted = model.datasets[0]
    if args.dataset != wanted:
        raise ValueError(f"--model {args.model} takes --dataset {wanted}, not {args.dataset}")
    if args.bucket and data.task != "lm":
        raise ValueError(f"--bucket groups a language model's sequences by length; --model {args.model}'s texts are "
                         f"padded per micro-batch as they come: drop --bucket")
    for flag, value in (("--image_size", args.image_size), ("--norm", args.norm), ("--gn_groups", args.gn_groups),
                        ("--augment", ",".join(args.augment) or None)):
        if value is not None:
            raise ValueError(f"{flag} {value} applies to the image models, not --model {args.model}: drop {flag}")
    if getattr(args, "conv_impl", "auto") != "auto":
        raise ValueError(f"--conv_impl applies to the convolutional models, not --model {args.model}: drop it")
    args.seq_len = args.seq_len or model.seq_len


def _set_num_classes(args, classes):
    if args.num_classes is None:
        args.num_classes = classes
    elif args.num_classes < classes:
        raise ValueError(f"--num_classes {args.num_classes} is fewer than the {classes} classes of --dataset "
                         f"{args.dataset} in {args.data_path}: pass --num_classes {classes} or more")


def build_network(args):
    """The network ``args`` names (after :func:`resolve_model_args`), through the registry."""
    try:
        network = registry.create_model(args.model, args.num_classes, channels=getattr(args, "channels", None),
                                        image_size=args.image_size, norm=args.norm, gn_groups=args.gn_groups,
                                        conv_impl=args.conv_impl, seq_len=args.seq_len)
    except ValueError as error:
        if str(error).startswith("gn_groups "):  # the adapter's name for it: the flag's here
            raise ValueError(f"--{error}") from None
        raise
    if getattr(args, "no_dropout", False):
        disable_dropout(network)
    return network


def build_loss(args):
    """The loss of ``args.model``'s task: cross-entropy over classes, or over every valid token of an LM."""
    return registry.TASKS[task_of(args.model)].loss()


def build_dataset(args, train, batch_size=None, **kwargs):
    """The dataset ``args`` names, batched by ``batch_size`` (default ``args.batch_size``), through the registry."""
    return registry.create_dataset(args.dataset, args.data_path, batch_size or args.batch_size, train=train,
                                   num_classes=args.num_classes, image_size=args.image_size,
                                   augment=args.augment if train else (), seq_len=args.seq_len, bucket=args.bucket,
                                   **kwargs)


def setup_mindspore(device_target, seed=None):
    """GRAPH_MODE on the resolved device; returns the device name."""
    device = resolve_device_target(device_target)
    ms.set_device(device)
    ms.set_context(mode=ms.GRAPH_MODE)
    if seed is not None:
        ms.set_seed(seed)
        ds.config.set_seed(seed)
    return device


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
    loss_fn = transformer.TokenCrossEntropy(text.IGNORE_INDEX) if lm else \
        registry.TASKS["image"].loss()
    # ConfusionMatrix computes every normalisation, and a class with no sample divides by 0: NumPy warns, we don't.
    with np.errstate(invalid="ignore", divide="ignore"):
        result = Model(network, loss_fn, metrics=metrics).eval(dataset, dataset_sink_mode=False)
    if lm:
        result["BitsPerByte"] = result["Loss"] / math.log(2)  # a token is a byte
        result["Tokens"] = loss.items
    if num_classes:
        result["ConfusionMatrix"] = np.asarray(result["ConfusionMatrix"]).astype(np.int64)
    return result


def setup_logging(quiet=False):
    """The libraries' log lines on stdout; ``quiet`` (data-parallel ranks but 0) keeps errors only."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("mindspore_accum", "model_zoo_adapters"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.ERROR if quiet else logging.INFO)
        logger.propagate = False


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
