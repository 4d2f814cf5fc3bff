"""Helpers the op families use to write their Kernel IR lowerings.

A lowering is `lower(ctx, node, inputs) -> outputs`: `ctx` is a `LoweringContext` (below;
codegen/lowering.py implements it), the inputs and outputs `TensorRef`s (ember/ir/kernel.py).
Lowerings import nothing from codegen: what they build is Kernel IR, plain data. Most are one line on top of `pointwise`, with the
scalar maths written on `V`, a value in a kernel body with Python operators:

    register_lowering("Softsign")(lambda ctx, node, ins: [pointwise(ctx, node, ins, lambda x: x / (1 + x.abs()))])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

import numpy as np
import sympy

from ..dtypes import DType
from ..kernel import Body, Buffer, Kernel, Stage, TensorRef, loop_vars, temp_symbol
from ..registry import get_op

if TYPE_CHECKING:
    from ..graph import Graph, Value

FLOATS = {DType.float32, DType.float64}  # what the cpu target's extern (library) kernels take
# what generated kernels compute with: float16 and bfloat16 load and store as 16 bits and
# compute in float32
KERNEL_FLOATS = FLOATS | {DType.float16, DType.bfloat16}
SQRT1_2 = 0.7071067811865476


def register_lowering(*ops: str, sizes_outputs: bool = False, extern_only: bool = False):
    """Attach the decorated lowering to each op in `ops`. One that `sizes_outputs` may
    be given nodes whose outputs have sizes known only when they run (it computes them
    with an extern that allocates them: `ctx.extern`). One that is `extern_only` (it calls
    an extern and generates no kernel) may be given values of any type externs take, where
    the target's kernels have none (a float8 KV cache on the cuda target)."""
    def attach(fn):
        for op in ops:
            get_op(op).lower = fn
        fn.sizes_outputs = sizes_outputs
        fn.extern_only = extern_only
        return fn
    return attach


class NotLowerable(Exception):
    """This node cannot be lowered; it runs on the reference fallback."""


class LoweringContext(Protocol):
    """What an op's lowering may use of the context that lowers a graph (codegen's
    `ember.codegen.lowering.LoweringContext` implements it). Buffers and kernels it adds
    become the Program's; a lowering that cannot go on raises `NotLowerable` and the node
    runs on its reference implementation."""

    graph: Graph                        # the graph being lowered
    extern_floats: set[DType]           # the float dtypes the target's externs take (cpu: FLOATS)
    constants: dict[str, np.ndarray]    # constant buffer name -> its contents
    refs: dict[int, TensorRef]          # id(Value) -> what it lowered to, so far

    def new_buffer(self, hint: str, dtype: DType, shape, kind: str = "temp", **extra) -> Buffer: ...

    def constant(self, hint: str, dtype: DType, array: np.ndarray) -> Buffer:
        """A constant buffer holding `array` (a weight laid out for a generated kernel)."""

    def add_kernel(self, kernel: Kernel) -> Kernel: ...

    def body(self) -> Body:
        """An empty kernel body (its SSA temps never clash with another's)."""

    def pointwise(self, shape, dtype: DType, fn: Callable[[Body, tuple], str], cost: int = 1) -> TensorRef:
        """A lazy value: `fn(body, index)` computes its element at `index` where it is read."""

    def realize(self, ref: TensorRef, kind: str = "temp") -> Buffer:
        """`ref` in a buffer (a kernel of its own where it is lazy)."""

    def alias(self, ref: TensorRef, shape) -> TensorRef:
        """`ref`'s elements in row-major order, as `shape` (a reshape without a copy)."""

    def broadcast(self, ref: TensorRef, index, out_shape) -> tuple:
        """`ref`'s index for the element `index` of its broadcast to `out_shape`."""

    def reduction(self, name: str, outer, inner, stages: list) -> Kernel: ...

    def extern(self, name: str, inputs: list[TensorRef | None], outputs: list[tuple[DType, tuple]],
               **params) -> list[TensorRef]:
        """A library kernel `name` over realized inputs (None: an absent optional input)."""

    def index_input(self, ref: TensorRef, extent, where: str) -> None:
        """`ref` is read as indices into a dim of `extent`: where it is a graph input and the
        extent static, the run checks its values before any kernel (an InputError naming
        `where`), since the kernel only clamps them (`wrapped_index`)."""

    def small_path(self, out: TensorRef, build: Callable[[Buffer], TensorRef | None], elements: int) -> None:
        """Generated kernels that compute the extern just added instead of it where its
        output `out` has at most `elements` elements."""

    def knows(self, shape) -> bool:
        """Whether every size of `shape` is known before the kernel that computes it runs."""

    def known_contents(self, value: Value): ...

    def compile_body(self, graph: Graph, where: str) -> Graph:
        """A control-flow body (a standalone graph: its outer reads as extra inputs)
        optimized as the caller's graph was; `NotLowerable` (naming it by `where`) unless
        every node of it lowers to kernels."""


