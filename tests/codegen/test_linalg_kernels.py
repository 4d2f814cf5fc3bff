"""Kernels for linear algebra, recurrent, integer and 16-bit float ops against their
reference implementations, on random inputs (hypothesis). Each compiled graph is
checked to run with no node on the reference fallback."""

import copy

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ember
from ember.codegen import cpu
from ember.codegen.lowering import lower_graph
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


# -- RNN, GRU, LSTM ---------------------------------------------------------------------
def _recurrent_graph(op, direction, layout, seq, batch, size, hidden, with_bias, with_state, with_lens,
                     linear_before_reset):
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    dirs = 2 if direction == "bidirectional" else 1
    f32 = DType.float32
    values = {"X": Value("X", TensorType(f32, (batch, seq, size) if layout else (seq, batch, size))),
              "W": Value("W", TensorType(f32, (dirs, gates * hidden, size))),
              "R": Value("R", TensorType(f32, (dirs, gates * hidden, hidden)))}
    state = (batch, dirs, hidden) if layout else (dirs, batch, hidden)
    if with_bias:
        values["B"] = Value("B", TensorType(f32, (dirs, 2 * gates * hidden)))
    if with_lens:
        values["sequence_lens"] = Value("sequence_lens", TensorType(DType.int32, (batch,)))
    if with_state:
        values["initial_h"] = Value("initial_h", TensorType(f32, state))
        if op == "LSTM":
            values["initial_c"] = Value("initial_c", TensorType(f32, state))
            values["P"] = Value("P", TensorType(f32, (dirs, 3 * hidden)))
    order = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"][:8 if op == "LSTM" else 6]
    args = [values.get(name) for name in order]
    while args[-1] is None:
        args.pop()
    y = (batch, seq, dirs, hidden) if layout else (seq, dirs, batch, hidden)
    outs = [Value("Y", TensorType(f32, y)), Value("Y_h", TensorType(f32, state))]
    if op == "LSTM":
        outs.append(Value("Y_c", TensorType(f32, state)))
    g = Graph("g", inputs=list(values.values()), opsets={"": 28})
    attrs = {"hidden_size": hidden, "direction": direction, "layout": layout}
    if op == "GRU":
        attrs["linear_before_reset"] = linear_before_reset
    g.outputs = g.add_node(op, args, outs, attrs).outputs
    return g


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@SETTINGS
@given(data=st.data())
def test_recurrent_layers(data, op, direction):
    layout, with_bias, with_state, with_lens, lbr = (data.draw(st.integers(0, 1)) for _ in range(5))
    seq, batch, size, hidden = (data.draw(st.integers(1, 4)) for _ in range(4))
    graph = _recurrent_graph(op, direction, layout, seq, batch, size, hidden, with_bias, with_state, with_lens, lbr)
    compiled = ember.compile(copy.deepcopy(graph), opt_level=0)
    assert compiled.stats.fallback_nodes == []
    feeds = {}
    for v in graph.inputs:
        shape = tuple(int(d) for d in v.type.shape)
        if v.name == "sequence_lens":
            feeds[v.name] = np.full(shape, seq, np.int32)
        else:
            feeds[v.name] = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(-2, 2, width=32)))
    _check(compiled, graph, feeds, rtol=1e-5, atol=1e-5)
    if with_lens and seq > 1:  # shorter sequences: the reference ignores them; the kernel says so
        feeds["sequence_lens"] = np.full(feeds["sequence_lens"].shape, seq - 1, np.int32)
        with pytest.raises(ember.ExecutionError, match="sequence_lens"):
            compiled.run(feeds)


@pytest.mark.parametrize("attrs, why", [({"clip": 1.0}, "clip"), ({"activations": ["Relu"]}, "activations")])
def test_recurrent_settings_the_kernel_does_not_run_stay_on_the_reference(attrs, why):
    graph = _recurrent_graph("RNN", "forward", 0, 2, 1, 3, 2, False, False, False, 0)
    graph.nodes[0].attrs.update(attrs)
    reasons = lower_graph(graph).fallback_reasons
    assert why in reasons[graph.nodes[0].name]


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


