"""fuse_conv: a convolution takes what follows it.

    BatchNormalization(Conv(x, W, b), s, beta, mean, var)   (all constant, inference mode)
        -> Conv(x, W * k, (b - mean) * k + beta)    k = s / sqrt(var + eps), per output channel
    Add | Sum(Conv(x, W, b), r)        r of the conv output's shape
        -> ember.Conv(x, W, b, r)
    Relu | HardSwish(Conv(x, W, b)) | Relu | HardSwish(ember.Conv(x, W, b, r))
        -> ember.Conv(x, W, b[, r], activation="relu" | "hardswish")

A ResNet block becomes one kernel call per convolution: the batch norm is in the
weights, the residual add and the ReLU are in its epilogue (as is PP-LCNet's HardSwish)."""

from __future__ import annotations

import numpy as np

from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass

CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")


def _conv(op, name: str, inputs: list, attrs: tuple, **extra):
    return op(name, *inputs, **dict(zip(CONV_ATTRS, attrs)), **extra)


# -- batch norm folding --------------------------------------------------------------
def _fold_bn_rewrite(biased: bool) -> Rewrite:
    def pattern(op, x, w, b, scale, beta, mean, var, eps, auto_pad, dilations, group, kernel_shape, pads, strides):
        y = _conv(op, "Conv", [x, w, *([b] if biased else [])],
                  (auto_pad, dilations, group, kernel_shape, pads, strides))
        return op.BatchNormalization(y, scale, beta, mean, var, epsilon=eps, training_mode=0)

    def check(m: Match) -> str | None:
        w = m.constant("w")
        if w is None or w.dtype.kind != "f" or w.ndim < 3:
            return "the filter is not a float constant"
        for name in ("scale", "beta", "mean", "var", *(["b"] if biased else [])):
            data = m.constant(name)
            if data is None or data.shape != (w.shape[0],):
                return f"{name} is not a constant vector of {w.shape[0]} channels"
        return None

    def replacement(op, x, w, b, scale, beta, mean, var, eps, auto_pad, dilations, group, kernel_shape, pads, strides):
        filt = w.const
        k = scale.const.astype(np.float64) / np.sqrt(var.const.astype(np.float64) + eps)
        bias = b.const.astype(np.float64) if biased else 0.0
        new_w = (filt.astype(np.float64) * k.reshape(-1, *[1] * (filt.ndim - 1))).astype(filt.dtype)
        new_b = ((bias - mean.const) * k + beta.const).astype(filt.dtype)
        return _conv(op, "Conv", [x, op.constant(new_w), op.constant(new_b)],
                     (auto_pad, dilations, group, kernel_shape, pads, strides))

    return Rewrite(f"fold_batchnorm{'_bias' if biased else ''}", pattern, replacement, check)


# -- residual add and activation -----------------------------------------------------
def _same_shape(m: Match) -> str | None:
    r, y = m["r"].type, m["y"].type
    if r is None or y is None or r.shape is None or r.shape != y.shape or r.dtype != y.dtype:
        return "the residual does not have the convolution output's shape and dtype"
    return None


def _residual_rewrite(add: str, biased: bool) -> Rewrite:
    def pattern(op, x, w, b, r, auto_pad, dilations, group, kernel_shape, pads, strides):
        y = _conv(op, "Conv", [x, w, *([b] if biased else [])],
                  (auto_pad, dilations, group, kernel_shape, pads, strides), _as="y")
        return op(add, y, r)

    def replacement(op, x, w, b, r, auto_pad, dilations, group, kernel_shape, pads, strides):
        return _conv(op, "ember.Conv", [x, w, b, r], (auto_pad, dilations, group, kernel_shape, pads, strides))

    return Rewrite(f"conv{'_bias' if biased else ''}_{add.lower()}", pattern, replacement, _same_shape, commute=True)


ACTIVATIONS = {"Relu": "relu", "HardSwish": "hardswish"}  # an op after a convolution -> ember.Conv's activation


def _activation_rewrite(source: str, num_inputs: int, op_type: str) -> Rewrite:
    """op_type(source(x, w[, b[, r]])), with `num_inputs` inputs on the convolution."""
    names = ["x", "w", "b", "r"][:num_inputs]

    def pattern(op, x, w, b, r, auto_pad, dilations, group, kernel_shape, pads, strides):
        inputs = [x, w, b, r][:num_inputs]
        extra = {"activation": ""} if source == "ember.Conv" else {}
        return op(op_type, _conv(op, source, inputs, (auto_pad, dilations, group, kernel_shape, pads, strides),
                                 **extra))

    def replacement(op, x, w, b, r, auto_pad, dilations, group, kernel_shape, pads, strides):
        inputs = [x, w, b, r][:num_inputs]
        if num_inputs == 2:
            inputs.append(None)
        return _conv(op, "ember.Conv", inputs, (auto_pad, dilations, group, kernel_shape, pads, strides),
                     activation=ACTIVATIONS[op_type])

    return Rewrite(f"{source.lower()}_{'_'.join(names[2:]) or 'nobias'}_{ACTIVATIONS[op_type]}", pattern, replacement)


REWRITES = [
    *(_fold_bn_rewrite(biased) for biased in (True, False)),
    *(_residual_rewrite(add, biased) for add in ("Add", "Sum") for biased in (True, False)),
    *(_activation_rewrite(source, n, op_type) for op_type in ACTIVATIONS
      for source, n in (("Conv", 2), ("Conv", 3), ("ember.Conv", 2), ("ember.Conv", 3), ("ember.Conv", 4))),
]


@register_pass
class FuseConv(RewritePass):
    name = "fuse_conv"
    rewrites = REWRITES
