"""Registries of networks and datasets, as timm's and mindcv's ``register_model``/``create_model``.

Each entry says what a front end needs to know of it - the task, the inputs it takes, its defaults - so
that adding a network or a dataset is one entry here and its line in docs/cli.md::

    @register_model("lenet", task="image", datasets=("mnist",), channels=1, image_size=32)
    def _lenet(num_classes, conv_impl="auto", **_):
        return lenet.LeNet5(num_class=num_classes, conv_impl=conv_impl)

    network = create_model("resnet18", num_classes=10, norm="group")
    dataset = create_dataset("mnist", "data/mnist", batch_size=32)

``mindcv:<name>`` resolves any of mindcv's networks (an optional extra) without an entry.
The scripts (``scripts/build.py``) build from these entries alone.
"""

import dataclasses
import functools
import inspect
from typing import Callable, Optional, Tuple

from . import lenet, resnet, text, transformer
from .image_files import image_folder_classes, image_folder_split
from .mindcv_models import MINDCV_PREFIX, create_mindcv_model, mindcv_name

__all__ = ["TASKS", "Task", "ModelEntry", "DatasetEntry", "MODELS", "DATASETS", "register_model", "register_dataset",
           "model_entry", "dataset_entry", "create_model", "create_dataset", "model_names"]


@dataclasses.dataclass(frozen=True)
class Task:
    """What a kind of network learns: its loss and what a window is weighted by when no one says."""

    name: str
    words: str  # what its data is, for messages: "images", "text"
    loss: Callable  # (label_smoothing=0.0) -> the loss Cell; None where the loss has no smoothing
    weighting: str


def _cross_entropy(label_smoothing=0.0):
    # nn.CrossEntropyLoss computes through log-softmax: a true class's logit 88 or more below the top one costs
    # its finite loss. On the CPU, nn.SoftmaxCrossEntropyWithLogits returns inf there, with a finite gradient,
    # and the run would stop as diverged with finite weights (mindcv's BatchNorm EfficientNet did).
    from mindspore import nn
    return nn.CrossEntropyLoss(reduction="mean", label_smoothing=label_smoothing)


def _token_cross_entropy():
    return transformer.TokenCrossEntropy(text.IGNORE_INDEX)