# -- reductions and normalizations -----------------------------------------------------------
@pytest.mark.parametrize("axes, keepdims", [((1,), 1), ((0, 2), 0), ((-1,), 1)])
@SETTINGS
@given(data=st.data())
def test_reduce_log_sum_exp(data, axes, keepdims):
    shape = (3, N, 2)
    out = tuple(1 if a in [x % 3 for x in axes] else d for a, d in enumerate(shape)
                if keepdims or a not in [x % 3 for x in axes])
    consts = ((1, np.array(axes, np.int64).tobytes(), np.int64, (len(axes),)),)
    compiled, graph = _compiled("ReduceLogSumExp", (("x", DType.float64, shape),), (("y", DType.float64, out),),
                                (("keepdims", keepdims),), consts)
    n = data.draw(st.integers(0, 5))  # 0: an empty reduction gives -inf
    special = st.sampled_from([np.inf, -np.inf, np.nan, 800.0, -800.0])
    x = data.draw(hnp.arrays(np.float64, (3, n, 2), elements=st.one_of(st.floats(-50, 50), special)))
    _check(compiled, graph, {"x": x}, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [0, 1, -1])
@SETTINGS
@given(data=st.data())
def test_lp_normalization(data, p, axis):
    compiled, graph = _compiled("LpNormalization", (("x", DType.float32, (N, 3)),), (("y", DType.float32, (N, 3)),),
                                (("p", p), ("axis", axis)))
    x = data.draw(hnp.arrays(np.float32, (data.draw(st.integers(0, 5)), 3),
                             elements=st.sampled_from([0.0, 1.0, -2.0, 3.5, -0.25])))  # zero norms too
    _check(compiled, graph, {"x": x}, rtol=1e-6, atol=1e-7)


