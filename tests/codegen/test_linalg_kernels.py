"""Kernels for linear algebra, linear attention, integer and 16-bit float ops against their
reference implementations, on random inputs (hypothesis). Each compiled graph is
checked to run with no node on the reference fallback."""

import copy

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.codegen import cpu
from ember.ir import DType, Graph, TensorType, Value
from ember.ir.interpreter import evaluate
from ember.ir.types import symbol

from .test_lowerings import SETTINGS, _compiled

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")
N, M = symbol("n"), symbol("m")
HALVES = [DType.float16, DType.bfloat16]


def _check(compiled, graph, feeds, rtol=0.0, atol=0.0, declared_dtypes=False):
    """The compiled outputs against the reference's: the same dtype and shape, values
    within rtol/atol (0: exactly, NaN where the reference has NaN). declared_dtypes:
    the reference's results are first cast to the graph's declared output dtypes (a
    reference that computes in a wider type than it declares)."""
    want = evaluate(copy.deepcopy(graph), feeds)
    got = compiled.run(feeds)
    if declared_dtypes:
        want = {v.name: want[v.name].astype(v.type.dtype.numpy) for v in graph.outputs}
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        g, w = got[name], want[name]
        if w.dtype.kind in "fV" or "float" in str(w.dtype):
            g, w = g.astype(np.float64), w.astype(np.float64)
        np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=name)


def _halves(dtype, shape, lo=-8.0, hi=8.0):
    """Arrays of a 16-bit float dtype (values drawn as float32, then rounded)."""
    return hnp.arrays(np.float32, shape, elements=st.floats(lo, hi, width=32)).map(lambda a: a.astype(dtype.numpy))


# -- 16-bit floats ----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", HALVES)
@SETTINGS
@given(data=st.data())
def test_16bit_matmul_accumulates_in_float32_and_rounds_once(data, dtype):
    k = data.draw(st.integers(0, 40))
    compiled, graph = _compiled("MatMul", (("a", dtype, (2, N, k)), ("b", dtype, (k, M))),
                                (("y", dtype, (2, N, M)),))
    n, m = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    small = st.integers(-8, 8).map(float)  # products and sums exact in float32: any order agrees
    a = data.draw(hnp.arrays(np.float32, (2, n, k), elements=small)).astype(dtype.numpy)
    b = data.draw(hnp.arrays(np.float32, (k, m), elements=small)).astype(dtype.numpy)
    _check(compiled, graph, {"a": a, "b": b})


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("axis", [0, 1, -1])
@SETTINGS
@given(data=st.data())
def test_16bit_softmax_rounds_as_the_reference(data, dtype, op, axis):
    """Each step rounds to the 16-bit type; the sum's order is numpy's (float32 along
    float16's innermost axis, a 16-bit partial sum per element otherwise)."""
    compiled, graph = _compiled(op, (("x", dtype, (N, M)),), (("y", dtype, (N, M)),), (("axis", axis),))
    n, m = data.draw(st.integers(1, 40)), data.draw(st.integers(1, 40))
    x = data.draw(_halves(dtype, (n, m)))
    _check(compiled, graph, {"x": x}, rtol=2 ** -7 if dtype == DType.bfloat16 else 2 ** -10, atol=1e-6)


@pytest.mark.parametrize("dtype", HALVES)
@pytest.mark.parametrize("op, attrs", [("Elu", (("alpha", 0.5),)), ("Celu", (("alpha", 2.0),)), ("IsNaN", ()),
                                       ("Exp", ()), ("Swish", (("alpha", 1.5),))])
@SETTINGS
@given(data=st.data())
def test_16bit_unary_ops_round_each_step(data, dtype, op, attrs):
    out = DType.bool if op == "IsNaN" else dtype
    compiled, graph = _compiled(op, (("x", dtype, (N,)),), (("y", out, (N,)),), attrs)
    x = data.draw(_halves(dtype, (data.draw(st.integers(0, 30)),)))
    if x.size and data.draw(st.booleans()):
        x[0] = np.nan
    # one 16-bit ulp: float32 exp and expm1 may differ from numpy's in their last bit
    _check(compiled, graph, {"x": x}, rtol=2 ** -7 if dtype == DType.bfloat16 else 2 ** -10)


# RNN, GRU, LSTM: tests/codegen/test_recurrent_kernels.py