class V:
    """A scalar in a kernel body (`body`, SSA temp, dtype), with arithmetic."""

    __slots__ = ("body", "name", "dtype")

    def __init__(self, body, name: str, dtype: DType):
        self.body, self.name, self.dtype = body, name, dtype

    def _lift(self, other) -> V:
        if isinstance(other, V):
            return other
        return V(self.body, self.body.const(other, self.dtype), self.dtype)

    def op(self, name: str, *others, dtype: DType | None = None) -> V:
        args = [self] + [self._lift(o) for o in others]
        out = dtype or self.dtype
        return V(self.body, self.body.op(name, *(a.name for a in args), dtype=out), out)

    def __add__(self, o): return self.op("add", o)
    def __radd__(self, o): return self._lift(o).op("add", self)
    def __sub__(self, o): return self.op("sub", o)
    def __rsub__(self, o): return self._lift(o).op("sub", self)
    def __mul__(self, o): return self.op("mul", o)
    def __rmul__(self, o): return self._lift(o).op("mul", self)
    def __truediv__(self, o): return self.op("div", o)
    def __rtruediv__(self, o): return self._lift(o).op("div", self)
    def __neg__(self): return self.op("neg")
    def __lt__(self, o): return self.op("lt", o, dtype=DType.bool)
    def __le__(self, o): return self.op("le", o, dtype=DType.bool)
    def __gt__(self, o): return self.op("gt", o, dtype=DType.bool)
    def __ge__(self, o): return self.op("ge", o, dtype=DType.bool)

    def where(self, a, b) -> V:
        """self ? a : b (self is bool)."""
        ref = a if isinstance(a, V) else b if isinstance(b, V) else None
        if ref is None:
            raise TypeError("where needs a value operand")
        a, b = ref._lift(a), ref._lift(b)
        return V(self.body, self.body.op("where", self.name, a.name, b.name, dtype=ref.dtype), ref.dtype)

    def cast(self, dtype: DType) -> V:
        if dtype == self.dtype:
            return self
        return V(self.body, self.body.op("cast", self.name, dtype=dtype), dtype)

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return lambda *others, dtype=None: self.op(name, *others, dtype=dtype)


def wrapped_index(b, ref, index, extent) -> sympy.Symbol:
    """The value of `ref` at `index` as an index into a dim of `extent` elements (negative
    counts from the end), as a symbol for index expressions, clamped into the dim: a
    generated kernel cannot raise, and an index outside the dim (which the op's reference
    rejects) must not read or write outside the buffer (an index of 10^12 crashed the
    process). Valid indices are unchanged."""
    raw = V(b, ref.load(b, index), ref.dtype).cast(DType.int64)
    n = V(b, b.index(extent), DType.int64)
    return temp_symbol((raw < 0).where(raw + n, raw).min(n - 1).max(0).name)


def out_type(node, i: int = 0):
    t = node.outputs[i].type
    return t.dtype, tuple(t.shape)


def pointwise(ctx, node, ins, fn: Callable[..., V], out: int = 0):
    """A lazy pointwise output: `fn` maps the inputs' V's at one (broadcast) index to the
    output's V. Absent optional inputs are passed as None."""
    dtype, shape = out_type(node, out)
    present = [r for r in ins if r is not None]

    def compute(body, index):
        values = [None if r is None else V(body, r.load(body, ctx.broadcast(r, index, shape)), r.dtype) for r in ins]
        return fn(*values).cast(dtype).name

    return ctx.pointwise(shape, dtype, compute, cost=1 + sum(r.cost for r in present))


def constant_ints(ctx, value) -> list[int] | None:
    """The contents of an integer tensor known before anything runs (a constant, or
    contents shape inference computed), flattened; None otherwise."""
    if value is None:
        return None
    data = value.const if value.const is not None else ctx.known_contents(value)
    if data is None:
        return None
    flat = np.asarray(data, dtype=object).reshape(-1).tolist()
    if not all(isinstance(x, (int, np.integer)) for x in flat):
        return None
    return [int(x) for x in flat]


def attrs(node) -> dict:
    opdef = get_op(node.op)
    return {name: opdef.attr(node, name) for name in opdef.attrs}




# -- reductions -------------------------------------------------------------------------


def split_index(rank: int, axes: set[int], outer, inner) -> tuple:
    """The full index of a tensor of `rank` from the loop variables of its kept (`outer`)
    and reduced (`inner`) axes."""
    outer, inner = iter(outer), iter(inner)
    return tuple(next(inner) if a in axes else next(outer) for a in range(rank))


