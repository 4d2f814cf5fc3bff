"""onnxruntime's com.microsoft.DynamicQuantizeLSTM: an LSTM whose W and R are 8-bit
(onnxruntime's ContribOperators.md), as onnxruntime's dynamic quantizer writes it.

    DynamicQuantizeLSTM(X, W, R, B?, sequence_lens?, initial_h?, initial_c?, P?,
                        W_scale, W_zero_point, R_scale, R_zero_point) -> Y?, Y_h?, Y_c?

W is [dirs, input_size, 4 * hidden] and R [dirs, hidden, 4 * hidden], int8 or uint8 (the
transposes of LSTM's), with a scale and zero point per direction ([dirs]) or per column
([dirs, 4 * hidden]); gates i o f c, as LSTM's. Its meaning is what onnxruntime computes
(contrib_ops/cpu/quantization/dynamic_quantize_lstm.cc over the DeepCPU LSTM), to the bit
where onnxruntime runs on x86-64 with FMA3 and a u8s8 GEMM that sums exactly (AVX-512 VNNI
or AVX-VNNI; on plain AVX2 it saturates pairs of products at int16, elsewhere its logistic
and tanh are other polynomials):

- Every product with W or R is an integer GEMM: the other operand is quantized to uint8
  on the fly, its scale (max - min) / 255 over its range widened to hold 0, its zero point
  and values rounded half to even; the int32 sums, times that scale times the weights'
  (float32), are the product.
- X is quantized once, over the steps that run (the longest sequence's), for both
  directions; each step quantizes the batch's h, in groups of rows where onnxruntime splits
  the batch over its threads (`rows_per_group` in ember/ir/quantized_lstm.py; ember
  assumes as many threads as its own intra-op threads, which default as onnxruntime's do
  to the machine's cores). With Y asked for, a step's h is the previous step's outputs (0
  past a sequence's end), else the held states (onnxruntime reads memory it never wrote
  for a sequence of length 0 then).
- The gates add X.W, then h.R, then the peepholes, then Wb + Rb (summed first); the
  logistic and tanh are MLAS's float32 polynomials (_mlas_math.py). An ulp off there moves
  a value across a rounding edge of the next step's quantization, and the outputs by ~1e-2.
- onnxruntime takes a per-column zero point only when all are equal; ember takes any.

The lowering is the extern `quantized_lstm` (ember/runtime/quantized_lstm.py): X.W in
torch, the steps in C++ (ember/codegen/cpu_quantized_lstm.cpp).
"""

from __future__ import annotations

import numpy as np

from ...errors import ExecutionError
from ..dtypes import DType
from ..graph import Node
from ..quantized_lstm import check_shapes, rows_per_group, threads
from ..registry import AttrSpec, Known, OpDef, ParamSpec, register_op
from ._lowering import NotLowerable, attrs, register_lowering
from ._mlas_math import logistic, tanh
from ._recurrence import activation_functions
from ._symbolic import dtype_of, shape_of, tensor
from .rnn import check_kernel_supported

OP = "com.microsoft.DynamicQuantizeLSTM"
_INPUTS = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P",
           "W_scale", "W_zero_point", "R_scale", "R_zero_point"]
_OPTIONAL = {"B", "sequence_lens", "initial_h", "initial_c", "P"}


