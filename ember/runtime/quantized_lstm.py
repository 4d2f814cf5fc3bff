"""com.microsoft.DynamicQuantizeLSTM as onnxruntime computes it (its meaning, and where the
two agree, is ember/ir/ops/contrib_rnn.py's reference): the `quantized_lstm` extern
(externs_recurrent.py) runs `run` over weights `pack` prepared once.

X is quantized once and multiplied by W here: on the 8-bit integer GEMM (runtime/native/
integer_gemm.py, VNNI where the CPU has it), or where that does not build, in torch: an
exact integer GEMM too, since the 8-bit operands less their zero points are small whole
numbers held as floats and every partial sum stays below 2**24 (float32's exact range) or,
for larger K, is summed in float64. Either way each sum is exact, then scaled in float32.
The steps, each quantizing h for its GEMM with R, run in C++ (runtime/native/
quantized_lstm.py); without a C++ compiler, on the reference.
"""

from __future__ import annotations

import numpy as np

from ._torch import torch

from .native import integer_gemm
from .native import quantized_lstm as kernel
from ..errors import ExecutionError
from ..ir.quantized_lstm import rows_per_group, threads

_FLOAT32_EXACT = 2 ** 24


def _less_zero_point(q: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    """[dirs, K, 4H] 8-bit weights less their zero point (per direction or per column), int32."""
    return q.to(torch.int32) - zero.to(torch.int32).reshape(q.shape[0], 1, -1)


def _scales(scale: torch.Tensor, dirs: int, columns: int) -> torch.Tensor:
    return scale.to(torch.float32).reshape(dirs, 1, -1).expand(dirs, 1, columns).contiguous()


def pack(w, r, b, p, w_scale, w_zero, r_scale, r_zero, hidden: int) -> dict:
    """What a run needs from the weights, in ONNX's gate order (i o f c)."""
    dirs, k, n4 = w.shape
    w_int = _less_zero_point(w, w_zero)
    largest = int(w_int.abs().max()) if w_int.numel() else 0
    # a quantized X less its zero point is within 255 of 0
    exact = torch.float32 if k * 255 * largest < _FLOAT32_EXACT else torch.float64
    r_int = _less_zero_point(r, r_zero)
    r8 = eight_bit_r(r, r_int) if kernel.vnni() else None  # (the step loop then reads R only so)
    return {"w": w_int.to(exact), "w_scale": _scales(w_scale, dirs, n4), "w_packed": _integer_gemm_weights(w, w_zero),
            "r": None if r8 is not None else r_int.to(torch.int16).contiguous(), "r8": r8,
            "r_scale": _scales(r_scale, dirs, n4).reshape(dirs, n4),
            # onnxruntime adds Wb + Rb, summed first, after both GEMMs
            "bias": None if b is None else (b[:, :n4] + b[:, n4:]).to(torch.float32).contiguous(),
            "peephole": None if p is None else p.to(torch.float32).contiguous()}


def _integer_gemm_weights(w: torch.Tensor, zero: torch.Tensor) -> list | None:
    """Each direction's W [K, 4H] less its zero point (one, or one per column) packed for the
    integer GEMM, or None where that kernel is not built or does not take them."""
    if not integer_gemm.available():
        return None
    w_np, zero_np = w.numpy(), zero.reshape(w.shape[0], -1).numpy()
    packed = [integer_gemm.pack(w_np[d], zero_np[d]) for d in range(w.shape[0])]
    return None if any(p is None for p in packed) else packed


def eight_bit_r(r: torch.Tensor, r_int: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """R [dirs, H, 4H] (8-bit) as the VNNI step loop multiplies it (cpu_quantized_lstm.cpp's
    product_vnni): R less its zero point (r_int) = s + o, s R's bytes as int8 (less 128 where
    R is uint8) laid out [dirs, ceil(H / 4), 4H, 4] (zeros past H) and o [dirs, 4H] a column's
    offset, with C [dirs, 4H] the column sums of r_int (all int32 but s)."""
    dirs, hidden, n4 = r.shape
    s = r.to(torch.int32) - (128 if r.dtype == torch.uint8 else 0)
    offset = (r_int[:, :1] - s[:, :1]).reshape(dirs, n4) if hidden else torch.zeros((dirs, n4), dtype=torch.int32)
    padded = torch.zeros((dirs, -(-hidden // 4) * 4, n4), dtype=torch.int8)
    padded[:, :hidden] = s.to(torch.int8)
    layout = padded.reshape(dirs, -1, 4, n4).permute(0, 1, 3, 2).contiguous()
    return layout, offset.to(torch.int32).contiguous(), r_int.sum(1, dtype=torch.int32).contiguous()


def quantize(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """onnxruntime's dynamic uint8 quantization of a (GetQuantizationParameter, then MLAS's
    QuantizeLinear): the range, widened to hold 0, spans 0..255; the zero point and the
    values round half to even. Returns q - zero point (whole numbers, float32) and the
    float32 scale (a 0-d tensor)."""
    lo = a.min().clamp(max=0)
    hi = a.max().clamp(min=0)
    scale = torch.where(hi == lo, torch.ones_like(hi), (hi - lo) / 255)
    zero = (-lo / scale).clamp(0, 255).round()
    return torch.maximum(torch.minimum(torch.round(a / scale), 255 - zero), -zero), scale


def _project(x: torch.Tensor, packed: dict) -> torch.Tensor:
    """X.W of every row of x [rows, K], X quantized (`quantize`'s arithmetic): [dirs, rows, 4H]
    float32, each exact integer sum times x's scale times W's (float32, as onnxruntime)."""
    dirs, _, n4 = packed["w"].shape
    if packed.get("w_packed") is not None:
        # DynamicQuantizeLinear's kernel quantizes as `quantize` does (only an all-zero x gets
        # another scale, which multiplies sums of 0)
        x_np = x.contiguous().numpy()
        codes, scale, zero = np.empty(x_np.shape, np.uint8), np.empty(1, np.float32), np.empty(1, np.uint8)
        if integer_gemm.dynamic_quantize(x_np, codes, scale, zero, threads()):
            scales = (torch.from_numpy(scale).reshape(()) * packed["w_scale"]).numpy()  # [dirs, 1, 4H]
            out = torch.empty((dirs, x_np.shape[0], n4))
            if all(integer_gemm.run(codes, int(zero[0]), w, n4, out[d].numpy(), threads(), scale=scales[d])
                   for d, w in enumerate(packed["w_packed"])):
                return out
    qx, x_scale = quantize(x)
    projected = torch.matmul(qx.reshape(1, *qx.shape).to(packed["w"].dtype), packed["w"])
    return projected.to(torch.float32) * (x_scale * packed["w_scale"])


def kernel_takes(hidden: int) -> bool:
    """Whether the C++ step loop runs this layer: it is built (a C++ compiler), and its
    int32 sums of h.R cannot overflow (each term is within 255 * 255)."""
    return hidden * 255 * 255 < 2 ** 31 and kernel.available()


def run(params: dict, packed: dict, x, seq_lens, h0, c0, y, y_h, y_c) -> None:
    """Y, Y_h and Y_c (those given) written in place."""
    hidden, where = params["hidden_size"], params["where"]
    seq, batch = x.shape[:2]
    dirs = packed["w"].shape[0]
    lens = None
    if seq_lens is not None:
        lens = seq_lens.to(torch.int64).contiguous()
        if lens.shape != (batch,) or bool((lens < 0).any()) or bool((lens > seq).any()):
            raise ExecutionError(f"{where}: sequence_lens {lens.tolist()} for a batch of {batch} sequences "
                                 f"of at most {seq} steps")
    steps = seq if lens is None else int(lens.max()) if batch else 0  # onnxruntime runs the longest sequence's
    h = torch.zeros((dirs, batch, hidden)) if h0 is None else h0.to(torch.float32).clone().contiguous()
    c = torch.zeros((dirs, batch, hidden)) if c0 is None else c0.to(torch.float32).clone().contiguous()
    out = torch.zeros((seq, dirs, batch, hidden))
    if steps and batch:
        # X quantized once over the steps that run: a reversed direction reads the same rows
        projected = _project(x[:steps].reshape(steps * batch, -1), packed).view(dirs, steps, batch, -1)
        reversed_dirs = [params["direction"] == "reverse" or d == 1 for d in range(dirs)]
        order = _step_order(steps, lens, batch) if any(reversed_dirs) else None
        n = threads()
        kernel.run(projected, packed["r"], packed["r_scale"], packed["bias"], packed["peephole"], lens, order,
                   h, c, out[:steps], reversed_dirs, rows_per_group(batch, hidden, n), params.get("has_y", True), n,
                   packed.get("r8"))
    if lens is not None:  # an empty sequence's last states are 0
        h *= (lens > 0)[None, :, None]
        c *= (lens > 0)[None, :, None]
    for target, value in ((y, out), (y_h, h), (y_c, c)):
        if target is not None:
            target.copy_(value)


def _step_order(steps: int, lens, batch: int) -> torch.Tensor:
    """[steps, batch] indices reversing each sequence within its length (steps past it
    stay, as onnxruntime's ReverseSequence leaves them), contiguous int64."""
    t = torch.arange(steps)[:, None].expand(steps, batch)
    if lens is None:
        return (steps - 1 - t).contiguous()
    return torch.where(t < lens, lens - 1 - t, t).contiguous()