def reduce_kernel(ctx, name: str, shape, axes: set[int], stages_fn) -> None:
    """A reduction kernel over `axes` of `shape`. `stages_fn(Stage, full, outer, n)` returns
    its stages, given the full index of an element (outer and reduction loop variables in
    place), the outer loop variables alone, and the number of elements reduced per row."""
    rank = len(shape)
    outer = tuple(d for a, d in enumerate(shape) if a not in axes)
    inner = tuple(d for a, d in enumerate(shape) if a in axes)
    xv, rv = loop_vars(len(outer), "x"), loop_vars(len(inner), "r")
    full = split_index(rank, axes, xv, rv)
    ctx.reduction(name, outer, inner, stages_fn(Stage, full, xv, sympy.Mul(*inner) if inner else sympy.Integer(1)))


def rows_normalize(ctx, x, axis: int, eps: float, gamma=None, beta=None, rms: bool = False,
                   also_store=None):
    """LayerNorm (or RMSNorm) of `x` (a TensorRef, lazy or not) over axes axis.. end,
    computed in float32; returns the realized output. `also_store(body, index, v)` may
    store the row's input elsewhere too (SkipLayerNorm's sum)."""
    shape, dtype = x.shape, x.dtype
    out = ctx.new_buffer("norm", dtype, shape)
    rank = len(shape)
    axes = set(range(axis, rank))
    f32 = DType.float32 if dtype != DType.float64 else DType.float64

    def value(body, index):
        return V(body, x.load(body, index), dtype).cast(f32)

    def stages(Stage, full, xv, n):
        out_stages = []
        inner = full[axis:]

        def centered(body):
            v = value(body, full)
            if rms:
                return v
            mean = V(body, body.acc("acc_mean", f32), f32) / V(body, body.index(n, f32), f32)
            return v - mean

        if not rms:
            b = ctx.body()
            out_stages.append(Stage("reduce", b, value=value(b, full).name, reduce="sum", acc="acc_mean",
                                    acc_dtype=f32))
        b = ctx.body()
        d = centered(b)
        out_stages.append(Stage("reduce", b, value=(d * d).name, reduce="sum", acc="acc_var", acc_dtype=f32))
        b = ctx.body()
        d = centered(b)
        var = V(b, b.acc("acc_var", f32), f32) / V(b, b.index(n, f32), f32)
        y = d * (var + eps).rsqrt()
        if gamma is not None:
            y = y * V(b, gamma.load(b, ctx.broadcast(gamma, inner, shape[axis:])), gamma.dtype).cast(f32)
        if beta is not None:
            y = y + V(b, beta.load(b, ctx.broadcast(beta, inner, shape[axis:])), beta.dtype).cast(f32)
        b.store(out, full, y.cast(dtype).name)
        if also_store is not None:
            also_store(b, full, V(b, x.load(b, full), dtype))
        out_stages.append(Stage("loop", b))
        return out_stages

    reduce_kernel(ctx, "layernorm" if not rms else "rmsnorm", shape, axes, stages)

    return TensorRef(dtype, shape, buffer=out)


SMALL_MATMUL_MACS = 1 << 18  # a product of at most this much work with a constant weight is generated
SMALL_PATH_WEIGHT = 1 << 17  # the largest weight (elements) a GEMM extern's small path is made for


def small_matmul(ctx, x, w_nk, bias, activation: str, shape, out=None):
    """act(x [..., K] @ W + bias) as a generated reduction kernel, for a float32 x of
    static shape and a constant weight W given as `w_nk` ([N, K], numpy) of at most
    SMALL_MATMUL_MACS multiply-adds; None where that does not apply (the caller's extern
    runs it). A library GEMM costs 2-10 us a call before any work (MKL's addmm,
    oneDNN's ~25), more than such a product takes: hey_jarvis' three Gemms (1x1536x128,
    1x128x128, 1x128x1) took 50 of its 90 us. Generated, each output is a vectorized dot
    product of x's row with W's row, run inside the segment with its neighbours. Given
    `out` (a buffer to write), x's rows may be symbolic: the extern's small path
    (`small_matmul_path`)."""

    if (x.dtype != DType.float32 or not x.shape or (out is None and not all(isinstance(d, int) for d in x.shape))
            or activation not in ("", "relu") or w_nk is None or w_nk.dtype != np.float32 or w_nk.ndim != 2):
        return None
    n, k = w_nk.shape
    rows = math.prod(x.shape[:-1]) if out is None else 1
    if x.shape[-1] != k or rows * n * k > SMALL_MATMUL_MACS or n * k == 0 or rows == 0:
        return None
    if bias is not None and (bias.dtype != DType.float32 or tuple(bias.shape) not in ((n,), (1, n), (1,), ())):
        return None
    weight = ctx.constant("weight_nk", DType.float32, np.ascontiguousarray(w_nk))
    if x.fn is not None:  # a lazy producer would be recomputed for each of the N outputs
        x = TensorRef(x.dtype, x.shape, buffer=ctx.realize(x))
    if out is None:
        out = ctx.new_buffer("matmul", DType.float32, tuple(shape))
    xv, (r,) = loop_vars(len(shape), "x"), loop_vars(1, "r")
    b0 = ctx.body()
    product = V(b0, x.load(b0, (*xv[:-1], r)), DType.float32) * V(b0, b0.load(weight, (xv[-1], r)), DType.float32)
    b1 = ctx.body()
    y = V(b1, b1.acc("acc_dot", DType.float32), DType.float32)
    if bias is not None:
        y = y + V(b1, bias.load(b1, ctx.broadcast(bias, (xv[-1],), (n,))), DType.float32)
    if activation == "relu":
        y = y.op("max", 0.0)
    b1.store(out, xv, y.name)
    ctx.reduction("matmul", tuple(shape), (k,), [
        Stage("reduce", b0, value=product.name, reduce="sum", acc="acc_dot", acc_dtype=DType.float32),
        Stage("row", b1)])
    return TensorRef(DType.float32, tuple(shape), buffer=out)


