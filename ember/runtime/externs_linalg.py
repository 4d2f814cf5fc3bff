"""Externs for linear algebra, linear attention, integer and 16-bit float ops: torch kernels
that reproduce the reference's arithmetic (its dtypes, its rounding, its order where
the order shows in the result)."""

from __future__ import annotations

import numpy as np

from ..errors import ExecutionError
from ..ir.windows import windows
from .externs import extern, prepare
from .native import integer_gemm
from ._torch import threads as _threads, torch


def _sum_like_numpy(e: torch.Tensor, axis: int) -> torch.Tensor:
    """numpy's sum of a 16-bit float tensor along `axis` (keepdims): float16 along the
    innermost axis accumulates in float32 and rounds once; otherwise (and always for
    ml_dtypes' bfloat16) each partial sum rounds to the 16-bit type, in index order."""
    if e.dtype == torch.float16 and all(d == 1 for d in e.shape[axis + 1:]):
        return e.sum(axis, keepdim=True, dtype=torch.float32).to(e.dtype)
    acc = e.narrow(axis, 0, 1).clone()
    for i in range(1, e.shape[axis]):
        acc += e.narrow(axis, i, 1)
    return acc


@extern("softmax16")
def softmax16(params, x, y):
    """Softmax (or LogSoftmax) of a 16-bit float tensor as the reference computes it in
    that dtype: x - max, exp, the sum (see `_sum_like_numpy`), a division, each result
    rounded to the 16-bit type."""
    if x.numel() == 0:
        return
    axis = params["axis"]
    e = torch.exp(x - x.amax(axis, keepdim=True))
    result = e / _sum_like_numpy(e, axis)
    y.copy_(torch.log(result) if params["log"] else result)


# -- LinearAttention ----------------------------------------------------------------------
def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, H*D] -> [B, H, T, D], in float32."""
    b, t, _ = x.shape
    return x.reshape(b, t, heads, -1).transpose(1, 2).float()


@extern("linear_attention")
def linear_attention(params, query, key, value, past_state, decay, beta, output, present_state):
    """The reference's recurrence (onnx.reference LinearAttention) in float32 torch ops:
    per step, state *= exp(decay); v <- beta (v - S^T k); S += k v^T; o = scale q S,
    query heads reading their kv head's state."""
    heads, kv_heads = params["q_num_heads"], params["kv_num_heads"]
    q, k, v = _heads(query, heads), _heads(key, kv_heads), _heads(value, kv_heads)
    b, t, d_k, d_v = q.shape[0], q.shape[2], k.shape[-1], v.shape[-1]
    group = heads // kv_heads
    if decay is not None:  # [B, T, H_kv] per head, or [B, T, H_kv * d_k] per key dim
        decay = decay.reshape(b, t, kv_heads, -1).transpose(1, 2).float()
    if beta is not None:  # [B, T, H_kv or 1]
        beta = beta.reshape(b, t, beta.shape[-1], 1).transpose(1, 2).float()
    state = past_state.float().clone() if past_state is not None else q.new_zeros((b, kv_heads, d_k, d_v))
    scale = params["scale"] or 1.0 / (d_k ** 0.5)
    out = q.new_zeros((b, heads, t, d_v))
    for i in range(t):
        k_t, v_t = k[:, :, i], v[:, :, i]
        if params["gating"]:
            state = state * torch.exp(decay[:, :, i])[..., None]
        if params["delta"]:
            v_t = beta[:, :, i] * (v_t - torch.einsum("bhdm,bhd->bhm", state, k_t))
        state = state + k_t[..., :, None] * v_t[..., None, :]
        read = state if group == 1 else state.repeat_interleave(group, dim=1)
        out[:, :, i] = scale * torch.einsum("bhd,bhdm->bhm", q[:, :, i], read)
    output.copy_(out.transpose(1, 2).reshape(output.shape))
    present_state.copy_(state)


# -- integers ------------------------------------------------------------------------------
@extern("integer_pow")
def integer_pow(params, x, y, out):
    """x ** y for integers as numpy: exact, wrapping in the wider type, then cast to x's
    dtype; a negative exponent is an error, as in numpy."""
    if bool((y < 0).any()):
        raise ExecutionError(f"{params['where']}: integers to negative integer powers are not allowed")
    out.copy_(torch.pow(x, y))