@pytest.mark.parametrize("rule", ["linear", "gated", "delta", "gated_delta"])
@SETTINGS
@given(data=st.data())
def test_linear_attention(data, rule):
    kv_heads = data.draw(st.integers(1, 2))
    heads = kv_heads * data.draw(st.integers(1, 2))
    b, t, d_k, d_v = (data.draw(st.integers(1, 3)) for _ in range(4))
    f32 = DType.float32
    shapes = {"q": (b, t, heads * d_k), "k": (b, t, kv_heads * d_k), "v": (b, t, kv_heads * d_v)}
    if data.draw(st.booleans()):
        shapes["past"] = (b, kv_heads, d_k, d_v)
    if rule in ("gated", "gated_delta"):
        shapes["decay"] = (b, t, kv_heads * data.draw(st.sampled_from([1, d_k])))
    if rule in ("delta", "gated_delta"):
        shapes["beta"] = (b, t, data.draw(st.sampled_from([1, kv_heads])))
    values = {name: Value(name, TensorType(f32, shape)) for name, shape in shapes.items()}
    args = [values.get(name) for name in ("q", "k", "v", "past", "decay", "beta")]
    while args[-1] is None:
        args.pop()
    g = Graph("g", inputs=list(values.values()), opsets={"": 28})
    outs = [Value("y", TensorType(f32, (b, t, heads * d_v))), Value("state", TensorType(f32, (b, kv_heads, d_k, d_v)))]
    g.outputs = g.add_node("LinearAttention", args, outs,
                           {"q_num_heads": heads, "kv_num_heads": kv_heads, "update_rule": rule,
                            "scale": data.draw(st.sampled_from([0.0, 0.5]))}).outputs
    compiled = ember.compile(copy.deepcopy(g), opt_level=0)
    assert compiled.stats.fallback_nodes == []
    bounds = {"decay": (-1, 0), "beta": (0, 1)}
    feeds = {name: data.draw(hnp.arrays(np.float32, shape, elements=st.floats(*bounds.get(name, (-2, 2)), width=32)))
             for name, shape in shapes.items()}
    _check(compiled, g, feeds, rtol=1e-5, atol=1e-5)


# -- integers, bits ---------------------------------------------------------------------
@pytest.mark.parametrize("x_dtype, y_dtype", [(DType.int32, DType.int32), (DType.int64, DType.int64),
                                              (DType.int32, DType.int64), (DType.int8, DType.int8),
                                              (DType.int32, DType.float32), (DType.int64, DType.float32)])
@SETTINGS
@given(data=st.data())
def test_integer_pow_is_exact_and_wraps_as_numpy(data, x_dtype, y_dtype):
    compiled, graph = _compiled("Pow", (("x", x_dtype, (N,)), ("y", y_dtype, (N,))), (("z", x_dtype, (N,)),))
    n = data.draw(st.integers(0, 20))
    info = np.iinfo(x_dtype.numpy)
    x = data.draw(hnp.arrays(x_dtype.numpy, (n,), elements=st.integers(max(info.min, -50), min(info.max, 50))))
    if y_dtype == DType.float32:  # results within the integer's range (outside it, casts differ: see Cast)
        x = np.clip(x, -10, 10)
        y = data.draw(hnp.arrays(np.float32, (n,), elements=st.sampled_from([0.0, 1.0, 2.0, 3.0, 7.0, 8.0])))
    else:
        y = data.draw(hnp.arrays(y_dtype.numpy, (n,), elements=st.integers(0, 70)))  # wraps past the width
    _check(compiled, graph, {"x": x, "y": y})
    if n and y_dtype != DType.float32:
        y[0] = -1
        with pytest.raises(ember.ExecutionError, match="negative integer powers"):
            compiled.run({"x": x, "y": y})


@pytest.mark.parametrize("src, dst", [(DType.float32, DType.int32), (DType.int64, DType.float64),
                                      (DType.bool, DType.uint8), (DType.uint16, DType.int16),
                                      (DType.float16, DType.int16), (DType.uint32, DType.float32)])
@SETTINGS
@given(data=st.data())
def test_bitcast_reads_the_same_bytes(data, src, dst):
    compiled, graph = _compiled("BitCast", (("x", src, (N, 2)),), (("y", dst, (N, 2)),), (("to", dst.onnx_code),))
    n = data.draw(st.integers(0, 6))
    raw = data.draw(hnp.arrays(np.uint8, (n, 2, src.numpy.itemsize)))
    x = raw.view(src.numpy).reshape(n, 2) if src != DType.bool else (raw[..., 0] & 1).astype(bool)
    got, want = compiled.run({"x": x})["y"], evaluate(copy.deepcopy(graph), {"x": x})["y"]
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()


