"""Model-zoo networks and datasets, adapted for ``mindspore_accum``, behind one registry.

    from model_zoo_adapters import create_model, create_dataset
    network = create_model("resnet18", num_classes=10, norm="group")
"""

from .registry import create_dataset, create_model, register_dataset, register_model

__all__ = [
    # The registry: one entry per network and per dataset.
    "create_model", "create_dataset", "register_model", "register_dataset", "registry",
    # The modules behind it.
    "lenet", "resnet", "transformer", "text", "mindcv_models", "conv", "mnist_files", "image_files", "augment",
    "batching", "labels", "decoded",
]
