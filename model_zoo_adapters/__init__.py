"""Model-zoo networks and datasets, adapted for ``mindspore_accum``."""

__all__ = ["lenet", "mnist_files"]
