"""The `recurrent` extern: ONNX RNN, GRU and LSTM (ember/ir/ops/rnn.py lowers them; the
reference, ember/ir/ops/_recurrence.py, is their meaning) on torch's fused CPU kernels.

`prepare` reorders the weights once, at load, into torch's layout: one
(w_ih, w_hh, b_ih, b_hh) per direction, gates in torch's order (LSTM i f g o from
ONNX's i o f c; GRU r z n from z r h). A run then makes one call: torch's RNN kernels run
the input projection of every step as one GEMM and the steps in C++. Sequences of
different lengths (sequence_lens) run as a packed sequence, which is ONNX's meaning: each
sequence's own steps, the reverse direction from its own last step, zeros past its end,
Y_h / Y_c its last step. torch's GRU is ONNX's linear_before_reset=1; a GRU with 0, and
an LSTM with peepholes, run a step loop of torch ops (`_loop`) instead. A small float32
LSTM (batch up to 8, hidden up to 256) of full-length sequences with constant weights runs
on ember's own C++ step loop (runtime/native/lstm.py) after one GEMM for its input projections:
torch's loop spends ~7 us a step on dispatch there (openWakeWord's hey_mycroft: 0.53 ->
0.18 ms a run).
"""

from __future__ import annotations

from ._torch import torch

from ..errors import ExecutionError
from ..ir.quantized_lstm import check_shapes, threads
from . import quantized_lstm as quantized
from .externs import extern, prepare
from .native import lstm as _lstm

_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
_TORCH_ORDER = {"RNN": [0], "GRU": [1, 0, 2], "LSTM": [0, 2, 3, 1]}  # ONNX gate blocks in torch's order
_FUSED = {"RNN": "rnn_tanh", "GRU": "gru", "LSTM": "lstm"}  # torch._VF's kernels


def _reorder(t: torch.Tensor, op: str, hidden: int) -> torch.Tensor:
    """The gate blocks of `t` (along dim 0) in torch's order."""
    blocks = t.split(hidden)
    return torch.cat([blocks[i] for i in _TORCH_ORDER[op]]).contiguous()


def _pack_weights(params, w, r, b, p):
    """What a run needs from the weights: ("fused", flat torch weights) or ("loop",
    per-direction tensors in ONNX's order)."""
    op, hidden = params["op"], params["hidden_size"]
    directions, gates = w.shape[0], _GATES[op]
    if b is None:
        b = w.new_zeros((directions, 2 * gates * hidden))
    peephole = p is not None and bool(p.any())
    if (op == "GRU" and not params["linear_before_reset"]) or peephole:
        return "loop", [(w[d], r[d], b[d, :gates * hidden], b[d, gates * hidden:],
                         None if p is None else p[d]) for d in range(directions)]
    flat = []
    for d in range(directions):
        flat += [_reorder(w[d], op, hidden), _reorder(r[d], op, hidden),
                 _reorder(b[d, :gates * hidden], op, hidden), _reorder(b[d, gates * hidden:], op, hidden)]
    return "fused", tuple(flat)


@prepare("recurrent")
def prepare_recurrent(params, constants):
    """Weights that are constants (W, R and B or P where given) are packed once."""
    needed = [1, 2] + [i for i, given in ((3, params["has_bias"]), (7, params["has_peephole"])) if given]
    if any(i not in constants for i in needed):
        return params
    packed = _pack_weights(params, constants[1], constants[2], constants.get(3), constants.get(7))
    prepared = {**params, "packed": packed}
    if params["op"] == "LSTM" and packed[0] == "fused" and constants[1].dtype == torch.float32:
        flat = packed[1]  # per direction: w_ih [4H, in], w_hh [4H, H], b_ih, b_hh (gates i f g o)
        prepared["step_kernel"] = (torch.stack([w.t() for w in flat[0::4]]).contiguous(),
                                   torch.stack([r.t() for r in flat[1::4]]).contiguous(),
                                   torch.stack([a + b for a, b in zip(flat[2::4], flat[3::4])]).unsqueeze(1))
    return prepared


