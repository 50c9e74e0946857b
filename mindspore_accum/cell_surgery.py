"""Replacing a network's layers in place: BatchNorm by GroupNorm, a convolution by im2col, dropout by identity.

A cell held by a ``SequentialCell`` must be replaced through its index (the
SequentialCell keeps a list of its own); any other through its attribute.
"""

from mindspore import nn

__all__ = ["child_cells", "swap_child"]


def child_cells(network):
    """``(full name, parent, name in parent, cell)`` of every cell in ``network`` (not itself), listed up front."""
    return [(f"{parent_name}.{child_name}" if parent_name else child_name, parent, child_name, cell)
            for parent_name, parent in list(network.cells_and_names())
            for child_name, cell in list(parent.name_cells().items())]


def swap_child(parent, child_name, cell):
    """Puts ``cell`` where ``parent``'s child ``child_name`` was."""
    if isinstance(parent, nn.SequentialCell):
        parent[int(child_name)] = cell
    else:
        setattr(parent, child_name, cell)
