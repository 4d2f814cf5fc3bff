"""The Triton renderer: Kernel IR -> one `@triton.jit` kernel per pointwise or reduction
kernel, and a launcher for each, in one Python module rendered from jinja2 templates.

The same Kernel IR the C++ renderer (cpu.py) renders, so a lowering written once runs on
both; adding a pointwise op means mapping its scalar op here and in cpu.py, never writing
a kernel by hand.

Kernels take their buffers' base pointers and the program's size symbols as runtime
arguments (`s<i>`: sizes are never baked in), block sizes as `tl.constexpr`:

    pointwise   one program per BLOCK elements of the flattened output ranges; the loop
                variables come back from the flat index by div/mod with the runtime sizes;
                every load and store masked.
    reduction   XBLOCK rows (of the outer ranges) a program, as the rows of an [XBLOCK,
                RBLOCK] block; the reduction ranges flattened and held at once where a row
                fits RBLOCK (PERSISTENT), else walked RBLOCK elements at a time; each `reduce` stage folding into a vector accumulator (float32 for
                16-bit floats) reduced at its end, `loop` stages storing, `row` stages on the
                row's scalars.

BLOCK, XBLOCK, RBLOCK and num_warps come from a small fixed table by element count
(POINTWISE_CONFIGS, REDUCTION_CONFIGS: a few compiled variants a kernel, whatever the
sizes). Offsets are int32 where every buffer the kernel touches and its grid are below
INT32_INDEX_LIMIT elements, else int64 (the launcher's INDEX). Float16 and bfloat16 load and store as themselves and compute in
float32, as the C++ kernels do. The math Triton's core lacks (tanh, the inverse and
hyperbolic trigonometry, log1p, expm1, pow, fmod, round half to even) is written in the
module's prelude on Triton's core ops (`tl.exp`, `tl.log`, `tl.sqrt`, ...), so it runs the
same under `TRITON_INTERPRET=1` (which has no libdevice) and on a GPU; max and min
propagate NaN as numpy does; casts from float to integer go through int64 as numpy's
astype does. A kernel with an op or a dtype this renderer lacks raises `NotRenderable`.

`render(kernels, buffers, symbols)` returns the module's source; `load(source)` executes
it (one module per source, cached) and returns it: `launch_<kernel>(B, S)` runs a kernel
on `B` (buffer name -> a torch tensor holding it, contiguous) and `S` (the size symbols'
values, in `symbols`' order).
"""

from __future__ import annotations

import functools
import hashlib
import math

import jinja2

from .._deferred import sympy
from ..ir.dtypes import DType
from ..ir.kernel import Body, Buffer, Kernel, Stage, loop_vars
from .index import IndexPrinter

# The launch configurations, a small fixed table (each entry one compiled variant of a kernel):
# pointwise (elements up to, BLOCK, num_warps), the first that fits...
POINTWISE_CONFIGS = ((1 << 12, 256, 2), (1 << 20, 1024, 4), (None, 1024, 8))
# ...and reduction (elements of a row up to, RBLOCK, rows a program XBLOCK, num_warps): a
# row that fits its RBLOCK is held at once (persistent), several short rows a program, a
# longer row walked 1024 at a time, alone
REDUCTION_CONFIGS = ((16, 16, 64, 2), (128, 128, 16, 4), (512, 512, 4, 4), (None, 1024, 1, 8))
INT32_INDEX_LIMIT = 1 << 30  # a kernel whose every buffer and grid is smaller indexes in int32

TL = {DType.float32: "tl.float32", DType.float64: "tl.float64", DType.float16: "tl.float16",
      DType.bfloat16: "tl.bfloat16", DType.int8: "tl.int8", DType.int16: "tl.int16", DType.int32: "tl.int32",
      DType.int64: "tl.int64", DType.uint8: "tl.uint8", DType.uint16: "tl.uint16", DType.uint32: "tl.uint32",
      DType.uint64: "tl.uint64", DType.bool: "tl.int1"}
FLOATS = {DType.float32, DType.float64, DType.float16, DType.bfloat16}
COMPUTE = {DType.float16: DType.float32, DType.bfloat16: DType.float32}  # what narrow floats compute in


class NotRenderable(Exception):
    """A kernel this renderer has no Triton for (an op or a dtype it lacks)."""


def _compute(dtype: DType) -> DType:
    return COMPUTE.get(dtype, dtype)


def _tl(dtype: DType) -> str:
    """The Triton type `dtype` computes in."""
    return _storage(_compute(dtype))


def _storage(dtype: DType) -> str:
    """The Triton type `dtype` is stored as."""
    if dtype not in TL:
        raise NotRenderable(f"dtype {dtype.name}")
    return TL[dtype]


