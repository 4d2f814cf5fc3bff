"""The CPU prelude's math helpers, compiled with g++ the way generated kernels are.

One harness (PRELUDE + an extern "C" `#pragma omp simd` loop per helper and type) is
compiled once per module with `-fopt-info-vec-optimized` and loaded with ctypes. Each
helper is checked against a float64 numpy / math reference over dense grids and the IEEE
edge cases, and the compiler's report must show the float loops vectorized.
"""

import ctypes
import math
import re
import shutil
import subprocess

import numpy as np
import pytest

from ember.codegen.cpu_prelude import PRELUDE

if shutil.which("g++") is None:
    pytest.skip("g++ not found: the CPU prelude is compiled with the system g++", allow_module_level=True)

# the flags the CPU backend compiles kernels with (no -ffast-math: IEEE NaN / inf)
CXXFLAGS = ["-std=c++17", "-O3", "-march=native", "-fopenmp", "-fno-math-errno",
            "-fno-trapping-math", "-shared", "-fPIC"]

F32, F64 = np.float32, np.float64
INF, NAN = np.inf, np.nan
DENORM_MIN = 2.0**-149  # smallest float32 denormal
FLT_MIN = 2.0**-126

CTYPES = {"float": F32, "double": F64, "std::int32_t": np.int32, "std::int64_t": np.int64,
          "std::int8_t": np.int8, "std::uint8_t": np.uint8}

# harness function -> (C++ element type, the prelude function or an expression in `v`);
# every one is one simd loop
UNARY = {
    "expf": ("float", "ember_expf"), "logf": ("float", "ember_logf"),
    "erff": ("float", "ember_erff"), "tanhf": ("float", "ember_tanhf"),
    "sigmoidf": ("float", "ember_sigmoidf"),
    # fused bodies as a kernel would have them, several helpers inlined into one loop
    "gelu_f32": ("float", "0.5f * v * (1.0f + ember_erf(v * 0.70710678118654752f))"),
    "gelu_tanh_f32": ("float", "0.5f * v * (1.0f + ember_tanh(0.7978845608f * (v + 0.044715f * v * v * v)))"),
    "silu_f32": ("float", "v * ember_sigmoid(v)"),
    **{f"{fn}_f32": ("float", f"ember_{fn}") for fn in ("exp", "log", "erf", "tanh", "sigmoid")},
    **{f"{fn}_f64": ("double", f"ember_{fn}") for fn in ("exp", "log", "erf", "tanh", "sigmoid")},
    **{f"{fn}_{t}": (ct, f"ember_{fn}") for fn in ("sign", "round")
       for t, ct in [("f32", "float"), ("f64", "double"), ("i32", "std::int32_t"),
                     ("i8", "std::int8_t"), ("u8", "std::uint8_t")]},
}
BINARY = {
    f"{fn}_{t}": (ct, f"ember_{fn}") for fn in ("max", "min", "mod", "fmod")
    for t, ct in [("f32", "float"), ("f64", "double"), ("i32", "std::int32_t"),
                  ("i64", "std::int64_t"), ("i8", "std::int8_t"), ("u8", "std::uint8_t")]
}
# loops the compiler must report vectorized (the rest call libm or divide integers)
MUST_VECTORIZE = ["expf", "logf", "erff", "tanhf", "sigmoidf", "exp_f32", "log_f32", "erf_f32",
                  "tanh_f32", "sigmoid_f32", "gelu_f32", "gelu_tanh_f32", "silu_f32", "max_f32",
                  "min_f32", "sign_f32", "round_f32", "max_f64", "min_f64", "sign_f64", "round_f64"]