@extern("bitcast")
def bitcast(params, x, y):
    y.copy_(x.view(y.dtype))


# -- integer and quantized matmul / conv --------------------------------------------------------
def _centered(x, zero, per_channel: bool = False):
    """x - zero point, exactly, in int64 (a zero point per output channel of a filter
    broadcasts over the filter's other axes)."""
    x = x.to(torch.int64)
    if zero is None:
        return x
    zero = zero.to(torch.int64)
    if per_channel and zero.numel() > 1:
        return x - zero.reshape(-1, *[1] * (x.dim() - 1))
    return x - (zero.reshape(-1) if zero.numel() > 1 else zero.reshape(()))  # (one per column of a matrix B)


def _multiplier(a_scale, b_scale, y_scale):
    """QLinearMatMul's and QLinearConv's requantizing factor as their references compute it:
    the scales multiplied in their own dtype, then taken to float64 (one value, or one per
    column / output channel)."""
    scale = a_scale.reshape(()) * b_scale.reshape(-1) / y_scale.reshape(())
    return scale.to(torch.float64)


def _requantize(acc, x_scale, w_scale, y_scale, y_zero, y):
    """The int32 accumulator scaled as the reference does (the scales multiplied in their
    own dtype, the product applied in float64), plus the zero point, rounded half to
    even, clipped to y's range."""
    scale = _multiplier(x_scale, w_scale, y_scale)
    if scale.numel() > 1:  # one per output channel: axis 1 of the result
        scale = scale.reshape(-1, *[1] * (acc.dim() - 2))
    else:
        scale = scale.reshape(())
    d = acc.to(torch.float64) * scale + y_zero.reshape(()).to(torch.float64)
    info = torch.iinfo(y.dtype)
    y.copy_(torch.round(d).clamp_(info.min, info.max))


@prepare("integer_matmul")
def prepare_integer_matmul(params, constants):
    """A constant matrix B (less its constant zero point) is packed once for ember's
    integer GEMM (runtime/native/integer_gemm.py); where that kernel did not build, B is
    centered once, in float64."""
    b, b_zero = constants.get(1), constants.get(3)
    if b is None:
        return params
    # (a zero point fed at run time is not among the constants: the run then sees one the
    # prepared copy was not centered with, and takes the general path)
    prepared = {**params, "b_zero_constant": b_zero is not None}
    if integer_gemm.available() and b.dim() == 2 and b.device.type == "cpu":
        packed = integer_gemm.pack(b.numpy(), None if b_zero is None else b_zero.numpy())
        if packed is not None:
            return {**prepared, "packed": packed}
    return {**prepared, "b_centered": _centered(b, b_zero).to(torch.float64)}


def _float_scale(a_scale, b_scale):
    """MatMulIntegerToFloat's factor: a_scale * b_scale in float32 (one value, or one per column)."""
    return a_scale.reshape(()) * b_scale.reshape(-1)


def _on_kernel(params, a, b_zero, a_zero, scales, y) -> bool:
    """The product on ember's integer GEMM, B packed by `prepare`: a [..., k] with one zero
    point, y [..., n]. False where the step does not fit it."""
    packed = params.get("packed")
    if (packed is None or a.device.type != "cpu" or (b_zero is not None) != params["b_zero_constant"]
            or (a_zero is not None and a_zero.numel() != 1)):
        return False
    k, n = a.shape[-1], y.shape[-1]
    a2 = a.reshape(-1, k).numpy()
    if not a2.flags.c_contiguous:
        a2 = np.ascontiguousarray(a2)
    y2 = y.view(-1, n).numpy()
    zero = 0 if a_zero is None else int(a_zero.reshape(()))
    if not scales:
        return integer_gemm.run(a2, zero, packed, n, y2, _threads())
    if params.get("to_float"):
        a_scale, b_scale, bias = scales
        return integer_gemm.run(a2, zero, packed, n, y2, _threads(), scale=_float_scale(a_scale, b_scale).numpy(),
                                bias=None if bias is None else bias.numpy())
    a_scale, b_scale, y_scale, y_zero = scales
    return integer_gemm.run(a2, zero, packed, n, y2, _threads(),
                            multiplier=_multiplier(a_scale, b_scale, y_scale).numpy(), y_zero=int(y_zero.reshape(())))


