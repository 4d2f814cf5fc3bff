"""ember.QuantizedLinear: a linear layer whose weight stays in llama.cpp's quantized
blocks (ember/ir/quant_formats.py) — a GGUF file's own bytes, or what ember's
`quantize_weights` pass made of a float weight.

    ember.QuantizedLinear(x, w, bias?)   y = act(x @ dequantize(w)^T + bias)
        x: [..., K] float32, w: [N, row_bytes] uint8 (`format`'s blocks along K), bias: [N]

Its reference multiplies by the dequantized weight in float32. The CPU kernel
(cpu_quantized_gemm.cpp) quantizes x to int8 in blocks of 32 first, as llama.cpp does, so
its result differs from the reference by that rounding (~0.5% of the output's scale).
"""

from __future__ import annotations

import numpy as np

from ..dtypes import DType
from ..graph import Node
from ..quant_formats import block_format
from ..registry import AttrSpec, Known, OpDef, ParamSpec, get_op, register_op
from ._lowering import NotLowerable, out_type, register_lowering
from ._symbolic import dtype_of, shape_of, tensor
from .ember_nn import ACTIVATIONS


def _format(node: Node):
    return block_format(get_op(node.op).attr(node, "format"))


def _attrs(node: Node):
    return _format(node), get_op(node.op).attr(node, "activation")


def _reference(node: Node):
    fmt, activation = _attrs(node)
    act = ACTIVATIONS[activation]

    def run(x, w, bias=None):
        k = x.shape[-1] if x.ndim else 0
        if w.ndim != 2 or w.dtype != np.uint8 or not fmt.fits(k) or w.shape[1] != fmt.row_bytes(k):
            raise ValueError(f"a {fmt.name} weight for inputs of {k} features is [N, {fmt.row_bytes(k) if fmt.fits(k) else '?'}] "
                             f"uint8 (blocks of {fmt.elements} along a multiple of {fmt.elements} features), not "
                             f"{w.dtype}{list(w.shape)}")
        y = np.matmul(x.astype(np.float32, copy=False), fmt.dequantize(w).T)
        if bias is not None:
            y = y + bias
        return (act(y).astype(x.dtype, copy=False),)

    return run


def _infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    x, w, dtype = shape_of(ins[0]), shape_of(ins[1]), dtype_of(ins[0])
    if dtype is None:
        return [None]
    if x is None or w is None:
        return [tensor(dtype, None)]
    return [tensor(dtype, (*x[:-1], w[0]))]


register_op(OpDef(
    "ember.QuantizedLinear",
    inputs=(ParamSpec("x"), ParamSpec("w"), ParamSpec("bias", optional=True)),
    outputs=(ParamSpec("y"),),
    attrs={"format": AttrSpec("format", "string", required=True),
           "activation": AttrSpec("activation", "string", "")},
    reference=_reference, infer=_infer,
    doc="y = activation(x @ dequantize(w)^T + bias): w [N, row_bytes] uint8, `format`'s blocks along K "
        "(llama.cpp's: q8_0, q4_0, q4_1, q5_0, q5_1 of 32 weights; q4_k, q5_k, q6_k of 256)",
))


def _gather_reference(node: Node):
    fmt = _format(node)

    def run(w, ids):
        rows = fmt.dequantize(np.ascontiguousarray(w[np.asarray(ids).reshape(-1)]))
        return (rows.reshape(*np.shape(ids), -1),)

    return run


def _gather_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    fmt = _format(node)
    w, ids = shape_of(ins[0]), shape_of(ins[1])
    if w is None or ids is None or not isinstance(w[1], int):
        return [tensor(DType.float32, None)]
    return [tensor(DType.float32, (*ids, w[1] // fmt.block_bytes * fmt.elements))]


register_op(OpDef(
    "ember.QuantizedGather",
    inputs=(ParamSpec("w"), ParamSpec("ids")),
    outputs=(ParamSpec("y"),),
    attrs={"format": AttrSpec("format", "string", required=True)},
    reference=_gather_reference, infer=_gather_infer,
    doc="y = dequantize(w)[ids]: the rows of an embedding [V, row_bytes] uint8 kept in `format`'s blocks, "
        "float32 (Gather(dequantize(w), ids, axis=0) without the float table)",
))


@register_lowering("ember.QuantizedGather")
def _lower_gather(ctx, node, ins):
    w, ids = ins
    if w.dtype != DType.uint8 or len(w.shape) != 2 or ids.dtype != DType.int64:
        raise NotLowerable("not a [V, bytes] uint8 table with int64 ids")
    fmt = _format(node)
    return ctx.extern("quantized_gather", [w, ids], [out_type(node)], format=fmt.name)


@register_lowering("ember.QuantizedLinear")
def _lower(ctx, node, ins):
    x, w = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    fmt, activation = _attrs(node)
    k = x.shape[-1] if x.shape else None
    if x.dtype != DType.float32 or w.dtype != DType.uint8 or len(w.shape) != 2:
        raise NotLowerable("not a float32 x with a [N, bytes] uint8 weight")
    if not isinstance(k, int) or not fmt.fits(k) or w.shape[1] != fmt.row_bytes(k):
        raise NotLowerable(f"K (x's last axis) not a static multiple of {fmt.elements} matching the weight's blocks")
    if bias is not None and bias.dtype != DType.float32:
        raise NotLowerable("a bias that is not float32")
    return ctx.extern("quantized_linear", [x, w, bias], [out_type(node)], format=fmt.name, activation=activation,
                      k=k)