def _harness() -> tuple[str, dict[str, int]]:
    """The harness source and, per harness function, the line of its `for` statement."""
    lines = PRELUDE.splitlines()
    loops = {}
    for name, (ct, fn) in UNARY.items():
        lines += [f'extern "C" void h_{name}(const {ct}* x, {ct}* y, long n) {{', "#pragma omp simd"]
        loops[name] = len(lines) + 1
        expr = fn if "(" in fn else f"{fn}(v)"
        lines += [f"  for (long i = 0; i < n; ++i) {{ const {ct} v = x[i]; y[i] = {expr}; }}", "}"]
    for name, (ct, fn) in BINARY.items():
        lines += [f'extern "C" void h_{name}(const {ct}* a, const {ct}* b, {ct}* y, long n) {{',
                  "#pragma omp simd"]
        loops[name] = len(lines) + 1
        lines += [f"  for (long i = 0; i < n; ++i) y[i] = {fn}(a[i], b[i]);", "}"]
    return "\n".join(lines) + "\n", loops


class Harness:
    def __init__(self, lib: ctypes.CDLL, report: str, loops: dict[str, int]):
        self.lib, self.report, self.loops = lib, report, loops

    def __call__(self, name: str, *args):
        """Applies harness function `name` elementwise to the arrays `args`."""
        ct = (UNARY | BINARY)[name][0]
        args = [np.ascontiguousarray(a, CTYPES[ct]) for a in np.broadcast_arrays(*args)]
        out = np.empty_like(args[0])
        ptrs = [ctypes.c_void_p(a.ctypes.data) for a in (*args, out)]
        getattr(self.lib, f"h_{name}")(*ptrs, ctypes.c_long(out.size))
        return out


