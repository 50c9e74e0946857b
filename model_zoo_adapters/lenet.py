"""LeNet5 and its MNIST dataset, shaped like MindSpore's model-zoo LeNet."""

import mindspore.dataset as ds
import mindspore.dataset.vision as vision
from mindspore import nn
from mindspore.common.initializer import Normal

from mindspore_accum.core.validation import check_positive_int

from . import decoded
from .augment import augmentations
from .batching import batch_checked
from .conv import make_conv2d
from .decoded import DECODED_BUDGET, decoded_bytes
from .mnist_files import prepare_mnist_split

__all__ = ["LeNet5", "create_dataset", "MNIST_MEAN", "MNIST_STD"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


class LeNet5(nn.Cell):
    """LeNet-5 for 32x32 inputs, as in MindSpore's model zoo.

    Args:
        num_class: number of classes.
        num_channel: number of input channels.
        conv_impl: ``"auto"`` (im2col where it is faster on the CPU, else
            native), ``"native"`` (``nn.Conv2d``) or ``"im2col"``; see
            :func:`~model_zoo_adapters.conv.make_conv2d`. The parameters are the
            same either way, so checkpoints move between them.
    """

    def __init__(self, num_class=10, num_channel=1, conv_impl="auto"):
        super().__init__()
        check_positive_int("num_class", num_class)
        check_positive_int("num_channel", num_channel)
        self.conv1 = make_conv2d(num_channel, 6, 5, conv_impl, pad_mode="valid")
        self.conv2 = make_conv2d(6, 16, 5, conv_impl, pad_mode="valid")
        self.fc1 = nn.Dense(16 * 5 * 5, 120, weight_init=Normal(0.02))
        self.fc2 = nn.Dense(120, 84, weight_init=Normal(0.02))
        self.fc3 = nn.Dense(84, num_class, weight_init=Normal(0.02))
        self.relu = nn.ReLU()
        self.max_pool2d = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()

    def construct(self, x):
        x = self.max_pool2d(self.relu(self.conv1(x)))
        x = self.max_pool2d(self.relu(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


def create_dataset(data_path, batch_size=32, train=True, num_samples=None, shuffle=None,
                   drop_remainder=True, num_parallel_workers=1, num_shards=None, shard_id=None, num_classes=10,
                   image_size=32, augment=(), mean_std=None, decode_once=None):
    """MNIST as 32x32 (or ``image_size``), normalised, CHW float32 images and int32 labels, in batches.

    Args:
        data_path: a directory with the MNIST files (see
            :func:`~model_zoo_adapters.mnist_files.prepare_mnist_split` for the
            layouts accepted).
        batch_size: samples per (micro-)batch.
        train: the training split if True, else the test split.
        num_samples: read only this many samples (a subset), or all if None.
        shuffle: shuffle the samples; defaults to ``train``. Seeded by
            ``mindspore.dataset.config.set_seed``.
        drop_remainder: drop a last batch smaller than ``batch_size``.
        num_parallel_workers: workers of the map operations.
        num_shards, shard_id: read only shard ``shard_id`` of ``num_shards``
            equal shards (data parallel training: one shard per rank).
        num_classes: labels must be below it (checked in the label file).
        image_size: the side the images are resized to (LeNet5 takes 32).
        augment: training augmentations by name (see
            :data:`~model_zoo_adapters.augment.AUGMENTATIONS`), after the resize.
        mean_std: the pixels' mean and standard deviation on the 0-1 scale, to normalise by; default MNIST's
            (another dataset in MNIST's files, Fashion-MNIST, has its own).
        decode_once: decode the split's images once and look each batch's up
            (:mod:`~model_zoo_adapters.decoded`: the same micro-batches in the same order), instead of every
            epoch. Default: for a whole training split without augmentation whose decoded images fit
            :data:`~model_zoo_adapters.decoded.DECODED_BUDGET`.
    """
    mean, std = mean_std or (MNIST_MEAN, MNIST_STD)
    batch_size = check_positive_int("batch_size", batch_size, example=32)
    if num_samples is not None:
        num_samples = check_positive_int("num_samples", num_samples)
    split = "train" if train else "test"
    directory = prepare_mnist_split(data_path, split, num_classes)
    mnist = ds.MnistDataset(directory, usage=split, num_samples=num_samples,
                            shuffle=train if shuffle is None else shuffle, num_shards=num_shards, shard_id=shard_id)
    image_ops = [
        vision.Resize((image_size, image_size), interpolation=vision.Inter.LINEAR),
        *augmentations(augment),
        vision.Rescale(1.0 / 255.0, 0.0),
        vision.Rescale(1.0 / std, -mean / std),
        vision.HWC2CHW(),
    ]
    description = f"the MNIST {split} split in {data_path}"
    if decode_once is None:
        decode_once = train and not augment and num_samples is None and \
            decoded_bytes(mnist.get_dataset_size() * (num_shards or 1), 1, image_size) <= DECODED_BUDGET
    if decode_once:
        if augment:
            raise ValueError(f"decode_once with augment={list(augment)}: random operations are no function of the "
                             f"image alone; decode as it goes (decode_once=False)")
        raw = batch_checked(mnist, batch_size, drop_remainder, description, num_shards, shard_id)
        return decoded.decode_once(raw, ds.MnistDataset(directory, usage=split, shuffle=False), image_ops)
    mnist = mnist.map(operations=image_ops, input_columns="image", num_parallel_workers=num_parallel_workers)
    return batch_checked(mnist, batch_size, drop_remainder, description, num_shards, shard_id)
