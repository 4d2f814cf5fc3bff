"""Recurrences over time: RNN, GRU, LSTM (and LinearAttention, at the end). Schemas and type
functions are ONNX's; the reference is ember's own (_recurrence.py: onnx.reference's
ignores sequence_lens, clip, activations and input_forget); the lowering is one extern
(`recurrent`, ember/runtime/externs_recurrent.py) on torch's fused RNN kernels.

The kernel runs float32 and float64, every direction, layout, sequence_lens, initial
states, bias, peepholes and both GRU linear_before_reset with the default activations
(RNN tanh, GRU sigmoid/tanh, LSTM sigmoid/tanh/tanh). Non-default activations, clip and
input_forget are declined by name and run on the reference.
"""

from __future__ import annotations

from ._lowering import FLOATS, KERNEL_FLOATS, NotLowerable, attrs, out_type, register_lowering
from ._recurrence import DEFAULT_ACTIVATIONS, recurrence
from .onnx_standard import standard_op

GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_INPUTS = 8  # X, W, R, B, sequence_lens, initial_h, initial_c, P (RNN and GRU stop at initial_h)


def _recurrent_reference(op: str):
    def prepare(node):
        a = dict(node.attrs)
        where = node.describe()

        def run(*ins):
            ins = list(ins) + [None] * (_INPUTS - len(ins))
            if op != "LSTM":
                ins = ins[:6] + [None, None]
            y, y_h, y_c = recurrence(op, a, where, *ins)
            return (y, y_h) if op != "LSTM" else (y, y_h, y_c)

        return run

    return prepare


for _op in GATES:
    standard_op(_op, reference=_recurrent_reference(_op))
standard_op("LinearAttention")


def check_kernel_supported(op: str, a: dict) -> None:
    defaults = DEFAULT_ACTIVATIONS[op]  # per direction (RNN's schema default lists tanh twice)
    activations = [s.lower() for s in (a.get("activations") or [])]
    if any(name != defaults[i % len(defaults)] for i, name in enumerate(activations)):
        raise NotLowerable(f"activations {a['activations']} (the kernel runs the defaults)")
    if a.get("clip") is not None:
        raise NotLowerable("clip")
    if a.get("input_forget"):
        raise NotLowerable("input_forget")


def _lower_recurrent(ctx, node, ins):
    op = node.op
    a = attrs(node)
    x, w = ins[0], ins[1]
    if x.dtype not in FLOATS or any(r is not None and r.dtype != x.dtype for i, r in enumerate(ins[:8]) if i != 4):
        raise NotLowerable("not float32 or float64 throughout (torch's RNN kernels)")
    directions = 2 if a["direction"] == "bidirectional" else 1
    check_kernel_supported(op, a)
    layout = a["layout"]
    seq, batch = (x.shape[1], x.shape[0]) if layout else (x.shape[0], x.shape[1])
    hidden = a["hidden_size"] or w.shape[1] // GATES[op]
    if not isinstance(hidden, int):
        raise NotLowerable("hidden size not static")
    y_shape = (batch, seq, directions, hidden) if layout else (seq, directions, batch, hidden)
    state = (batch, directions, hidden) if layout else (directions, batch, hidden)
    inputs = list(ins) + [None] * (_INPUTS - len(ins))
    if op != "LSTM":
        inputs = inputs[:6] + [None, None]
    outputs = [(x.dtype, y_shape), (x.dtype, state)] + ([(x.dtype, state)] if op == "LSTM" else [])
    refs = ctx.extern("recurrent", inputs, outputs, op=op, direction=a["direction"], layout=layout,
                      hidden_size=int(hidden), linear_before_reset=int(a.get("linear_before_reset") or 0),
                      has_bias=inputs[3] is not None, has_peephole=inputs[7] is not None, where=node.describe())
    return [ref if value is not None else None for ref, value in zip(refs, node.outputs)]


for _op in GATES:
    register_lowering(_op)(_lower_recurrent)


# -- LinearAttention ---------------------------------------------------------------------
# A recurrence over time too: a [d_k, d_v] state per kv head decays (gated), is corrected
# towards the value (delta), takes k v^T, and is read by q; in float32, as the reference.
def _lower_linear_attention(ctx, node, ins):
    a = attrs(node)
    present = [r for r in ins if r is not None]
    if any(r.dtype not in KERNEL_FLOATS for r in present) or any(len(r.shape) != 3 for r in ins[:3]):
        raise NotLowerable("not float, or q, k, v not [B, T, H*D]")
    rule = a["update_rule"]
    gating, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    inputs = list(ins) + [None] * (6 - len(ins))
    if gating != (inputs[4] is not None) or delta != (inputs[5] is not None):
        raise NotLowerable(f"update_rule {rule!r} with decay/beta inputs that do not match it")
    q, k, v, past = inputs[:4]
    kv_heads = a["kv_num_heads"]
    state = (q.shape[0], kv_heads, k.shape[-1] // kv_heads, v.shape[-1] // kv_heads)  # [B, Hkv, d_k, d_v]
    outs = [out_type(node, 0), ((past if past is not None else q).dtype, state)]
    refs = ctx.extern("linear_attention", inputs, outs, q_num_heads=a["q_num_heads"], kv_num_heads=a["kv_num_heads"],
                      scale=float(a["scale"] or 0.0), gating=gating, delta=delta)
    return [ref if value is not None else None for ref, value in zip(refs, node.outputs)]


register_lowering("LinearAttention")(_lower_linear_attention)
