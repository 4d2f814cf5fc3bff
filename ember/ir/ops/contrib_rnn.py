"""onnxruntime's com.microsoft.DynamicQuantizeLSTM: an LSTM whose W and R are 8-bit
(onnxruntime's ContribOperators.md), as onnxruntime's dynamic quantizer writes it.

    DynamicQuantizeLSTM(X, W, R, B?, sequence_lens?, initial_h?, initial_c?, P?,
                        W_scale, W_zero_point, R_scale, R_zero_point) -> Y?, Y_h?, Y_c?

W is [dirs, input_size, 4 * hidden] and R [dirs, hidden, 4 * hidden], int8 or uint8 (the
transposes of LSTM's), with a scale and zero point per direction ([dirs]) or per column
([dirs, 4 * hidden]). Its meaning here: the weights dequantized, (W - zero) * scale, then
the LSTM (gates i o f c, as LSTM's). onnxruntime also quantizes X and each step's h on
the fly for an integer GEMM, so its results differ from this by that rounding (~1e-2).
The lowering is LSTM's extern (`recurrent`) behind `quantized_lstm`, whose prepare
dequantizes constant weights once.
"""

from __future__ import annotations

import numpy as np

from ..graph import Node
from ..registry import AttrSpec, Known, OpDef, ParamSpec, register_op
from ._lowering import FLOATS, NotLowerable, attrs, register_lowering
from ._recurrence import recurrence
from ._symbolic import dtype_of, shape_of, tensor
from .rnn import check_kernel_supported

OP = "com.microsoft.DynamicQuantizeLSTM"
_INPUTS = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P",
           "W_scale", "W_zero_point", "R_scale", "R_zero_point"]
_OPTIONAL = {"B", "sequence_lens", "initial_h", "initial_c", "P"}


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """[dirs, K, 4H] 8-bit weights -> LSTM's float [dirs, 4H, K]; scale and zero point per
    direction or per column."""
    dirs = q.shape[0]
    scale = np.asarray(scale, np.float32).reshape(dirs, 1, -1)
    zero = np.asarray(zero).astype(np.int32).reshape(dirs, 1, -1)
    return np.ascontiguousarray(((q.astype(np.int32) - zero).astype(np.float32) * scale).transpose(0, 2, 1))


def _reference(node: Node):
    a = dict(node.attrs)
    where = node.describe()

    def run(*ins):
        x, w, r, b, lens, h0, c0, p, w_scale, w_zero, r_scale, r_zero = (list(ins) + [None] * 12)[:12]
        y, y_h, y_c = recurrence("LSTM", a, where, x, dequantize(w, w_scale, w_zero), dequantize(r, r_scale, r_zero),
                                 b, lens, h0, c0, p)
        return y, y_h, y_c

    return run


def _infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    x = shape_of(ins[0]) if ins else None
    dtype = dtype_of(ins[0]) if ins else None
    hidden = node.attrs.get("hidden_size")
    if x is None or dtype is None or hidden is None or len(x) != 3:
        return [None] * len(node.outputs)
    dirs = 2 if node.attrs.get("direction") == "bidirectional" else 1
    seq, batch = x[0], x[1]
    state = tensor(dtype, (dirs, batch, hidden))
    return [tensor(dtype, (seq, dirs, batch, hidden)), state, state][:len(node.outputs)]


register_op(OpDef(
    name=OP,
    inputs=tuple(ParamSpec(n, optional=n in _OPTIONAL) for n in _INPUTS),
    outputs=(ParamSpec("Y", optional=True), ParamSpec("Y_h", optional=True), ParamSpec("Y_c", optional=True)),
    attrs={"activation_alpha": AttrSpec("activation_alpha", "floats"),
           "activation_beta": AttrSpec("activation_beta", "floats"),
           "activations": AttrSpec("activations", "strings"),
           "clip": AttrSpec("clip", "float"),
           "direction": AttrSpec("direction", "string", "forward"),
           "hidden_size": AttrSpec("hidden_size", "int"),
           "input_forget": AttrSpec("input_forget", "int", 0)},
    reference=_reference, infer=_infer,
    doc="LSTM with 8-bit weights (onnxruntime contrib)",
))


@register_lowering(OP)
def _lower(ctx, node, ins):
    a = attrs(node)
    ins = (list(ins) + [None] * 12)[:12]
    x, w = ins[0], ins[1]
    if x.dtype not in FLOATS or any(r is not None and r.dtype != x.dtype for i, r in enumerate(ins[:8]) if i in (3, 5, 6, 7)):
        raise NotLowerable("not float32 or float64 throughout (torch's RNN kernels)")
    check_kernel_supported("LSTM", a)
    hidden = a["hidden_size"]
    if not isinstance(hidden, int):
        raise NotLowerable("no hidden_size")
    dirs = 2 if a["direction"] == "bidirectional" else 1
    seq, batch = x.shape[0], x.shape[1]
    state = (x.dtype, (dirs, batch, hidden))
    refs = ctx.extern("quantized_lstm", ins, [(x.dtype, (seq, dirs, batch, hidden)), state, state],
                      op="LSTM", direction=a["direction"], layout=0, hidden_size=hidden, linear_before_reset=0,
                      has_bias=ins[3] is not None, has_peephole=ins[7] is not None, where=node.describe())
    return [ref if value is not None else None for ref, value in zip(refs, node.outputs)]
