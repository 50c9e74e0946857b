"""ResNet-18/34/50/101, shaped like MindSpore's model-zoo ResNet, with BatchNorm or GroupNorm.

The stem is a 7x7 stride-2 convolution and a 3x3 stride-2 max pool; then four
stages of residual blocks (basic blocks for 18 and 34, bottlenecks with an
expansion of 4 for 50 and 101) with the zoo's depths, a global mean pool and
one dense layer. As in the zoo, each block's last norm starts with gamma = 0
(``zero_init_residual``), so every block starts as the identity.

``norm="group"`` puts ``nn.GroupNorm`` where the zoo has ``nn.BatchNorm2d``.
GroupNorm normalises each sample on its own, so gradient accumulation is
exactly one step on the concatenated batch; BatchNorm normalises each
micro-batch with that micro-batch's statistics, and is not (see docs/design.md).
Nothing is downloaded: the weights start from MindSpore's initialisers.
"""

import os

import mindspore.dataset as ds
import mindspore.dataset.vision as vision
from mindspore import nn, ops

from mindspore_accum.core.validation import check_choice, check_positive_int

from .augment import augmentations
from .batching import batch_checked
from .conv import make_conv2d
from .image_files import check_cifar10_dir, image_folder_classes, image_folder_split

__all__ = ["ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "RESNETS", "NORMS", "GROUPS",
           "create_dataset", "DATASETS", "CIFAR10_MEAN", "CIFAR10_STD", "IMAGENET_MEAN", "IMAGENET_STD"]

#: The image datasets ``create_dataset`` reads.
DATASETS = ("cifar10", "imagefolder")
# The model zoo's normalisation constants, on the 0-1 scale.
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

NORMS = ("batch", "group")
#: GroupNorm's groups: 32, as in Wu & He (2018); every ResNet width is a multiple of it.
GROUPS = 32


def _norm(channels, norm, last=False):
    # The zoo's BatchNorm settings (eps 1e-4, momentum 0.9); a block's last norm starts at 0.
    # GroupNorm keeps the eps, so that convert_bn_to_gn of norm="batch" builds this very network.
    gamma = "zeros" if last else "ones"
    if norm == "group":
        return nn.GroupNorm(min(GROUPS, channels), channels, eps=1e-4, gamma_init=gamma)
    return nn.BatchNorm2d(channels, eps=1e-4, momentum=0.9, gamma_init=gamma)


class _Conv(nn.Cell):
    """Convolution without bias, then the norm: the zoo's ``_conv*`` + ``_bn`` pairs."""

    def __init__(self, in_channels, out_channels, kernel_size, stride, norm, conv_impl, last=False):
        super().__init__()
        pad = (kernel_size - 1) // 2
        self.conv = make_conv2d(in_channels, out_channels, kernel_size, conv_impl, stride=stride,
                                pad_mode="pad" if pad else "valid", padding=pad, has_bias=False)
        self.norm = _norm(out_channels, norm, last)

    def construct(self, x):
        return self.norm(self.conv(x))


class _ResidualBlock(nn.Cell):
    """What both blocks share: ``relu(branch(x) + shortcut(x))``.

    The shortcut is the identity, or a 1x1 projection where the shape changes.
    """

    def _add_shortcut(self, in_channels, out_channels, stride, norm, conv_impl):
        # Called after the branch's convolutions, so that parameters keep the zoo's order.
        self.down_sample = None
        if stride != 1 or in_channels != out_channels:
            self.down_sample = _Conv(in_channels, out_channels, 1, stride, norm, conv_impl)
        self.relu = nn.ReLU()

    def construct(self, x):
        identity = x if self.down_sample is None else self.down_sample(x)
        return self.relu(self.branch(x) + identity)