@extern("recurrent")
def recurrent(params, x, w, r, b, seq_lens, h0, c0, p, y, y_h, y_c=None):
    """RNN / GRU / LSTM (see the module's docstring); outputs written in place."""
    mode, weights = params.get("packed") or _pack_weights(params, w, r, b, p)
    layout, op = params["layout"], params["op"]
    seq, batch = (x.shape[1], x.shape[0]) if layout else (x.shape[0], x.shape[1])
    directions, hidden = w.shape[0], params["hidden_size"]
    if layout:  # states [batch, dirs, hidden] -> torch's [dirs, batch, hidden]
        h0 = None if h0 is None else h0.transpose(0, 1).contiguous()
        c0 = None if c0 is None else c0.transpose(0, 1).contiguous()
    if h0 is None:
        h0 = x.new_zeros((directions, batch, hidden))
    if c0 is None and op == "LSTM":
        c0 = x.new_zeros((directions, batch, hidden))
    if seq * batch == 0:  # no step: Y is empty, the last states 0 (as for an empty sequence)
        for target in (y, y_h, y_c):
            if target is not None:
                target.zero_()
        return
    lens = None
    if seq_lens is not None:
        lens = seq_lens.to(torch.int64)
        if bool((lens < 0).any()) or bool((lens > seq).any()):
            raise ExecutionError(f"{params['where']}: sequence_lens {lens.tolist()} for sequences of "
                                 f"at most {seq} steps")
        if bool((lens == seq).all()):
            lens = None
    kernel = params.get("step_kernel")
    if (kernel is not None and lens is None and not layout and x.dtype == torch.float32
            and batch <= _STEP_KERNEL_MAX_BATCH and hidden <= _STEP_KERNEL_MAX_HIDDEN and _step_kernel_available()):
        _lstm_on_step_kernel(params, kernel, x, h0, c0, y, y_h, y_c, seq, batch, directions, hidden)
        return
    if mode == "loop":
        out, h_n, c_n = _loop(params, x.transpose(0, 1) if layout else x, weights, h0, c0, lens)
        out = out.permute(2, 0, 1, 3) if layout else out  # [seq, dirs, batch, hidden] -> Y's layout
    else:
        reverse = params["direction"] == "reverse"  # torch runs forward or both: flip each sequence
        if reverse:
            x = _reverse_within_lengths(x, lens, layout)
        out, h_n, c_n = _fused(op, x, weights, h0, c0, lens, layout, directions == 2)
        if reverse:
            out = _reverse_within_lengths(out, lens, layout)
        # torch's [seq, batch, dirs * hidden] (batch first for layout 1) -> Y's layout
        out = out.view(batch, seq, directions, hidden) if layout else \
            out.view(seq, batch, directions, hidden).transpose(1, 2)
    y.copy_(out)
    for target, state in ((y_h, h_n), (y_c, c_n)):
        if target is not None:
            target.copy_(state.transpose(0, 1) if layout else state)


# an LSTM this small runs on ember's step kernel (runtime/native/lstm.py), where torch's RNN loop
# spends its time on dispatch (~7 us a step); a larger one on torch's, whose GEMMs thread
_STEP_KERNEL_MAX_BATCH = 8
_STEP_KERNEL_MAX_HIDDEN = 256
STEP_KERNEL_RUNS = [0]  # LSTM runs the step kernel made (tests read it)
# input projections of at most this many multiply-adds the step kernel makes itself (one
# torch GEMM call costs ~3 us, more than silero_vad's 64x256 projection of one step; for
# hey_mycroft's 2 x 16 x 96 -> 256 torch's baddbmm, its threads spinning beside the step
# loop's after it, and the tiled GEMM both left the model slower: 0.157 and 0.185 ms
# against 0.149 in the kernel, minima on a 2-core AMD EPYC)
_KERNEL_PROJECTS_MACS = 1 << 20


def _step_kernel_available() -> bool:
    return _lstm.available()