@pytest.mark.parametrize("k", [-5, -1, 0, 2, 7])
@pytest.mark.parametrize("dtype", [None, DType.float32, DType.int64, DType.bool])
def test_eye_like(k, dtype):
    out = dtype or DType.int32
    attrs = (("k", k),) + ((("dtype", dtype.onnx_code),) if dtype else ())
    compiled, graph = _compiled("EyeLike", (("x", DType.int32, (N, M)),), (("y", out, (N, M)),), attrs)
    for shape in [(3, 4), (5, 2), (0, 3), (1, 1)]:
        _check(compiled, graph, {"x": np.zeros(shape, np.int32)})


def _ints(dtype, shape):
    info = np.iinfo(dtype.numpy)
    return hnp.arrays(dtype.numpy, shape, elements=st.integers(info.min, info.max))


@pytest.mark.parametrize("dtype", [DType.uint8, DType.int8])
@SETTINGS
@given(data=st.data())
def test_matmul_integer_is_exact(data, dtype):
    compiled, graph = _compiled("MatMulInteger", (("a", dtype, (2, N, 5)), ("b", dtype, (5, M)), ("az", dtype, (1,)),
                                                  ("bz", dtype, ())), (("y", DType.int32, (2, N, M)),))
    n, m = data.draw(st.integers(0, 4)), data.draw(st.integers(1, 4))
    feeds = {"a": data.draw(_ints(dtype, (2, n, 5))), "b": data.draw(_ints(dtype, (5, m))),
             "az": data.draw(_ints(dtype, (1,))), "bz": data.draw(_ints(dtype, ()))}
    _check(compiled, graph, feeds)


@pytest.mark.parametrize("dtype", [DType.uint8, DType.int8])
@pytest.mark.parametrize("scale_dtype", [DType.float32, DType.float16])
@SETTINGS
@given(data=st.data())
def test_qlinear_matmul_requantizes_as_the_reference(data, dtype, scale_dtype):
    one = (1,)
    inputs = (("a", dtype, (N, 4)), ("as", scale_dtype, one), ("az", dtype, one), ("b", dtype, (4, M)),
              ("bs", scale_dtype, one), ("bz", dtype, one), ("ys", scale_dtype, one), ("yz", dtype, one))
    compiled, graph = _compiled("QLinearMatMul", inputs, (("y", dtype, (N, M)),))
    n, m = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    scale = st.floats(2.0 ** -8, 2.0 ** 2, width=16 if scale_dtype == DType.float16 else 32)
    feeds = {}
    for name, d, shape in inputs:
        shape = tuple({N: n, M: m}.get(s, s) for s in shape)
        feeds[name] = (data.draw(hnp.arrays(d.numpy, shape, elements=scale)) if d == scale_dtype
                       else data.draw(_ints(d, shape)))
    _check(compiled, graph, feeds)


@pytest.mark.parametrize("op", ["ConvInteger", "QLinearConv"])
@SETTINGS
@given(data=st.data())
def test_integer_convolutions_are_exact(data, op):
    u8, f32 = DType.uint8, DType.float32
    c_out, pad, stride = data.draw(st.integers(1, 3)), data.draw(st.integers(0, 1)), data.draw(st.integers(1, 2))
    per_channel = data.draw(st.booleans())
    w_param = (c_out,) if per_channel else ()
    h = data.draw(st.integers(2, 6))
    out = (h + 2 * pad - 2) // stride + 1
    attrs = (("pads", (pad,) * 4), ("strides", (stride, stride)))
    if op == "ConvInteger":
        inputs = (("x", u8, (1, 2, h, h)), ("w", u8, (c_out, 2, 2, 2)), ("xz", u8, ()), ("wz", u8, w_param))
        y = DType.int32
    else:
        inputs = (("x", u8, (1, 2, h, h)), ("xs", f32, ()), ("xz", u8, ()), ("w", u8, (c_out, 2, 2, 2)),
                  ("ws", f32, w_param), ("wz", u8, w_param), ("ys", f32, ()), ("yz", u8, ()))
        y = u8
    compiled, graph = _compiled(op, inputs, (("y", y, (1, c_out, out, out)),), attrs)
    feeds = {name: (data.draw(hnp.arrays(np.float32, shape, elements=st.floats(2.0 ** -8, 2.0 ** 2, width=32)))
                    if d == f32 else data.draw(_ints(d, shape))) for name, d, shape in inputs}
    _check(compiled, graph, feeds)


