"""Running sums and products along an axis: CumSum, CumProd. Schemas, type functions and
references are ONNX's; the lowering is an extern that walks the axis one slice at a time
in the input's dtype, so every partial result is the reference's."""

from __future__ import annotations

from ..dtypes import DType
from ._lowering import FLOATS, NotLowerable, attrs, out_type, register_lowering
from .onnx_standard import standard_op

for _op in ("CumSum", "CumProd"):
    standard_op(_op)

_SCANNED = FLOATS | {DType.int32, DType.int64}


def _lower_cumulative(how: str, identity: int):
    def lower(ctx, node, ins):
        x, axis = ins
        if x.dtype not in _SCANNED or axis is None:
            raise NotLowerable(f"a {x.dtype.name} scan")
        a = attrs(node)
        return ctx.extern("cumulative", [x, axis], [out_type(node)], where=node.describe(), how=how,
                          identity=identity, exclusive=bool(a["exclusive"]), reverse=bool(a["reverse"]))
    return lower


register_lowering("CumSum")(_lower_cumulative("sum", 0))
register_lowering("CumProd")(_lower_cumulative("prod", 1))