class BasicBlock(_ResidualBlock):
    """Two 3x3 convolutions: the zoo's ``ResidualBlockBase`` (ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels, out_channels, stride, norm, conv_impl, zero_init_residual):
        super().__init__()
        self.conv1 = _Conv(in_channels, out_channels, 3, stride, norm, conv_impl)
        self.conv2 = _Conv(out_channels, out_channels, 3, 1, norm, conv_impl, last=zero_init_residual)
        self._add_shortcut(in_channels, out_channels, stride, norm, conv_impl)

    def branch(self, x):
        return self.conv2(self.relu(self.conv1(x)))


class Bottleneck(_ResidualBlock):
    """1x1, 3x3 (with the stride), 1x1 at 4x the width: the zoo's ``ResidualBlock`` (ResNet-50/101)."""

    expansion = 4

    def __init__(self, in_channels, out_channels, stride, norm, conv_impl, zero_init_residual):
        super().__init__()
        width = out_channels // self.expansion
        self.conv1 = _Conv(in_channels, width, 1, 1, norm, conv_impl)
        self.conv2 = _Conv(width, width, 3, stride, norm, conv_impl)
        self.conv3 = _Conv(width, out_channels, 1, 1, norm, conv_impl, last=zero_init_residual)
        self._add_shortcut(in_channels, out_channels, stride, norm, conv_impl)

    def branch(self, x):
        return self.conv3(self.relu(self.conv2(self.relu(self.conv1(x)))))


