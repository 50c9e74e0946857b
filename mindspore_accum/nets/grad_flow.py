"""The gradient-flow plot: the mean absolute gradient of each layer's weight."""

import os
from typing import Dict, Sequence, Tuple

import numpy as np

from ..run.files import replacing

__all__ = ["plot_grad_flow", "grad_flow_heights"]


def grad_flow_heights(named_grads):
    """``[(name, mean |g|)]`` for each weight, bias terms left out as in the usual recipe."""
    items = named_grads.items() if isinstance(named_grads, dict) else named_grads
    return [(name, float(np.mean(np.abs(np.asarray(grad, dtype=np.float64)))))
            for name, grad in items if "bias" not in name.split(".")[-1]]


def plot_grad_flow(named_grads: Sequence[Tuple[str, np.ndarray]], path: str,
                   title: str = "gradient flow") -> Dict[str, float]:
    """Draws one bar per layer, the mean absolute value of its gradient, into the PNG at ``path``.

    Args:
        named_grads: a dict or an iterable of ``(parameter name, gradient array)``.
        path: the PNG file to write.

    Returns:
        ``{name: bar height}`` as drawn (read back from the bars).
    """
    import matplotlib
    matplotlib.use("Agg")  # files only: no display needed, and training never imports this
    import matplotlib.pyplot as plt

    heights = grad_flow_heights(named_grads)
    if not heights:
        raise ValueError("named_grads has no weights (only bias terms, or empty): nothing to plot")
    figure, axes = plt.subplots(figsize=(max(6, 0.6 * len(heights)), 4))
    try:
        bars = axes.bar(range(len(heights)), [h for _, h in heights], color="tab:blue")
        axes.set_xticks(range(len(heights)), [n for n, _ in heights], rotation=60, ha="right")
        axes.set_ylabel("mean |gradient|")
        axes.set_title(title)
        axes.grid(axis="y", alpha=0.3)
        figure.tight_layout()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with replacing(path) as tmp_path:
            figure.savefig(tmp_path, dpi=100)
        return {name: bar.get_height() for (name, _), bar in zip(heights, bars)}
    finally:
        plt.close(figure)
