"""The reference implementation of RNN, GRU and LSTM: ONNX's definition in numpy, in the
input's dtype. onnx.reference's own ignores sequence_lens, clip, activations (and their
alpha/beta) and input_forget; this one follows the operator's text and onnxruntime:

- sequence_lens: batch entry b runs its first lens[b] steps (the reverse direction from
  step lens[b]-1 down to 0); Y is 0 past lens[b]; Y_h / Y_c hold its last step, and are
  0 for an empty sequence.
- clip bounds every activation's input to [-clip, clip].
- activations: per direction, with activation_alpha / activation_beta consumed in order
  by the functions that take them (onnxruntime's rule), each defaulting as its op does.
- input_forget couples the gates: f = 1 - i.
"""

from __future__ import annotations

import numpy as np

from ...errors import ExecutionError

# name (lower case) -> (function of x, alpha, beta; default alpha; default beta)
_ACTIVATIONS = {
    "sigmoid": (lambda x, a, b: 1 / (1 + np.exp(-x)), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "relu": (lambda x, a, b: np.maximum(x, 0), None, None),
    "affine": (lambda x, a, b: a * x + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: np.where(x >= 0, x, a * x), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, 0), 1.0, None),
    "scaledtanh": (lambda x, a, b: a * np.tanh(b * x), 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: np.clip(a * x + b, 0, 1), 0.2, 0.5),
    "elu": (lambda x, a, b: np.where(x >= 0, x, a * (np.exp(x) - 1)), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: np.log1p(np.exp(x)), None, None),
}
DEFAULT_ACTIVATIONS = {"RNN": ["tanh"], "GRU": ["sigmoid", "tanh"], "LSTM": ["sigmoid", "tanh", "tanh"]}


def activation_functions(op: str, attrs: dict, directions: int, where: str, exact: dict | None = None) -> list[list]:
    """Per direction, the op's activation functions (f, g, h order) as callables of x;
    `exact` maps names to functions of x that replace ember's (onnxruntime's own)."""
    names = [s.lower() for s in (attrs.get("activations") or [])]
    per = len(DEFAULT_ACTIVATIONS[op])
    if not names:
        names = DEFAULT_ACTIVATIONS[op] * directions
    elif len(names) == per and directions == 2:
        names = names * 2
    elif len(names) > per * directions:  # RNN's schema default lists Tanh twice, for one direction too
        names = names[:per * directions]
    if len(names) != per * directions:
        raise ExecutionError(f"{where}: {len(names)} activations for {directions} direction(s) of {per}")
    alphas = list(attrs.get("activation_alpha") or [])
    betas = list(attrs.get("activation_beta") or [])
    functions = []
    for name in names:
        if name not in _ACTIVATIONS:
            raise ExecutionError(f"{where}: unknown activation {name!r}")
        if exact and name in exact:
            functions.append(exact[name])
            continue
        fn, alpha, beta = _ACTIVATIONS[name]
        if alpha is not None and alphas:
            alpha = alphas.pop(0)
        if beta is not None and betas:
            beta = betas.pop(0)
        functions.append(lambda x, fn=fn, a=alpha, b=beta: fn(x, a, b))
    return [functions[d * per:(d + 1) * per] for d in range(directions)]


def recurrence(op: str, attrs: dict, where: str, x, w, r, b=None, seq_lens=None, h0=None, c0=None, p=None):
    """(Y, Y_h, Y_c) of RNN / GRU / LSTM (Y_c None but for LSTM)."""
    layout, clip = attrs.get("layout") or 0, attrs.get("clip")
    if layout:
        x = np.swapaxes(x, 0, 1)
        h0 = None if h0 is None else np.swapaxes(h0, 0, 1)
        c0 = None if c0 is None else np.swapaxes(c0, 0, 1)
    seq, batch = x.shape[:2]
    directions, hidden = w.shape[0], r.shape[-1]
    gates = w.shape[1] // hidden
    lens = np.full(batch, seq, np.int64) if seq_lens is None else np.asarray(seq_lens, np.int64).reshape(-1)
    if lens.shape != (batch,) or (lens < 0).any() or (lens > seq).any():
        raise ExecutionError(f"{where}: sequence_lens {lens.tolist()} for a batch of {batch} sequences "
                             f"of at most {seq} steps")
    acts = activation_functions(op, attrs, directions, where)
    limit = (lambda v: np.clip(v, -clip, clip)) if clip is not None else (lambda v: v)
    dtype = x.dtype
    y = np.zeros((seq, directions, batch, hidden), dtype)
    y_h = np.zeros((directions, batch, hidden), dtype)
    y_c = np.zeros((directions, batch, hidden), dtype)
    rows = np.arange(batch)
    for d in range(directions):
        reverse = attrs.get("direction") == "reverse" or d == 1
        wb, rb = np.split(b[d], 2) if b is not None else (np.zeros(gates * hidden, dtype),) * 2
        h = np.zeros((batch, hidden), dtype) if h0 is None else h0[d].copy()
        c = np.zeros((batch, hidden), dtype) if c0 is None else c0[d].copy()
        peep = np.split(p[d], 3) if p is not None else (np.zeros(hidden, dtype),) * 3
        f, g = acts[d][0], acts[d][1] if len(acts[d]) > 1 else None
        for t in range(seq):
            active = t < lens
            step = np.where(reverse, lens - 1 - t, t).clip(0, seq - 1)
            xw = x[step, rows] @ w[d].T + wb
            if op == "RNN":
                h_new, c_new = f(limit(xw + h @ r[d].T + rb)), c
            elif op == "GRU":
                z_x, r_x, h_x = np.split(xw, 3, -1)
                z_r, r_r, h_r = np.split(r[d], 3)
                z_b, r_b, h_b = np.split(rb, 3)
                z = f(limit(z_x + h @ z_r.T + z_b))
                reset = f(limit(r_x + h @ r_r.T + r_b))
                if attrs.get("linear_before_reset"):
                    candidate = g(limit(h_x + reset * (h @ h_r.T + h_b)))
                else:
                    candidate = g(limit(h_x + (reset * h) @ h_r.T + h_b))
                h_new, c_new = (1 - z) * candidate + z * h, c
            else:
                i_, o_, f_, c_ = np.split(xw + h @ r[d].T + rb, 4, -1)
                p_i, p_o, p_f = peep
                i = f(limit(i_ + p_i * c))
                forget = 1 - i if attrs.get("input_forget") else f(limit(f_ + p_f * c))
                c_new = forget * c + i * g(limit(c_))
                o = f(limit(o_ + p_o * c_new))
                h_new = o * acts[d][2](c_new)
            h = np.where(active[:, None], h_new, h).astype(dtype)
            c = np.where(active[:, None], c_new, c).astype(dtype)
            y[step[active], d, rows[active]] = h[active]
        y_h[d] = np.where((lens > 0)[:, None], h, 0)
        y_c[d] = np.where((lens > 0)[:, None], c, 0)
    if layout:
        y, y_h, y_c = np.transpose(y, (2, 0, 1, 3)), np.swapaxes(y_h, 0, 1), np.swapaxes(y_c, 0, 1)
    return y, y_h, (y_c if op == "LSTM" else None)
