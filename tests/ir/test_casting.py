"""Cast against the values the ONNX spec gives, whatever the installed ml_dtypes' `astype`
does (0.7 turns floats out of int4/uint4/int2/uint2's range into 0 where ONNX's test data
wraps). Each case runs three ways, which must all give the spec's value: the reference
implementation, constant folding (which runs it on a constant input) and the generated
kernel. The expected values come from the formats' definitions, in exact arithmetic here
(fractions), never from ml_dtypes or from ember."""

import copy
import functools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ember
from ember.codegen import cpu
from ember.ir import DType, Graph, TensorType, Value
from ember.ir.interpreter import evaluate
from ember.ir.shape_inference import infer_types
from ember.ir.types import symbol
from ember.passes.fold_constants import FoldConstants
from ember.testing.conformance import node_cases, to_value

pytestmark = [pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SMALL_INTS = {DType.int4: (4, True), DType.uint4: (4, False), DType.int2: (2, True), DType.uint2: (2, False)}
FLOAT8 = [DType.float8e4m3fn, DType.float8e4m3fnuz, DType.float8e5m2, DType.float8e5m2fnuz]


# -- running a Cast three ways ---------------------------------------------------------------
@functools.cache
def _kernel(src: DType, to: DType, saturate: int):
    g = Graph("g", inputs=[Value("x", TensorType(src, (symbol("n"),)))], opsets={"": 25})
    g.outputs = g.add_node("Cast", g.inputs, [Value("y", TensorType(to, (symbol("n"),)))],
                           {"to": to.onnx_code, "saturate": saturate}).outputs
    compiled = ember.compile(g, opt_level=0)
    assert compiled.stats.fallback_nodes == [], compiled.stats.fallback_nodes
    return compiled, g


def _folded(x: np.ndarray, to: DType, saturate: int) -> np.ndarray:
    g = Graph("g", inputs=[], opsets={"": 25})
    c = g.add_constant("c", x)
    g.outputs = g.add_node("Cast", [c], [Value("y", TensorType(to, x.shape))],
                           {"to": to.onnx_code, "saturate": saturate}).outputs
    FoldConstants().run(g)
    assert not g.nodes, "Cast of a constant was not folded"
    return g.outputs[0].const


def _three_ways(x: np.ndarray, to: DType, saturate: int = 1) -> dict[str, np.ndarray]:
    compiled, graph = _kernel(DType.from_numpy(x.dtype), to, saturate)
    return {"reference": evaluate(copy.deepcopy(graph), {"x": x})["y"],
            "folded": _folded(x, to, saturate),
            "kernel": compiled.run({"x": x})["y"]}


def _codes(y: np.ndarray) -> list[int]:
    return y.view({1: np.uint8, 2: np.uint16}[y.dtype.itemsize]).astype(np.int64).tolist()


# -- the 4- and 2-bit integers: truncate, then keep the low bits ------------------------------
def _wrapped(v: float, bits: int, signed: bool) -> int:
    """ONNX's test data for Cast to INT4/UINT4/INT2/UINT2: truncated toward zero, wrapped;
    NaN, inf and values past int32 give 0 (ember's choice where the spec leaves it open:
    onnxruntime's as well)."""
    if not math.isfinite(v) or abs(math.trunc(v)) >= 2**31:
        return 0
    return _low_bits(math.trunc(v), bits, signed)


def _low_bits(n: int, bits: int, signed: bool) -> int:
    m = n % (1 << bits)
    return m - (1 << bits) if signed and m >= 1 << (bits - 1) else m


WRAP_INPUTS = [*range(-20, 21), -9.9, -8.5, -2.5, -0.5, 0.5, 2.5, 2.7, 7.5, 15.9, 16.5, 1e3, -1e3, 1e6,
               2.0**31 + 2**8, -(2.0**31) - 2**8, 1e10, math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("to", list(SMALL_INTS), ids=str)
@pytest.mark.parametrize("src", [DType.float32, DType.float16, DType.float64, DType.bfloat16], ids=str)
def test_out_of_range_floats_wrap_into_small_integers(src, to):
    x = np.array(WRAP_INPUTS, np.float64).astype(src.numpy)
    want = [_wrapped(float(v), *SMALL_INTS[to]) for v in x.astype(np.float64)]
    for way, y in _three_ways(x, to).items():
        assert y.dtype == to.numpy
        assert y.astype(np.int64).tolist() == want, way


@pytest.mark.parametrize("to", list(SMALL_INTS), ids=str)
def test_integers_wrap_into_small_integers(to):
    x = np.array([-2**63, -300, -129, -17, -9, -1, 0, 1, 7, 8, 15, 16, 17, 255, 2**40 + 3, 2**63 - 1], np.int64)
    want = [_low_bits(v, *SMALL_INTS[to]) for v in x.tolist()]
    for way, y in _three_ways(x, to).items():
        assert y.astype(np.int64).tolist() == want, way


def test_float8_codes_wrap_into_small_integers():
    x = np.arange(256, dtype=np.uint8).view(DType.float8e5m2.numpy)  # inf and NaN among them
    values = [float(v) for v in x.astype(np.float64)]
    for way, y in _three_ways(x, DType.int4).items():
        assert y.astype(np.int64).tolist() == [_wrapped(v, 4, True) for v in values], way


@pytest.mark.parametrize("name", ["test_cast_FLOAT_to_INT4", "test_cast_FLOAT16_to_UINT4",
                                  "test_cast_FLOAT_to_INT2", "test_castlike_FLOAT16_to_UINT2"])
def test_node_suite_inputs_wrap_as_onnx_test_data_does(name):
    """The node suite's own models and inputs (-9..15, -3..3), whatever expected output the
    installed ml_dtypes computed for them: ember wraps as onnx's shipped data does."""
    case = node_cases()[name]
    (inputs, _), = case.data_sets
    feeds = {v.name: to_value(x) for v, x in zip(case.model.graph.input, inputs)}
    (y,) = ember.compile(case.model).run(feeds).values()
    to = DType.from_numpy(y.dtype)
    x = next(iter(feeds.values())).astype(np.float64).reshape(-1)
    assert y.reshape(-1).astype(np.int64).tolist() == [_wrapped(float(v), *SMALL_INTS[to]) for v in x]


# -- float8: ONNX's Cast tables --------------------------------------------------------------
# (exponent bits, mantissa bits, bias, largest finite value, fnuz) from the spec's definitions
FORMATS = {DType.float8e4m3fn: (4, 3, 7, 448, False), DType.float8e4m3fnuz: (4, 3, 8, 240, True),
           DType.float8e5m2: (5, 2, 15, 57344, False), DType.float8e5m2fnuz: (5, 2, 16, 57344, True)}


def _magnitude(code: int, dtype: DType) -> Fraction:
    e_bits, m_bits, bias, _, _ = FORMATS[dtype]
    e, m = code >> m_bits, code & ((1 << m_bits) - 1)
    if e == 0:
        return Fraction(m, 1 << m_bits) * Fraction(2) ** (1 - bias)
    return (1 + Fraction(m, 1 << m_bits)) * Fraction(2) ** (e - bias)


@functools.cache
def _grid(dtype: DType) -> list[tuple[Fraction, int]]:
    """(magnitude, code) of every finite value, and the next one past the largest (code
    max + 1), which a value rounds to when [x] > FLT_MAX."""
    top = FORMATS[dtype][3]
    grid = []
    for code in range(256):  # codes past 0x7f: the same formula, as if the exponent went on
        v = _magnitude(code, dtype)
        grid.append((v, code))
        if v > top:
            return grid
    raise AssertionError("no value past the largest")


def _spec_float8(x: float, dtype: DType, saturate: bool) -> float:
    """The value ONNX's Cast table gives for x (NaN for NaN)."""
    top, fnuz = FORMATS[dtype][3], FORMATS[dtype][4]
    overflow = (math.inf if dtype == DType.float8e5m2 else math.nan)
    if math.isnan(x):
        return math.nan
    if math.isinf(x):
        return math.copysign(top if saturate else overflow, x)
    a = Fraction(abs(x))
    grid = _grid(dtype)
    best = min(grid, key=lambda vc: (abs(vc[0] - a), vc[1] & 1))  # nearest, ties to an even code
    if best[0] > top:  # [x] > FLT_MAX
        return math.copysign(top if saturate else overflow, x)
    value = float(best[0])
    return 0.0 if fnuz and value == 0 else math.copysign(value, x)  # fnuz: no -0


def _decoded(y: np.ndarray, dtype: DType) -> list[float]:
    """The values of y's codes, by the format's definition (its NaN codes from the spec)."""
    out = []
    for c in _codes(y):
        sign, mag = c >> 7, c & 0x7F
        is_nan = {DType.float8e4m3fn: mag == 0x7F, DType.float8e5m2: mag > 0x7C}.get(dtype, c == 0x80)
        if is_nan:
            out.append(math.nan)
        elif dtype == DType.float8e5m2 and mag == 0x7C:
            out.append(-math.inf if sign else math.inf)
        else:
            v = float(_magnitude(mag, dtype))
            out.append(-v if sign else v)
    return out


def _same_values(got: list[float], want: list[float]) -> bool:
    return all((math.isnan(g) and math.isnan(w)) or (g == w and math.copysign(1, g) == math.copysign(1, w))
               for g, w in zip(got, want, strict=True))


TABLE_INPUTS = [0.0, -0.0, math.nan, -math.nan, math.inf, -math.inf, 1e6, -1e6, 1e-7, -1e-7,
                0.47892547, 0.48033667, 0.49968487, 0.81910545, 0.47031248, 0.7229038,  # the node suite's
                1.0625, 1.1875, -1.0625, 240.0, 247.0, 248.0, 249.0, 255.0, 448.0, 460.0, 464.0, 465.0, 480.0,
                -464.0, -465.0, 57344.0, 61439.0, 61440.0, 61441.0, -61440.0, 2.0**-10, 2.0**-11, 3 * 2.0**-12,
                2.0**-17, 2.0**-18, 3 * 2.0**-19, 2.0**-16, 2.0**-15]


@pytest.mark.parametrize("saturate", [1, 0])
@pytest.mark.parametrize("to", FLOAT8, ids=str)
@pytest.mark.parametrize("src", [DType.float32, DType.float16, DType.float64], ids=str)
def test_float8_follows_onnx_cast_table(src, to, saturate):
    x = np.array(TABLE_INPUTS, np.float64).astype(src.numpy)
    want = [_spec_float8(float(v), to, bool(saturate)) for v in x.astype(np.float64)]
    for way, y in _three_ways(x, to, saturate).items():
        assert y.dtype == to.numpy
        got = _decoded(y, to)
        bad = [(float(v), g, w) for v, g, w in zip(x, got, want) if not _same_values([g], [w])]
        assert not bad, f"{way}: (x, got, want) {bad[:5]}"


@SETTINGS
@given(st.data())
def test_random_floats_to_float8_follow_the_table(data):
    to = data.draw(st.sampled_from(FLOAT8))
    saturate = data.draw(st.sampled_from([0, 1]))
    top = FORMATS[to][3]
    x = data.draw(hnp.arrays(np.float32, st.integers(1, 32), elements=st.floats(
        width=32, allow_nan=True, allow_infinity=True) | st.floats(-2.0 * top, 2.0 * top, width=32)))
    want = [_spec_float8(float(v), to, bool(saturate)) for v in x.astype(np.float64)]
    event("some value overflows" if any(abs(float(v)) > top for v in x) else "all in range")
    for way, y in _three_ways(x, to, saturate).items():
        assert _same_values(_decoded(y, to), want), way


# -- bfloat16: round to nearest even ---------------------------------------------------------
def _spec_bfloat16(x: np.float32) -> int:
    """The bfloat16 bits nearest to x (ties to an even code); inf and NaN kept."""
    u = int(np.float32(x).view(np.uint32))
    if math.isnan(x):
        return -1  # any NaN
    if math.isinf(x):
        return u >> 16
    sign, low = u & 0x80000000, (u & 0x7FFFFFFF) >> 16

    def value(code):  # the code past the largest finite is 2^128 (rounds to inf)
        return Fraction(2) ** 128 if code == 0x7F80 else Fraction(float(np.uint32(code << 16).view(np.float32)))
    a = abs(Fraction(float(x)))
    code = min((low, low + 1), key=lambda c: (abs(value(c) - a), c & 1))
    return (sign >> 16) | code


BF16_INPUTS = [0.47892547, 0.48033667, 0.49968487, 0.81910545, 0.47031248, 0.816468, 0.21087195, 0.7229038,
               math.nan, math.inf, -math.inf, 0.0, -0.0, 1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8, 1.0 + 2.0**-8 + 2.0**-20,
               3.3895314e38, 3.4028235e38, -3.4028235e38, 1e-40, -1e-40, 2.0**-133 * 1.5]


@pytest.mark.parametrize("src", [DType.float32, DType.float64], ids=str)
def test_bfloat16_rounds_to_nearest_even(src):
    x = np.array(BF16_INPUTS, np.float64).astype(src.numpy)
    want = [_spec_bfloat16(v) for v in x.astype(np.float32)]
    for way, y in _three_ways(x, DType.bfloat16).items():
        got = _codes(y)
        for v, g, w in zip(x, got, want):
            assert (w == -1 and (g & 0x7FFF) > 0x7F80) or g == w, f"{way}: {v!r} -> {g:#06x}, want {w:#06x}"


@SETTINGS
@given(hnp.arrays(np.float32, st.integers(1, 64), elements=st.floats(width=32, allow_nan=False)))
def test_random_floats_to_bfloat16_round_to_nearest_even(x):
    ties = sum(int(v.view(np.uint32)) & 0xFFFF == 0x8000 for v in x)
    event("a tie" if ties else "no tie")
    want = [_spec_bfloat16(v) for v in x]
    for way, y in _three_ways(x, DType.bfloat16).items():
        assert _codes(y) == want, way


# -- shape inference: a known int64 cast to int32 wraps too ------------------------------------
def test_known_int64_contents_wrap_to_int32():
    g = Graph("g", inputs=[], opsets={"": 25})
    c = g.add_constant("c", np.array([2**63 - 1, 5, 2**31 + 5], np.int64))
    g.outputs = g.add_node("Cast", [c], [Value("y", TensorType(DType.int32, (3,)))],
                           {"to": DType.int32.onnx_code}).outputs
    known = infer_types(g)[id(g.outputs[0])]
    assert known.value.tolist() == [-1, 5, -(2**31) + 5]
