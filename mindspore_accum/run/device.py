"""Choosing the device: ``auto`` means GPU where this MindSpore can use one, else CPU."""

import logging

import mindspore as ms

from ..core.validation import check_choice

__all__ = ["DEVICE_TARGETS", "resolve_device_target"]

logger = logging.getLogger(__name__)

DEVICE_TARGETS = ("auto", "CPU", "GPU", "Ascend")


def _gpu_available():
    # The CPU wheel has no GPU plugin; the GPU wheel without CUDA fails to load
    # it. Either way MindSpore records it at import and this says False.
    try:
        return bool(ms.device_context.gpu.is_available())
    except Exception:  # an older or unusual build: treat as no GPU
        return False


def resolve_device_target(device_target="auto"):
    """Returns the concrete target for ``device_target`` (``"CPU"``, ``"GPU"`` or ``"Ascend"``)."""
    check_choice("device_target", device_target, DEVICE_TARGETS)
    if device_target != "auto":
        return device_target
    resolved = "GPU" if _gpu_available() else "CPU"
    logger.info("device_target auto resolved to %s", resolved)
    return resolved