def _lstm_on_step_kernel(params, kernel, x, h0, c0, y, y_h, y_c, seq, batch, directions, hidden):
    """An LSTM of full-length sequences (layout 0) on the step kernel: every step's input
    projection in one batched GEMM here, the recurrence in C++; outputs written in place."""
    lstm = _lstm
    STEP_KERNEL_RUNS[0] += 1
    w_t, r_t, bias = kernel  # [dirs, in, 4H], [dirs, H, 4H], [dirs, 1, 4H]
    small = directions * seq * batch * x.shape[-1] * 4 * hidden <= _KERNEL_PROJECTS_MACS and x.is_contiguous()
    if small:  # the kernel projects the inputs itself
        xw = None
    else:
        x2 = x.reshape(1, seq * batch, x.shape[-1]).expand(directions, -1, -1)
        xw = torch.baddbmm(bias, x2, w_t).view(directions, seq, batch, 4 * hidden)
    h = y_h if y_h is not None and y_h.is_contiguous() else torch.empty((directions, batch, hidden))
    c = y_c if y_c is not None and y_c.is_contiguous() else torch.empty((directions, batch, hidden))
    h.copy_(h0)
    c.copy_(c0)
    out = y if y is not None and y.is_contiguous() else None
    backward = [params["direction"] == "reverse" or d == 1 for d in range(directions)]
    # the two directions of a bidirectional one on threads of their own (hey_mycroft's 2 x
    # 16 steps of 64 units: 42 -> 25 us alone); one direction's steps on several past 2^22
    work = seq * batch * 4 * hidden * hidden
    lstm.run(xw, r_t, h, c, out, backward, torch.get_num_threads() if work >= 1 << 22 or directions > 1 else 1,
             *((x, w_t, bias) if small else ()))
    if y is not None and out is None:
        raise ExecutionError(f"{params['where']}: Y is not contiguous")
    for target, state in ((y_h, h), (y_c, c)):
        if target is not None and target is not state:
            target.copy_(state)


def _fused(op, x, weights, h0, c0, lens, batch_first, bidirectional):
    """torch's fused kernel over the padded batch, or over the packed one (lens given)."""
    fn = getattr(torch._VF, _FUSED[op])
    hx = (h0, c0) if op == "LSTM" else h0
    if lens is None:
        result = fn(x, hx, weights, True, 1, 0.0, False, bidirectional, bool(batch_first))
        return result[0], result[1], result[2] if op == "LSTM" else None
    # torch packs no empty sequence: those run one step, then their results are zeroed
    empty = lens == 0
    rnn = torch.nn.utils.rnn
    packed = rnn.pack_padded_sequence(x, lens.clamp(min=1), batch_first=bool(batch_first), enforce_sorted=False)
    order, unorder = packed.sorted_indices, packed.unsorted_indices
    hx = (h0[:, order], c0[:, order]) if op == "LSTM" else h0[:, order]
    result = fn(packed.data, packed.batch_sizes, hx, weights, True, 1, 0.0, False, bidirectional)
    out, _ = rnn.pad_packed_sequence(rnn.PackedSequence(result[0], packed.batch_sizes, order, unorder),
                                     batch_first=bool(batch_first), total_length=x.shape[1 if batch_first else 0])
    h_n = result[1][:, unorder]
    c_n = result[2][:, unorder] if op == "LSTM" else None
    if bool(empty.any()):
        out.masked_fill_((empty[:, None, None] if batch_first else empty[None, :, None]), 0)
        h_n.masked_fill_(empty[None, :, None], 0)
        if c_n is not None:
            c_n.masked_fill_(empty[None, :, None], 0)
    return out, h_n, c_n


def _reverse_within_lengths(t: torch.Tensor, lens: torch.Tensor | None, batch_first) -> torch.Tensor:
    """[seq, batch, ...] (or batch first) with each sequence's own steps in reverse order."""
    time = 1 if batch_first else 0
    if lens is None:
        return t.flip(time)
    steps = _within_lengths(t.shape[time], lens)
    steps = steps.t() if batch_first else steps
    return t.gather(time, steps[..., None].expand_as(t))


def _within_lengths(seq: int, lens: torch.Tensor) -> torch.Tensor:
    """[seq, batch] step indices that reverse each sequence within its length (an
    involution; steps past a length stay where they are)."""
    t = torch.arange(seq)[:, None]
    return torch.where(t < lens, lens - 1 - t, t)


