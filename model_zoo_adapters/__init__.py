"""Model-zoo networks and datasets, adapted for ``mindspore_accum``."""

__all__ = ["lenet", "resnet", "conv", "mnist_files", "image_files", "batching"]
