"""channels_last: 2-d convolutions read and write channels-last activations.

    Conv(x, W, b) | ember.Conv(x, W, b, r)              x: [N, C, H, W] float32
        -> Transpose(ember.Conv(Transpose(x, NHWC), W, b, Transpose(r, NHWC),
                                channels_last=1), NCHW)

CPU convolution kernels (oneDNN's) work on [N, H, W, C]; handed [N, C, H, W] they
reorder the input and the output on every call. After this pass the transposes between
two convolutions are inverse pairs: eliminate_common_subexpressions merges the copies
of one transpose and canonicalize cancels the pairs, so a ResNet converts its layout
once at the input and once before the pooling head (onnxruntime's NHWC transformer does
the same). A MaxPool reading channels-last activations becomes ember.MaxPool on them.

    MaxPool(Transpose(y, NCHW)) -> Transpose(ember.MaxPool(y, channels_last=1), NCHW)
    AveragePool(Transpose(y, NCHW)) over the whole image | GlobalAveragePool(Transpose(y, NCHW))
        -> Transpose(ReduceMean(y, axes=[1, 2], keepdims=1), NCHW)"""

from __future__ import annotations

import numpy as np

from .fuse_conv import CONV_ATTRS
from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass

TO_LAST, TO_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]


def _check(m: Match) -> str | None:
    x = m["x"].type
    if x is None or x.shape is None or len(x.shape) != 4 or x.dtype.name != "float32":
        return "not a float32 2-d convolution"
    return None


def _rewrite(source: str, num_inputs: int) -> Rewrite:
    def pattern(op, x, w, b, r, activation, auto_pad, dilations, group, kernel_shape, pads, strides):
        attrs = dict(zip(CONV_ATTRS, (auto_pad, dilations, group, kernel_shape, pads, strides)))
        if source == "ember.Conv":
            attrs.update(activation=activation, channels_last=0)
        return op(source, *[x, w, b, r][:num_inputs], **attrs)

    def replacement(op, x, w, b, r, activation, auto_pad, dilations, group, kernel_shape, pads, strides):
        attrs = dict(zip(CONV_ATTRS, (auto_pad, dilations, group, kernel_shape, pads, strides)))
        inputs = [op.Transpose(x, perm=TO_LAST), w, b if num_inputs > 2 else None,
                  op.Transpose(r, perm=TO_LAST) if r is not None else None]
        while inputs[-1] is None:
            inputs.pop()
        y = op("ember.Conv", *inputs, **attrs, activation=activation or "", channels_last=1)
        return op.Transpose(y, perm=TO_FIRST)

    return Rewrite(f"{source.lower()}{num_inputs}_channels_last", pattern, replacement, _check)


POOL_ATTRS = ("auto_pad", "ceil_mode", "dilations", "kernel_shape", "pads", "storage_order", "strides")


def _max_pool_pattern(op, y, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides):
    return op.MaxPool(op.Transpose(y, perm=TO_FIRST), auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                      kernel_shape=kernel_shape, pads=pads, storage_order=0, strides=strides)


def _max_pool_replacement(op, y, auto_pad, ceil_mode, dilations, kernel_shape, pads, strides):
    pooled = op("ember.MaxPool", y, auto_pad=auto_pad, ceil_mode=ceil_mode, dilations=dilations,
                kernel_shape=kernel_shape, pads=pads, strides=strides, channels_last=1)
    return op.Transpose(pooled, perm=TO_FIRST)


# a max pool of channels-last activations pools them where they are (ResNet's stem)
MAX_POOL = Rewrite("max_pool_channels_last", _max_pool_pattern, _max_pool_replacement)


# an average pool over the whole image of channels-last activations is a mean over their
# spatial axes (ResNet's head): one reduction, no layout change of the activations
def _whole_image_pool_pattern(op, y, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, count_include_pad):
    return op.AveragePool(op.Transpose(y, perm=TO_FIRST), kernel_shape=kernel_shape, strides=strides, pads=pads,
                          dilations=dilations, auto_pad=auto_pad, ceil_mode=ceil_mode,
                          count_include_pad=count_include_pad)


def _whole_image_check(m: Match) -> str | None:
    y = m["y"].type
    if y is None or y.shape is None or len(y.shape) != 4 or y.dtype.name != "float32":
        return "not a float32 2-d pool"
    spatial = list(y.shape[1:3])
    if not all(isinstance(d, int) for d in spatial) or list(m["kernel_shape"]) != spatial:
        return "the window is not the whole (static) image"
    if any(m["pads"] or []) or any(d != 1 for d in (m["dilations"] or [])) or m["auto_pad"] not in ("", "NOTSET", "VALID"):
        return "padded or dilated"
    return None


def _spatial_mean(op, y):
    """The mean of [N, H, W, C] activations over H and W, as [N, C, 1, 1]."""
    return op.Transpose(op.ReduceMean(y, op.constant(np.array([1, 2], np.int64)), keepdims=1), perm=TO_FIRST)


def _whole_image_replacement(op, y, kernel_shape, strides, pads, dilations, auto_pad, ceil_mode, count_include_pad):
    return _spatial_mean(op, y)


WHOLE_IMAGE_POOL = Rewrite("whole_image_average_pool_channels_last", _whole_image_pool_pattern,
                           _whole_image_replacement, _whole_image_check)


def _global_pool_pattern(op, y):
    return op.GlobalAveragePool(op.Transpose(y, perm=TO_FIRST))


def _global_pool_check(m: Match) -> str | None:
    y = m["y"].type
    return None if y is not None and y.shape is not None and len(y.shape) == 4 else "not a 2-d pool"


GLOBAL_POOL = Rewrite("global_average_pool_channels_last", _global_pool_pattern, _spatial_mean, _global_pool_check)

REWRITES = [_rewrite("Conv", 2), _rewrite("Conv", 3),
            _rewrite("ember.Conv", 2), _rewrite("ember.Conv", 3), _rewrite("ember.Conv", 4), MAX_POOL,
            WHOLE_IMAGE_POOL, GLOBAL_POOL]


@register_pass
class ChannelsLast(RewritePass):
    name = "channels_last"
    rewrites = REWRITES
