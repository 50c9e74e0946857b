"""Replacing a network's layers in place: BatchNorm by GroupNorm, a convolution by im2col, dropout by identity.

Two things of MindSpore's make this more than a ``setattr``:

- assigning a cell renames its parameters relative to the parent alone
  (``conv1.weight``, not ``layer1.0.conv1.weight``), so a swap deep in a tree
  would rename weights, break checkpoints, and make two parameters of one name;
- a ``SequentialCell`` or ``CellList`` keeps a list of its own, and its
  children may be named (``features.conv0``) as well as numbered.

:func:`swap_child` handles both, so that every swap keeps every name.
"""

from mindspore import nn

__all__ = ["child_cells", "swap_child"]


def child_cells(network):
    """``(full name, parent, name in parent, cell)`` of every cell in ``network`` (not itself), listed up front."""
    return [(f"{parent_name}.{child_name}" if parent_name else child_name, parent, child_name, cell)
            for parent_name, parent in list(network.cells_and_names())
            for child_name, cell in list(parent.name_cells().items())]


def swap_child(parent, child_name, cell, full_name):
    """Puts ``cell`` where ``parent``'s child ``child_name`` (at ``full_name`` in the network) was.

    A Parameter the old child held keeps its name; a new one is named as
    construction would have named it, ``full_name.<its name in cell>``.
    """
    old = parent.name_cells()[child_name]
    kept = {id(param): param.name for param in old.get_parameters()}
    if isinstance(parent, (nn.SequentialCell, nn.CellList)):
        parent[list(parent.name_cells()).index(child_name)] = cell
    else:
        setattr(parent, child_name, cell)
    for relative, param in cell.parameters_and_names():
        param.name = kept.get(id(param), f"{full_name}.{relative}")