# -- the module's prelude: math on Triton's core ops --------------------------------------
PRELUDE = r'''
import triton
import triton.language as tl

INF = tl.constexpr(float("inf"))
INT64_MIN = tl.constexpr(-(2 ** 63))


@triton.jit
def _and(a, b):
    """Logical and of two conditions (as int32 products: Triton's interpreter cannot take
    `&` of two 0-d booleans)."""
    return (a.to(tl.int32) * b.to(tl.int32)) != 0


@triton.jit
def _or(a, b):
    return (a.to(tl.int32) + b.to(tl.int32)) != 0


@triton.jit
def _not(a):
    return a.to(tl.int32) == 0


@triton.jit
def _bf16(x):
    """float32 -> bfloat16, rounded to nearest even on the bits (as numpy and onnx round;
    Triton's interpreter truncates), NaN kept NaN."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    rounded = tl.where(x != x, 0x7FC0, rounded)
    return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _div(a, b):
    """a / b rounded to nearest (IEEE; Triton's `/` on float32 is approximate on GPUs)."""
    if b.dtype == tl.float64:
        return a / b
    else:
        return tl.div_rn(a, b)


@triton.jit
def _sqrt(x):
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _as(x, dtype: tl.constexpr):
    """x (a tensor or a Python number) as a tensor of `dtype`."""
    return (x + tl.zeros([], dtype)).to(dtype)


@triton.jit
def _floordiv_index(a, b):
    """floor(a / b) for an index (b > 0), whatever the sign of a."""
    q = a // b
    return tl.where(q * b > a, q - 1, q)


@triton.jit
def _max(a, b):
    m = tl.where(a > b, a, b)
    return tl.where(a != a, a, m)  # numpy.maximum: a NaN in either gives NaN


@triton.jit
def _min(a, b):
    m = tl.where(a < b, a, b)
    return tl.where(a != a, a, m)


@triton.jit
def _idiv(a, b):
    """Integer a / b truncated toward zero; 0 where b is 0."""
    safe = tl.where(b == 0, 1, b)
    q = a // safe
    r = a - q * safe
    q = tl.where(_and(r != 0, (r < 0) != (a < 0)), q + 1, q)
    return tl.where(b == 0, 0, q)


@triton.jit
def _ifloordiv(a, b):
    safe = tl.where(b == 0, 1, b)
    q = a // safe
    r = a - q * safe
    q = tl.where(_and(r != 0, (r < 0) != (safe < 0)), q - 1, q)
    return tl.where(b == 0, 0, q)


@triton.jit
def _ifmod(a, b, signed: tl.constexpr):
    """C's remainder (the dividend's sign); 0 for a divisor of 0 (or -1)."""
    safe = tl.where(b == 0, 1, b)
    r = a - _idiv(a, safe) * safe
    if signed:
        r = tl.where(b == -1, 0, r)
    return tl.where(b == 0, 0, r)


@triton.jit
def _imod(a, b, signed: tl.constexpr):
    """Python's remainder (the divisor's sign)."""
    r = _ifmod(a, b, signed)
    if signed:
        r = tl.where(_and(r != 0, (r < 0) != (b < 0)), r + b, r)
    return r


@triton.jit
def _fmod(a, b):
    """C fmod, through float64: exact while the quotient is below 2**29."""
    a64 = a.to(tl.float64)
    b64 = b.to(tl.float64)
    q = a64 / b64
    q = tl.where(q < 0, -tl.floor(-q), tl.floor(q))
    r = (a64 - q * b64).to(a.dtype)
    r = tl.where(_or(_or(b == 0, a != a), _or(b != b, tl.abs(a) == INF)), float("nan"), r)
    return tl.where(_and(tl.abs(b) == INF, tl.abs(a) != INF), a, r)


@triton.jit
def _mod(a, b):
    """numpy.mod for floats: the divisor's sign, a zero taking it too."""
    r = _fmod(a, b)
    r = tl.where(_and(r != 0, (r < 0) != (b < 0)), r + b, r)
    return tl.where(r == 0, tl.where(b < 0, -0.0, 0.0).to(a.dtype), r)


@triton.jit
def _trunc(x):
    return tl.where(x < 0, -tl.floor(-x), tl.floor(x))


@triton.jit
def _rint(x):
    """Round half to even."""
    f = tl.floor(x)
    d = x - f
    odd = (f - 2.0 * tl.floor(f * 0.5)) != 0
    return tl.where(d > 0.5, f + 1.0, tl.where(d < 0.5, f, tl.where(odd, f + 1.0, f)))


@triton.jit
def _sign(x):
    return tl.where(x > 0, 1.0, tl.where(x < 0, -1.0, x - x)).to(x.dtype)


@triton.jit
def _expm1(x):
    """exp(x) - 1, accurate near 0 (Kahan: (u - 1) x / log(u) with u = exp(x))."""
    u = tl.exp(x)
    small = _or(u == 1.0, tl.abs(x) < 1e-30)
    t = (u - 1.0) * x / tl.log(tl.where(small, 2.0, u))
    r = tl.where(small, x, tl.where(u - 1.0 == -1.0, -1.0, t))
    return tl.where(tl.abs(x) > 0.5, u - 1.0, r)


@triton.jit
def _log1p(x):
    """log(1 + x), accurate near 0 (Kahan: log(u) x / (u - 1) with u = 1 + x)."""
    u = 1.0 + x
    d = u - 1.0
    r = tl.where(d == 0, x, tl.log(u) * x / tl.where(d == 0, 1.0, d))
    return tl.where(x == INF, x, r)


@triton.jit
def _tanh(x):
    """1 - 2 / (exp(2|x|) + 1) with x's sign; expm1's accuracy near 0."""
    ax = tl.abs(x)
    e = _expm1(2.0 * ax)
    t = e / (e + 2.0)
    t = tl.where(ax > 20.0, 1.0, t)
    return tl.where(x < 0, -t, t).to(x.dtype)


@triton.jit
def _softplus(x):
    return tl.where(x > 20.0, x, _log1p(tl.exp(x)))


@triton.jit
def _atan(x):
    """Cephes atanf: range reduction to |x| <= tan(pi/8), then an odd polynomial."""
    ax = tl.abs(x)
    big = ax > 2.414213562373095
    mid = _and(ax > 0.4142135623730950, ax <= 2.414213562373095)
    y0 = tl.where(big, 1.5707963267948966, tl.where(mid, 0.7853981633974483, 0.0))
    z = tl.where(big, -1.0 / tl.where(big, ax, 1.0), tl.where(mid, (ax - 1.0) / (ax + 1.0), ax))
    z2 = z * z
    p = (((8.05374449538e-2 * z2 - 1.38776856032e-1) * z2 + 1.99777106478e-1) * z2 - 3.33329491539e-1) * z2 * z + z
    r = y0 + p
    r = tl.where(ax == INF, 1.5707963267948966, r)
    return tl.where(x < 0, -r, r).to(x.dtype)


@triton.jit
def _atan2(y, x):
    a = _atan(y / x)
    pi = 3.141592653589793
    r = tl.where(x > 0, a, tl.where(y >= 0, a + pi, a - pi))
    r = tl.where(x == 0, tl.where(y > 0, pi / 2, tl.where(y < 0, -pi / 2, tl.where(x != x, x, 0.0))), r)
    inf_y = tl.abs(y) == INF
    inf_x = tl.abs(x) == INF
    both = tl.where(x > 0, pi / 4, 3 * pi / 4)
    r = tl.where(_and(inf_y, inf_x), tl.where(y > 0, both, -both), r)
    r = tl.where(_and(_and(inf_x, _not(inf_y)), x > 0), tl.where(y < 0, -0.0, 0.0), r)
    r = tl.where(_and(_and(inf_x, _not(inf_y)), x < 0), tl.where(y < 0, -pi, pi), r)
    r = tl.where(_and(x == 0, y == 0), tl.where(x.to(tl.float64) * 0 + 1 / x.to(tl.float64) < 0,
                                              tl.where(y < 0, -pi, pi), y * 0), r)
    return tl.where(_or(x != x, y != y), float("nan"), r).to(y.dtype)


@triton.jit
def _asin(x):
    return _atan2(x, tl.sqrt((1.0 - x) * (1.0 + x)))


@triton.jit
def _acos(x):
    return _atan2(tl.sqrt((1.0 - x) * (1.0 + x)), x)


# the hyperbolic functions and their inverses compute in float64 (a float32 result then
# rounds once): in float32 their cancellations cost up to 40 ulps near atanh's poles


@triton.jit
def _sinh(x):
    a = tl.abs(x.to(tl.float64))
    e = _expm1(a)
    s = tl.where(e == INF, e, 0.5 * (e + e / (e + 1.0)))
    return tl.where(x < 0, -s, s).to(x.dtype)


@triton.jit
def _cosh(x):
    e = tl.exp(tl.abs(x.to(tl.float64)))
    return (0.5 * e + 0.5 / e).to(x.dtype)


@triton.jit
def _asinh(x):
    ax = tl.abs(x.to(tl.float64))
    r = _log1p(ax + ax * ax / (1.0 + tl.sqrt(1.0 + ax * ax)))
    r = tl.where(ax > 1e150, tl.log(ax) + 0.6931471805599453, r)
    return tl.where(x < 0, -r, r).to(x.dtype)


@triton.jit
def _acosh(x):
    x64 = x.to(tl.float64)
    t = x64 - 1.0
    r = _log1p(t + tl.sqrt(2.0 * t + t * t))
    r = tl.where(x64 > 1e150, tl.log(x64) + 0.6931471805599453, r)
    return tl.where(x64 < 1.0, float("nan"), r).to(x.dtype)


@triton.jit
def _atanh(x):
    x64 = x.to(tl.float64)
    return (0.5 * _log1p(2.0 * x64 / (1.0 - x64))).to(x.dtype)


@triton.jit
def _pow(a, b):
    """numpy.power for floats, through float64: a negative base only to a whole power."""
    a64 = a.to(tl.float64)
    b64 = b.to(tl.float64)
    aa = tl.abs(a64)
    whole = tl.floor(b64) == b64
    odd = _and(_and(whole, tl.abs(b64) < 9007199254740992.0), (b64 - 2.0 * tl.floor(b64 * 0.5)) != 0)
    negative = a64.to(tl.int64, bitcast=True) < 0  # the sign bit: -0.0 too
    r = tl.exp(b64 * tl.log(aa))
    r = tl.where(_and(negative, odd), -r, r)
    r = tl.where(_and(_and(a64 < 0, _not(whole)), aa != INF), float("nan"), r)
    r = tl.where(_or(b64 == 0, a64 == 1.0), 1.0, r)
    r = tl.where(_and(a64 == -1.0, tl.abs(b64) == INF), 1.0, r)
    return r.to(a.dtype)


@triton.jit
def _ipow(a, b):
    """Integer power by squaring (b < 0: 0, or 1 / a for a = +-1)."""
    r = tl.zeros_like(a) + 1
    base = a
    e = b
    for _ in range(64):
        r = tl.where((e & 1) != 0, r * base, r)
        base = base * base
        e = e >> 1
    r = tl.where(b < 0, tl.where(a == 1, 1, tl.where(a == -1, tl.where((b & 1) != 0, -1, 1), 0)), r)
    return r.to(a.dtype)


@triton.jit
def _f2i(x, dtype: tl.constexpr):
    """numpy's astype from a float to an integer type on x86: through int64 (wrapping), NaN
    and out-of-range values as INT64_MIN."""
    bad = _or(x != x, _or(x >= 9.2e18, x <= -9.2e18))
    return tl.where(bad, INT64_MIN, tl.where(bad, 0.0, x).to(tl.int64)).to(dtype)


@triton.jit
def _shl(a, b, bits: tl.constexpr):
    out = a << tl.where(_or(b < 0, b >= bits), 0, b)
    return tl.where(_or(b < 0, b >= bits), 0, out)


@triton.jit
def _shr(a, b, bits: tl.constexpr):
    out = a >> tl.where(_or(b < 0, b >= bits), 0, b)
    return tl.where(_or(b < 0, b >= bits), tl.where(a < 0, -1, 0), out)
'''

