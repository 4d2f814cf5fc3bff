"""The step loop of com.microsoft.DynamicQuantizeLSTM (codegen's cpu_quantized_lstm.cpp:
ember/codegen/handwritten.py, "quantized_lstm"), called through ctypes with the data
pointers of its arrays. Each step quantizes h and runs a small integer GEMM, then float32
gate arithmetic whose every bit must match onnxruntime's (the next step quantizes its
result), fused multiply-adds included: in torch, emulating those in float64 took ~90 us a
step for the logistic and tanh of one 256-unit layer alone; here a whole step takes ~15.
`available()` says whether a Program named the kernel's library (and it built); `run(...)`
runs it on float32 / int16 / int64 torch tensors, contiguous."""

from __future__ import annotations

import ctypes

from . import function


def _kernel():
    return function("quantized_lstm", "ember_quantized_lstm", [ctypes.c_void_p] * 13 + [ctypes.c_int64] * 8,
                    ctypes.c_int)


def vnni() -> bool:
    """Whether the step loop's build multiplies h by R in 8 bits with AVX-512 VNNI (it then
    takes R as `eight_bit_r` lays it out, else in int16)."""
    fn = function("quantized_lstm", "ember_quantized_lstm_vnni", [], ctypes.c_int64)
    return bool(fn is not None and fn())


def available() -> bool:
    return _kernel() is not None


def run(xw, r, r_scale, bias, peephole, lens, order, h, c, out, reversed_dirs: list[bool], group: int,
        has_y: bool, threads: int = 1, r8: tuple | None = None) -> None:
    """The recurrence (see cpu_quantized_lstm.cpp for what each array holds; r8, where
    given, R in 8 bits as the VNNI build takes it: `eight_bit_r`'s), the
    directions in `reversed_dirs` backwards (step order[t, b] at step t), h quantized in
    groups of `group` rows, the directions on up to `threads` threads; h, c and out are
    written in place."""
    dirs, steps, batch, n4 = xw.shape

    def ptr(t):
        return None if t is None else t.data_ptr()

    s, offset, colsum = r8 if r8 is not None else (None, None, None)
    _kernel()(ptr(xw), ptr(r), ptr(s), ptr(offset), ptr(colsum), ptr(r_scale), ptr(bias), ptr(peephole), ptr(lens),
              ptr(order), ptr(h), ptr(c), ptr(out), dirs, steps, batch, n4 // 4,
              sum(1 << d for d, back in enumerate(reversed_dirs) if back), group, int(has_y), max(1, min(threads, dirs)))