@pytest.fixture(scope="module")
def h(tmp_path_factory) -> Harness:
    src, loops = _harness()
    d = tmp_path_factory.mktemp("cpu_prelude")
    (d / "harness.cpp").write_text(src)
    # -fno-ipa-icf: else g++ folds loops with identical bodies (h_exp_f32 is h_expf after
    # inlining) into one function and reports only one of them as vectorized
    proc = subprocess.run(["g++", *CXXFLAGS, "-fno-ipa-icf", "-fopt-info-vec-optimized", "-Wall",
                           "-Wextra", "harness.cpp", "-o", "harness.so"],
                          check=False, cwd=d, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "warning:" not in proc.stderr, proc.stderr[-4000:]  # the prelude is -Wall -Wextra clean
    return Harness(ctypes.CDLL(str(d / "harness.so")), proc.stderr, loops)


def _floats(lo: float, hi: float) -> np.ndarray:
    """Every float32 in [lo, hi]; keep the range small."""
    if hi <= 0:
        return -_floats(-hi, -lo)[::-1]
    assert lo >= 0
    a, b = np.float32([lo, hi]).view(np.int32)
    return np.arange(a, b + 1, dtype=np.int32).view(F32)


def _grid(lo: float, hi: float, n: int = 500_000, seed: int = 0) -> np.ndarray:
    """A dense float32 grid over [lo, hi]: evenly spaced points plus uniform random ones."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.linspace(lo, hi, n, dtype=F32), rng.uniform(lo, hi, n).astype(F32)])


SPECIALS = F32([0.0, -0.0, INF, -INF, NAN, DENORM_MIN, -DENORM_MIN, 1e-40, -1e-40, FLT_MIN,
                -FLT_MIN, 1.0, -1.0, 3.4028235e38, -3.4028235e38, 1e30, -1e30])


def _rel_err(y: np.ndarray, ref: np.ndarray) -> float:
    """max |y - ref| / |ref| over finite nonzero references."""
    y, ref = y.astype(F64), ref.astype(F64)
    m = np.isfinite(ref) & (ref != 0)
    return float(np.max(np.abs(y[m] - ref[m]) / np.abs(ref[m])))


def _report(name: str, **errs: float) -> None:
    print(f"{name}: " + ", ".join(f"{k}={v:.3g}" for k, v in errs.items()))


# ---- exp ------------------------------------------------------------------------------------

def test_expf_accuracy(h):
    tiny = 10.0 ** np.random.default_rng(3).uniform(-45, 0, 200_000)
    x = np.concatenate([_grid(-87.33, 88.72), _floats(0.99, 1.01), _floats(-1.01, -0.99),
                        tiny.astype(F32), -tiny.astype(F32)])
    ref = np.exp(x.astype(F64))
    rel = _rel_err(h("expf", x), ref)
    # Every float where the result is denormal or near overflow: the relative error bound,
    # plus one denormal ulp (results below FLT_MIN are rounded to the denormal grid).
    x2 = np.concatenate([_floats(-104.5, -87.0), _floats(88.5, 89.0)])
    y2, ref2 = h("expf", x2).astype(F64), np.exp(x2.astype(F64))
    fin = ref2 < np.finfo(F32).max
    err2 = np.abs(y2 - ref2)[fin] / (3e-7 * ref2[fin] + DENORM_MIN)
    sub = ref2 < FLT_MIN
    _report("ember_expf", max_rel=rel,
            max_abs_denormal_results_in_ulps=np.max(np.abs(y2 - ref2)[sub]) / DENORM_MIN)
    assert rel <= 3e-7
    assert err2.max() <= 1.0
    # the overflow threshold is IEEE's: finite exactly where float32(exp(x)) is
    with np.errstate(over="ignore"):
        assert np.array_equal(np.isinf(y2), np.isinf(ref2.astype(F32)))


def test_expf_edges(h):
    x = F32([NAN, -INF, INF, 0.0, -0.0, DENORM_MIN, -DENORM_MIN, 88.7228, 88.72284, 88.73, 89, 100,
             1e30, 3.4028235e38, -103.97, -103.973, -104, -110, -1e30, -3.4028235e38])
    y = h("expf", x)
    assert np.isnan(y[0])
    assert y[1] == 0 and y[2] == INF
    assert np.all(y[3:7] == 1.0)
    assert np.isfinite(y[7]) and np.all(y[8:14] == INF)  # overflows from 88.72284 on, as IEEE
    assert y[14] == DENORM_MIN  # exp(-103.97) rounds up to the smallest denormal ...
    assert np.all(y[15:] == 0)  # ... and below -103.9721 to 0


# ---- log ------------------------------------------------------------------------------------

def test_logf_accuracy(h):
    rng = np.random.default_rng(1)
    bits = rng.integers(1, 0x7F800000, 1_000_000, dtype=np.int32)  # positive finite floats, denormals too
    x = np.concatenate([bits.view(F32), _grid(0.5, 2.0, 300_000), _grid(1e-3, 100.0, 300_000),
                        _floats(1 - 2**-10, 1 + 2**-10), _floats(DENORM_MIN, 1e-41)])
    y, ref = h("logf", x), np.log(x.astype(F64))
    rel = _rel_err(y, ref)
    _report("ember_logf", max_rel=rel, max_rel_denormal_inputs=_rel_err(y[x < FLT_MIN], ref[x < FLT_MIN]))
    assert rel <= 3e-7
    assert np.all(y[x == 1] == 0)


def test_logf_edges(h):
    x = F32([0.0, -0.0, -DENORM_MIN, -1.0, -INF, INF, NAN, 1.0, DENORM_MIN, FLT_MIN, 3.4028235e38])
    y = h("logf", x)
    assert y[0] == -INF and y[1] == -INF
    assert np.all(np.isnan(y[2:5]))
    assert y[5] == INF and np.isnan(y[6]) and y[7] == 0
    np.testing.assert_allclose(y[8:], np.log(x[8:].astype(F64)), rtol=3e-7)


# ---- erf, tanh, sigmoid ---------------------------------------------------------------------

_erf64 = np.frompyfunc(math.erf, 1, 1)


def test_erff(h):
    # The largest errors (4.0e-7 with FMA contraction, 4.2e-7 without, found by an
    # exhaustive sweep) sit just below the cut at 3.8325, where erf is 1 - 1e-7.
    x = np.concatenate([_grid(-5.0, 5.0, 300_000), _floats(3.7, 3.9), SPECIALS])
    y, ref = h("erff", x), _erf64(x.astype(F64)).astype(F64)
    fin = np.isfinite(x)
    err = float(np.max(np.abs(y[fin] - ref[fin])))
    m = (np.abs(x) < 1) & (np.abs(x) >= FLT_MIN)
    _report("ember_erff", max_abs=err, max_rel_normal_below_1=_rel_err(y[m], ref[m]))
    assert err <= 5e-7
    assert np.all(np.abs(y[fin]) <= 1)
    assert np.array_equal(h("erff", -x), -y, equal_nan=True)  # odd
    assert np.isnan(h("erff", F32([NAN]))[0])
    assert list(h("erff", F32([INF, -INF, 10, -10]))) == [1, -1, 1, -1]
    z = h("erff", F32([0.0, -0.0]))
    assert list(np.signbit(z)) == [False, True] and np.all(z == 0)


def test_tanhf(h):
    x = np.concatenate([_grid(-12.0, 12.0, 500_000), _floats(0.6, 0.65), SPECIALS])
    y, ref = h("tanhf", x), np.tanh(x.astype(F64))
    err = float(np.max(np.abs(y[np.isfinite(x)] - ref[np.isfinite(x)])))
    _report("ember_tanhf", max_abs=err, max_rel=_rel_err(y, ref))
    assert err <= 5e-7
    assert np.array_equal(h("tanhf", -x), -y, equal_nan=True)  # odd
    assert np.all(np.abs(y[np.isfinite(x)]) <= 1)
    big = F32([9.1, 20, 44, 45, 100, 1e30, INF])
    assert np.all(h("tanhf", big) == 1) and np.all(h("tanhf", -big) == -1)  # saturates exactly
    assert np.isnan(h("tanhf", F32([NAN]))[0])
    tiny = F32([0.0, -0.0, DENORM_MIN, -1e-40, 1e-20])
    assert np.array_equal(h("tanhf", tiny).view(np.int32), tiny.view(np.int32))


def test_sigmoidf(h):
    x = np.concatenate([_grid(-104.0, 100.0, 300_000), _grid(-20.0, 20.0, 300_000), SPECIALS])
    xd = x.astype(F64)
    with np.errstate(over="ignore"):
        ref = 1 / (1 + np.exp(-xd))
    y = h("sigmoidf", x)
    # relative error down to FLT_MIN, within a denormal ulp below it
    err = float(np.max(np.abs(y - ref)[np.isfinite(x)] / (3e-7 * ref[np.isfinite(x)] + DENORM_MIN)))
    _report("ember_sigmoidf", max_rel_normal=_rel_err(y[ref >= FLT_MIN], ref[ref >= FLT_MIN]),
            max_err_in_bound_units=err)
    assert err <= 1.0
    e = h("sigmoidf", F32([INF, -INF, NAN, 0.0, -0.0, 100, -110, -1e30]))
    assert list(e[:2]) == [1, 0] and np.isnan(e[2])
    assert list(e[3:]) == [0.5, 0.5, 1, 0, 0]


# ---- the generic names: float -> the fast versions, double -> std:: --------------------------

@pytest.mark.parametrize("fn", ["exp", "log", "erf", "tanh", "sigmoid"])
def test_generic_names(h, fn):
    x = np.concatenate([_grid(-20.0, 20.0, 10_000), SPECIALS])
    if fn == "log":
        x = np.abs(x)
    np.testing.assert_array_equal(h(f"{fn}_f32", x), h(f"{fn}f", x))
    xd = x.astype(F64)
    with np.errstate(all="ignore"):
        ref = {"exp": np.exp, "log": np.log, "tanh": np.tanh, "erf": lambda v: _erf64(v).astype(F64),
               "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[fn](xd)
    np.testing.assert_allclose(h(f"{fn}_f64", xd), ref, rtol=1e-14, atol=1e-300)


def test_fused_bodies(h):
    x = np.concatenate([_grid(-10.0, 10.0, 100_000), F32([0.0, -0.0, INF, -INF])])
    xd = x.astype(F64)
    with np.errstate(all="ignore"):  # the infinities
        gelu = 0.5 * xd * (1 + _erf64(xd / math.sqrt(2)).astype(F64))
        gelu_tanh = 0.5 * xd * (1 + np.tanh(math.sqrt(2 / math.pi) * (xd + 0.044715 * xd**3)))
        silu = xd / (1 + np.exp(-xd))
    fin = np.isfinite(x)
    for name, ref in [("gelu_f32", gelu), ("gelu_tanh_f32", gelu_tanh), ("silu_f32", silu)]:
        np.testing.assert_allclose(h(name, x)[fin], ref[fin], rtol=2e-6, atol=1e-6, err_msg=name)
    assert h("silu_f32", F32([INF]))[0] == INF and h("gelu_f32", F32([INF]))[0] == INF
    assert np.all(np.isnan(h("gelu_f32", F32([NAN]))))


# ---- max, min, mod, fmod, sign, round ---------------------------------------------------------

def _pairs(t) -> tuple[np.ndarray, np.ndarray]:
    """Operand pairs for the binary helpers: random values plus every pair of special values."""
    rng = np.random.default_rng(2)
    if np.issubdtype(t, np.floating):
        sp = np.array([0.0, -0.0, 1.0, -1.0, 2.5, -2.5, 3.0, -3.0, 7.0, -7.0, INF, -INF, NAN], t)
        r = (rng.standard_normal(20_000) * 100).astype(t)
    else:
        info = np.iinfo(t)
        sp = np.array([v for v in (info.min, info.min + 1, -7, -3, -1, 0, 1, 3, 7, info.max)
                       if v >= info.min], t)
        r = rng.integers(info.min, info.max, 20_000, endpoint=True).astype(t)
    a, b = np.meshgrid(sp, sp)
    return np.concatenate([a.ravel(), r]), np.concatenate([b.ravel(), r[::-1]])


TYPES = {"f32": F32, "f64": F64, "i32": np.int32, "i64": np.int64, "i8": np.int8, "u8": np.uint8}


@pytest.mark.parametrize("t", TYPES)
def test_max_min(h, t):
    a, b = _pairs(TYPES[t])
    np.testing.assert_array_equal(h(f"max_{t}", a, b), np.maximum(a, b))  # NaN in either -> NaN
    np.testing.assert_array_equal(h(f"min_{t}", a, b), np.minimum(a, b))


@pytest.mark.parametrize("t", TYPES)
def test_mod_fmod(h, t):
    a, b = _pairs(TYPES[t])
    with np.errstate(all="ignore"):  # numpy gives 0 (ints) / NaN (floats) for x mod 0, as we do
        mod, fmod = np.mod(a, b), np.fmod(a, b)
    y_mod, y_fmod = h(f"mod_{t}", a, b), h(f"fmod_{t}", a, b)
    np.testing.assert_array_equal(y_mod, mod)
    np.testing.assert_array_equal(y_fmod, fmod)
    if t.startswith("f"):  # zeros carry the divisor's (mod) / dividend's (fmod) sign
        assert np.array_equal(np.signbit(y_mod), np.signbit(mod))
        assert np.array_equal(np.signbit(y_fmod), np.signbit(fmod))
    elif t.startswith("i"):
        assert h(f"mod_{t}", np.iinfo(TYPES[t]).min, -1)[0] == 0  # no overflow trap


@pytest.mark.parametrize("t", ["f32", "f64", "i32", "i8", "u8"])
def test_sign_round(h, t):
    a, _ = _pairs(TYPES[t])
    if t.startswith("f"):
        a = np.concatenate([a, np.array([0.5, 1.5, 2.5, -0.5, -2.5, 4.5, 1e30, 2**23 + 1], TYPES[t])])
    s = h(f"sign_{t}", a)
    np.testing.assert_array_equal(s, np.sign(a))
    np.testing.assert_array_equal(h(f"round_{t}", a), np.round(a))  # half to even
    if t.startswith("f"):
        assert not np.any(np.signbit(s[a == 0]))  # sign(-0) = +0, as numpy


# ---- vectorization --------------------------------------------------------------------------

def test_loops_vectorized(h):
    """g++ -fopt-info-vec-optimized reports `harness.cpp:LINE:COL: optimized: loop vectorized
    ...` for every loop it vectorized; LINE is the loop's `for` statement."""
    found = re.findall(r"harness\.cpp:(\d+):\d+: optimized: loop vectorized", h.report)
    vectorized = {int(line) for line in found}
    missing = [name for name in MUST_VECTORIZE if h.loops[name] not in vectorized]
    assert not missing, f"not vectorized: {missing}\n{h.report[-3000:]}"