# a float op on Triton: each `{0}`, `{1}` an operand (already in the compute type)
FLOAT_OPS = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "_div({0}, {1})",
    "floordiv": "tl.floor(_div({0}, {1}))", "mod": "_mod({0}, {1})", "fmod": "_fmod({0}, {1})",
    "pow": "_pow({0}, {1})", "max": "_max({0}, {1})", "min": "_min({0}, {1})", "atan2": "_atan2({0}, {1})",
    "neg": "(-{0})", "abs": "tl.abs({0})", "exp": "tl.exp({0})", "log": "tl.log({0})", "sqrt": "_sqrt({0})",
    "rsqrt": "_div(1.0, _sqrt({0}))", "reciprocal": "_div(1.0, {0})", "tanh": "_tanh({0})",
    "erf": "tl.erf({0})", "sigmoid": "tl.sigmoid({0})", "sin": "tl.sin({0})", "cos": "tl.cos({0})",
    "tan": "_div(tl.sin({0}), tl.cos({0}))", "asin": "_asin({0})", "acos": "_acos({0})", "atan": "_atan({0})",
    "sinh": "_sinh({0})", "cosh": "_cosh({0})", "asinh": "_asinh({0})", "acosh": "_acosh({0})",
    "atanh": "_atanh({0})", "floor": "tl.floor({0})", "ceil": "tl.ceil({0})", "round": "_rint({0})",
    "sign": "_sign({0})", "isnan": "({0} != {0})", "isinf": "(tl.abs({0}) == INF)", "isposinf": "({0} == INF)",
    "isneginf": "({0} == -INF)", "log1p": "_log1p({0})", "expm1": "_expm1({0})", "softplus": "_softplus({0})",
}
INT_OPS = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "_idiv({0}, {1})",
    "floordiv": "_ifloordiv({0}, {1})", "mod": "_imod({0}, {1}, {signed})", "fmod": "_ifmod({0}, {1}, {signed})",
    "pow": "_ipow({0}, {1})", "max": "tl.where({0} > {1}, {0}, {1})", "min": "tl.where({0} < {1}, {0}, {1})",
    "neg": "(-{0})", "abs": "tl.where({0} < 0, -{0}, {0})", "sign": "tl.where({0} > 0, 1, tl.where({0} < 0, -1, 0))",
    "floor": "{0}", "ceil": "{0}", "round": "{0}", "isnan": "({0} != {0})", "isinf": "({0} != {0})",
    "isposinf": "({0} != {0})", "isneginf": "({0} != {0})",
    "bitand": "({0} & {1})", "bitor": "({0} | {1})", "bitxor": "({0} ^ {1})", "bitnot": "{bitnot}",
    "shl": "_shl({0}, {1}, {bits})", "shr": "_shr({0}, {1}, {bits})",
}
ANY_OPS = {
    "lt": "({0} < {1})", "le": "({0} <= {1})", "gt": "({0} > {1})", "ge": "({0} >= {1})", "eq": "({0} == {1})",
    "ne": "({0} != {1})", "and": "_and({0} != 0, {1} != 0)", "or": "_or({0} != 0, {1} != 0)",
    "xor": "(({0} != 0) != ({1} != 0))", "not": "({0} == 0)", "where": "tl.where({0} != 0, {1}, {2})",
    "cast_exact": "{0}",  # (converted by _rounded to the result's type: the value is integral and in range)
}
BITS = {DType.int8: 8, DType.int16: 16, DType.int32: 32, DType.int64: 64, DType.uint8: 8, DType.uint16: 16,
        DType.uint32: 32, DType.uint64: 64, DType.bool: 1}