def _loop(params, xs, weights, h0, c0, lens):
    """The recurrence step by step over time-major xs [seq, batch, in], gates in ONNX's
    order: GRU with linear_before_reset 0, LSTM with peepholes. Outputs
    [seq, dirs, batch, hidden] and the last states [dirs, batch, hidden]."""
    op, hidden = params["op"], params["hidden_size"]
    seq, batch = xs.shape[:2]
    full = lens if lens is not None else torch.full((batch,), seq, dtype=torch.int64)
    ys, hs, cs = [], [], []
    for d, (w, r, wb, rb, p) in enumerate(weights):
        reverse = params["direction"] == "reverse" or d == 1
        steps = _within_lengths(seq, full) if reverse else None
        seq_x = xs.gather(0, steps[..., None].expand_as(xs)) if reverse else xs
        projected = torch.matmul(seq_x, w.t()) + wb  # every step's input projection: one GEMM
        h, c = h0[d], None if c0 is None else c0[d]
        out = xs.new_zeros((seq, batch, hidden))
        for t in range(seq):
            h_new, c_new = _cell(op, projected[t], h, c, r, rb, p, hidden)
            if lens is None:
                h, c = h_new, c_new
            else:
                active = (t < lens)[:, None]
                h = torch.where(active, h_new, h)
                c = None if c is None else torch.where(active, c_new, c)
                h_new = h_new * active
            out[t] = h_new
        if reverse:
            out = out.gather(0, steps[..., None].expand_as(out))
        if lens is not None:  # an empty sequence's last state is 0
            h = h * (lens > 0)[:, None]
            c = None if c is None else c * (lens > 0)[:, None]
        ys.append(out)
        hs.append(h)
        cs.append(c)
    return torch.stack(ys, 1), torch.stack(hs), (torch.stack(cs) if op == "LSTM" else None)


def _cell(op, xw, h, c, r, rb, p, hidden):
    if op == "GRU":  # linear_before_reset 0: the reset gate scales h before its product with R_h
        zr = torch.sigmoid(xw[:, :2 * hidden] + h @ r[:2 * hidden].t() + rb[:2 * hidden])
        z, reset = zr[:, :hidden], zr[:, hidden:]
        candidate = torch.tanh(xw[:, 2 * hidden:] + (reset * h) @ r[2 * hidden:].t() + rb[2 * hidden:])
        return (1 - z) * candidate + z * h, None
    i, o, f, g = (xw + h @ r.t() + rb).split(hidden, dim=-1)
    p_i, p_o, p_f = p.split(hidden)
    i = torch.sigmoid(i + p_i * c)
    f = torch.sigmoid(f + p_f * c)
    c = f * c + i * torch.tanh(g)
    return torch.sigmoid(o + p_o * c) * torch.tanh(c), c


# -- com.microsoft.DynamicQuantizeLSTM: onnxruntime's quantized recurrence (quantized_lstm.py) --
@prepare("quantized_lstm")
def prepare_quantized_lstm(params, constants):
    """Constant 8-bit weights (with their scales, zero points, B and P where given) are
    turned into exact integer GEMM operands once."""
    needed = [1, 2, 8, 9, 10, 11] + [i for i, given in ((3, params["has_bias"]), (7, params["has_peephole"])) if given]
    if any(i not in constants for i in needed):
        return params
    weights = [constants.get(i) for i in (1, 2, 3, 7, 8, 9, 10, 11)]
    try:
        check_shapes(params["where"], params["direction"], params["hidden_size"], None, *weights[:3], None, None,
                     *weights[3:])
    except ExecutionError:
        return params  # each run says what is wrong
    return {**params, "packed": quantized.pack(*weights, params["hidden_size"])}


@extern("quantized_lstm")
def quantized_lstm(params, x, w, r, b, seq_lens, h0, c0, p, w_scale, w_zero, r_scale, r_zero, y, y_h, y_c):
    """DynamicQuantizeLSTM (see quantized_lstm.py); outputs written in place."""
    check_shapes(params["where"], params["direction"], params["hidden_size"], x, w, r, b, h0, c0, p, w_scale, w_zero,
                 r_scale, r_zero)
    if not quantized.kernel_takes(params["hidden_size"]):  # the reference: the same arithmetic
        from ..ir.ops.contrib_rnn import quantized_lstm as reference

        ins = [None if t is None else t.numpy() for t in (x, w, r, b, seq_lens, h0, c0, p, w_scale, w_zero, r_scale,
                                                           r_zero)]
        attrs = {"direction": params["direction"], "hidden_size": params["hidden_size"]}
        results = reference(attrs, params["where"], params.get("has_y", True), threads(), *ins)
        for target, value in zip((y, y_h, y_c), results):
            if target is not None:
                target.copy_(torch.from_numpy(value))
        return
    packed = params.get("packed") or quantized.pack(w, r, b, p, w_scale, w_zero, r_scale, r_zero, params["hidden_size"])
    quantized.run(params, packed, x, seq_lens, h0, c0, y, y_h, y_c)
