"""Step 2, resolve: the parsed flags become one frozen :class:`Config`, every check made here, in one order.

The order, for a training script (:func:`resolve_training`): the engine's outputs; the model flags through the
registries; the optimizer's; the resume file and its seed; the batch by the rule of two (it needs the ranks);
the memory estimate (it needs the micro-batch); the settings to record. eval.py's is :func:`resolve_eval`.
After it nothing reads the Namespace, and a Config cannot be changed.
"""

import math

from flags import MICRO_BATCH, MINI_STEPS
from model_zoo_adapters import registry, text

__all__ = ["Config", "resolve_training", "resolve_eval", "resolve_model", "check_memory", "BATCH_FLAGS"]

#: The API's batch-size names as the flags spell them, for the messages.
BATCH_FLAGS = {"global_batch_size": "--global_batch_size", "micro_batch_size": "--batch_size",
               "mini_steps": "--mini_steps"}


class Config:
    """A run's every flag, resolved and checked, read-only: ``config.lr``, ``config.settings`` ...

    Beside the flags: ``channels`` (an image model's input), ``classes_from_data``, ``batch_schedule`` (a global
    batch or a schedule, else None), ``resumed`` (the training state resumed from), and ``settings``,
    the ``{"--flag": value}`` record of every flag that is a setting, with ``data``, the data's fingerprint.
    """

    def __init__(self, values):
        object.__setattr__(self, "_values", dict(values))

    def __getattr__(self, name):
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name, value):
        raise AttributeError(f"the configuration is resolved once, in scripts/resolve.py: {name} cannot change")


def resolve_training(args, engine, ranks):
    """The training scripts' :class:`Config`: ``engine`` (train.py's or train_model.py's) for its outputs and its
    kind of resume file; ``ranks`` for the rule of two."""
    engine.check_outputs(args)
    resolve_model(args, train=True)
    _resolve_optimizer(args)
    if args.label_smoothing and args.task == "lm":
        raise ValueError(f"--label_smoothing applies to the classifiers, not the language model --model {args.model}"
                         f": drop --label_smoothing")
    if args.init_ckpt and args.resume:
        raise ValueError("--init_ckpt and --resume together: a resume restores everything, the weights included; "
                         "drop --init_ckpt")
    args.resumed, saved_seed = None, None
    if args.resume is not None:
        args.resume, args.resumed, saved = _read_resume(args.resume, engine.resume_kind)
        saved_seed = saved.get("seed")
    if args.seed is None:  # --seed, else the resumed run's, else 1
        args.seed = saved_seed if saved_seed is not None else 1
    args.batch_schedule = _resolve_batch(args, ranks)
    check_memory(args)
    args.settings = {**{f"--{name}": getattr(args, name) for name in args.setting_flags},
                     "data": fingerprint_of(args.data_path)}
    return Config(vars(args))


def resolve_eval(args):
    """eval.py's :class:`Config`: the model flags; ``ckpt_path``, the file (a directory's newest); and the class
    count the checkpoint's head scores, unless ``--num_classes`` says it (the test split's labels may be fewer)."""
    from mindspore_accum.run.checkpoint import head_classes
    from mindspore_accum.run.files import file_or_newest
    classes_given = args.num_classes is not None
    resolve_model(args, train=False)
    args.ckpt_path = file_or_newest(args.ckpt_path, refusal="--ckpt_path {path!r} is a directory with no {pattern} "
                                                            "file: give a checkpoint file")
    if args.task != "lm" and not classes_given:
        from build import build_network
        saved = head_classes(build_network(Config(vars(args))), args.ckpt_path)
        if saved is not None and saved < args.num_classes:
            raise ValueError(f"--ckpt_path {args.ckpt_path!r} scores {saved} classes, but the test split of "
                             f"{args.data_path} has labels up to {args.num_classes - 1}: evaluate on data of the "
                             f"run's classes")
        args.num_classes = saved or args.num_classes
    check_memory(args)
    return Config(vars(args))


def _read_resume(path, kind):
    """``(file, training state, its settings)`` of ``--resume``, the engine's ``kind`` of training state."""
    from mindspore_accum.run.state import find_resume_file, read_training_state
    path = find_resume_file(path, kind)
    state, _ = read_training_state(path, kind)
    return path, state, state.settings


def resolve_model(args, train):
    """Fills in the model flags' defaults from the registries' entries and refuses combinations that cannot work."""
    classes_given = args.num_classes is not None
    model = registry.model_entry(args.model)
    if args.dataset is None:
        args.dataset = model.datasets[0] if model.datasets else "cifar10"
    data = registry.dataset_entry(args.dataset)
    if model.task != "image":
        _resolve_text(args, model, data)
    else:
        _resolve_image(args, model, data)
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
    args.task = model.task
    return args


def _resolve_image(args, model, data):
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


def _resolve_text(args, model, data):
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
    args.channels = None
    args.seq_len = args.seq_len or model.seq_len


def _set_num_classes(args, classes):
    if args.num_classes is None:
        args.num_classes = classes
    elif args.num_classes < classes:
        raise ValueError(f"--num_classes {args.num_classes} is fewer than the {classes} classes of --dataset "
                         f"{args.dataset} in {args.data_path}: pass --num_classes {classes} or more")