def _to_storage(expr: str, dtype: DType) -> str:
    """`expr` (in dtype's compute type) as dtype's storage type, rounded to nearest even."""
    return f"_bf16({expr})" if dtype == DType.bfloat16 else f"{expr}.to({_storage(dtype)})"


class _Index(IndexPrinter):
    """sympy index expressions as Triton (`kernel`: loop variables and temps in INDEX's
    type) or as Python (the launchers)."""

    error = NotRenderable

    def __init__(self, symbols: dict, kernel: bool = True):
        super().__init__(symbols)
        self.kernel = kernel

    def variable(self, name: str) -> str:
        return name if name[0] in "xr" else f"{name}.to(INDEX)"

    def floordiv(self, num, den) -> str:
        if self.kernel:
            return f"_floordiv_index({self(num)}, {self(den)})"
        return f"(({self(num)}) // ({self(den)}))"

    def mod(self, a, b) -> str:
        return f"({self(a)} - {self(b)} * {self.floordiv(a, b)})"

    def abs(self, a: str) -> str:
        return f"tl.abs({a})" if self.kernel else f"abs({a})"

    def extreme(self, is_max: bool, a: str, b: str) -> str:
        if self.kernel:
            return f"{'tl.maximum' if is_max else 'tl.minimum'}({a}, {b})"
        return f"{'max' if is_max else 'min'}({a}, {b})"