def quantize_activations(a: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """onnxruntime's dynamic 8-bit quantization of a matrix (GetQuantizationParameter, then
    MLAS's QuantizeLinear): its range widened to hold 0 spans uint8's 0..255, the zero point
    and every value rounded half to even. Returns q - zero point (exact small integers, as
    float64 for an exact GEMM) and the scale (float32)."""
    lo = np.float32(min(a.min(initial=0), 0))
    hi = np.float32(max(a.max(initial=0), 0))
    scale = np.float32(1) if hi == lo else (hi - lo) / np.float32(255)
    zero = np.round(np.clip(np.float32(0) - lo / scale, 0, 255))
    return np.clip(np.round(a / scale), -zero, 255 - zero).astype(np.float64), scale


def integer_weights(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[dirs, K, 4H] 8-bit weights -> (q - zero point as float64, [dirs, 1, 4H] float32
    scales); scale and zero point per direction or per column."""
    dirs = q.shape[0]
    zero = np.asarray(zero).astype(np.int64).reshape(dirs, 1, -1)
    scale = np.broadcast_to(np.asarray(scale, np.float32).reshape(dirs, 1, -1), (dirs, 1, q.shape[-1]))
    return (q.astype(np.int64) - zero).astype(np.float64), scale


def integer_gemm(a: np.ndarray, w: np.ndarray, w_scale: np.ndarray) -> np.ndarray:
    """a @ w as onnxruntime's quantized GEMM computes it: a quantized, the product summed
    in integers (exact in float64), then scaled by a's scale times w's (float32)."""
    qa, a_scale = quantize_activations(a)
    return (qa @ w).astype(np.float32) * (a_scale * w_scale)


def quantized_lstm(attrs: dict, where: str, has_y: bool, threads: int, x, w, r, b, seq_lens, h0, c0, p,
                   w_scale, w_zero, r_scale, r_zero):
    """(Y, Y_h, Y_c) as onnxruntime's DeepCPU LSTM computes them with 8-bit weights (see
    the module's docstring)."""
    if not attrs.get("hidden_size"):
        raise ExecutionError(f"{where}: DynamicQuantizeLSTM needs hidden_size")
    check_shapes(where, attrs.get("direction") or "forward", attrs["hidden_size"], x, w, r, b, h0, c0, p, w_scale,
                 w_zero, r_scale, r_zero)
    seq, batch = x.shape[:2]
    directions, hidden = w.shape[0], r.shape[1]
    lens = np.full(batch, seq, np.int64) if seq_lens is None else np.asarray(seq_lens, np.int64).reshape(-1)
    if lens.shape != (batch,) or (lens < 0).any() or (lens > seq).any():
        raise ExecutionError(f"{where}: sequence_lens {lens.tolist()} for a batch of {batch} sequences "
                             f"of at most {seq} steps")
    acts = activation_functions("LSTM", attrs, directions, where, {"sigmoid": logistic, "tanh": tanh})
    clip = attrs.get("clip")
    limit = (lambda v: np.clip(v, -clip, clip)) if clip is not None else (lambda v: v)
    dtype = x.dtype
    w_int, w_scales = integer_weights(w, w_scale, w_zero)
    r_int, r_scales = integer_weights(r, r_scale, r_zero)
    steps = int(lens.max(initial=0))  # onnxruntime runs (and quantizes X over) the longest sequence's steps
    rows = np.arange(batch)
    group = rows_per_group(batch, hidden, threads)
    y = np.zeros((seq, directions, batch, hidden), dtype)
    y_h = np.zeros((directions, batch, hidden), dtype)
    y_c = np.zeros((directions, batch, hidden), dtype)
    # X is quantized once over all the steps run; its rows' order (reversed or not) leaves the range alone
    x_projected = [integer_gemm(x[:steps], w_int[d], w_scales[d]) for d in range(directions)]
    for d in range(directions):
        reverse = attrs.get("direction") == "reverse" or d == 1
        bias = np.split(b[d], 2) if b is not None else None
        bias = bias[0] + bias[1] if bias is not None else np.zeros(4 * hidden, dtype)  # Wb + Rb first, as onnxruntime
        b_i, b_o, b_f, b_c = np.split(bias, 4)
        peep = np.split(p[d], 3) if p is not None else None
        f, g, h_act = acts[d]
        h = np.zeros((batch, hidden), dtype) if h0 is None else h0[d].copy()
        c = np.zeros((batch, hidden), dtype) if c0 is None else c0[d].copy()
        h_seen = h  # the matrix the step's h-GEMM quantizes (see the module's docstring)
        for t in range(steps):
            active = t < lens
            step = np.where(reverse & active, lens - 1 - t, t)
            recurrent = np.concatenate([integer_gemm(h_seen[first:first + group], r_int[d], r_scales[d])
                                        for first in range(0, batch, group)])
            gates = x_projected[d][step, rows] + recurrent
            i_, o_, f_, c_ = np.split(gates, 4, -1)
            if peep is not None:
                i_, f_ = i_ + peep[0] * c, f_ + peep[2] * c
            i = f(limit(i_ + b_i))
            forget = 1 - i if attrs.get("input_forget") else f(limit(f_ + b_f))
            c_new = c * forget + i * g(limit(c_ + b_c))
            if peep is not None:
                o_ = o_ + peep[1] * c_new
            h_new = f(limit(o_ + b_o)) * h_act(c_new)
            h = np.where(active[:, None], h_new, h).astype(dtype)
            c = np.where(active[:, None], c_new, c).astype(dtype)
            y[step[active], d, rows[active]] = h[active]
            h_seen = np.where(active[:, None], h_new, 0).astype(dtype) if has_y else h
        y_h[d] = np.where((lens > 0)[:, None], h, 0)
        y_c[d] = np.where((lens > 0)[:, None], c, 0)
    return y, y_h, y_c


def asks_for_y(node: Node) -> bool:
    """Whether the model names Y (onnxruntime then quantizes each step's outputs rather than
    the held states): the ONNX frontend names an output the file leaves out
    `<node>_unused<i>`."""
    y = node.outputs[0] if node.outputs else None
    return y is not None and y.name != f"{node.name}_unused0"


def _reference(node: Node):
    a = dict(node.attrs)
    where = node.describe()
    has_y = asks_for_y(node)

    def run(*ins):
        return quantized_lstm(a, where, has_y, threads(), *(list(ins) + [None] * 12)[:12])

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
    x = ins[0]
    if x.dtype != DType.float32 or any(ins[i] is not None and ins[i].dtype != x.dtype for i in (3, 5, 6, 7)):
        raise NotLowerable("not float32 throughout (onnxruntime's DynamicQuantizeLSTM is float32 only)")
    check_kernel_supported("LSTM", a)
    hidden = a["hidden_size"]
    if not isinstance(hidden, int):
        raise NotLowerable("no hidden_size")
    dirs = 2 if a["direction"] == "bidirectional" else 1
    seq, batch = x.shape[0], x.shape[1]
    state = (x.dtype, (dirs, batch, hidden))
    refs = ctx.extern("quantized_lstm", ins, [(x.dtype, (seq, dirs, batch, hidden)), state, state],
                      direction=a["direction"], hidden_size=hidden, has_bias=ins[3] is not None,
                      has_peephole=ins[7] is not None, has_y=asks_for_y(node), where=node.describe())
    return [ref if value is not None else None for ref, value in zip(refs, node.outputs)]