@extern("integer_matmul")
def integer_matmul(params, a, b, a_zero, b_zero, *rest):
    """MatMulInteger (int32 out), QLinearMatMul (requantized to the output zero point's
    dtype) or MatMulIntegerToFloat (float32, rescaled, plus a bias): on ember's exact
    integer GEMM where B is a packed constant; otherwise the centered 8-bit operands
    multiplied in float64, which is exact (each product at most 255^2, a sum exact below
    2^53, ~10^11 terms) and runs on BLAS: in int64, torch's matmul has no BLAS
    (text2tashkeel's [40x40x512]x[512x1]: 6.3 ms)."""
    *scales, y = rest
    if y.is_contiguous() and _on_kernel(params, a, b_zero, a_zero, scales, y):
        return
    centered_b = params.get("b_centered")
    if centered_b is None or (b_zero is not None) != params["b_zero_constant"]:
        centered_b = _centered(b, b_zero).to(torch.float64)
    a64 = a.to(torch.float64)  # (exact: one conversion, then the zero point subtracted in place)
    if a_zero is not None:
        a64 -= a_zero.to(torch.float64).reshape(())
    product = torch.matmul(a64, centered_b)
    acc = product.to(torch.int64).to(torch.int32)  # int32 wraps
    if not scales:
        y.copy_(acc)
        return
    if params.get("to_float"):  # MatMulIntegerToFloat: the product rounded, then the bias added
        a_scale, b_scale, bias = scales
        scale = _float_scale(a_scale, b_scale)
        out = acc.to(torch.float32) * (scale if scale.numel() > 1 else scale.reshape(()))
        y.copy_(out if bias is None else out + bias)
        return
    a_scale, b_scale, y_scale, y_zero = scales
    _requantize(acc, a_scale, b_scale, y_scale, y_zero, y)


@extern("dynamic_quantize")
def dynamic_quantize(params, x, y, scale, zero):
    """DynamicQuantizeLinear as onnx's reference computes it (float32 throughout): on
    ember's kernel (two passes over x) for a CPU tensor; otherwise, or where x holds a NaN
    or an infinity, in torch on x's device."""
    if not x.numel():
        raise ExecutionError("DynamicQuantizeLinear of an empty tensor (it has no range)")
    if x.device.type == "cpu" and x.is_contiguous() and y.is_contiguous() and integer_gemm.dynamic_quantize(
            x.numpy(), y.numpy(), scale.view(-1).numpy(), zero.view(-1).numpy(), _threads()):
        return
    hi, lo = x.max().clamp(min=0), x.min().clamp(max=0)
    s = torch.where(hi == lo, torch.ones_like(hi), hi - lo) / 255
    # (a NaN zero point is 255: the reference clips it with Python's min(255, z), which keeps 255)
    z = torch.round(torch.clamp(0 - lo / s, 0, 255)).nan_to_num(255.0)
    y.copy_(torch.clamp(torch.round(x / s) + z, 0, 255).to(y.dtype))
    scale.copy_(s.reshape(scale.shape))
    zero.copy_(z.to(zero.dtype).reshape(zero.shape))


MAX_GROUPS = 4  # (more groups than this, a depthwise convolution above all, stay on torch's path)


@prepare("integer_conv")
def prepare_integer_conv(params, constants):
    """A constant 2-d filter [OC, C/g, kh, kw] (less its constant zero points) is packed
    once per group for ember's integer GEMM, as B [C/g * kh * kw, OC/g]: the convolution
    then runs as that GEMM over x's patches (im2col)."""
    w, w_zero = constants.get(1), constants.get(3)
    group = params["conv"]["group"]
    if (w is None or w.dim() != 4 or group > MAX_GROUPS or w.shape[0] % group or not integer_gemm.available()
            or w.device.type != "cpu"):
        return params
    per_group = w.shape[0] // group
    zero = None if w_zero is None else w_zero.reshape(-1).numpy()
    packed = []
    for g in range(group):
        b = np.ascontiguousarray(w[g * per_group:(g + 1) * per_group].reshape(per_group, -1).numpy().T)
        z = None if zero is None else (zero if zero.size == 1 else zero[g * per_group:(g + 1) * per_group])
        packed.append(integer_gemm.pack(b, z))
    if any(p is None for p in packed):
        return params
    return {**params, "packed": packed, "w_zero_constant": w_zero is not None}