@SETTINGS
@given(data=st.data())
def test_det(data):
    k = data.draw(st.integers(1, 4))
    compiled, graph = _compiled("Det", (("x", DType.float64, (N, k, k)),), (("y", DType.float64, (N,)),))
    x = data.draw(hnp.arrays(np.float64, (data.draw(st.integers(0, 3)), k, k), elements=st.floats(-3, 3)))
    _check(compiled, graph, {"x": x}, rtol=1e-9, atol=1e-9)


def test_det_of_a_singular_matrix_of_subnormals_is_zero():
    """hypothesis found it: torch's LU gives NaN (0/0 over subnormal pivots), the reference 0."""
    compiled, graph = _compiled("Det", (("x", DType.float64, (N, 3, 3)),), (("y", DType.float64, (N,)),))
    _check(compiled, graph, {"x": np.full((2, 3, 3), 2.22507386e-311)}, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("dtype", HALVES)
@SETTINGS
@given(data=st.data())
def test_16bit_convolution_rounds_once(data, dtype):
    pad, group = data.draw(st.integers(0, 1)), data.draw(st.sampled_from([1, 2]))
    compiled, graph = _compiled("Conv", (("x", dtype, (N, 2, 6)), ("w", dtype, (4, 2 // group, 3)), ("b", dtype, (4,))),
                                (("y", dtype, (N, 4, 4 + 2 * pad)),), (("pads", (pad, pad)), ("group", group)))
    n = data.draw(st.integers(1, 2))
    feeds = {"x": data.draw(_halves(dtype, (n, 2, 6))), "w": data.draw(_halves(dtype, (4, 2 // group, 3))),
             "b": data.draw(_halves(dtype, (4,)))}
    # float32 sums against the reference's float64: one 16-bit ulp apart at most
    _check(compiled, graph, feeds, rtol=2 ** -7 if dtype == DType.bfloat16 else 2 ** -10, atol=1e-2)


@pytest.mark.parametrize("form", ["gemm_trans_b", "gemm", "matmul_add_relu", "gemm_3_rows"])
def test_small_products_with_constant_weights_are_generated(form):
    """A product of a static-shape x with a constant weight of at most SMALL_MATMUL_MACS
    multiply-adds runs as a generated reduction kernel inside the segment (no library
    call, which costs more than such a product: openwakeword's heads), bias and ReLU
    in it; a larger one stays on the GEMM extern. Both match numpy."""
    from ember.ir.ops._lowering import SMALL_MATMUL_MACS

    rng = np.random.default_rng(3)
    rows = 3 if form == "gemm_3_rows" else 1
    k, n = 96, 40
    w = rng.standard_normal((n, k) if form in ("gemm_trans_b", "gemm_3_rows") else (k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
    if form == "matmul_add_relu":
        nodes = [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Add", ["m", "b"], ["s"]),
                 helper.make_node("Relu", ["s"], ["y"])]
    else:
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=int(form != "gemm"))]
    big = np.zeros((1, SMALL_MATMUL_MACS // n + 1), np.float32)  # x of more than the limit's work: an extern
    for x_shape in ((rows, k), big.shape):
        kk = x_shape[1]
        ww = w if kk == k else rng.standard_normal((n, kk) if form in ("gemm_trans_b", "gemm_3_rows") else (kk, n)).astype(np.float32)
        inits[0] = numpy_helper.from_array(ww, "w")
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
        compiled = ember.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
        kinds = [step.kind for step in compiled.program.steps]
        assert kinds == (["segment"] if kk == k else ["extern"]), (x_shape, kinds)
        x = rng.standard_normal(x_shape).astype(np.float32)
        want = x @ (ww.T if form in ("gemm_trans_b", "gemm_3_rows") else ww) + b
        if form == "matmul_add_relu":
            want = np.maximum(want, 0)
        np.testing.assert_allclose(compiled.run({"x": x})["y"], want, rtol=1e-5, atol=1e-4)