def _literal(value, dtype: DType) -> str:
    if dtype == DType.bool:
        return "True" if value else "False"
    if dtype in FLOATS:
        v = float(value)
        if math.isnan(v):
            return 'float("nan")'
        if math.isinf(v):
            return "INF" if v > 0 else "-INF"
        return repr(v)
    return str(int(value))


class _KernelWriter:
    def __init__(self, kernel: Kernel, buffers: dict[str, Buffer], symbols: dict):
        self.k, self.buffers = kernel, buffers
        self.index = _Index(symbols)
        self.used_buffers: set[str] = set()
        self.dtypes: dict[str, DType] = {}  # temp -> its dtype (computed in _compute of it)
        self.accs: dict[str, str] = {}  # accumulator name -> the row's value of it
        self.zero = "zero"  # zeros of the block's shape: an address that depends on no loop variable is one

    def stmts(self, body: Body, mask: str) -> list[str]:
        lines = []
        for s in body.stmts:
            self.dtypes[s.out] = s.dtype
            if s.op == "load":
                buf, offset = s.args
                self.used_buffers.add(buf)
                dtype = self.buffers[buf].dtype
                _storage(dtype)
                value = (f"tl.load({buf} + {self.index(offset)} + {self.zero}, mask={mask}, other=0)" if mask
                         else f"tl.load({buf} + {self.index(offset)})")
                if dtype in COMPUTE:
                    value += f".to({_tl(dtype)})"
                lines.append(f"{s.out} = {value}")
            elif s.op == "store":
                buf, offset, value = s.args
                self.used_buffers.add(buf)
                dtype = self.buffers[buf].dtype
                stored = _to_storage(self._convert(value, dtype), dtype)
                lines.append(f"tl.store({buf} + {self.index(offset)} + {self.zero}, {stored}, mask={mask})" if mask
                             else f"tl.store({buf} + {self.index(offset)}, {stored})")
            elif s.op == "const":
                lines.append(f"{s.out} = tl.full([], {_literal(s.args[0], s.dtype)}, {_tl(s.dtype)})")
            elif s.op == "index":
                lines.append(f"{s.out} = _as({self.index(s.args[0])}, {_tl(s.dtype)})")
            elif s.op == "acc":
                lines.append(f"{s.out} = {self._rounded(self.accs[s.args[0]], s.dtype)}")
            elif s.op == "cast":
                lines.append(f"{s.out} = {self._rounded(self._convert(s.args[0], s.dtype), s.dtype)}")
            else:
                lines.append(f"{s.out} = {self._op(s, body)}")
        return lines

    def _convert(self, temp: str, dtype: DType) -> str:
        """`temp` converted to `dtype`'s compute type as numpy's astype converts."""
        src = self.dtypes[temp]
        _storage(src)
        _storage(dtype)
        if _compute(src) == _compute(dtype):
            return temp
        if dtype == DType.bool:
            return f"({temp} != 0)"
        if src in FLOATS and dtype not in FLOATS:
            return f"_f2i({temp}, {_tl(dtype)})"
        return f"{temp}.to({_tl(dtype)})"

    @staticmethod
    def _rounded(expr: str, dtype: DType) -> str:
        """`expr` (in dtype's compute type) rounded to dtype: each 16-bit float result
        rounds to its type, as numpy's do."""
        return f"{_to_storage(f'({expr})', dtype)}.to({_tl(dtype)})" if dtype in COMPUTE else f"({expr}).to({_tl(dtype)})"

    def _op(self, s, body: Body) -> str:
        args = [a for a in s.args]
        dtypes = [self.dtypes[a] for a in args]
        operand = dtypes[-1] if s.op != "where" else dtypes[1]
        if s.op in ANY_OPS:
            expr = ANY_OPS[s.op].format(*args)
        elif operand in FLOATS and s.op in FLOAT_OPS:
            expr = FLOAT_OPS[s.op].format(*args)
        elif operand not in FLOATS and s.op in INT_OPS:
            signed = operand in (DType.int8, DType.int16, DType.int32, DType.int64)
            bitnot = f"(-{args[0]} - 1)" if signed or operand == DType.bool else f"({args[0]} ^ {(1 << BITS[operand]) - 1})"
            expr = INT_OPS[s.op].format(*args, signed=signed, bits=BITS.get(operand, 64), bitnot=bitnot)
            if s.op in ("isnan", "isinf", "isposinf", "isneginf"):
                expr = f"({args[0]} != {args[0]})"  # never, for integers
        else:
            raise NotRenderable(f"op {s.op} on {operand.name}")
        return self._rounded(expr, s.dtype)

    # -- kernels ----------------------------------------------------------------------
    def _decompose(self, ranges, variables: tuple, flat: str) -> list[str]:
        """The loop variables of `ranges` from the flat index `flat` (row-major)."""
        lines, rest = [], flat
        for i in range(len(ranges) - 1, -1, -1):
            extent = self.index(ranges[i])
            name = variables[i].name[1:]
            if i == 0:
                lines.append(f"{name} = {rest}")
            else:
                lines.append(f"{name} = {rest} % {extent}")
                lines.append(f"{name}_rest = {rest} // {extent}")
                rest = f"{name}_rest"
        return lines

    def render(self) -> tuple[list[str], list[str]]:
        """(the kernel's body lines, its parameters after the buffers and sizes)."""
        k = self.k
        if k.kind == "pointwise" and k.serial:  # elements in order, one at a time (a scatter's duplicates)
            lines = ["offs = tl.zeros([], INDEX)", "while offs < numel:"]
            lines += ["    " + line for line in self._decompose(k.ranges, loop_vars(len(k.ranges)), "offs")]
            lines += ["    " + line for line in self.stmts(k.body, "")] + ["    offs += 1"]
            return lines, ["numel", "BLOCK: tl.constexpr", "INDEX: tl.constexpr"]
        if k.kind == "pointwise":
            lines = ["offs = tl.program_id(0).to(INDEX) * BLOCK + tl.arange(0, BLOCK).to(INDEX)", "mask = offs < numel",
                     "zero = tl.zeros_like(offs)"]
            lines += self._decompose(k.ranges, loop_vars(len(k.ranges)), "offs")
            lines += self.stmts(k.body, "mask")
            return lines, ["numel", "BLOCK: tl.constexpr", "INDEX: tl.constexpr"]
        if k.kind != "reduction":
            raise NotRenderable(f"a {k.kind} kernel")
        # XBLOCK rows a program, each a row of the [XBLOCK, RBLOCK] block: a row's values
        # are [XBLOCK, 1], its elements' [XBLOCK, RBLOCK]
        lines = ["row = tl.program_id(0).to(INDEX) * XBLOCK + tl.arange(0, XBLOCK).to(INDEX)[:, None]",
                 "xmask = row < rows", "xzero = tl.zeros_like(row)"]
        lines += self._decompose(k.ranges, loop_vars(len(k.ranges)), "row")
        for stage in k.stages:
            lines += self._stage(stage)
        return lines, ["rows", "rnumel", "XBLOCK: tl.constexpr", "RBLOCK: tl.constexpr", "INDEX: tl.constexpr",
                       "PERSISTENT: tl.constexpr"]

    def _walk(self, body: list[str]) -> list[str]:
        """`body` over the reduction's elements: at once where the row fits RBLOCK
        (PERSISTENT), else in a loop RBLOCK at a time (a `while` on the runtime size:
        Triton's interpreter cannot take a `range` to a runtime int)."""
        index = ["rmask = _and(xmask, roffs < rnumel)", "zero = xzero + tl.zeros_like(roffs)"]
        index += self._decompose(self.k.reduction, loop_vars(len(self.k.reduction), "r"), "roffs")
        lines = ["if PERSISTENT:", "    roffs = tl.arange(0, RBLOCK).to(INDEX)[None, :]"]
        lines += ["    " + line for line in index + body]
        lines += ["else:", "    rbase = tl.zeros([], INDEX)", "    while rbase < rnumel:",
                  "        roffs = rbase + tl.arange(0, RBLOCK).to(INDEX)[None, :]"]
        lines += ["        " + line for line in index + body] + ["        rbase += RBLOCK"]
        return lines

    def _stage(self, stage: Stage) -> list[str]:
        if stage.kind == "row":
            self.zero = "xzero"
            lines = self.stmts(stage.body, "xmask")
            self.zero = "zero"
            return lines
        if stage.kind == "loop":
            return self._walk(self.stmts(stage.body, "rmask"))
        acc_dtype = _compute(stage.acc_dtype)
        t = _tl(acc_dtype)
        is_float = acc_dtype in FLOATS
        identity = {"sum": "0", "prod": "1", "max": "-INF" if is_float else _extreme(acc_dtype, low=True),
                    "min": "INF" if is_float else _extreme(acc_dtype, low=False)}[stage.reduce]
        fold = {"sum": "{a} + {v}", "prod": "{a} * {v}", "max": "_max({a}, {v})" if is_float else "tl.maximum({a}, {v})",
                "min": "_min({a}, {v})" if is_float else "tl.minimum({a}, {v})"}[stage.reduce]
        a = f"{stage.acc}_vec"
        lines = [f"{a} = tl.full([XBLOCK, RBLOCK], {identity}, {t})"]
        body = self.stmts(stage.body, "rmask")
        value = f"{stage.acc}_v"
        body.append(f"{value} = tl.where(rmask, {stage.value}.to({t}), {identity})")
        body.append(f"{a} = {fold.format(a=a, v=value)}")
        lines += self._walk(body)
        final = {"sum": f"tl.sum({a}, 1)", "prod": f"tl.reduce({a}, 1, _mul)", "max": f"tl.max({a}, 1)",
                 "min": f"tl.min({a}, 1)"}[stage.reduce] + "[:, None]"
        if stage.reduce in ("max", "min") and is_float:  # tl.max/min may drop NaN: the row is NaN if one is
            final = f"tl.where(tl.max(({a} != {a}).to(tl.int32), 1)[:, None] != 0, float(\"nan\"), {final})"
        lines.append(f"{stage.acc} = ({final}).to({t})")
        self.accs[stage.acc] = stage.acc
        return lines


