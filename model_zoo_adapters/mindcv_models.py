"""MindSpore's vision model zoo, mindcv, as a source of networks: ``--model mindcv:<name>`` and ``efficientnet_b0``.

mindcv (an optional extra, ``pip install 'mindspore-accum[vision]'``) builds
EfficientNet, ResNet, MobileNet, ViT and more on MindSpore 2.10; this module
only names them, fits them to the data and to accumulation:

- ``in_channels`` from the data (1 for MNIST), ``num_classes`` from the flags;
- ``norm="group"`` converts every BatchNorm2d with
  :func:`~mindspore_accum.convert_bn_to_gn` (``gn_groups`` groups, or the
  largest divisor of each layer's channels not above 32), so that an
  accumulated update is one step on the concatenated batch;
- ``conv_impl`` gives it the CPU fast path (:func:`~model_zoo_adapters.conv.use_im2col`).

Parameter names are mindcv's own, so mindcv's checkpoints load with
``--init_ckpt`` and this project's checkpoints load into ``mindcv.create_model``.
"""

import logging

from mindspore import nn

from mindspore_accum.nets.cell_surgery import child_cells, swap_child
from mindspore_accum.nets.norm import convert_bn_to_gn

from .conv import use_im2col

__all__ = ["MINDCV_PREFIX", "mindcv_name", "create_mindcv_model", "disable_dropout"]

logger = logging.getLogger(__name__)

#: ``--model mindcv:<name>`` trains any mindcv network by its registry name.
MINDCV_PREFIX = "mindcv:"
#: Names the scripts offer directly, and the mindcv network each is.
ALIASES = {"efficientnet_b0": "efficientnet_b0"}


def mindcv_name(model):
    """The mindcv registry name ``model`` stands for, or None if it is none of mindcv's."""
    if model.startswith(MINDCV_PREFIX):
        return model[len(MINDCV_PREFIX):]
    return ALIASES.get(model)


def _mindcv():
    try:
        import mindcv.models
    except ImportError:
        raise ValueError("the mindcv models need mindcv: pip install 'mindspore-accum[vision]' "
                         "(or pip install mindcv)") from None
    return mindcv.models


def create_mindcv_model(name, num_classes, in_channels=3, norm="batch", gn_groups=None, conv_impl="auto"):
    """mindcv's network ``name``, untrained, fitted to the data and, with ``norm="group"``, to exact accumulation."""
    models = _mindcv()
    if not models.is_model(name):
        close = [known for known in models.list_models() if name.split("_")[0] in known][:5]
        raise ValueError(f"--model mindcv:{name}: mindcv has no model {name!r}"
                         + (f"; similar: {', '.join(close)}" if close else "") + ": see mindcv.models.list_models()")
    network = models.create_model(name, num_classes=num_classes, in_channels=in_channels)
    if norm == "group":
        convert_bn_to_gn(network, gn_groups, name="gn_groups")
    use_im2col(network, conv_impl)
    return network


def disable_dropout(network):
    """Replaces dropout and stochastic depth by identities, in place, for numeric comparisons; returns their names."""
    replaced = []
    for full, parent, child_name, cell in child_cells(network):
        if isinstance(cell, nn.Dropout) or type(cell).__name__ == "DropPath":
            swap_child(parent, child_name, nn.Identity(), full)
            replaced.append(full)
    logger.info("%d dropout and stochastic-depth layers replaced by identities", len(replaced))
    return replaced