def _patches(x: np.ndarray, x_zero: int, kernel, conv) -> np.ndarray:
    """x [N, C, H, W]'s patches [N * OH * OW, C * kh * kw] (im2col), x padded with its zero
    point (the reference pads the centered x with zeros)."""
    pads = conv["pads"]
    cols = windows(x, kernel, conv["strides"], conv["dilations"], list(zip(pads[:2], pads[2:])), x_zero)
    n, c, oh, ow = cols.shape[:4]  # [N, C, OH, OW, kh, kw]
    return np.ascontiguousarray(cols.transpose(0, 2, 3, 1, 4, 5)).reshape(n * oh * ow, -1)


def _conv_on_kernel(params, x, w, x_zero, w_zero):
    """ConvInteger's int32 sums [N, OC, OH, OW] on ember's integer GEMM (the filter packed
    by `prepare`), or None where the step does not fit it."""
    packed = params.get("packed")
    if (packed is None or x.dim() != 4 or x.device.type != "cpu" or (w_zero is not None) != params["w_zero_constant"]
            or (x_zero is not None and x_zero.numel() != 1)):
        return None
    conv, group = params["conv"], params["conv"]["group"]
    zero = 0 if x_zero is None else int(x_zero.reshape(()))
    xs = x.numpy()
    per_group, c = w.shape[0] // group, x.shape[1] // group
    outs = []
    for g in range(group):
        a = _patches(xs[:, g * c:(g + 1) * c], zero, w.shape[2:], conv)
        acc = np.empty((a.shape[0], per_group), np.int32)
        if not integer_gemm.run(a, zero, packed[g], per_group, acc, _threads()):
            return None
        outs.append(acc)
    n, oh_ow = x.shape[0], outs[0].shape[0] // x.shape[0]
    acc = np.concatenate(outs, axis=1) if group > 1 else outs[0]
    return torch.from_numpy(acc.reshape(n, oh_ow, -1).transpose(0, 2, 1).copy())


@extern("integer_conv")
def integer_conv(params, x, w, x_zero, w_zero, bias, x_scale, w_scale, y_scale, y_zero, y):
    """ConvInteger (int32 out) or QLinearConv (requantized): the products of the centered
    integers summed exactly, on ember's integer GEMM over x's patches where the filter is a
    packed constant 2-d one, else in float64 through the float conv extern (exact too)."""
    from .externs import conv

    acc = _conv_on_kernel(params, x, w, x_zero, w_zero)
    if acc is not None:
        acc = acc.reshape(y.shape)
    else:
        xc = _centered(x, x_zero).to(torch.float64)
        wc = _centered(w, w_zero, per_channel=True).to(torch.float64)
        acc = conv({**params["conv"], "activation": ""}, xc, wc, None, None, None)
        acc = acc.to(torch.int64).to(torch.int32)
    if bias is not None:
        acc = acc + bias.reshape(-1, *[1] * (acc.dim() - 2)).to(torch.int32)
    if x_scale is None:
        y.copy_(acc)
        return
    _requantize(acc, x_scale, w_scale, y_scale, y_zero, y)


@extern("det")
def det(params, x, y):
    result = torch.linalg.det(x)
    if torch.isnan(result).any() and torch.isfinite(x).all():
        # torch's LU divides by subnormal pivots (0/0 on a singular matrix of subnormals,
        # where LAPACK's getrf, the reference's, gives 0): those matrices take numpy's
        result = torch.from_numpy(np.asarray(np.linalg.det(x.numpy()))).to(result.dtype)
    y.copy_(result)


# -- 16-bit floats --------------------------------------------------------------------------
@extern("conv16")
def conv16(params, x, w, bias, total, y):
    """A float16/bfloat16 convolution (and ember.Conv's epilogue) in float32, rounded once
    into y."""
    from .externs import conv

    def wide(t):
        return None if t is None else t.float()

    params = {k: v for k, v in params.items() if k != "packed"}
    y.copy_(conv(params, wide(x), wide(w), wide(bias), wide(total), None))


# -- ai.onnx.ml.TreeEnsemble ------------------------------------------------------------------
_TREE_COMPARE = ["le", "lt", "ge", "gt", "eq", "ne"]  # torch comparisons by mode; 6: set membership