def _extreme(dtype: DType, low: bool) -> str:
    import numpy as np

    info = np.iinfo(dtype.numpy) if dtype != DType.bool else None
    if info is None:
        return "0" if low else "1"
    return str(int(info.min if low else info.max))


_MODULE = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True).from_string(
    r'''# generated by ember (codegen/triton.py): {{ kernels | length }} kernels
{{ prelude }}

POINTWISE_CONFIGS = {{ pointwise_configs }}
REDUCTION_CONFIGS = {{ reduction_configs }}


def _config(table, n):
    """The table's first entry for `n` elements, less its limit."""
    for limit, *config in table:
        if limit is None or n <= limit:
            return config


@triton.jit
def _mul(a, b):
    return a * b
{% for k in kernels %}


@triton.jit
def {{ k.name }}({{ k.params | join(", ") }}):
{% for line in k.lines %}
    {{ line }}
{% endfor %}


def launch_{{ k.name }}(B, S):
{% for i in k.sizes %}
    s{{ i }} = S[{{ i }}]
{% endfor %}
    index = tl.int32 if {{ k.extent }} < {{ int32_limit }} else tl.int64
{% if k.kind == "pointwise" %}
    numel = {{ k.numel }}
    if numel > 0:
        block, warps = _config(POINTWISE_CONFIGS, numel)
        {{ k.name }}[({{ "1" if k.serial else "triton.cdiv(numel, block)" }},)]({{ k.args | join(", ") }}, numel, BLOCK=block, INDEX=index, num_warps=warps)
{% else %}
    rows = {{ k.rows }}
    rnumel = {{ k.rnumel }}
    if rows > 0:
        rblock, xblock, warps = _config(REDUCTION_CONFIGS, rnumel)
        {{ k.name }}[(triton.cdiv(rows, xblock),)]({{ k.args | join(", ") }}, rows, rnumel, XBLOCK=xblock, RBLOCK=rblock, INDEX=index, PERSISTENT=rnumel <= rblock, num_warps=warps)
{% endif %}
{% endfor %}
''')