@SETTINGS
@given(data=st.data())
def test_instance_normalization(data):
    compiled, graph = _compiled("InstanceNormalization", (("x", DType.float32, (N, 3, M, 2)), ("s", DType.float32, (3,)),
                                                          ("b", DType.float32, (3,))),
                                (("y", DType.float32, (N, 3, M, 2)),), (("epsilon", 1e-3),))
    n, m = data.draw(st.integers(0, 3)), data.draw(st.integers(1, 4))
    feeds = {"x": data.draw(hnp.arrays(np.float32, (n, 3, m, 2), elements=st.floats(-10, 10, width=32))),
             "s": data.draw(hnp.arrays(np.float32, (3,), elements=st.floats(-2, 2, width=32))),
             "b": data.draw(hnp.arrays(np.float32, (3,), elements=st.floats(-2, 2, width=32)))}
    _check(compiled, graph, feeds, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axes", [(0, 2, 3), (1,), (2, 3)])
@SETTINGS
@given(data=st.data())
def test_mean_variance_normalization(data, axes):
    compiled, graph = _compiled("MeanVarianceNormalization", (("x", DType.float32, (2, 3, N, 2)),),
                                (("y", DType.float32, (2, 3, N, 2)),), (("axes", axes),))
    # E[x^2] - E[x]^2 cancels, so the sums' order would show: integer values sum exactly in any order
    x = data.draw(hnp.arrays(np.float32, (2, 3, data.draw(st.integers(1, 4)), 2), elements=st.integers(-4, 4).map(float)))
    _check(compiled, graph, {"x": x}, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("size", [1, 2, 3, 5])
@SETTINGS
@given(data=st.data())
def test_lrn_sums_a_window_of_channels(data, size):
    compiled, graph = _compiled("LRN", (("x", DType.float32, (N, 4, M, 2)),), (("y", DType.float32, (N, 4, M, 2)),),
                                (("size", size), ("alpha", 0.5), ("beta", 0.75), ("bias", 1.5)))
    x = data.draw(hnp.arrays(np.float32, (data.draw(st.integers(0, 3)), 4, data.draw(st.integers(1, 3)), 2),
                             elements=st.floats(-3, 3, width=32)))
    _check(compiled, graph, {"x": x}, rtol=1e-5, atol=1e-6)


def test_lrn_and_lp_normalization_references_agree_with_onnx_where_it_follows_the_spec():
    """ember's references fix two slips of onnx.reference (LRN windows only the first N
    channels; L1 norms sum x, not |x|); where those do not show, they agree with it."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    for op, attrs, x in [("LRN", {"size": 3, "alpha": 0.5, "beta": 0.75, "bias": 1.5},
                          rng.standard_normal((4, 4, 2, 2)).astype(np.float32)),
                         ("LpNormalization", {"p": 1, "axis": 1}, rng.random((3, 4)).astype(np.float32))]:
        proto = helper.make_model(helper.make_graph([helper.make_node(op, ["x"], ["y"], **attrs)], "g",
                                                    [helper.make_tensor_value_info("x", 1, x.shape)],
                                                    [helper.make_tensor_value_info("y", 1, x.shape)]))
        compiled, graph = _compiled(op, (("x", DType.float32, x.shape),), (("y", DType.float32, x.shape),),
                                    tuple(attrs.items()))
        want = ReferenceEvaluator(proto).run(None, {"x": x})[0]
        np.testing.assert_allclose(evaluate(copy.deepcopy(graph), {"x": x})["y"], want, rtol=1e-6)


# -- index remaps -----------------------------------------------------------------------------
@pytest.mark.parametrize("batch_dims, k", [(0, 1), (0, 2), (1, 1)])
@SETTINGS
@given(data=st.data())
def test_gather_nd(data, batch_dims, k):
    dshape = (2, 3, 4)
    n = data.draw(st.integers(0, 3))
    ishape = (2, n, k) if batch_dims else (n, k)
    out = (*ishape[:-1], *dshape[batch_dims + k:])
    compiled, graph = _compiled("GatherND", (("x", DType.float32, dshape), ("i", DType.int64, ishape)),
                                (("y", DType.float32, out),), (("batch_dims", batch_dims),))
    x = np.arange(24, dtype=np.float32).reshape(dshape)
    bounds = [dshape[batch_dims + j] for j in range(k)]
    i = np.stack([data.draw(hnp.arrays(np.int64, ishape[:-1], elements=st.integers(-d, d - 1))) for d in bounds], -1)
    _check(compiled, graph, {"x": x, "i": i})


@pytest.mark.parametrize("batch_axis, time_axis", [(0, 1), (1, 0)])
@SETTINGS
@given(data=st.data())
def test_reverse_sequence(data, batch_axis, time_axis):
    steps, batch = data.draw(st.integers(1, 5)), 3
    shape = [0, 0, 2]
    shape[batch_axis], shape[time_axis] = batch, steps
    compiled, graph = _compiled("ReverseSequence", (("x", DType.int32, tuple(shape)), ("n", DType.int64, (batch,))),
                                (("y", DType.int32, tuple(shape)),),
                                (("batch_axis", batch_axis), ("time_axis", time_axis)))
    x = np.arange(np.prod(shape), dtype=np.int32).reshape(shape)
    lens = data.draw(hnp.arrays(np.int64, (batch,), elements=st.integers(-steps - 1, steps + 1)))
    _check(compiled, graph, {"x": x, "n": lens})


@pytest.mark.parametrize("mode", ["linear", "circular"])
@SETTINGS
@given(data=st.data())
def test_tensor_scatter(data, mode):
    cache, length = data.draw(st.integers(1, 5)), data.draw(st.integers(0, 3))
    length = min(length, cache)
    compiled, graph = _compiled("TensorScatter", (("past", DType.float32, (2, 3, cache, 2)),
                                                  ("new", DType.float32, (2, 3, length, 2)), ("w", DType.int64, (2,))),
                                (("y", DType.float32, (2, 3, cache, 2)),), (("mode", mode),))
    past = np.arange(12 * cache, dtype=np.float32).reshape(2, 3, cache, 2)
    new = -1 - np.arange(12 * length, dtype=np.float32).reshape(2, 3, length, 2)
    top = cache - length if mode == "linear" else 3 * cache
    w = data.draw(hnp.arrays(np.int64, (2,), elements=st.integers(-cache if mode == "linear" else 0, top)))
    _check(compiled, graph, {"past": past, "new": new, "w": w})
    if mode == "linear":
        with pytest.raises(ember.ExecutionError, match="write_indices"):
            compiled.run({"past": past, "new": new, "w": np.array([0, cache - length + 1], np.int64)})


# -- optimizer steps, ai.onnx.ml --------------------------------------------------------------
OPTIMIZERS = {"Adagrad": ("G", "H"), "Adam": ("G", "V", "H"), "Momentum": ("G", "V")}


@pytest.mark.parametrize("op, attrs", [
    ("Adagrad", (("decay_factor", 0.1), ("epsilon", 1e-5), ("norm_coefficient", 0.001))),
    ("Adam", (("alpha", 0.95), ("beta", 0.85), ("epsilon", 1e-2), ("norm_coefficient", 0.001),
              ("norm_coefficient_post", 0.01))),
    ("Momentum", (("alpha", 0.95), ("beta", 0.85), ("mode", "standard"), ("norm_coefficient", 0.001))),
    ("Momentum", (("alpha", 0.9), ("beta", 1.0), ("mode", "nesterov"), ("norm_coefficient", 0.01)))])
@SETTINGS
@given(data=st.data())
def test_optimizer_steps(data, op, attrs):
    n = data.draw(st.integers(1, 2))  # tensors updated at once
    shapes = [(data.draw(st.integers(0, 3)),) for _ in range(n)]
    kinds = ("X", *OPTIMIZERS[op])
    inputs = [("R", DType.float32, ()), ("T", DType.int64, ())]
    inputs += [(f"{kind}{k}", DType.float32, shapes[k]) for kind in kinds for k in range(n)]
    outputs = tuple((f"{kind}{k}_new", DType.float32, shapes[k]) for kind in ("X", *OPTIMIZERS[op][1:])
                    for k in range(n))
    compiled, graph = _compiled(f"ai.onnx.preview.training.{op}", tuple(inputs), outputs, attrs)
    feeds = {"R": np.float32(data.draw(st.floats(0.01, 1))), "T": np.int64(data.draw(st.integers(0, 3)))}
    for name, _, shape in inputs[2:]:
        low = 0 if name.startswith("H") else -2  # squared-gradient accumulators are not negative
        feeds[name] = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(low, 2, width=32)))
    # (onnx.reference's Adam of one tensor returns float64)
    _check(compiled, graph, feeds, rtol=1e-5, atol=1e-6, declared_dtypes=True)


@SETTINGS
@given(data=st.data(), threshold=st.sampled_from([0.0, 1.0, -0.5]))
def test_binarizer(data, threshold):
    compiled, graph = _compiled("ai.onnx.ml.Binarizer", (("x", DType.float32, (N,)),), (("y", DType.float32, (N,)),),
                                (("threshold", threshold),))
    x = data.draw(hnp.arrays(np.float32, (data.draw(st.integers(0, 9)),),
                             elements=st.sampled_from([0.0, 1.0, -0.5, 2.0, np.nan, -np.inf])))
    _check(compiled, graph, {"x": x})


@pytest.mark.parametrize("x_shape, i_shape", [((3, 4), (2,)), ((2, 3, 4), (1, 3)), ((4,), (2,)), ((3, 4), (2, 2))])
@SETTINGS
@given(data=st.data())
def test_array_feature_extractor(data, x_shape, i_shape):
    count = int(np.prod(i_shape))
    out = (1, count) if len(x_shape) == 1 else (*x_shape[:-1], count)
    compiled, graph = _compiled("ai.onnx.ml.ArrayFeatureExtractor", (("x", DType.float32, x_shape),
                                                                      ("i", DType.int64, i_shape)),
                                (("y", DType.float32, out),))
    x = np.arange(np.prod(x_shape), dtype=np.float32).reshape(x_shape)
    i = data.draw(hnp.arrays(np.int64, i_shape, elements=st.integers(-x_shape[-1], x_shape[-1] - 1)))
    _check(compiled, graph, {"x": x, "i": i})


@SETTINGS
@given(data=st.data(), momentum=st.sampled_from([0.9, 0.5]))
def test_batch_normalization_in_training_mode(data, momentum):
    f32, c = DType.float32, (3,)
    compiled, graph = _compiled("BatchNormalization", (("x", f32, (N, 3, M)), ("s", f32, c), ("b", f32, c),
                                                       ("mean", f32, c), ("var", f32, c)),
                                (("y", f32, (N, 3, M)), ("running_mean", f32, c), ("running_var", f32, c)),
                                (("training_mode", 1), ("momentum", momentum), ("epsilon", 1e-3)))
    n, m = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4))
    feeds = {"x": data.draw(hnp.arrays(np.float32, (n, 3, m), elements=st.floats(-5, 5, width=32)))}
    for name in ("s", "b", "mean", "var"):
        feeds[name] = data.draw(hnp.arrays(np.float32, c, elements=st.floats(0, 2, width=32)))
    _check(compiled, graph, feeds, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(data=st.data())
def test_det(data):
    k = data.draw(st.integers(1, 4))
    compiled, graph = _compiled("Det", (("x", DType.float64, (N, k, k)),), (("y", DType.float64, (N,)),))
    x = data.draw(hnp.arrays(np.float64, (data.draw(st.integers(0, 3)), k, k), elements=st.floats(-3, 3)))
    _check(compiled, graph, {"x": x}, rtol=1e-9, atol=1e-9)


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


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceProd", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2",
                                "ReduceLogSum", "ReduceSumSquare", "ReduceMean"])
@pytest.mark.parametrize("dtype", [DType.float32, DType.int64])
def test_empty_reductions_give_the_fold_identity(op, dtype):
    if dtype == DType.int64 and op in ("ReduceL2", "ReduceLogSum", "ReduceMean"):
        return  # (a float formula: stays on the reference)
    consts = ((1, np.array([1], np.int64).tobytes(), np.int64, (1,)),)
    compiled, graph = _compiled(op, (("x", dtype, (2, N, 3)),), (("y", dtype, (2, 1, 3)),), (("keepdims", 1),), consts)
    for n in (0, 2):
        x = np.arange(6 * n).reshape(2, n, 3).astype(dtype.numpy)
        _check(compiled, graph, {"x": x}, rtol=1e-6)


def _random_trees(data, features, n_targets):
    """TreeEnsemble attributes for a few random trees (depth up to 3, every test mode)."""
    nodes = {k: [] for k in ("modes", "splits", "features", "true_ids", "false_ids", "true_leafs", "false_leafs",
                             "missing")}
    leaves, weights, members = [], [], []

    def leaf():
        leaves.append(data.draw(st.integers(0, n_targets - 1)))
        weights.append(data.draw(st.floats(-10, 10, width=32)))
        return len(leaves) - 1, 1

    def branch(depth):
        if depth == 3 or (depth and data.draw(st.integers(0, 3)) == 0):  # (roots branch)
            return leaf()
        i = len(nodes["modes"])
        mode = data.draw(st.integers(0, 6))
        for key in nodes:
            nodes[key].append(0)
        nodes["modes"][i], nodes["features"][i] = mode, data.draw(st.integers(0, features - 1))
        nodes["splits"][i] = data.draw(st.sampled_from([-1.0, 0.0, 0.5, 2.0])) if mode != 6 else float("nan")
        nodes["missing"][i] = data.draw(st.integers(0, 1))
        if mode == 6:
            members.extend(data.draw(st.lists(st.sampled_from([-1.0, 0.5, 2.0, 3.0]), min_size=1, max_size=3)))
            members.append(float("nan"))
        nodes["true_ids"][i], nodes["true_leafs"][i] = branch(depth + 1)
        nodes["false_ids"][i], nodes["false_leafs"][i] = branch(depth + 1)
        return i, 0

    roots = []
    for _ in range(data.draw(st.integers(1, 3))):
        roots.append(branch(0)[0])  # (one-leaf trees: see the test after this one)
    attrs = {"nodes_modes": np.array(nodes["modes"], np.uint8), "nodes_splits": np.array(nodes["splits"], np.float32),
             "nodes_featureids": nodes["features"], "nodes_truenodeids": nodes["true_ids"],
             "nodes_falsenodeids": nodes["false_ids"], "nodes_trueleafs": nodes["true_leafs"],
             "nodes_falseleafs": nodes["false_leafs"], "nodes_missing_value_tracks_true": nodes["missing"],
             "leaf_targetids": leaves, "leaf_weights": np.array(weights, np.float32), "tree_roots": roots,
             "n_targets": n_targets}
    if members:
        attrs["membership_values"] = np.array(members, np.float32)
    return attrs


@pytest.mark.parametrize("aggregate", [0, 1, 2, 3])
@SETTINGS
@given(data=st.data())
def test_tree_ensemble(data, aggregate):
    attrs = {**_random_trees(data, 2, 3), "aggregate_function": aggregate}
    rows = data.draw(st.integers(1, 5))
    g = Graph("g", inputs=[Value("x", TensorType(DType.float32, (rows, 2)))], opsets={"": 28, "ai.onnx.ml": 5})
    g.outputs = g.add_node("ai.onnx.ml.TreeEnsemble", list(g.inputs), [Value("y", TensorType(DType.float32, (rows, 3)))],
                           attrs).outputs
    compiled = ember.compile(copy.deepcopy(g), opt_level=0)
    assert compiled.stats.fallback_nodes == []
    x = data.draw(hnp.arrays(np.float32, (rows, 2), elements=st.sampled_from([-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, np.nan])))
    _check(compiled, g, {"x": x}, rtol=1e-6, atol=1e-5)


def test_tree_ensemble_one_leaf_trees_read_the_leaf_at_the_root_index():
    """A tree that is one leaf (a root whose both branches are that leaf): the reference
    reads the leaf at the root's index, so a kernel runs only where that is the leaf named."""
    def graph(leaf):
        g = Graph("g", inputs=[Value("x", TensorType(DType.float32, (2, 1)))], opsets={"": 28, "ai.onnx.ml": 5})
        attrs = {"nodes_modes": np.zeros(2, np.uint8), "nodes_splits": np.zeros(2, np.float32),
                 "nodes_featureids": [0, 0], "nodes_truenodeids": [1, leaf], "nodes_falsenodeids": [0, leaf],
                 "nodes_trueleafs": [1, 1], "nodes_falseleafs": [1, 1], "leaf_targetids": [0, 0],
                 "leaf_weights": np.array([2.0, 5.0], np.float32), "tree_roots": [0, 1], "n_targets": 1,
                 "aggregate_function": 1}
        g.outputs = g.add_node("ai.onnx.ml.TreeEnsemble", list(g.inputs),
                               [Value("y", TensorType(DType.float32, (2, 1)))], attrs).outputs
        return g
    compiled = ember.compile(copy.deepcopy(graph(1)), opt_level=0)
    assert compiled.stats.fallback_nodes == []
    _check(compiled, graph(1), {"x": np.array([[-1.0], [1.0]], np.float32)})
    assert "one-leaf tree" in next(iter(lower_graph(graph(0)).fallback_reasons.values()))