def _resolve_optimizer(args):
    """Refuses ``--momentum`` given with an optimizer that has none, whatever its value; then fills its default.

    The default is filled for every optimizer, so that every run's record holds the same settings.
    """
    if args.momentum is not None and args.optimizer != "momentum":
        raise ValueError(f"--momentum applies to --optimizer momentum, not {args.optimizer}, which has none (given "
                         f"--momentum {args.momentum:g}): drop --momentum")
    if args.momentum is None:
        args.momentum = 0.9


def _resolve_batch(args, ranks):
    """Fills ``--batch_size`` and ``--mini_steps`` by the rule of two; returns the BatchSchedule, or None when the
    run states neither a global batch nor a schedule (fixed windows of ``mini_steps`` micro-batches)."""
    from mindspore_accum.core.batch_size import BatchSchedule, resolve_batch_sizes
    rampup, by_epoch = getattr(args, "batch_rampup", None), getattr(args, "accumulation_schedule", None)
    if rampup is not None and args.global_batch_size is None:
        raise ValueError("--batch_rampup needs --global_batch_size, the batch it ramps up to")
    if by_epoch is not None:
        for flag in ("global_batch_size", "mini_steps", "batch_rampup"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--accumulation_schedule gives every epoch's mini_steps: drop --{flag}")
        args.batch_size = args.batch_size or MICRO_BATCH
        args.mini_steps = by_epoch[1]
        return BatchSchedule.from_mini_steps(by_epoch, args.batch_size, ranks)
    if args.global_batch_size is None:
        args.batch_size, args.mini_steps = args.batch_size or MICRO_BATCH, args.mini_steps or MINI_STEPS
        return None
    if args.bucket:
        raise ValueError("--bucket with --global_batch_size: bucketing groups sequences by length, which would move "
                         "samples between windows; drop --bucket")
    if args.batch_size is None and args.mini_steps is None:
        args.batch_size = MICRO_BATCH
    sizes = resolve_batch_sizes(args.global_batch_size, args.batch_size, args.mini_steps, ranks, names=BATCH_FLAGS)
    args.batch_size, args.mini_steps = sizes.micro_batch_size, sizes.mini_steps
    try:
        return BatchSchedule(sizes.global_batch_size, rampup=rampup)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--batch_rampup {' '.join(map(str, rampup))}: {error}") from None


def fingerprint_of(data_path):
    """:func:`~mindspore_accum.run.settings.data_fingerprint` of ``data_path``; the built-in corpus by its text.

    A path that is no file or directory (a registered dataset that makes its data from the name) has nothing to
    hash: it is compared by its name, and the record says so, so that other data is never accepted silently.
    """
    from mindspore_accum.run.settings import data_fingerprint
    if data_path == "pydoc":
        import hashlib
        return "pydoc:" + hashlib.sha256(repr(sorted(text._pydoc_topics().items())).encode()).hexdigest()[:16]
    return data_fingerprint(data_path) or f"--data_path {data_path!r} (no file or directory: compared by its name)"


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

    from mindspore_accum.core.optimizers import STATES_PER_WEIGHT
    total = psutil.virtual_memory().total
    entry = registry.model_entry(args.model)
    batch = getattr(args, "batch_size", None) or 1
    checks = []
    if args.num_classes and entry.head_width:
        # Beside the weight: the backward's gradient, the window's buffer, the optimizer's states, the EMA.
        copies = 2 + STATES_PER_WEIGHT.get(getattr(args, "optimizer", None), 0) + \
            (getattr(args, "ema_decay", None) is not None)
        per_class = (1 + copies) * (entry.head_width + 1) * _FLOAT
        what = f"the labels of {args.data_path} (up to {args.num_classes - 1})" if args.classes_from_data else \
            f"--num_classes {args.num_classes}"
        fix = "number the classes from 0, at most" if args.classes_from_data else "use a --num_classes of at most"
        checks.append((what, args.num_classes * per_class,
                       f"a head of {args.num_classes} classes x {entry.head_width} inputs, {1 + copies} copies",
                       f"{fix} {total // 2 // per_class:,}"))
    if entry.task != "image" and args.seq_len and entry.attention:
        layers, heads = entry.attention
        per_square = (2 * layers * heads * batch + 1) * _FLOAT
        checks.append((f"--seq_len {args.seq_len}", args.seq_len ** 2 * per_square,
                       f"{layers} layers x {heads} heads of {args.seq_len} x {args.seq_len} attention scores and "
                       f"their softmax for {batch} sequence{'s' if batch > 1 else ''}, and the causal mask",
                       f"use a --seq_len of at most {math.isqrt(total // 2 // per_square):,}"))
    if entry.task == "image" and args.image_size:
        checks.append(_image_check(args, entry, batch, total))
    for what, needs, of, fix in checks:
        if needs > total:
            raise ValueError(f"{what} needs at least {needs / 2 ** 30:,.0f} GiB ({of}, float32), more than the "
                             f"{total / 2 ** 30:.0f} GiB of this machine: {fix}")


def _image_check(args, entry, batch, total):
    """A micro-batch of images, and what the network keeps of each pixel: the flag at fault, and its fix."""
    channels = args.channels or 3
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