def _walk(params, x, root):
    """(weight, target) of the leaf each row of x reaches from `root`, the whole batch at
    once: each step moves every row still on a branch node by its node's test."""
    p = {k: torch.tensor(params[k]) for k in ("modes", "features", "true_ids", "false_ids", "true_leafs",
                                              "false_leafs", "missing")}
    splits = torch.tensor(params["splits"], dtype=torch.float64)
    width = max([len(m) for m in params["members"]] + [1])
    members = torch.tensor([m + [float("nan")] * (width - len(m)) for m in params["members"]], dtype=torch.float64)
    rows = torch.arange(x.shape[0])
    degenerate = (params["true_leafs"][root] and params["false_leafs"][root]
                  and params["true_ids"][root] == params["false_ids"][root])
    at = torch.full((x.shape[0],), root)  # (a one-leaf tree: its leaf has the root's index)
    leaf = torch.full((x.shape[0],), bool(degenerate))
    for _ in range(len(params["modes"]) + 1):
        if bool(leaf.all()):
            break
        node = torch.where(leaf, torch.zeros_like(at), at)
        v = x[rows, p["features"][node]].to(torch.float64)
        mode = p["modes"][node]
        go_true = torch.zeros_like(leaf)
        for m, compare in enumerate(_TREE_COMPARE):
            go_true |= (mode == m) & getattr(torch, compare)(v, splits[node])
        go_true |= (mode == 6) & (v[:, None] == members[node]).any(1)
        go_true |= p["missing"][node].bool() & torch.isnan(v)
        nxt = torch.where(go_true, p["true_ids"][node], p["false_ids"][node])
        nxt_leaf = torch.where(go_true, p["true_leafs"][node], p["false_leafs"][node]).bool()
        at = torch.where(leaf, at, nxt)
        leaf = leaf | nxt_leaf
    return torch.tensor(params["leaf_weights"], dtype=torch.float64)[at], torch.tensor(params["leaf_targets"])[at]


@extern("tree_ensemble")
def tree_ensemble(params, x, y):
    """The reference's aggregation, tree by tree: sum, average (each weight / trees), min
    or max per target, starting from 0 or the dtype's extreme."""
    how, trees = params["aggregate"], len(params["roots"])
    x = x.cpu()  # (node by node, index lookups: on the host, whatever the program's device; y.copy_ moves it)
    info = torch.finfo(y.dtype)
    result = torch.full(y.shape, {0: 0.0, 1: 0.0, 2: info.max, 3: info.min}[how], dtype=torch.float64)
    rows = torch.arange(x.shape[0])
    for root in params["roots"]:
        weight, target = _walk(params, x, root)
        current = result[rows, target]
        result[rows, target] = {0: lambda: current + weight / trees, 1: lambda: current + weight,
                                2: lambda: torch.minimum(current, weight), 3: lambda: torch.maximum(current, weight)}[how]()
    y.copy_(result)


# -- TfIdfVectorizer -------------------------------------------------------------------------
@extern("tfidf")
def tfidf(params, x, y):
    """Counts of the pool's n-grams in each row, every skip distance up to max_skip + 1
    (unigrams once), then TF / IDF / TFIDF weighting, as the reference."""
    rows = x.reshape(1, -1).to(torch.int64) if x.dim() <= 1 else x.to(torch.int64)
    width = rows.shape[1]
    counts = torch.zeros((rows.shape[0], y.shape[-1]), dtype=torch.int64)
    for d in range(1, params["max_skip"] + 2):
        smallest = params["min_n"] if d == 1 else max(params["min_n"], 2)
        for n in range(smallest, params["max_n"] + 1):
            grams, span = params["grams"].get(n, []), (n - 1) * d + 1
            if not grams or span > width:
                continue
            windows = torch.stack([rows[:, k * d:k * d + width - span + 1] for k in range(n)], -1)  # [B, S, n]
            pool = torch.tensor([g for g, _ in grams], dtype=torch.int64)  # [P, n]
            hits = (windows[:, :, None, :] == pool).all(-1).sum(1)  # [B, P]
            counts.index_add_(1, torch.tensor([c for _, c in grams]), hits)
    weights = torch.tensor(params["weights"], dtype=torch.float32) if params["weights"] else None
    mode = params["mode"]
    if mode == "TF":
        out = counts.to(torch.float32)
    elif mode == "IDF":
        out = (counts > 0).to(torch.float32) * (weights if weights is not None else 1)
    else:
        out = counts.to(torch.float32) * (weights if weights is not None else 1)
    y.copy_(out.reshape(y.shape))
