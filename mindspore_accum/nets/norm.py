"""BatchNorm and gradient accumulation: finding it, and replacing it with GroupNorm.

BatchNorm normalises each micro-batch with that micro-batch's own mean and
variance, and moves its running statistics once per micro-batch. An
accumulated update of a BatchNorm network is therefore *not* one step on the
concatenated batch: it is the mean of ``mini_steps`` steps' gradients, each
taken under different normalisation. GroupNorm normalises every sample on its
own, so accumulation is exact again (the recipe PyTorch users follow).
"""

import collections
import logging
import math
from typing import Optional

from mindspore import nn

from ..core.validation import check_positive_int
from .cell_surgery import child_cells, swap_child

__all__ = ["batchnorm_cells", "convert_bn_to_gn", "default_groups", "warn_if_batchnorm", "MAX_GROUPS"]

logger = logging.getLogger(__name__)

#: MindSpore's BatchNorm Cells (BatchNorm3d holds a BatchNorm2d, so it is found through it).
BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm)


def batchnorm_cells(network):
    """The names of every BatchNorm cell (1d, 2d, 3d, or synchronised) in ``network``, in order."""
    return [name for name, cell in network.cells_and_names() if isinstance(cell, BATCHNORMS)]


def warn_if_batchnorm(network, mini_steps):
    """Logs one warning naming the BatchNorm layers when ``mini_steps > 1``; returns True if it warned."""
    layers = batchnorm_cells(network)
    if mini_steps <= 1 or not layers:
        return False
    logger.warning("the network has %d BatchNorm layers (%s%s): with mini_steps=%d each micro-batch is "
                   "normalised with its own statistics, so an update is not one step on the concatenated "
                   "batch; for exact accumulation use GroupNorm: --norm group, or "
                   "mindspore_accum.convert_bn_to_gn(network) before building the optimizer",
                   len(layers), ", ".join(layers[:3]), ", ..." if len(layers) > 3 else "", mini_steps)
    return True


#: The most groups the default rule gives a layer: GroupNorm's usual 32 (Wu and He, 2018).
MAX_GROUPS = 32


def default_groups(channels):
    """The largest divisor of ``channels`` not above :data:`MAX_GROUPS`: 32 for every ResNet width, 24 for 144."""
    return max(g for g in range(1, min(MAX_GROUPS, channels) + 1) if channels % g == 0)


def convert_bn_to_gn(network: nn.Cell, num_groups: Optional[int] = None, *, name: str = "num_groups") -> nn.Cell:
    """Replaces every ``nn.BatchNorm2d`` in ``network`` with an ``nn.GroupNorm``, in place.

    Each GroupNorm has the BatchNorm's channels and eps, and starts from the
    BatchNorm's ``gamma`` and ``beta``; the running statistics are dropped,
    as GroupNorm has none. Parameter names stay as they were
    (``layer1.0.bn1.gamma``), so the optimizer and checkpoints see the same
    names. Call it before the optimizer is built: the optimizer must hold the
    new parameters.

    Args:
        network: any ``nn.Cell``.
        num_groups: None (the default) gives each layer the largest divisor
            of its channels not above 32 (:func:`default_groups`), so any
            network converts: 32 for every ResNet width, 24 for
            EfficientNet-B0's 144 channels. A number is strict: it must divide
            every converted layer's channels (a layer with fewer channels
            gets one group per channel); ``num_groups=1`` is LayerNorm over
            the channels, as the EfficientNet recipe uses. The groups chosen
            are logged.

    Returns:
        ``network``, for chaining.

    Raises:
        name: what the messages call ``num_groups`` (a front end's argument, e.g. ``gn_groups``).

    Raises:
        ValueError: ``num_groups`` does not divide some layer's channels (the message lists the counts that do);
            nothing is converted then.
    """
    if not isinstance(network, nn.Cell):
        raise TypeError(f"network must be a mindspore.nn.Cell, got {type(network).__name__}")
    if num_groups is not None:
        num_groups = check_positive_int(name, num_groups, example=32)
    found = []  # (parent, child name, full name, BatchNorm2d, groups); all checked before any is changed
    for full, parent, child_name, bn in child_cells(network):
        if not isinstance(bn, nn.BatchNorm2d):
            continue
        groups = default_groups(bn.num_features) if num_groups is None else min(num_groups, bn.num_features)
        if bn.num_features % groups:
            common = math.gcd(*(cell.num_features for _, _, _, cell in child_cells(network)
                                if isinstance(cell, nn.BatchNorm2d)))
            fits = [g for g in range(1, common + 1) if common % g == 0]
            raise ValueError(f"{name} {num_groups} does not divide the {bn.num_features} channels of {full}: pass "
                             f"one that divides every BatchNorm2d's channels, here {', '.join(map(str, fits))}")
        found.append((parent, child_name, full, bn, groups))
    replaced = {}
    for parent, child_name, full, bn, groups in found:
        gn = nn.GroupNorm(groups, bn.num_features, eps=bn.eps,
                          gamma_init=bn.gamma.data.copy(), beta_init=bn.beta.data.copy())
        swap_child(parent, child_name, gn, full)
        replaced[full] = gn
    left = batchnorm_cells(network)
    if left:
        logger.warning("convert_bn_to_gn: %d BatchNorm cells that are not BatchNorm2d were left as they are: %s",
                       len(left), ", ".join(left))
    chosen = collections.Counter(gn.num_groups for gn in replaced.values())
    logger.info("convert_bn_to_gn: replaced %d BatchNorm2d with GroupNorm (%s)", len(replaced),
                ", ".join(f"{count} with {groups} groups" for groups, count in sorted(chosen.items(), reverse=True)))
    return network
