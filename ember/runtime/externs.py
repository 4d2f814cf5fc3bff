"""Extern kernels: library implementations (torch's CPU kernels: MKL/oneDNN GEMMs,
fused attention, convolution; ember's hand-written tiled GEMM and attention) that steps
of a Program call by name.

Each takes the step's params and torch tensors viewing its buffers (inputs, then
outputs) and writes the outputs in place. An extern registered with `arrays=` a
predicate of its prepared params takes numpy arrays instead at the steps whose params
satisfy it (linear layers and Gemms on the tiled GEMM, encoder attention, If and Scan in
externs_control.py): a program whose every extern step does so never imports torch
(runtime/_torch.py: `torch` and `F` here import it on first use).

An extern may also have a `prepare(params, constants)` hook, which the executor calls
once per step with the step's constant inputs (index -> tensor; numpy arrays for an
extern with `arrays`) and whose returned params the step then runs with: it is where
weights are repacked into the layout the library kernel wants (oneDNN's blocked formats,
the tiled GEMM's panels), so no run pays for that.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np

from .native import gemm as _gemm, paged_attention, small_conv as _small
from ._torch import F, tensor as _tensor, threads as _threads, torch

EXTERNS: dict[str, Callable] = {}
PREPARE: dict[str, Callable] = {}
ADOPTS: set[str] = set()  # externs that, given None for their output, return it (after `prepare`)
ARRAYS: dict[str, Callable] = {}  # extern -> whether a step (its prepared params) takes numpy arrays
# extern -> its kernel's step form: (prepared params, [(slot, shape, numpy dtype) or None per
# argument]) -> (address of a C function int(const int64_t* ctx, char** B, const int64_t* S), its
# ctx: an int64 array) where the kernel takes the step at those shapes, else None. The executor
# calls it from C with the generated steps around it (executor._chain); the function reads its
# buffers' addresses from the slots B when it runs, and returns nonzero where it did nothing.
NATIVE: dict[str, Callable] = {}


def extern(name: str, adopts: bool = False, arrays: Callable[[dict], bool] | None = None):
    def register(fn):
        EXTERNS[name] = fn
        if adopts:
            ADOPTS.add(name)
        if arrays is not None:
            ARRAYS[name] = arrays
        return fn
    return register


def _as_tensors(*args):
    """Each argument as a torch tensor (numpy arrays viewed, None kept)."""
    return tuple(a if a is None or not isinstance(a, np.ndarray) else _tensor(a) for a in args)


def _store(y, result):
    """Write `result` into the output buffer y, or hand it over (y None: the executor adopts it)."""
    if y is None:
        return result if result.is_contiguous() else result.contiguous()
    y.copy_(result)
    return y


def native(name: str):
    def register(fn):
        NATIVE[name] = fn
        return fn
    return register


def prepare(name: str):
    def register(fn):
        PREPARE[name] = fn
        return fn
    return register


def _onednn() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


# activation -> (oneDNN post-op, its algorithm), and the same in torch for the other paths
_ONEDNN_ACTIVATIONS = {"": ("none", ""), "relu": ("relu", ""), "gelu": ("gelu", "none"),
                       "gelu_tanh": ("gelu", "tanh"), "silu": ("swish", ""), "hardswish": ("hardswish", "")}
_TORCH_ACTIVATIONS = {"": None, "relu": lambda y: y.relu_(), "gelu": lambda y: y.copy_(F.gelu(y)),
                      "gelu_tanh": lambda y: y.copy_(F.gelu(y, approximate="tanh")),
                      "silu": lambda y: y.copy_(F.silu(y)), "hardswish": lambda y: y.copy_(F.hardswish(y))}


class _LinearWeight:
    """A float32 weight for GEMMs: oneDNN's packed copy and the weight itself as a [K, N]
    view. oneDNN's GEMM costs ~25 us a call before any work (it builds its primitive's
    arguments each call) where MKL's addmm costs ~4 us, and runs large GEMMs up to 1.9x
    faster: a GEMM of at most `SMALL_MACS` multiply-adds runs on addmm, a larger one on
    the packed copy (benchmarks: hey_jarvis' 1x1536x128 takes 30 us on oneDNN, 10 on addmm;
    at 64x256x256 they are even). A weight of at most `SMALL_WEIGHT` elements (in a
    core's L2) runs on addmm at other row counts than `_row_class`'s too: padded to the
    class, oneDNN's GEMM took 1.15-1.35x addmm's time (the copy and up to a quarter more
    rows; 97x512x257: 152 vs 111 us on a 2-core Xeon). A larger one streams from memory,
    where oneDNN's packed layout runs 1.3-2.2x faster than addmm (15x1024x4096: 0.85 vs
    1.8 ms; chython-rxnmap 44 -> 79 ms on addmm), padded rows and all."""

    SMALL_MACS = 1 << 21
    SMALL_WEIGHT = 1 << 18
    __slots__ = ("packed", "kn")

    def __init__(self, w_nk):
        # a weight codegen stored transposed (`store_weights_transposed`) is packed as it
        # is; another is made contiguous first
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w_nk.contiguous(), None)
        self.kn = w_nk.t()

    def __call__(self, x, bias, activation: str, y=None):
        """act(x [..., K] @ W + bias), into y (of x's rows) where given."""
        k, n = self.kn.shape
        rows = x.numel() // k if k else 0
        if rows * k * n > self.SMALL_MACS and (_row_class(rows) == rows or k * n > self.SMALL_WEIGHT):
            attr, algorithm = _ONEDNN_ACTIVATIONS[activation]
            return _store(y, _packed_linear(x, self.packed, bias, attr, algorithm or None))
        if y is None:
            y = torch.empty((*x.shape[:-1], n), dtype=x.dtype)
        x2, y2 = x.reshape(rows, k), y.view(rows, n)
        if bias is not None:
            torch.addmm(bias, x2, self.kn, out=y2)
        else:
            torch.mm(x2, self.kn, out=y2)
        if activation:
            _TORCH_ACTIVATIONS[activation](y)
        return y


def _amd() -> bool:
    """Whether this CPU is AMD's (/proc/cpuinfo's vendor_id; False where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read(1 << 16)
    except OSError:
        return False
    return "AuthenticAMD" in text


class _TiledWeight:
    """A float32 GEMM weight [K, N] in ember's tiled GEMM's panels (runtime/native/gemm.py,
    cpu_gemm.cpp), which writes act(x W + bias) straight into the executor's buffer, the
    activation in its epilogue. oneDNN's GEMM allocated its result every call (the executor
    adopted it), and under ever-new shapes those allocations fragmented glibc's heap:
    MiniLM's soak grew 0.04-9.6% after warm-up, now 0.01-2%, and its peak memory is 19 MiB
    lower. On a 2-core Xeon it runs MiniLM b1 ~10% faster than oneDNN did (its 128-row
    GEMMs, split by panels), SmolLM2's decoding GEMMs (1-64 rows) 1.2-2x faster. Weights of
    any size: where a weight streams from memory (chython-rxnmap's 15-row GEMMs over 12 MiB
    weights, an LLM's vocabulary head) the panels stream 1.2-1.6x faster than oneDNN's
    packed layout on a 2-core AMD EPYC (AVX2; docs/benchmarks.md), and MKL's sgemm, with no
    packing, is 2-6x slower there at 4-64 rows. Past `TILED_ROWS` rows (`TILED_ROWS_ACTIVATION`
    with an activation to fuse) it has no blocking for that much x, and MKL's sgemm runs the
    call into the same buffer (SmolLM2's 2048-row prefill chunks: 12.6 ms where oneDNN took
    13.3 and the tiled kernel 17.4, on the Xeon); not where x's rows are `TILED_K` floats or
    fewer, as the GEMMs that convolutions lower to have (a block ConvTranspose's pixels,
    PP-OCRv6's 3200 x 24 -> 96 and 12800 x 24 -> 4: 236-288 and 128-230 us a call (in-process
    minima) on MKL's sgemm, whose thread pool sleeps between the model's rare torch calls;
    139-141 and 85-86 tiled, on a 2-core AMD EPYC). Calls take numpy arrays: only the sgemm
    imports torch."""

    # past this many rows MKL's sgemm runs it, into y, or past the second with an activation (then a
    # pass of its own); on AMD CPUs never. MKL does not run its AVX-512 kernels there: on a Zen 5
    # the tiled GEMM took half its time (MiniLM's linear layers at ~150 rows x 32 sentences). On
    # a Zen 3 (AVX2) it took 0.88-0.99 of MKL's time at 512-1024 rows of MiniLM's GEMMs,
    # 0.98-1.02 at 2048-4096, and 0.73-0.95 with the GELU to fuse (2 threads, in one process,
    # alternating).
    TILED_ROWS, TILED_ROWS_ACTIVATION = (1 << 62, 1 << 62) if _amd() else (256, 1024)
    TILED_K = 64  # ...but not with rows this short, a convolution's lowered as a GEMM (below)
    __slots__ = ("panels", "kn", "_kn_tensor")

    def __init__(self, w_kn: np.ndarray, panels: np.ndarray):
        self.kn, self.panels, self._kn_tensor = w_kn, panels, None

    @classmethod
    def of(cls, w_kn: np.ndarray) -> "_TiledWeight | None":
        """The weight [K, N] (a numpy array, any strides) packed, or None where the kernel
        does not build."""
        panels = _gemm.pack(w_kn)
        return None if panels is None else cls(w_kn, panels)

    @classmethod
    def on_tiles(cls, rows: int, k: int, activation: str) -> bool:
        """Whether a call of `rows` rows of `k` products runs on the tiled kernel (else MKL's sgemm)."""
        return rows <= (cls.TILED_ROWS if not activation else cls.TILED_ROWS_ACTIVATION) or k <= cls.TILED_K

    def __call__(self, x: np.ndarray, bias: np.ndarray | None, activation: str, y: np.ndarray | None = None):
        """act(x [..., K] @ W + bias), into y (of x's rows) where given; None where the call
        does not fit the kernel (the caller goes on)."""
        k, n = self.kn.shape
        gemm = _gemm
        if (not gemm.available()  # (no Program in this process named its library)
                or not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim == 0 or x.shape[-1] != k
                or activation not in gemm.ACTIVATIONS
                or (bias is not None and (not isinstance(bias, np.ndarray) or bias.dtype != np.float32
                                          or not bias.flags.c_contiguous or bias.size != n))
                or (y is not None and (not isinstance(y, np.ndarray) or not y.flags.c_contiguous))):
            return None
        rows = x.size // k if k else 0
        x2 = np.ascontiguousarray(x).reshape(rows, k)
        if y is None:
            y = np.empty((*x.shape[:-1], n), dtype=np.float32)
        if not rows or not n:
            return y
        threads = _threads()
        if self.on_tiles(rows, k, activation):
            gemm.run(x2, self.panels, bias, None, y, rows, k, n, activation, threads)
            return y
        if self._kn_tensor is None:
            self._kn_tensor = _tensor(self.kn)
        x_t, y_t = _tensor(x2), _tensor(y.reshape(rows, n))
        if bias is not None:
            torch.addmm(_tensor(bias), x_t, self._kn_tensor, out=y_t)
        else:
            torch.mm(x_t, self._kn_tensor, out=y_t)
        gemm.activate(y, activation, threads)
        return y


def _row_class(rows: int) -> int:
    """The row counts a packed GEMM runs at: `rows` up to 8, else one of four classes per
    doubling (128, 256, 1024 are classes; `rows` is rounded up to the next). oneDNN makes a
    primitive per GEMM shape, and it and torch each keep up to 1,024 (~0.6 MiB a shape
    between them at MiniLM's sizes): with the row count of every batch and every engine
    step, a process grew by hundreds of MiB. A GEMM of other rows runs padded to the next
    class (or on addmm: `_LinearWeight`), so up to 4,096 rows oneDNN sees 44 shapes a
    weight, and the caches stop growing once those exist."""
    step = 1 << max(rows.bit_length() - 3, 0)
    return -(-rows // step) * step


_padding = threading.local()  # per thread: the buffer padded GEMM inputs are copied into


def _packed_linear(x, packed, bias, attr: str, algorithm):
    """oneDNN's GEMM of x [..., K] with a packed weight (bias and activation as post-ops),
    run at `_row_class` rows: x copied into a buffer with zero rows after it (one per
    thread, as large as the largest so far), their results dropped."""
    rows, width = (x.numel() // x.shape[-1], x.shape[-1]) if x.shape[-1] else (0, 0)
    padded = _row_class(rows)
    if padded == rows:
        return torch.ops.mkldnn._linear_pointwise(x, packed, bias, attr, [], algorithm)
    buffer = getattr(_padding, "buffer", None)
    if buffer is None or buffer.numel() < padded * width or buffer.dtype != x.dtype:
        buffer = _padding.buffer = torch.empty(padded * width, dtype=x.dtype)
    x2 = buffer[:padded * width].view(padded, width)
    rows_np = x2.numpy()  # numpy's copy: torch's took ~20 ms for 800x384 on a busy 2-core VM
    rows_np[:rows] = x.numpy().reshape(rows, width)
    rows_np[rows:] = 0
    y = torch.ops.mkldnn._linear_pointwise(x2, packed, bias, attr, [], algorithm)
    return y[:rows].view(*x.shape[:-1], y.shape[-1])


@prepare("linear")
def prepare_linear(params, constants):
    """A float32 constant weight [K, N] is packed once, for ember's tiled GEMM (into the
    planned buffer, the activation in its epilogue); where that kernel does not build, for
    oneDNN's GEMM (the bias and the activation as post-ops)."""
    w = constants.get(1)
    if w is None or w.dtype != np.float32 or w.ndim != 2 or w.size == 0:
        return params
    if (tiled := _TiledWeight.of(w)) is not None:
        return {**params, "tiled": tiled}
    if not _onednn():
        return params
    return {**params, "packed": _LinearWeight(_tensor(w).t())}


def _tiled(params) -> bool:
    return "tiled" in params


@extern("linear", adopts=True, arrays=_tiled)
def linear(params, x, w, bias, y):
    activation = params.get("activation", "")
    tiled = params.get("tiled")
    if tiled is not None:  # (numpy arguments)
        if (out := tiled(x, bias, activation, y)) is not None:
            return out
        x, w, bias, y = _as_tensors(x, w, bias, y)
    packed = params.get("packed")
    if packed is not None and x.dtype == torch.float32 and x.numel() and (bias is None or bias.dtype == x.dtype):
        return packed(x, bias, activation, y)
    if y is None:
        y = torch.empty((*x.shape[:-1], w.shape[-1]), dtype=x.dtype)
    if x.numel() == 0 or w.numel() == 0:
        y.copy_(x @ w + (bias if bias is not None else 0))
    else:
        x2, y2 = x.reshape(-1, x.shape[-1]), y.view(-1, y.shape[-1])
        if bias is not None:
            torch.addmm(bias, x2, w, out=y2)
        else:
            torch.mm(x2, w, out=y2)
    if _TORCH_ACTIVATIONS[activation] is not None:
        _TORCH_ACTIVATIONS[activation](y)
    return y


# -- step forms of the tiled kernels (NATIVE: an executor's chained run calls them from C):
# each builder takes a step exactly where the extern above would run it on ember's kernel,
# at the binding's shapes; the extern's Python call cost 10-20 us a step (MiniLM b1: ~0.5 ms
# of a 21 ms run).
_F32 = np.dtype(np.float32)


def _f32(arg) -> bool:
    """Whether a step argument ((slot, shape, dtype) or None) is a float32 buffer."""
    return arg is not None and arg[2] == _F32


def _slot(arg) -> int:
    return -1 if arg is None else arg[0]


def _tiled_step(weight: "_TiledWeight", x, bias, bias_array, total, y, activation: str, sgemm_past: bool):
    """The tiled GEMM's step form for act(x [..., K] W + bias + total) -> y [..., N]: the
    bias a float32 slot (`bias`) or a prepared array, or none. `sgemm_past`: where
    `_TiledWeight` hands the call to MKL's sgemm past its row limits, the step is not taken."""
    k, n = weight.kn.shape
    if (not _gemm.available() or not (_f32(x) and _f32(y)) or not x[1] or x[1][-1] != k
            or tuple(y[1]) != (*x[1][:-1], n) or activation not in _gemm.ACTIVATIONS
            or (bias is not None and (not _f32(bias) or math.prod(bias[1]) != n))
            or (total is not None and (not _f32(total) or tuple(total[1]) != tuple(y[1])))):
        return None
    rows = math.prod(x[1][:-1])
    if not rows or (sgemm_past and not _TiledWeight.on_tiles(rows, k, activation)):
        return None
    return _gemm.gemm_step(x[0], weight.panels, _slot(bias), bias_array, _slot(total), y[0], rows, k, n,
                           activation, _threads())


@native("linear")
def linear_step(params, args):
    x, _, bias, y = args
    tiled = params.get("tiled")
    return None if tiled is None else _tiled_step(tiled, x, bias, None, None, y, params.get("activation", ""), True)


@native("gemm")
def gemm_step(params, args):
    a, _, _, y = args
    tiled = params.get("tiled")
    if tiled is None or params["trans_a"]:
        return None
    return _tiled_step(tiled, a, None, params["bias"], None, y, "", True)


@native("conv")
def conv_step(params, args):
    """The channels-last convolutions' step forms (the tiled GEMM's 1x1, depthwise,
    Winograd, direct), in `conv`'s order of preference."""
    x, _, bias, total, y = args
    activation = params.get("activation", "")
    if bias is not None and not _f32(bias) or total is not None and not _f32(total) or not _f32(x):
        return None
    if params.get("tiled") is not None:
        return _tiled_step(params["tiled"], x, bias, None, total, y, activation, False)
    kernel = next((k for k in ("depthwise", "winograd", "direct") if params.get(k) is not None), None)
    if kernel is None or len(x[1]) != 4 or not _f32(y):
        return None
    shape = tuple(x[1])
    plan = _conv_plan(params, kernel, shape)
    if plan is None:
        return None
    panels, out, pads, strides, dilations, window = plan
    if tuple(y[1]) != out or (total is not None and tuple(total[1]) != out):
        return None
    slots, threads, o, hw = (x[0], panels, _slot(bias), _slot(total), y[0]), _threads(), out[3], out[1:3]
    if kernel == "depthwise":
        return _gemm.depthwise_step(*slots, shape, window, strides, dilations, pads, hw, activation, threads)
    if kernel == "winograd":
        return _gemm.winograd_step(*slots, shape, o, pads, hw, activation, threads)
    return _gemm.conv_step(*slots, shape, o, window, strides, dilations, pads, hw, activation, threads)


@native("attention")
def attention_step(params, args):
    """The encoder attention's step form (not causal; q, k and v packed in one buffer or
    three, a float32 mask that broadcasts to the scores or none)."""
    q, k, v, mask, starts, y = args
    heads, kv_heads = params["num_heads"], params["kv_num_heads"]
    if (params["causal"] or not _f32(q) or not _f32(y) or len(q[1]) != 3 or len(y[1]) != 3 or not heads
            or not kv_heads or heads % kv_heads or (mask is not None and (not _f32(mask) or len(mask[1]) > 4))
            or (starts is not None and (mask is not None or starts[2] != np.int64 or len(starts[1]) != 1
                                        or q[1][0] != 1))):
        return None
    b, sq, width = q[1]
    if k is None:  # packed [B, S, (H + 2 Hkv) D]
        if v is not None or width % (heads + 2 * kv_heads):
            return None
        d, sk = width // (heads + 2 * kv_heads), sq
        qs, ks, vs = ((q[0], offset, sq * width, width) for offset in (0, heads * d, (heads + kv_heads) * d))
    else:
        if not (_f32(k) and _f32(v)) or len(k[1]) != 3 or width % heads:
            return None
        d, sk = width // heads, k[1][1]
        if tuple(k[1]) != (b, sk, kv_heads * d) or tuple(v[1]) != tuple(k[1]):
            return None
        qs, ks, vs = (q[0], 0, sq * width, width), (k[0], 0, sk * kv_heads * d, kv_heads * d), \
            (v[0], 0, sk * kv_heads * d, kv_heads * d)
    if not d or tuple(y[1]) != (b, sq, heads * d):
        return None
    ms = None
    if mask is not None:  # a contiguous mask's strides, broadcast to [B, H, Sq, Sk] (0 along its dims of 1)
        shape = (1,) * (4 - len(mask[1])) + tuple(mask[1])
        if any(m not in (1, full) for m, full in zip(shape, (b, heads, sq, sk))):
            return None
        strides = [math.prod(shape[i + 1:]) if shape[i] != 1 else 0 for i in range(4)]
        if sk > 1 and strides[3] != 1:
            return None
        ms = (mask[0], *strides[:3])
    if starts is not None:
        b = starts[1][0] - 1
    return _gemm.attention_step(qs, ks, vs, ms, (y[0], 0, sq * heads * d, heads * d), (b, heads, kv_heads, sq, sk, d),
                                params["scale"] or d ** -0.5, _threads(), -1 if starts is None else starts[0])


@extern("matmul")
def matmul(params, a, b, y):
    if a.numel() == 0 or b.numel() == 0:
        y.copy_(torch.matmul(a, b))
    elif a.dim() >= 2 and b.dim() == 2 and y.dim() == a.dim():
        torch.mm(a.reshape(-1, a.shape[-1]), b, out=y.view(-1, y.shape[-1]))
    elif a.dim() == b.dim() == y.dim() == 3 and a.shape[0] == b.shape[0]:
        torch.bmm(a, b, out=y)
    else:
        y.copy_(torch.matmul(a, b))


@prepare("gemm")
def prepare_gemm(params, constants):
    """Gemm(A, B, C) with alpha = beta = 1, A not transposed and B constant is a linear
    layer: B packed like ember.Linear's weight (for the tiled GEMM or oneDNN), C (a row of N, or none) its bias."""
    b, c = constants.get(1), constants.get(2)
    if (b is None or b.dtype != np.float32 or params["trans_a"] or params["alpha"] != 1
            or not (c is None or params["beta"] == 1) or b.size == 0 or b.ndim != 2):
        return params
    n = b.shape[0] if params["trans_b"] else b.shape[1]
    if c is not None and (c.dtype != np.float32 or c.size != n or c.ndim == 2 and c.shape[0] != 1):
        return params
    w_kn = b.T if params["trans_b"] else b
    bias = None if c is None else np.ascontiguousarray(c.reshape(n))
    if (tiled := _TiledWeight.of(w_kn)) is not None:
        return {**params, "tiled": tiled, "bias": bias}
    if not _onednn():
        return params
    return {**params, "packed": _LinearWeight(_tensor(w_kn).t()),
            "bias": None if bias is None else _tensor(bias)}


@extern("gemm", adopts=True, arrays=_tiled)
def gemm(params, a, b, c, y):
    tiled = params.get("tiled")
    if tiled is not None:  # (numpy arguments)
        if not params["trans_a"] and (out := tiled(a, params["bias"], "", y)) is not None:
            return out
        a, b, c, y = _as_tensors(a, b, c, y)
        params = {**params, "bias": _tensor(params["bias"]) if params["bias"] is not None else None}
    packed = params.get("packed")
    if packed is not None and a.dtype == torch.float32 and a.numel():
        return packed(a, params["bias"], "", y)
    if y is None:
        y = torch.empty(a.shape[1] if params["trans_a"] else a.shape[0],
                        b.shape[0] if params["trans_b"] else b.shape[1], dtype=a.dtype)
    a = a.t() if params["trans_a"] else a
    b = b.t() if params["trans_b"] else b
    alpha, beta = params["alpha"], params["beta"]
    if c is None or beta == 0:
        torch.mm(a, b, out=y)
        if alpha != 1:
            y.mul_(alpha)
    else:
        torch.addmm(c, a, b, beta=beta, alpha=alpha, out=y)
    return y


def _small_conv(params, x, w, bias, total, y):
    """A channels-first float32 1-d or 2-d convolution of at most small_conv.MAX_MACS
    multiply-adds on ember's direct loop (runtime/native/small_conv.py), the bias and a ReLU in
    it, a residual added after; None where it does not apply (the caller goes on). Runs
    for silero VAD's 18 Conv1d: every microsecond of Python here is paid 18 times a run."""
    small = params.get("small_weight")
    if small is None or x.dtype != torch.float32 or not x.is_contiguous():
        return None
    activation = params.get("activation", "")
    if (activation not in ("", "relu") or (bias is not None and bias.dtype != torch.float32)
            or (y is not None and not y.is_contiguous())):
        return None
    groups, per_group, kh, kw, outs = small.shape
    pads, strides, dilations = _pads_for(params, x), params["strides"], params["dilations"]
    if x.dim() == 3:  # as height 1
        n, c, width = x.shape
        h, out_h, geometry = 1, 1, (1, strides[0], 1, dilations[0], 0, pads[0])
        out_w = (width + pads[0] + pads[1] - dilations[0] * (kw - 1) - 1) // strides[0] + 1
    elif x.dim() == 4:
        n, c, h, width = x.shape
        out_h = (h + pads[0] + pads[2] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
        out_w = (width + pads[1] + pads[3] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
        geometry = (strides[0], strides[1], dilations[0], dilations[1], pads[0], pads[1])
    else:
        return None
    if out_h < 1 or out_w < 1 or n * groups * outs * out_h * out_w * per_group * kh * kw > _small.MAX_MACS:
        return None
    kernel = _small.kernel()
    if kernel is None:
        return None
    result = y if y is not None else torch.empty((n, groups * outs, out_w) if x.dim() == 3 else
                                                 (n, groups * outs, out_h, out_w), dtype=x.dtype)
    _small.RUNS[0] += 1
    kernel(x.data_ptr(), small.data_ptr(), None if bias is None else bias.data_ptr(), result.data_ptr(), n, c, h,
           width, groups * outs, kh, kw, out_h, out_w, *geometry, groups, int(activation == "relu" and total is None))
    if total is not None:
        result += total
        if activation == "relu":
            result.relu_()
    return result


def _pointwise_conv(params, weight: _LinearWeight, x, bias, total, y):
    """A 1x1 convolution of channels-last x [N, *spatial, C] as one GEMM over its rows,
    the bias and the activation as post-ops; with a residual, act(x W + b + total). At
    the rows it was prepared for (`exact_rows`), oneDNN's GEMM runs them unpadded, the
    residual added as a post-op too."""
    activation = params.get("activation", "")
    k, n = weight.kn.shape
    if x.numel() // k == params.get("exact_rows"):
        x2 = x.view(-1, k)
        if total is None:
            attr, algorithm = _ONEDNN_ACTIVATIONS[activation]
            result = torch.ops.mkldnn._linear_pointwise(x2, weight.packed, bias, attr, [], algorithm or None)
        else:
            result = torch.ops.mkldnn._linear_pointwise.binary(x2, total.view(-1, n), weight.packed, bias, "add")
            if activation:
                _TORCH_ACTIVATIONS[activation](result)
        return _store(y, result.view(*x.shape[:-1], n))
    if total is None:
        return weight(x, bias, activation, y)
    result = weight(x, bias, "", y)
    result += total
    if activation:
        _TORCH_ACTIVATIONS[activation](result)
    return result


_SDPA_MIN_SCORES = 1 << 16  # heads x queries x keys from which an encoder's attention runs on SDPA


def _encoder(params) -> bool:
    return not params["causal"]


@extern("attention", arrays=_encoder)
def attention(params, q, k, v, bias, starts, y):
    heads, kv_heads, scale, causal = params["num_heads"], params["kv_num_heads"], params["scale"], params["causal"]
    if k is None:  # q, k and v packed in one [B, S, (H + 2 Hkv) * D] tensor: strided views of it
        from ..ir.packed_qkv import split_qkv

        q, k, v = split_qkv(q, heads, kv_heads)
    if starts is not None:  # packed rows: sequences that attend within themselves
        _packed_rows_attention(q, k, v, starts, y, heads, kv_heads, scale)
        return
    if not causal:  # (numpy arguments) packed rows run on ember's encoder attention (runtime/native/gemm.py)
        if (q.ndim == 3 and q.dtype == k.dtype == v.dtype == y.dtype == np.float32
                and (bias is None or bias.dtype == np.float32)
                and _gemm.attention(q, k, v, bias, y, heads, kv_heads, scale or (q.shape[-1] // heads) ** -0.5,
                                               _threads())):
            return  # ember's tiled kernel (codegen/cpu_gemm.cpp): no scores or result tensor
        q, k, v, bias, y = _as_tensors(q, k, v, bias, y)
    # where it declines, an encoder's attention over many scores runs on torch's fused SDPA
    # kernel: ember's paged one (made for decoding) and the per-row GEMMs took 1.12-1.2x
    # its time at MiniLM's 12 heads x 128 x 128 (batch 1 and 8, a 2-core Xeon, torch 2.13)
    encoder = not causal and heads * q.shape[-2 if q.dim() == 4 else 1] * k.shape[-2 if k.dim() == 4 else 1] \
        >= _SDPA_MIN_SCORES
    if q.dim() == 3:  # packed [B, S, H*D]
        if not encoder and paged_attention.dense_attention(q, k, v, bias, y, heads, kv_heads, scale, causal):
            return  # ember's fused kernel (the paged one, each batch row a sequence)
        b, sq, sk = q.shape[0], q.shape[1], k.shape[1]
        q = q.view(b, sq, heads, -1).transpose(1, 2)
        k = k.view(b, sk, kv_heads, -1).transpose(1, 2)
        v = v.view(b, sk, kv_heads, -1).transpose(1, 2)
        out = y.view(b, sq, heads, -1).transpose(1, 2)
    else:
        out = y
    sq, sk = q.shape[-2], k.shape[-2]
    mask = bias
    if causal and (sq != sk or bias is not None):  # ember aligns the causal mask to the end
        visible = torch.ones(sq, sk, dtype=torch.bool, device=q.device).tril(sk - sq)
        causal_bias = torch.zeros(sq, sk, dtype=q.dtype, device=q.device).masked_fill(~visible, float("-inf"))
        mask = causal_bias if bias is None else bias + causal_bias
        causal = False
    if (not causal and not encoder and kv_heads == heads and q.dtype == torch.float32 and heads * sq * sk <= 1 << 21
            and (mask is None or bool(torch.isfinite(mask).all()))):
        _attention_per_batch(q, k, v, mask, scale or q.shape[-1] ** -0.5, out)
        return
    result = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=bool(causal),
                                            scale=scale or None, enable_gqa=kv_heads != heads)
    out.copy_(result)


def _packed_rows_attention(q, k, v, starts, y, heads, kv_heads, scale):
    """ember.Attention over packed rows: q, k, v and y [1, T, ...], sequence b rows starts[b]
    to starts[b + 1] (checked here: a bad `starts` is the caller's error, named), on ember's
    kernel where it takes them, else (the cuda target's torch tensors) as one SDPA call: the
    sequences gathered into [n, longest] rows, the keys past each one's end masked, and the
    real rows scattered back."""
    from ..ir.ops.ember_nn import check_starts

    bounds = np.asarray(starts.cpu() if isinstance(starts, torch.Tensor) else starts)
    check_starts(bounds, q.shape[1])
    if (isinstance(q, np.ndarray) and q.dtype == k.dtype == v.dtype == y.dtype == np.float32
            and _gemm.attention(q, k, v, None, y, heads, kv_heads, scale or (q.shape[-1] // heads) ** -0.5,
                                _threads(), starts=np.ascontiguousarray(bounds, np.int64))):
        return
    q, k, v, y = _as_tensors(q, k, v, y)
    lengths = np.diff(bounds)
    longest = int(lengths.max(initial=0))
    if longest == 0:
        return
    offsets = np.arange(longest)
    real = offsets[None, :] < lengths[:, None]  # [n, longest]
    index = torch.from_numpy(np.where(real, bounds[:-1, None] + offsets[None, :], 0)).to(q.device)
    rows = [x[0][index].unflatten(-1, (n, -1)).transpose(1, 2) for x, n in ((q, heads), (k, kv_heads), (v, kv_heads))]
    mask = torch.zeros(real.shape, dtype=q.dtype).masked_fill_(torch.from_numpy(~real), float("-inf"))
    result = F.scaled_dot_product_attention(*rows, attn_mask=mask[:, None, None, :].to(q.device), scale=scale or None,
                                            enable_gqa=kv_heads != heads)  # [n, H, longest, D]
    keep = torch.from_numpy(real).to(q.device)
    y[0][index[keep]] = result.transpose(1, 2).flatten(-2)[keep]


def _attention_per_batch(q, k, v, mask, scale, out):
    """[B, H, S, D] attention one batch row at a time: the scores of a row's heads (at most
    8 MB) in one GEMM with the scale and the mask folded in, softmax, one GEMM into the
    output. At BERT sizes this beats the fused SDPA kernel's blocking by ~20% (batch 1
    and 8, benchmarks/onnx_cpu.py); the finite mask keeps every row a distribution."""
    kt = k.transpose(-1, -2)
    if mask is not None:
        mask = mask.expand(q.shape[0], q.shape[1], q.shape[2], k.shape[2])  # a view: broadcast dims stride 0
    for b in range(q.shape[0]):
        scores = (torch.baddbmm(mask[b], q[b], kt[b], alpha=scale) if mask is not None
                  else torch.bmm(q[b], kt[b]).mul_(scale))
        out[b].copy_(torch.bmm(torch.softmax(scores, -1), v[b]))


def _pad(x, pads, value):
    dims = len(pads) // 2
    return F.pad(x, [p for pair in zip(reversed(pads[:dims]), reversed(pads[dims:])) for p in pair], value=value)


def _pads_for(params, x) -> list[int]:
    """(begin..., end...) pads: fixed when compiled, or (SAME at a stride above 1 on a
    symbolic size) ONNX's SAME padding of this input's spatial size."""
    if params["pads"] is not None:
        return params["pads"]
    begin, end = [], []
    for n, k, s, d in zip(x.shape[2:], params["kernel"], params["strides"], params["dilations"]):
        total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
        small, big = total // 2, total - total // 2
        begin.append(small if params["same"] == "SAME_UPPER" else big)
        end.append(big if params["same"] == "SAME_UPPER" else small)
    return begin + end


@extern("pool")
def pool(params, x, y):
    if params.get("channels_last"):
        x, y = _channels_first_view(x), _channels_first_view(y)
    dims = x.dim() - 2
    pads, kernel, strides = _pads_for(params, x), params["kernel"], params["strides"]
    begin, end = pads[:dims], pads[dims:]
    symmetric = list(begin) == list(end) and all(p <= k // 2 for p, k in zip(begin, kernel))
    if params["kind"] == "max":
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[dims]
        if not symmetric:
            x, begin = _pad(x, pads, float("-inf")), [0] * dims
        result = fn(x, kernel, strides, tuple(begin), dilation=tuple(params["dilations"]), ceil_mode=params["ceil_mode"])
    else:
        fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[dims]
        if not symmetric:
            x, begin = _pad(x, pads, 0.0), [0] * dims
        result = fn(x, kernel, strides, tuple(begin), ceil_mode=params["ceil_mode"],
                    count_include_pad=params["count_include_pad"])
    y.copy_(result)


def _channels_first_view(t):
    return t.permute(0, t.dim() - 1, *range(1, t.dim() - 1))


def _conv_args(params, x):
    """(padding, stride, dilation) for torch, or None when the pads are asymmetric or
    depend on the input's size."""
    dims = x.dim() - 2
    pads = params["pads"]
    if pads is None or list(pads[:dims]) != list(pads[dims:]):
        return None
    return list(pads[:dims]), list(params["strides"]), list(params["dilations"])


@prepare("conv")
def prepare_conv(params, constants):
    """A float32 constant 2-d filter is packed once: a channels-last 1x1 one for the tiled
    GEMM (`_tiled_weight`), another channels-last one of one group for ember's direct
    convolution (`_direct_weight`), the rest into oneDNN's blocked layout (the bias, the
    residual sum and the activation as post-ops of the convolution). A channels-first one is
    also laid out for ember's small direct loop ([groups, C/groups, KH, KW, O/groups]),
    which runs the calls of tiny work."""
    w = constants.get(1)
    if (tiled := _tiled_weight(params, w)) is not None:
        prepared = {**params, "tiled": tiled}
    elif (winograd := _winograd_weight(params, w)) is not None:
        prepared = {**params, "winograd": winograd}
    elif (depthwise := _depthwise_weight(params, w)) is not None:
        prepared = {**params, "depthwise": depthwise}
    elif (direct := _direct_weight(params, w)) is not None:
        prepared = {**params, "direct": direct}
    else:
        prepared = _prepare_onednn(params, constants)
    # a call does at least w.numel() multiply-adds (one output position): a larger filter
    # never runs on the small loop, and is not laid out for it
    if (w is not None and w.dtype == torch.float32 and w.dim() in (3, 4) and not params.get("channels_last")
            and w.shape[0] % params["group"] == 0 and w.numel() <= _small.MAX_MACS):
        w4 = w.unsqueeze(2) if w.dim() == 3 else w
        o, per_group, kh, kw = w4.shape
        groups = params["group"]
        small = w4.reshape(groups, o // groups, per_group, kh, kw).permute(0, 2, 3, 4, 1).contiguous()
        prepared = {**prepared, "small_weight": small}
    return prepared


def _prepare_onednn(params, constants):
    w = constants.get(1)
    if (w is None or w.dtype != torch.float32 or w.dim() not in (3, 4) or not _onednn()
            or params.get("activation", "") not in _ONEDNN_ACTIVATIONS or _conv_args(params, w) is None):
        return params
    padding, stride, dilation = _conv_args(params, w)
    if w.dim() == 3:
        # a 1-d convolution runs as a 2-d one of height 1: torch's own conv1d takes 3.6x as
        # long (attacut's dilated Conv1d: 276 vs 77 us). Not one whose window outgrows the
        # stand-in for a symbolic length: packed for that stand-in, oneDNN's kernel for the
        # real length can be 30x slower than torch's (gigaam's 320-tap framing conv)
        shape = params.get("input_shape")
        extent = (w.shape[2] - 1) * dilation[0] + 1
        if not params.get("static_input") and (not shape or extent > shape[2]):
            return params
        args = ([0, *padding], [1, *stride], [1, *dilation])
        packed = _pack_conv_weight(w.unsqueeze(2), args, params["group"], [*shape[:2], 1, shape[2]] if shape else None)
        if packed is None:
            return params
        return {**params, "packed": packed, "one_d": True, "torch_args": args}
    if (params.get("channels_last") and not params.get("static_input") and w.shape[2:] == (1, 1) and params["group"] == 1
            and padding == [0, 0] and stride == [1, 1]):
        # a pointwise convolution over [N, H, W, C] rows is a GEMM: packed as a linear
        # weight it runs at full speed whatever H and W are, where a convolution weight
        # packed without the input's shape (a symbolic one) can run 40x slower (1x1 at 3x40).
        # Known but for the batch, the calls of the stand-in batch run oneDNN's GEMM at
        # their exact rows, one shape more for its primitive cache: as fast as its
        # convolution packed for that shape or faster (64->128 channels at 56x56: 169 vs 350
        # us, 16->32 at 112x112: 66 vs 114 on a 2-core Xeon), where padded to a row class
        # the copy took as long as the GEMM
        rows = math.prod(shape[2:]) * shape[0] if len(shape := params.get("input_shape") or []) == 4 else 0
        exact = params.get("static_but_batch") and rows * w.shape[0] * w.shape[1] > _LinearWeight.SMALL_MACS
        return {**params, "pointwise": _LinearWeight(w.reshape(w.shape[0], w.shape[1])),
                "exact_rows": rows if exact else None}
    # without the input shape oneDNN may pick a layout its kernel for the real shape does not
    # take (a 1x1 conv at 14x14 then runs 7x slower)
    packed = _pack_conv_weight(w, (padding, stride, dilation), params["group"], params.get("input_shape"))
    if packed is None:
        return params
    return {**params, "packed": packed, "torch_args": (padding, stride, dilation)}


def _pack_conv_weight(w, args, group: int, input_shape):
    """oneDNN's packed copy of a 2-d filter for inputs of `input_shape` (a stand-in where
    sizes are symbolic), without it where oneDNN refuses that shape (a stand-in shorter
    than the window), or None where it refuses both: the convolution then runs on torch's."""
    for shape in (input_shape, None) if input_shape else (None,):
        try:
            return torch.ops.mkldnn._reorder_convolution_weight(w.contiguous(), *args, group, shape)
        except RuntimeError:
            continue
    return None


def _tiled_weight(params, w):
    """A channels-last 1x1 convolution's float32 constant filter [N, K, 1, 1] (stride 1, no
    pads, an epilogue the kernel runs) as a `_TiledWeight` (the tiled GEMM's panels,
    runtime/native/gemm.py), of any size: it ran every 1x1 convolution of PP-OCRv6's detector,
    ResNet-50 and a classifier's head at 0.66-0.99x oneDNN's time (3200 rows of 48 -> 96:
    196 vs 287 us; 49 rows of 2048 -> 512: 636 vs 674; on a 2-core AMD EPYC). Else None."""
    if (w is None or w.dtype != torch.float32 or w.dim() != 4 or tuple(w.shape[2:]) != (1, 1)
            or not params.get("channels_last") or params["group"] != 1
            or params.get("activation", "") not in _gemm.ACTIVATIONS
            or list(params["strides"]) != [1, 1] or params["pads"] is None or any(params["pads"])):
        return None
    n, k = w.shape[:2]
    return _TiledWeight.of(w.reshape(n, k).t().numpy())


def _direct_weight(params, w):
    """A channels-last 2-d convolution's float32 constant filter (one group, an epilogue
    the tiled kernels run; not a 1x1 one of stride 1, a GEMM over rows) in ember's direct
    convolution's panels (runtime/native/gemm.py), with its [O, C, KH, KW] shape. It runs every
    size (oneDNN packs a filter for one input size, a compile-time stand-in where sizes are
    symbolic, and its kernel for another can run 2x slower: deepcut's 1x10 and 1x11 over 49
    rows, 2.2 ms where packed for their shape 0.7-1.2), at oneDNN's speed or better at the
    size oneDNN packed for (openwakeword's embedding, 3x1 and 1x3 filters over 2-32 wide
    inputs: 1.8 -> 1.0 ms; MTCNN's O-Net 0.49 -> 0.37; ResNet-50 and opennsfw even or 4%
    faster, on a 2-core AMD EPYC), and writes the planned buffer where the executor gives
    one, the residual added in its epilogue. Else None."""
    if (w is None or w.dtype != torch.float32 or w.dim() != 4 or not params.get("channels_last")
            or params["group"] != 1 or params["pads"] is None
            or (tuple(w.shape[2:]) == (1, 1) and list(params["strides"]) == [1, 1] and not any(params["pads"]))
            or w.shape[2] * w.shape[3] > _gemm.CONV_MAX_TAPS
            or params.get("activation", "") not in _gemm.ACTIVATIONS):
        return None
    panels = _gemm.conv_pack(w.numpy())
    return None if panels is None else (panels, tuple(w.shape))


WINOGRAD_MIN_CHANNELS = 64  # input and output channels from which a 3x3 filter runs as Winograd's
WINOGRAD_MIN_TILES = 16  # ...and its output's 2x2 tiles, where the input's size is known


def _winograd_weight(params, w):
    """A channels-last 3x3 convolution's float32 constant filter (stride 1, no dilation, one
    group, at least WINOGRAD_MIN_CHANNELS channels in and out, no epilogue but ReLU) as
    Winograd F(2x2, 3x3)'s 16 transformed filters in the GEMM's panels (runtime/native/gemm.py,
    `winograd_conv`; `_direct_conv` runs it), with its [O, C, 3, 3] shape: 2.25x fewer
    multiply-adds than the direct kernel's. Against the direct kernel (2 threads of a 2-core
    AMD EPYC Zen 3, standalone): 28x28 128 -> 128 1.23-1.51x faster, 14x14 256 -> 256 1.54-1.82x, 7x7 512 -> 512
    1.15-1.33x, 14x14 64 -> 64 1.08-1.25x, 56x56 64 -> 64 0.83-1.24x; at 2x2 512 -> 512 (one
    tile) 0.64-0.83x, so where the input's size is known its output must have
    WINOGRAD_MIN_TILES tiles. Else None."""
    if (w is None or w.dtype != torch.float32 or w.dim() != 4 or tuple(w.shape[2:]) != (3, 3)
            or not params.get("channels_last") or params["group"] != 1 or params["pads"] is None
            or list(params["strides"]) != [1, 1] or list(params["dilations"]) != [1, 1]
            or min(w.shape[:2]) < WINOGRAD_MIN_CHANNELS
            or params.get("activation", "") not in _gemm.WINOGRAD_ACTIVATIONS):
        return None
    shape = params.get("input_shape")  # ([N, C, H, W], channels-last or not)
    if params.get("static_input") and shape and len(shape) == 4:
        n, h, w_ = shape[0], shape[2], shape[3]
        top, left, bottom, right = params["pads"]
        if n * -(-(h + top + bottom - 2) // 2) * -(-(w_ + left + right - 2) // 2) < WINOGRAD_MIN_TILES:
            return None
    panels = _gemm.winograd_pack(w.numpy())
    return None if panels is None else (panels, tuple(w.shape))


def _depthwise_weight(params, w):
    """A channels-last 2-d depthwise convolution's float32 constant filter ([C, 1, KH, KW],
    one group per channel, an epilogue the tiled kernels run) as ember's depthwise kernel
    reads it ([KH][KW][C]; runtime/native/gemm.py `depthwise`), with its shape. Else None."""
    if (w is None or w.dtype != torch.float32 or w.dim() != 4 or not params.get("channels_last")
            or params["group"] != w.shape[0] or params["group"] < 2 or w.shape[1] != 1 or params["pads"] is None
            or params.get("activation", "") not in _gemm.ACTIVATIONS):
        return None
    packed = _gemm.depthwise_pack(w.numpy())
    return None if packed is None else (packed, tuple(w.shape))


def _conv_plan(params, kernel: str, shape: tuple) -> tuple | None:
    """For the filter params[kernel] packed ("direct", "winograd" or "depthwise") over an
    [N, H, W, C] input of `shape`: (its panels, the output's [N, OH, OW, O], pads (top, left),
    strides, dilations, the window (KH, KW)); None where C is not the filter's or the input
    or the output is empty."""
    panels, (o, per_group, kh, kw) = params[kernel]
    n, h, w, c = shape
    if c != (o if kernel == "depthwise" else per_group) or not n * h * w:
        return None
    top, left, bottom, right = params["pads"]
    (sh, sw), (dh, dw) = params["strides"], params["dilations"]
    oh, ow = (h + top + bottom - (kh - 1) * dh - 1) // sh + 1, (w + left + right - (kw - 1) * dw - 1) // sw + 1
    return None if oh <= 0 or ow <= 0 else (panels, (n, oh, ow, o), (top, left), (sh, sw), (dh, dw), (kh, kw))


def _tiles_take(x, bias, total, y) -> bool:
    """Whether the tiled kernels (the GEMM, the direct convolution) take these operands:
    float32 x, bias and residual `total`, and x, bias, total and y contiguous (bias, total
    and y may be None)."""
    return (x.dtype == torch.float32 and x.is_contiguous()
            and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()))
            and (total is None or (total.dtype == torch.float32 and total.is_contiguous()))
            and (y is None or y.is_contiguous()))


def _direct_conv(params, x, bias, total, y, kernel: str = "direct"):
    """A channels-last 2-d convolution on ember's direct kernel, or (`kernel` "winograd", a
    filter `_winograd_weight` packed) as Winograd F(2x2, 3x3), or (`kernel` "depthwise", one
    `_depthwise_weight` packed) on the depthwise kernel: x [N, H, W, C] (its zero pads
    implicit: the kernels read zeros for the taps outside x), act(conv + bias + total)
    written straight into y. None where the call does not fit it (the caller goes on)."""
    if x.dim() != 4 or not _tiles_take(x, bias, total, y):
        return None
    plan = _conv_plan(params, kernel, tuple(x.shape))
    if plan is None:
        return None
    panels, out, pads, strides, dilations, window = plan
    if y is None:
        y = torch.empty(out, dtype=torch.float32)
    elif tuple(y.shape) != out:
        return None
    activation, threads, shape, o, hw = params.get("activation", ""), _threads(), tuple(x.shape), out[3], out[1:3]
    if kernel == "winograd":  # (3x3, stride 1, no dilation)
        _gemm.winograd_conv(x, panels, bias, total, y, shape, o, pads, hw, activation, threads)
    elif kernel == "depthwise":
        _gemm.depthwise(x, panels, bias, total, y, shape, window, strides, dilations, pads, hw, activation, threads)
    else:
        _gemm.conv(x, panels, bias, total, y, shape, o, window, strides, dilations, pads, hw, activation, threads)
    return y


def _tiled_pointwise(params, x, bias, total, y):
    """A channels-last 1x1 convolution on the tiled GEMM (runtime/native/gemm.py): x [N, *spatial,
    K] as rows, act(rows W + bias + total) written straight into y (allocated where the
    executor gives none). None where the call does not fit it (the caller goes on)."""
    gemm, weight = _gemm, params["tiled"]
    k, n = x.shape[-1], weight.kn.shape[1]
    rows = x.numel() // k if k else 0
    if not rows or not _tiles_take(x, bias, total, y):
        return None
    if not gemm.available():
        return None
    if y is None:
        y = torch.empty((*x.shape[:-1], n), dtype=torch.float32)
    gemm.run(x, weight.panels, bias, total, y, rows, k, n, params.get("activation", ""), _threads())
    return y


@extern("conv", adopts=True)
def conv(params, x, w, bias, total, y):
    if params.get("tiled") is not None and (tiled := _tiled_pointwise(params, x, bias, total, y)) is not None:
        return tiled
    for kernel in ("depthwise", "winograd", "direct"):
        if params.get(kernel) is not None and (direct := _direct_conv(params, x, bias, total, y, kernel)) is not None:
            return direct
    pointwise = params.get("pointwise")
    if (pointwise is not None and x.dtype == torch.float32 and x.numel() and x.is_contiguous()
            and (bias is None or bias.dtype == x.dtype) and (total is None or total.is_contiguous())):
        return _pointwise_conv(params, pointwise, x, bias, total, y)
    last = bool(params.get("channels_last"))
    if not last and (small := _small_conv(params, x, w, bias, total, y)) is not None:
        return small
    if last:  # [N, *spatial, C] buffers as torch's channels-last tensors
        x = _channels_first_view(x)
        y = _channels_first_view(y) if y is not None else None
        total = _channels_first_view(total) if total is not None else None
    activation = params.get("activation", "")
    packed = params.get("packed")
    on_onednn = bool(packed is not None and x.dtype == torch.float32 and x.numel()
                     and (bias is None or bias.dtype == x.dtype) and (y is None or y.numel()))
    one_d = on_onednn and params.get("one_d")
    if one_d:  # [N, C, L] as [N, C, 1, L] (see prepare_conv)
        x, total = x.unsqueeze(2), total.unsqueeze(2) if total is not None else None
        y = y.unsqueeze(2) if y is not None else None
    if on_onednn:
        padding, stride, dilation = params["torch_args"]
        attr, algorithm = _ONEDNN_ACTIVATIONS[activation]
        group = params["group"]
        if total is None:
            result = torch.ops.mkldnn._convolution_pointwise(x, packed, bias, padding, stride, dilation, group,
                                                             attr, [], algorithm or None)
        else:  # act(conv(x) + total): oneDNN fuses ReLU after the sum, torch runs the others
            post = (packed, bias, padding, stride, dilation, group, "add", 1.0,
                    attr if activation == "relu" else None, [], None)
            if y is None and params.get("sum_in_place"):  # into total's own tensor, which dies here
                result = torch.ops.mkldnn._convolution_pointwise_.binary(total, x, *post)
            else:
                result = torch.ops.mkldnn._convolution_pointwise.binary(x, total, *post)
            if activation not in ("", "relu"):
                _TORCH_ACTIVATIONS[activation](result)
    else:
        dims = x.dim() - 2
        fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
        x = x.contiguous()  # torch's own channels-last convolutions can be 10x slower
        args = _conv_args(params, x)
        if args is None:
            x, padding = _pad(x, _pads_for(params, x), 0.0), 0
        else:
            padding = tuple(args[0])
        result = fn(x, w, bias, stride=tuple(params["strides"]), padding=padding,
                    dilation=tuple(params["dilations"]), groups=params["group"])
        if total is not None:
            result += total
        if _TORCH_ACTIVATIONS[activation] is not None:
            _TORCH_ACTIVATIONS[activation](result)
    if y is not None:
        y.copy_(result)
        return y.squeeze(2) if one_d else y
    if one_d:
        result = result.squeeze(2)
    return _store(None, result.permute(0, *range(2, result.dim()), 1) if last else result)
