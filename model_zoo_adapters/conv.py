"""A CPU fast path for narrow convolutions: im2col (``ops.unfold``) and one matmul.

MindSpore 2.10's CPU ``Conv2D`` kernel is slow, above all its gradient with
respect to the input; unfolding the input into columns and multiplying by the
weight matrix is much faster for every kernel larger than 1x1. The choice is
made per layer (:func:`make_conv2d`); the measurements are in
docs/performance.md.

:class:`Im2ColConv2d` subclasses ``nn.Conv2d``: the same constructor, the same
parameters (``weight`` of shape ``(out, in, kh, kw)``, optional ``bias``), the
same initialisation. Checkpoints move freely between the two.
"""

import logging

import mindspore as ms
from mindspore import nn, ops

from mindspore_accum.core.validation import check_choice
from mindspore_accum.nets.cell_surgery import child_cells, swap_child

__all__ = ["CONV_IMPLS", "Im2ColConv2d", "make_conv2d", "im2col_is_faster", "use_im2col"]

logger = logging.getLogger(__name__)

CONV_IMPLS = ("auto", "native", "im2col")


def _same_pads(size, kernel, stride, dilation):
    """TensorFlow's (and MindSpore's) 'same': output ceil(size / stride), the odd pixel at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class Im2ColConv2d(nn.Conv2d):
    """``nn.Conv2d`` computed as ``unfold`` then ``matmul``; a drop-in replacement.

    Supports stride, dilation, bias and every ``pad_mode`` (``valid``, ``same``,
    and ``pad`` with one or four pads); not grouped convolutions or NHWC.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.group != 1:
            raise ValueError(f"Im2ColConv2d supports group=1 only, got group={self.group}: use nn.Conv2d")
        if self.data_format != "NCHW":
            raise ValueError(f"Im2ColConv2d supports data_format='NCHW' only, got {self.data_format!r}")
        padding = self.padding if isinstance(self.padding, tuple) else (self.padding,) * 4
        self.explicit_pads = tuple(padding) if self.pad_mode == "pad" else (0, 0, 0, 0)  # top, bottom, left, right
        self.flat_weight_shape = (self.out_channels, -1)

    def construct(self, x):
        n, _, height, width = x.shape
        kernel_h, kernel_w = self.kernel_size
        stride_h, stride_w = self.stride
        dilation_h, dilation_w = self.dilation
        top, bottom, left, right = self.explicit_pads
        if self.pad_mode == "same":
            top, bottom = _same_pads(height, kernel_h, stride_h, dilation_h)
            left, right = _same_pads(width, kernel_w, stride_w, dilation_w)
        out_h = (height + top + bottom - dilation_h * (kernel_h - 1) - 1) // stride_h + 1
        out_w = (width + left + right - dilation_w * (kernel_w - 1) - 1) // stride_w + 1
        # Not ops.pad: in MindSpore 2.10 on the CPU its backward spins forever on
        # the tenth call. Symmetric pads go to unfold itself, others to ops.Pad.
        unfold_pads = 0
        if top == bottom and left == right:
            unfold_pads = (top, left)
        else:
            x = ops.Pad(((0, 0), (0, 0), (top, bottom), (left, right)))(x)
        columns = ops.unfold(x, self.kernel_size, self.dilation, unfold_pads, self.stride)  # (N, C*kh*kw, L)
        output = ops.matmul(self.weight.reshape(self.flat_weight_shape), columns)  # (N, out, L)
        output = output.reshape((n, self.out_channels, out_h, out_w))
        if self.has_bias:
            output = self.bias_add(output, self.bias)
        return output


def im2col_is_faster(in_channels, out_channels, kernel_size):
    """The measured rule for ``conv_impl="auto"`` on the CPU: im2col for every kernel larger than 1x1.

    Measured with MindSpore 2.10 on the CPU by ``benchmarks/cpu_conv.py``
    (figures in docs/performance.md): im2col was faster for every kernel larger
    than 1x1 whatever the channel counts, and the native kernel for 1x1
    kernels, where im2col only copies the input. The channel counts are part of
    the signature so that a later measurement can refine the rule.
    """
    del in_channels, out_channels  # no threshold on them was needed on the shapes measured
    kernel_h, kernel_w = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    return kernel_h * kernel_w > 1


def make_conv2d(in_channels, out_channels, kernel_size, conv_impl="auto", **kwargs):
    """An ``nn.Conv2d`` or an :class:`Im2ColConv2d`, by ``conv_impl``.

    ``"auto"`` picks im2col only when the current device target is CPU and
    :func:`im2col_is_faster` says so for this layer's shape; on GPU and
    Ascend it always means native. Set the device before building the network.
    """
    check_choice("conv_impl", conv_impl, CONV_IMPLS)
    if conv_impl == "auto":
        on_cpu = ms.get_context("device_target") == "CPU"
        conv_impl = "im2col" if on_cpu and im2col_is_faster(in_channels, out_channels, kernel_size) else "native"
    cls = Im2ColConv2d if conv_impl == "im2col" else nn.Conv2d
    return cls(in_channels, out_channels, kernel_size, **kwargs)


def use_im2col(network, conv_impl="auto"):
    """Gives a network this project did not build the CPU fast path: its ``nn.Conv2d`` layers become im2col.

    As :func:`~mindspore_accum.convert_bn_to_gn` does for norms, in place:
    every plain ``nn.Conv2d`` that ``conv_impl`` picks (``"auto"``: on the CPU,
    kernels above 1x1; ``"im2col"``: all; ``"native"``: none) is replaced by an
    :class:`Im2ColConv2d` holding the **same** weight and bias Parameters, so
    names, checkpoints and an optimizer built before or after see the same
    tensors. Grouped and depthwise convolutions (``group > 1``) and NHWC
    layers stay native. Returns the names replaced.
    """
    check_choice("conv_impl", conv_impl, CONV_IMPLS)
    if conv_impl == "native" or (conv_impl == "auto" and ms.get_context("device_target") != "CPU"):
        return []
    replaced = []
    for full, parent, child_name, conv in child_cells(network):
        if type(conv) is not nn.Conv2d or conv.group != 1 or conv.data_format != "NCHW":
            continue
        if conv_impl == "auto" and not im2col_is_faster(conv.in_channels, conv.out_channels, conv.kernel_size):
            continue
        fast = Im2ColConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                            pad_mode=conv.pad_mode, padding=conv.padding, dilation=conv.dilation,
                            has_bias=conv.has_bias)
        fast.weight = conv.weight  # the same Parameter: its name and value stay
        if conv.has_bias:
            fast.bias = conv.bias
        swap_child(parent, child_name, fast, full)
        replaced.append(full)
    return replaced
