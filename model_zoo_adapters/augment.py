"""Training augmentations by name, for the image pipelines: ``--augment hflip,rot90``.

The ResNet fine-tuning recipe trains with horizontal flips and 90-degree
rotations. Each name is a ``mindspore.dataset.vision`` operation on HWC images,
applied to the training split only, after the resize and before normalisation.
"""

import mindspore.dataset.transforms as transforms
import mindspore.dataset.vision as vision

from mindspore_accum.core.validation import check_choice

__all__ = ["AUGMENTATIONS", "augmentations"]

#: name -> the operation: a flip with probability 1/2; a rotation by 0, 90, 180 or 270 degrees, each 1/4.
AUGMENTATIONS = {
    "hflip": lambda: vision.RandomHorizontalFlip(prob=0.5),
    "vflip": lambda: vision.RandomVerticalFlip(prob=0.5),
    "rot90": lambda: transforms.RandomChoice([vision.Rotate(angle) for angle in (0, 90, 180, 270)]),
}


def augmentations(names):
    """The operations for ``names`` (an iterable of :data:`AUGMENTATIONS` keys), in order."""
    return [AUGMENTATIONS[check_choice("augment", name, tuple(AUGMENTATIONS))]() for name in names]
