"""The extern of ember.QuantizedLinear: ember's quantized GEMM (runtime/native/quantized_gemm.py)
on numpy arrays, a constant weight's blocks repacked once into its interleaved rows (the
same bytes, moved; a fed weight's rows as they are). Where that kernel did not build (no C++ compiler) or the call does not fit
it, the weight is dequantized once (at `prepare`, when constant) and numpy's GEMM runs."""

from __future__ import annotations

import numpy as np

from ..ir.quant_formats import block_format
from .externs import extern, native, prepare
from .native import quantized_gemm
from ._torch import threads as _threads


@prepare("quantized_linear")
def prepare_quantized_linear(params, constants):
    """A constant weight is packed here, once, in the kernel's interleaved rows (the
    formats it packs); without the kernel it is dequantized: [K, N] float32."""
    w = constants.get(1)
    if w is None:
        return params
    fmt = block_format(params["format"])
    if quantized_gemm.available():
        packed = quantized_gemm.pack(fmt.code, w, params["k"])
        return params if packed is None else {**params, "packed": packed}
    return {**params, "dequantized": fmt.dequantize(w).T}


@extern("quantized_linear", arrays=lambda params: True)
def quantized_linear(params, x, w, bias, y):
    fmt, activation, k = block_format(params["format"]), params["activation"], params["k"]
    rows = x.size // k
    x2 = x.reshape(rows, k) if x.flags.c_contiguous else np.ascontiguousarray(x).reshape(rows, k)
    y2 = y.reshape(rows, w.shape[0])
    packed = params.get("packed")
    if quantized_gemm.run(fmt.code, x2, w if packed is None else packed, w.shape[0], bias, y2, activation, _threads()):
        return
    dequantized = params.get("dequantized")
    if dequantized is None:
        dequantized = fmt.dequantize(w).T
    from ..ir.ops.ember_nn import ACTIVATIONS  # (the op registry: only where no kernel runs it)

    out = x2 @ dequantized
    if bias is not None:
        out += bias
    y2[...] = ACTIVATIONS[activation](out)


@extern("quantized_gather", arrays=lambda params: True)
def quantized_gather(params, w, ids, y):
    """ember.QuantizedGather: the rows of an embedding kept in its blocks, dequantized as they
    are looked up (the kernel's; numpy through gguf's dequantization where it does not run,
    which also reports an id out of range)."""
    fmt = block_format(params["format"])
    flat = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    out = y.reshape(flat.size, -1)
    if quantized_gemm.dequantize_rows(fmt.code, w, flat, out, _threads()):
        return
    out[...] = fmt.dequantize(w[flat])


@native("quantized_gather")
def quantized_gather_step(params, args):
    return quantized_gemm.dequantize_rows_step(block_format(params["format"]).code, args, _threads())


@native("quantized_linear")
def quantized_linear_step(params, args):
    """The kernel's step form, for a chained run (its weight packed where `prepare` packed it)."""
    return quantized_gemm.step(block_format(params["format"]).code, args, params.get("packed"), params["activation"],
                               _threads())