#: image classification, next-byte language modelling (a per-token loss: weighted by items), text classification.
TASKS = {"image": Task("image", "images", _cross_entropy, "samples"),
         "lm": Task("lm", "text", _token_cross_entropy, "items"),
         "classify": Task("classify", "labelled text", _cross_entropy, "samples")}


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A network: ``build(num_classes=, channels=, image_size=, norm=, gn_groups=, conv_impl=, seq_len=)``.

    ``datasets``: its default dataset first (None: CIFAR-10); any dataset of its task and channels is taken.
    ``channels``/``image_size``: fixed inputs (LeNet5's 1 and 32), or None to follow the dataset.
    ``norm``: whether ``--norm`` applies; ``gn_groups``: whether ``--gn_groups`` does too.
    ``seq_len``: a text network's default sequence length.

    What the network allocates, for the scripts' memory check (None: not known, and not guessed):
    ``head_width``, the inputs of its classifier head, which has ``num_classes`` outputs;
    ``activations_per_pixel``, float32 values per input pixel and sample that it keeps for its backward, at
    least; ``attention``, ``(layers, heads)`` of ``seq_len x seq_len`` scores it builds for every sequence (a
    network that pads each micro-batch to its own longest sequence builds none of ``seq_len``'s size).
    """

    name: str
    build: Callable
    task: str = "image"
    datasets: Optional[Tuple[str, ...]] = None
    channels: Optional[int] = None
    image_size: Optional[int] = None
    norm: bool = False
    gn_groups: bool = False
    seq_len: Optional[int] = None
    about: str = ""
    head_width: Optional[int] = None
    activations_per_pixel: Optional[int] = None
    attention: Optional[Tuple[int, int]] = None


@dataclasses.dataclass(frozen=True)
class DatasetEntry:
    """A dataset: ``build(data_path, batch_size, train=, ...)``, and what its samples are.

    ``classes(data_path, train)`` counts its classes (None: no classes, a language model's bytes).
    ``default_path``: where it is when ``--data_path`` is not given (None: it must be).
    ``pad_values``: ``{column index: value}`` for the columns whose samples differ in length (token ids), which a
    micro-batch is padded with (:class:`~mindspore_accum.data.windowed_data.WindowedDataset`); None: none differ.
    """

    name: str
    build: Callable
    task: str = "image"
    channels: Optional[int] = None
    image_size: Optional[int] = None
    classes: Optional[Callable] = None
    default_path: Optional[str] = None
    pad_values: Optional[dict] = None


MODELS = {}
DATASETS = {}


def register_model(name, **fields):
    """A decorator: registers the function as the builder of network ``name`` (see :class:`ModelEntry`)."""
    return _registrar(MODELS, ModelEntry, "model", name, fields)


def register_dataset(name, **fields):
    """A decorator: registers the function as the builder of dataset ``name`` (see :class:`DatasetEntry`)."""
    return _registrar(DATASETS, DatasetEntry, "dataset", name, fields)


def _registrar(table, entry, kind, name, fields):
    _check_new_name(table, kind, name)
    task = fields.get("task", "image")
    if task not in TASKS:
        raise ValueError(f"task {task!r} is none of {', '.join(TASKS)}: a {kind}'s task says its loss and data")

    def register(build):
        if not callable(build):
            raise TypeError(f"register_{kind}({name!r}) decorates the function that builds the {kind}, got "
                            f"{type(build).__name__}")
        _check_new_name(table, kind, name)
        table[name] = entry(name, build, **fields)
        return build
    return register


def _check_new_name(table, kind, name):
    if not isinstance(name, str) or not name or name.startswith(MINDCV_PREFIX):
        raise ValueError(f"a {kind}'s name must be a non-empty string not starting with {MINDCV_PREFIX!r}, got "
                         f"{name!r}: e.g. register_{kind}('my_{kind}')")
    if name in table:
        raise ValueError(f"{kind} {name!r} is registered already")


def model_names():
    """The registered names, in registration order (``mindcv:<name>`` besides)."""
    return tuple(MODELS)


def model_entry(name):
    """The entry of ``name``, or of mindcv's network for ``mindcv:<name>``.

    Raises:
        ValueError: no such network.
    """
    if not isinstance(name, str):
        raise TypeError(f"the model's name must be a string such as 'lenet', got {name!r}")
    if name in MODELS:
        return MODELS[name]
    if name.startswith(MINDCV_PREFIX) and len(name) > len(MINDCV_PREFIX):
        return ModelEntry(name, _mindcv_builder(mindcv_name(name)), norm=True, gn_groups=True, about="mindcv")
    raise ValueError(f"--model {name} is not a model: use one of {', '.join(MODELS)} or mindcv:<name>")


def dataset_entry(name):
    """The entry of dataset ``name``. Raises ValueError if there is none."""
    if name not in DATASETS:
        raise ValueError(f"--dataset {name} is not a dataset: use one of {', '.join(DATASETS)}")
    return DATASETS[name]


def create_model(name, num_classes=10, *, channels=None, image_size=None, norm=None, gn_groups=None,
                 conv_impl="auto", seq_len=None):
    """Network ``name``, untrained: as timm's ``create_model``. Defaults are the entry's.

    A size the entry's network cannot take (another ``image_size`` or ``channels`` than its fixed inputs, a
    ``seq_len`` or ``num_classes`` below 1; None for a language model's classes) is refused, naming the argument.
    """
    entry = model_entry(name)
    for argument, value in (("num_classes", num_classes), ("seq_len", seq_len)):  # None: none (a language model's)
        if value is not None:
            _check_count(argument, value)
    for argument, value, fixed in (("image_size", image_size, entry.image_size), ("channels", channels,
                                                                                     entry.channels)):
        if value is not None and fixed is not None and value != fixed:
            raise ValueError(f"{argument}={value} does not fit {name!r}, which takes {fixed} only: drop {argument}")
    return entry.build(num_classes=num_classes, channels=channels or entry.channels or 3,
                       image_size=image_size or entry.image_size, norm=norm or ("batch" if entry.norm else None),
                       gn_groups=gn_groups, conv_impl=conv_impl, seq_len=seq_len or entry.seq_len)


def _check_count(argument, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{argument} must be a whole number >= 1, got {value!r}")


def create_dataset(name, data_path=None, batch_size=32, train=True, **kwargs):
    """Dataset ``name`` from ``data_path`` (default: the entry's), in micro-batches of ``batch_size``.

    ``kwargs`` go to the dataset's own ``create_*`` function; those it does not take (``seq_len`` for images,
    ``augment`` for text) are left out, so that a front end can pass one set for every dataset. Which of them
    apply is the front end's check (``scripts/resolve.py`` refuses ``--bucket`` on images, for instance).
    """
    entry = dataset_entry(name)
    data_path = data_path or entry.default_path
    if data_path is None:
        raise ValueError(f"--dataset {name} needs --data_path: the directory of its files")
    taken = inspect.signature(entry.build).parameters
    return entry.build(data_path, batch_size, train=train, **{k: v for k, v in kwargs.items() if k in taken})


def _mindcv_builder(name):
    def build(num_classes, channels, norm, gn_groups, conv_impl, **_):
        return create_mindcv_model(name, num_classes, channels, norm, gn_groups, conv_impl)
    return build


# The networks.

@register_model("lenet", datasets=("mnist",), channels=1, image_size=32, about="LeNet5", head_width=84)
def _lenet(num_classes, conv_impl="auto", **_):
    return lenet.LeNet5(num_class=num_classes, conv_impl=conv_impl)


def _resnet(depth):
    def build(num_classes, channels=3, norm="batch", conv_impl="auto", **_):
        return resnet.RESNETS[depth](num_classes=num_classes, norm=norm, conv_impl=conv_impl, in_channels=channels)
    return build


#: A ResNet's stem keeps its convolution's, norm's and ReLU's outputs, 64 channels at stride 2: 3 x 64 / 4 values
#: per input pixel, before any later layer's.
_RESNET_STEM_ACTIVATIONS = 48

for _depth in resnet.RESNETS:
    register_model(_depth, datasets=("cifar10",), norm=True, about="ResNet",  # basic blocks to 34, bottlenecks after
                   head_width=512 if _depth in ("resnet18", "resnet34") else 2048,
                   activations_per_pixel=_RESNET_STEM_ACTIVATIONS)(_resnet(_depth))

register_model("efficientnet_b0", datasets=("cifar10",), norm=True, gn_groups=True,
               about="mindcv")(_mindcv_builder("efficientnet_b0"))


def _text_model(name):
    def build(num_classes, seq_len, **_):
        return transformer.create_text_model(name, max_len=seq_len, num_classes=num_classes)
    return build


for _name, (_task, _sizes) in transformer.TEXT_MODELS.items():
    # The causal LM attends over every sequence at its full length; the classifier pads each micro-batch to its
    # own longest text.
    register_model(_name, task=_task, datasets=("text",) if _task == "lm" else ("text_classification",),
                   seq_len=64 if _task == "lm" else 128, about="transformer", head_width=_sizes["d_model"],
                   attention=(_sizes["layers"], _sizes["heads"]) if _task == "lm" else None)(_text_model(_name))


# The datasets.

@register_dataset("mnist", channels=1, image_size=32, classes=lambda path, train: 10, default_path="data/mnist")
def _mnist(data_path, batch_size, train=True, num_samples=None, shuffle=None, drop_remainder=True,
           num_shards=None, shard_id=None, num_classes=10, image_size=32, augment=(), mean_std=None):
    return lenet.create_dataset(data_path, batch_size, train=train, num_samples=num_samples, shuffle=shuffle,
                                drop_remainder=drop_remainder, num_shards=num_shards, shard_id=shard_id,
                                num_classes=num_classes, image_size=image_size, augment=augment, mean_std=mean_std)


#: Fashion-MNIST (Xiao et al., 2017): MNIST's files and sizes, ten kinds of clothing; its own pixel statistics.
register_dataset("fashion_mnist", channels=1, image_size=32, classes=lambda path, train: 10)(
    functools.partial(_mnist, mean_std=(0.2860, 0.3530)))


def _images(kind):
    def build(data_path, batch_size, train=True, num_samples=None, shuffle=None, drop_remainder=True,
              num_shards=None, shard_id=None, num_classes=10, image_size=224, augment=()):
        return resnet.create_dataset(data_path, batch_size, train=train, image_size=image_size, dataset=kind,
                                     num_samples=num_samples, shuffle=shuffle, drop_remainder=drop_remainder,
                                     num_shards=num_shards, shard_id=shard_id, num_classes=num_classes,
                                     augment=augment)
    return build


register_dataset("cifar10", channels=3, image_size=224, classes=lambda path, train: 10)(_images("cifar10"))
register_dataset("imagefolder", channels=3, image_size=224,
                 classes=lambda path, train: len(image_folder_classes(image_folder_split(path, train))))(
    _images("imagefolder"))

# Text keeps its last, shorter micro-batch (no drop_remainder): no sample is lost, and the engines weight it by
# its true size.
register_dataset("text", task="lm", default_path="pydoc", pad_values={0: text.PAD_ID, 1: text.IGNORE_INDEX})(
    text.create_lm_dataset)
register_dataset("text_classification", task="classify", default_path="pydoc", pad_values={0: text.PAD_ID},
                 classes=lambda path, train: text.read_labelled(path, train)[2])(text.create_classification_dataset)
