"""Matrix products. Schemas and references are ONNX's; the type functions here follow
numpy's matmul rules with symbolic batch dims."""

from __future__ import annotations

import numpy as np

from ..graph import Node
from ._lowering import (FLOATS, KERNEL_FLOATS, NotLowerable, attrs, out_type, register_lowering, small_matmul,
                        small_matmul_path)
from ._symbolic import broadcast, dtype_of, shape_of, tensor
from .onnx_standard import standard_op


def _matmul(node: Node, ins):
    a, b, dtype = shape_of(ins[0]), shape_of(ins[1]), dtype_of(ins[0])
    if a is None or b is None or dtype is None:
        return [tensor(dtype, None)] if dtype else [None]
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    batch = broadcast(a2[:-2], b2[:-2])
    out = [*batch, a2[-2], b2[-1]]
    if len(a) == 1:
        out.pop(-2)
    if len(b) == 1:
        out.pop(-1)
    return [tensor(dtype, out)]


def _gemm(node: Node, ins):
    a, b, dtype = shape_of(ins[0]), shape_of(ins[1]), dtype_of(ins[0])
    if a is None or b is None or dtype is None:
        return [tensor(dtype, None)] if dtype else [None]
    m = a[1] if node.attrs.get("transA", 0) else a[0]
    n = b[0] if node.attrs.get("transB", 0) else b[1]
    return [tensor(dtype, (m, n))]


standard_op("MatMul", infer=_matmul)
standard_op("Gemm", infer=_gemm)
standard_op("Einsum")


# -- Kernel IR lowerings ----------------------------------------------------------------
def _lower_matmul(ctx, node, ins):
    a, b = ins
    # 16-bit floats: torch accumulates in float32 and rounds once, as numpy's matmul does
    if a.dtype not in KERNEL_FLOATS or b.dtype != a.dtype or len(a.shape) < 1 or len(b.shape) < 1:
        raise NotLowerable("not float")
    return ctx.extern("matmul", [a, b], [out_type(node)])


def _lower_gemm(ctx, node, ins):
    if ins[0].dtype not in ctx.extern_floats:
        raise NotLowerable("not float (of a dtype the target's gemm takes)")
    a = attrs(node)
    c = ins[2] if len(ins) > 2 else None
    b = node.inputs[1]
    w_nk = None
    if b.is_constant and not a["transA"] and a["alpha"] == 1 and (c is None or a["beta"] == 1):
        w = np.asarray(b.const)
        w_nk = w if a["transB"] else w.T
        small = small_matmul(ctx, ins[0], w_nk, c, "", out_type(node)[1])
        if small is not None:
            return [small]
    outs = ctx.extern("gemm", [ins[0], ins[1], c], [out_type(node)], alpha=float(a["alpha"]), beta=float(a["beta"]),
                      trans_a=bool(a["transA"]), trans_b=bool(a["transB"]))
    if w_nk is not None:
        small_matmul_path(ctx, outs[0], ins[0], w_nk, c, "")
    return outs


register_lowering("MatMul")(_lower_matmul)
register_lowering("Gemm")(_lower_gemm)


@register_lowering("Einsum")
def _lower_einsum(ctx, node, ins):
    if not ins or any(r is None or r.dtype not in KERNEL_FLOATS or r.dtype != ins[0].dtype for r in ins):
        raise NotLowerable("not float")
    return ctx.extern("einsum", list(ins), [out_type(node)], equation=attrs(node)["equation"])


standard_op("Det")


@register_lowering("Det")
def _lower_det(ctx, node, ins):
    """LU factorization in torch (LAPACK's getrf, as numpy's det)."""
    (x,) = ins
    if x.dtype not in FLOATS or len(x.shape) < 2:
        raise NotLowerable("not float matrices")
    return ctx.extern("det", [x], [out_type(node)])