def render(kernels: list[Kernel], buffers: dict[str, Buffer], symbols: list) -> str:
    """One Python module: a `@triton.jit` kernel and a `launch_<name>(B, S)` for each of
    `kernels` (pointwise or reduction). NotRenderable where one has what this renderer
    lacks."""
    index = {s: i for i, s in enumerate(symbols)}
    rendered = []
    for k in kernels:
        writer = _KernelWriter(k, buffers, index)
        lines, tail = writer.render()
        launch = _Index(index, kernel=False)
        if k.kind == "pointwise":
            numel = launch(sympy.Mul(*k.ranges) if k.ranges else 1)
            extra = {"numel": numel}
        else:
            extra = {"rows": launch(sympy.Mul(*k.ranges) if k.ranges else 1),
                     "rnumel": launch(sympy.Mul(*k.reduction) if k.reduction else 1)}
        names = sorted(writer.used_buffers)
        grid = [extra.get("numel", "0"), f"{extra.get('rows', '1')} * {extra.get('rnumel', '0')}"]
        extent = f"max({', '.join([*grid, *(launch(buffers[n].numel) for n in names)])})"
        sizes = sorted(writer.index.used | launch.used)
        rendered.append({"name": k.name, "kind": k.kind, "serial": k.serial, "lines": lines or ["pass"],
                         "params": [*names, *(f"s{i}" for i in sizes), *tail],
                         "args": [*(f"B[{n!r}]" for n in names), *(f"s{i}" for i in sizes)],
                         "sizes": sizes, "extent": extent, **extra})
    return _MODULE.render(prelude=PRELUDE, kernels=rendered, pointwise_configs=repr(POINTWISE_CONFIGS),
                          reduction_configs=repr(REDUCTION_CONFIGS), int32_limit=INT32_INDEX_LIMIT)


def write(source: str):
    """The path of module `source`, written under the kernel cache (Triton reads its
    kernels' source from their file; the runtime imports it from there)."""
    import os

    from .cpu import _cache_dir

    name = f"ember_triton_{hashlib.sha256(source.encode()).hexdigest()[:24]}"
    path = _cache_dir().parent / "triton" / f"{name}.py"
    if not path.is_file() or path.read_text() != source:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{name}.{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)
    return path


@functools.lru_cache(maxsize=64)
def load(source: str):
    """The module `source` renders, written (`write`) and imported once per source."""
    import importlib.util

    path = write(source)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