def small_matmul_path(ctx, out, x, w_nk, bias, activation: str) -> None:
    """The GEMM extern just added (output `out`) runs as `small_matmul`'s generated
    kernel at the sizes where that does at most SMALL_MATMUL_MACS multiply-adds: with a
    symbolic batch (MTCNN's heads, 8-16 us an addmm call at batch 1) the work is known
    only when it runs. The kernel reads its own [N, K] copy of the weight: not for a
    weight of over SMALL_PATH_WEIGHT elements, whose path would run at a few rows at
    most (MiniLM's 384x384 weights: at one row), for the memory."""
    if w_nk is None or w_nk.ndim != 2 or not w_nk.shape[1] or w_nk.size > SMALL_PATH_WEIGHT:
        return
    ctx.small_path(out, lambda buffer: small_matmul(ctx, x, w_nk, bias, activation, out.shape, out=buffer),
                   SMALL_MATMUL_MACS // w_nk.shape[1])


def constant_linear(ctx, x, w_kn: np.ndarray, bias, activation: str, shape, name: str):
    """act(x [..., K] @ W + bias) for a constant float32 W [K, N] (numpy) that a lowering
    made (a convolution's filter over frames or pixels, a DFT matrix): `small_matmul`'s
    generated kernel where the work is small and static, else the linear extern on W
    (the constant `name`, stored as [N, K]: oneDNN packs it as it is), with that kernel as
    its path at the small sizes known only when it runs."""

    w_nk = np.ascontiguousarray(w_kn.T, dtype=np.float32)
    rows = small_matmul(ctx, x, w_nk, bias, activation, shape)
    if rows is None:
        kn = ctx.constant(name, DType.float32, np.asfortranarray(w_kn, dtype=np.float32))
        (rows,) = ctx.extern("linear", [x, TensorRef(DType.float32, kn.shape, buffer=kn), bias],
                             [(DType.float32, tuple(shape))], activation=activation)
        small_matmul_path(ctx, rows, x, w_nk, bias, activation)
    return rows


def rows_softmax(ctx, x, axis: int, log: bool = False):
    shape, dtype = x.shape, x.dtype
    out = ctx.new_buffer("softmax", dtype, shape)

    def stages(Stage, full, xv, n):
        b0 = ctx.body()
        v0 = V(b0, x.load(b0, full), dtype)
        b1 = ctx.body()
        m1 = V(b1, b1.acc("acc_max", dtype), dtype)
        e1 = (V(b1, x.load(b1, full), dtype) - m1).exp()
        # a softmax in float32/64 keeps each exp in its output and divides it there (one exp
        # an element, not two: OCR's softmax over 18,710 classes spent most of its time in
        # them); a narrower type would round the stored exp before the division
        keep = not log and dtype in (DType.float32, DType.float64)
        if keep:
            b1.store(out, full, e1.name)
        b2 = ctx.body()
        s2 = V(b2, b2.acc("acc_sum", dtype), dtype)
        if keep:
            y = V(b2, b2.load(out, full), dtype) / s2
        else:
            shifted = V(b2, x.load(b2, full), dtype) - V(b2, b2.acc("acc_max", dtype), dtype)
            y = shifted - s2.log() if log else shifted.exp() / s2
        b2.store(out, full, y.name)
        return [Stage("reduce", b0, value=v0.name, reduce="max", acc="acc_max", acc_dtype=dtype),
                Stage("reduce", b1, value=e1.name, reduce="sum", acc="acc_sum", acc_dtype=dtype),
                Stage("loop", b2)]

    reduce_kernel(ctx, "softmax", shape, {axis}, stages)

    return TensorRef(dtype, shape, buffer=out)
