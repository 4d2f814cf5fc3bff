"""ember's own neural-network ops (namespace `ember.`): the fused forms that passes
produce and kernels implement. Each is defined here once: schema, type function and
reference implementation (the numpy meaning every kernel is tested against).

    ember.Linear(x, w, bias?)  y = x @ w + bias     x: [..., K], w: [K, N], bias: [N]
"""

from __future__ import annotations

import numpy as np

from ..graph import Node
from ..registry import Known, OpDef, ParamSpec, register_op
from ._symbolic import dtype_of, shape_of, tensor


def _linear_reference(node: Node):
    def run(x, w, bias=None):
        y = np.matmul(x, w)
        if bias is not None:
            y = y + bias
        return (y.astype(x.dtype, copy=False),)

    return run


def _linear_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    x, w, dtype = shape_of(ins[0]), shape_of(ins[1]), dtype_of(ins[0])
    if dtype is None:
        return [None]
    if x is None or w is None:
        return [tensor(dtype, None)]
    return [tensor(dtype, (*x[:-1], w[-1]))]


register_op(OpDef(
    "ember.Linear",
    inputs=(ParamSpec("x"), ParamSpec("w"), ParamSpec("bias", optional=True)),
    outputs=(ParamSpec("y"),),
    reference=_linear_reference, infer=_linear_infer,
    doc="y = x @ w + bias over the last axis of x (w: [K, N], bias: [N])",
))