class ResNet(nn.Cell):
    """A ResNet on NCHW images of any size of at least 32x32 (3 channels, or ``in_channels``).

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        depths: blocks in each of the four stages.
        num_classes: outputs of the last dense layer.
        norm: ``"batch"`` (``nn.BatchNorm2d``, as in the zoo) or ``"group"``
            (``nn.GroupNorm`` with :data:`GROUPS` groups).
        conv_impl: see :func:`~model_zoo_adapters.conv.make_conv2d`.
        zero_init_residual: start each block's last norm at gamma = 0 (the zoo does).
        in_channels: the images' channels: 3, or 1 for MNIST.
    """

    def __init__(self, block, depths, num_classes=10, norm="batch", conv_impl="auto", zero_init_residual=True,
                 in_channels=3):
        super().__init__()
        check_positive_int("num_classes", num_classes, example=10)
        check_choice("norm", norm, NORMS)
        self.norm_kind = norm
        self.stem = _Conv(check_positive_int("in_channels", in_channels), 64, 7, 2, norm, conv_impl)
        self.relu = nn.ReLU()
        self.max_pool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="same")
        widths = (64, 128, 256, 512)
        stages, in_channels = [], 64
        for index, (depth, width) in enumerate(zip(depths, widths)):
            out_channels = width * block.expansion
            blocks = []
            for position in range(depth):
                stride = 2 if index > 0 and position == 0 else 1
                blocks.append(block(in_channels, out_channels, stride, norm, conv_impl, zero_init_residual))
                in_channels = out_channels
            stages.append(nn.SequentialCell(blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.flatten = nn.Flatten()
        self.end_point = nn.Dense(in_channels, num_classes)

    def construct(self, x):
        x = self.max_pool(self.relu(self.stem(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = ops.mean(x, (2, 3), keep_dims=True)
        return self.end_point(self.flatten(x))


def resnet18(num_classes=10, norm="batch", conv_impl="auto", zero_init_residual=True, in_channels=3):
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, norm, conv_impl, zero_init_residual, in_channels)


def resnet34(num_classes=10, norm="batch", conv_impl="auto", zero_init_residual=True, in_channels=3):
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes, norm, conv_impl, zero_init_residual, in_channels)


def resnet50(num_classes=10, norm="batch", conv_impl="auto", zero_init_residual=True, in_channels=3):
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, norm, conv_impl, zero_init_residual, in_channels)


def resnet101(num_classes=10, norm="batch", conv_impl="auto", zero_init_residual=True, in_channels=3):
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes, norm, conv_impl, zero_init_residual, in_channels)


def resnet152(num_classes=10, norm="batch", conv_impl="auto", zero_init_residual=True, in_channels=3):
    return ResNet(Bottleneck, (3, 8, 36, 3), num_classes, norm, conv_impl, zero_init_residual, in_channels)


#: The constructors by name, as the scripts' ``--model`` takes them (model_zoo_adapters.registry registers each).
RESNETS = {"resnet18": resnet18, "resnet34": resnet34, "resnet50": resnet50, "resnet101": resnet101,
           "resnet152": resnet152}


def create_dataset(data_path, batch_size=32, train=True, image_size=224, dataset="cifar10", num_samples=None,
                   shuffle=None, drop_remainder=True, num_parallel_workers=1, num_shards=None, shard_id=None,
                   num_classes=10, augment=()):
    """CIFAR-10 or an image folder as normalised CHW float32 images of ``image_size`` and int32 labels, in batches.

    The pipelines are the model zoo's ResNet ones:

    * ``"cifar10"``: the binary version, read with ``Cifar10Dataset`` from
      ``data_path`` (``data_batch_*.bin`` for training, ``test_batch.bin``
      for evaluation). Training: random 32x32 crop with 4 pixels of padding
      and a horizontal flip; then always resize to ``image_size``, rescale to
      0-1, normalise with the CIFAR-10 mean and std, HWC to CHW.
    * ``"imagefolder"``: ``<data_path>/<class>/<image>`` read with
      ``ImageFolderDataset`` (``<data_path>/train`` or ``<data_path>/val``
      where those exist). Training: random resized crop (scale 0.08-1) and a
      horizontal flip; evaluation: resize to ``image_size / 0.875`` and a
      centre crop. Then rescale, normalise with the ImageNet mean and std,
      HWC to CHW. Labels are the class folders' sorted order.

    Args:
        data_path: the dataset's directory.
        batch_size: samples per (micro-)batch.
        train: the training split and augmentation if True.
        image_size: the side of the square images the network sees.
        dataset: ``"cifar10"`` or ``"imagefolder"``.
        num_samples: read only this many samples (a subset), or all if None.
        shuffle: shuffle the samples; defaults to ``train``.
        drop_remainder: drop a last batch smaller than ``batch_size``.
        num_parallel_workers: workers of the map operations.
        num_shards, shard_id: read only shard ``shard_id`` of ``num_shards``.
        num_classes: CIFAR-10's label bytes must be below it (an image
            folder's labels are its class folders, in range by construction).
        augment: more training augmentations by name (see
            :data:`~model_zoo_adapters.augment.AUGMENTATIONS`), after the resize.
    """
    data_path = os.fspath(data_path)
    batch_size = check_positive_int("batch_size", batch_size, example=32)
    image_size = check_positive_int("image_size", image_size, example=224)
    check_choice("dataset", dataset, DATASETS)
    if num_samples is not None:
        num_samples = check_positive_int("num_samples", num_samples)
    shuffle = train if shuffle is None else shuffle
    shards = {"num_shards": num_shards, "shard_id": shard_id}
    if dataset == "cifar10":
        usage = "train" if train else "test"
        directory = check_cifar10_dir(data_path, usage, num_classes)
        data = ds.Cifar10Dataset(directory, usage=usage, num_samples=num_samples, shuffle=shuffle, **shards)
        crop = [vision.RandomCrop((32, 32), (4, 4, 4, 4)), vision.RandomHorizontalFlip(prob=0.5)] if train else []
        image_ops = crop + [vision.Resize((image_size, image_size)), *augmentations(augment if train else ()),
                            vision.Rescale(1.0 / 255.0, 0.0),
                               vision.Normalize(CIFAR10_MEAN, CIFAR10_STD), vision.HWC2CHW()]
        description = f"the CIFAR-10 {usage} split in {data_path}"
    else:
        directory = image_folder_split(data_path, train)
        image_folder_classes(directory)
        data = ds.ImageFolderDataset(directory, num_samples=num_samples, shuffle=shuffle, decode=True, **shards)
        if train:
            crop = [vision.RandomResizedCrop(image_size, scale=(0.08, 1.0), ratio=(0.75, 1.333)),
                    vision.RandomHorizontalFlip(prob=0.5)]
        else:
            crop = [vision.Resize(int(image_size / 0.875)), vision.CenterCrop(image_size)]
        image_ops = crop + [*augmentations(augment if train else ()), vision.Rescale(1.0 / 255.0, 0.0),
                            vision.Normalize(IMAGENET_MEAN, IMAGENET_STD),
                            vision.HWC2CHW()]
        description = f"the image folder {directory}"
    data = data.map(operations=image_ops, input_columns="image", num_parallel_workers=num_parallel_workers)
    return batch_checked(data, batch_size, drop_remainder, description, num_shards, shard_id)
