"""Kernels of single ops against their reference implementations, on random inputs.

Each graph has symbolic input sizes, so one library serves every shape hypothesis draws;
every test also checks that nothing ran on the reference fallback."""

import functools

import ml_dtypes
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ember
from ember.codegen import cpu
from ember.ir import DType, Graph, TensorType, Value
from ember.ir.interpreter import evaluate
from ember.ir.types import symbol

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N, M = symbol("n"), symbol("m")


@functools.cache
def _compiled(op: str, inputs: tuple, outputs: tuple, attrs: tuple = (), consts: tuple = ()):
    """`op` over graph inputs of `inputs` ((name, dtype, shape), ...) and constant inputs
    `consts` ((position, array bytes, dtype, shape), ...), compiled once."""
    values = [Value(name, TensorType(dtype, shape)) for name, dtype, shape in inputs]
    g = Graph("g", inputs=values, opsets={"": 28})
    args = list(values)
    for position, data, dtype, shape in consts:
        args.insert(position, g.add_constant(f"c{position}", np.frombuffer(data, dtype).reshape(shape)))
    outs = [Value(name, TensorType(dtype, shape)) for name, dtype, shape in outputs]
    g.outputs = g.add_node(op, args, outs, dict(attrs)).outputs
    compiled = ember.compile(g, opt_level=0)
    assert compiled.stats.fallback_nodes == [], compiled.stats.fallback_nodes
    return compiled, g


def _check(compiled, graph, feeds, exact=False):
    import copy

    want = evaluate(copy.deepcopy(graph), feeds)
    got = compiled.run(feeds)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        if exact:  # the same numbers (a zero's sign and a NaN's payload aside)
            as_float = (lambda a: a.astype(np.float32)) if want[name].dtype.kind == "V" or "float" in str(
                want[name].dtype) else (lambda a: a)
            np.testing.assert_array_equal(as_float(got[name]), as_float(want[name]), err_msg=name)
        else:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)


def _floats(dtype, shape):
    return hnp.arrays(dtype, shape, elements=st.floats(-1e5, 1e5, width=32, allow_subnormal=True)
                      .map(lambda v: np.float32(v)))


@SETTINGS
@given(data=st.data(), dtype=st.sampled_from([DType.float16, DType.bfloat16]),
       op=st.sampled_from(["Add", "Sub", "Mul", "Div", "Max", "Relu", "Where"]))
def test_16bit_floats_round_each_result_as_numpy_does(data, dtype, op):
    n = data.draw(st.integers(1, 40))
    np_dtype = dtype.numpy
    arity = {"Relu": 1, "Where": 3}.get(op, 2)
    names = ["a", "b", "c"][:arity]
    types = [(name, dtype, (N,)) for name in names]
    if op == "Where":
        types[0] = ("a", DType.bool, (N,))
    compiled, graph = _compiled(op, tuple(types), (("y", dtype, (N,)),))
    feeds = {name: data.draw(_floats(np.float32, (n,))).astype(np_dtype) for name, _, _ in types}
    if op == "Where":
        feeds["a"] = data.draw(hnp.arrays(np.bool_, (n,)))
    _check(compiled, graph, feeds, exact=True)


@SETTINGS
@given(x=hnp.arrays(np.float32, st.integers(1, 64),
                    elements=st.floats(width=32, allow_nan=True, allow_infinity=True, allow_subnormal=True)),
       dtype=st.sampled_from([DType.float16, DType.bfloat16]))
def test_casts_to_and_from_16bit_floats_match_numpy_bit_for_bit(x, dtype):
    down, graph = _compiled("Cast", (("x", DType.float32, (N,)),), (("y", dtype, (N,)),), (("to", dtype.onnx_code),))
    _check(down, graph, {"x": x}, exact=True)
    up, graph = _compiled("Cast", (("x", dtype, (N,)),), (("y", DType.float32, (N,)),),
                          (("to", DType.float32.onnx_code),))
    _check(up, graph, {"x": x.astype(dtype.numpy)}, exact=True)


@SETTINGS
@given(data=st.data(), axis=st.sampled_from([0, 1, -1]))
def test_gather_elements(data, axis):
    n, m = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    extent = (n, m)[axis]
    compiled, graph = _compiled("GatherElements", (("x", DType.float32, (N, M)), ("i", DType.int64, (N, M))),
                                (("y", DType.float32, (N, M)),), (("axis", axis),))
    x = data.draw(_floats(np.float32, (n, m)))
    i = data.draw(hnp.arrays(np.int64, (n, m), elements=st.integers(-extent, extent - 1)))
    _check(compiled, graph, {"x": x, "i": i})


@SETTINGS
@given(data=st.data(), reduction=st.sampled_from(["none", "add", "mul", "max", "min"]))
def test_scatter_elements_with_repeated_indices(data, reduction):
    n, m = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5))
    k = data.draw(st.integers(1, 5))
    compiled, graph = _compiled("ScatterElements", (("x", DType.float32, (N, M)), ("i", DType.int64, (symbol("k"), M)),
                                                    ("u", DType.float32, (symbol("k"), M))),
                                (("y", DType.float32, (N, M)),), (("axis", 0), ("reduction", reduction)))
    x = data.draw(_floats(np.float32, (n, m)))
    if reduction == "none":  # which of repeated targets' updates wins is unspecified: no repeats
        k = min(k, n)
        i = np.stack([np.array(data.draw(st.permutations(range(n))))[:k] for _ in range(m)], axis=1)
    else:
        i = data.draw(hnp.arrays(np.int64, (k, m), elements=st.integers(-n, n - 1)))
    u = data.draw(hnp.arrays(np.float32, (k, m), elements=st.integers(-4, 4).map(float)))
    _check(compiled, graph, {"x": x, "i": i, "u": u})


@SETTINGS
@given(data=st.data(), upper=st.booleans())
def test_trilu(data, upper):
    n, m = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    compiled, graph = _compiled("Trilu", (("x", DType.int64, (N, M)), ("k", DType.int64, ())),
                                (("y", DType.int64, (N, M)),), (("upper", int(upper)),))
    x = data.draw(hnp.arrays(np.int64, (n, m), elements=st.integers(-9, 9)))
    _check(compiled, graph, {"x": x, "k": np.array(data.draw(st.integers(-7, 7)), np.int64)})


@SETTINGS
@given(data=st.data(), mode=st.sampled_from(["constant", "edge", "reflect", "wrap"]))
def test_pad(data, mode):
    n, m = data.draw(st.integers(2, 5)), data.draw(st.integers(2, 5))
    limit = 1 if mode == "reflect" else 3
    pads = data.draw(st.lists(st.integers(0, limit), min_size=4, max_size=4))  # (numpy pads no negatives)
    out = (n + pads[0] + pads[2], m + pads[1] + pads[3])
    consts = ((1, np.array(pads, np.int64).tobytes(), np.int64, (4,)),)
    compiled, graph = _compiled("Pad", (("x", DType.float32, (n, m)), ("v", DType.float32, ())),
                                (("y", DType.float32, out),), (("mode", mode),), consts)
    feeds = {"x": data.draw(_floats(np.float32, (n, m))), "v": np.float32(data.draw(st.floats(-3, 3)))}
    _check(compiled, graph, feeds)


@SETTINGS
@given(data=st.data(), op=st.sampled_from(["ArgMax", "ArgMin"]), axis=st.sampled_from([0, 1]),
       keepdims=st.booleans(), last=st.booleans())
def test_arg_max_min_break_ties_as_asked(data, op, axis, keepdims, last):
    n, m = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    out = tuple(1 if a == axis else d for a, d in enumerate((N, M)) if keepdims or a != axis)
    compiled, graph = _compiled(op, (("x", DType.float32, (N, M)),), (("y", DType.int64, out),),
                                (("axis", axis), ("keepdims", int(keepdims)), ("select_last_index", int(last))))
    x = data.draw(hnp.arrays(np.float32, (n, m), elements=st.integers(-2, 2).map(float)))  # many ties
    _check(compiled, graph, {"x": x})


@SETTINGS
@given(data=st.data(), direction=st.sampled_from(["LEFT", "RIGHT"]), dtype=st.sampled_from([np.int8, np.int32]))
def test_bitshift_of_signed_integers(data, direction, dtype):
    n = data.draw(st.integers(1, 20))
    d = DType.from_numpy(np.dtype(dtype))
    compiled, graph = _compiled("BitShift", (("a", d, (N,)), ("b", d, (N,))), (("y", d, (N,)),),
                                (("direction", direction),))
    info = np.iinfo(dtype)
    a = data.draw(hnp.arrays(dtype, (n,), elements=st.integers(info.min, info.max)))
    b = data.draw(hnp.arrays(dtype, (n,), elements=st.integers(-2, info.bits + 2)))
    _check(compiled, graph, {"a": a, "b": b}, exact=True)


def test_layer_norm_statistics_run_through_the_function_body():
    """LayerNormalization with its Mean and InvStdDev outputs has no lowering of its own:
    it runs as the kernels of its ONNX function body."""
    compiled, graph = _compiled(
        "LayerNormalization", (("x", DType.float32, (N, 8)), ("s", DType.float32, (8,)), ("b", DType.float32, (8,))),
        (("y", DType.float32, (N, 8)), ("mean", DType.float32, (N, 1)), ("inv", DType.float32, (N, 1))),
        (("axis", -1),))
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((3, 8), np.float32), "s": rng.standard_normal(8, np.float32),
             "b": rng.standard_normal(8, np.float32)}
    _check(compiled, graph, feeds)
    assert compiled.stats.num_kernels > 1


def test_reduce_axes_fed_at_run_time_are_read_off_the_output_type():
    compiled, graph = _compiled("ReduceSum", (("x", DType.float32, (3, 4, 5)), ("axes", DType.int64, (1,))),
                                (("y", DType.float32, (3, 1, 5)),), (("keepdims", 1),))
    x = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    _check(compiled, graph, {"x": x, "axes": np.array([1], np.int64)})
    _check(compiled, graph, {"x": x, "axes": np.array([-2], np.int64)})


@pytest.mark.parametrize("axes", [[0], [2], [5], [1, 2]])
def test_reduce_axes_fed_at_run_time_that_disagree_with_the_output_type_are_an_error(axes):
    compiled, _ = _compiled("ReduceSum", (("x", DType.float32, (3, 4, 5)), ("axes", DType.int64, (M,))),
                                (("y", DType.float32, (3, 1, 5)),), (("keepdims", 1),))
    x = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    with pytest.raises(ember.ExecutionError, match="ReduceSum.*axes"):
        compiled.run({"x": x, "axes": np.array(axes, np.int64)})


def test_bfloat16_buffers_hold_ml_dtypes_bits():
    x = np.array([1.0, 1.00390625, 3.0e38, -0.0], ml_dtypes.bfloat16)
    compiled, graph = _compiled("Neg", (("x", DType.bfloat16, (N,)),), (("y", DType.bfloat16, (N,)),))
    _check(compiled, graph, {"x": x}, exact=True)


@pytest.mark.parametrize("op", ["CumSum", "CumProd"])
@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("dtype", [DType.float32, DType.int32])
@SETTINGS
@given(data=st.data())
def test_cumulative_sums_and_products_round_each_partial_as_the_reference(data, op, exclusive, reverse, dtype):
    compiled, graph = _compiled(op, (("x", dtype, (N, 3)), ("axis", DType.int64, ())), (("y", dtype, (N, 3)),),
                                (("exclusive", exclusive), ("reverse", reverse)))
    n = data.draw(st.integers(0, 6))
    if dtype == DType.float32:
        x = data.draw(_floats(np.float32, (n, 3)))
    else:  # wide enough that products wrap as numpy's do
        x = data.draw(hnp.arrays(np.int32, (n, 3), elements=st.integers(-2**31, 2**31 - 1)))
    axis = np.array(data.draw(st.sampled_from([0, 1, -1, -2])), np.int64)
    _check(compiled, graph, {"x": x, "axis": axis}, exact=True)


@pytest.mark.parametrize("dtype", [DType.uint8, DType.int8, DType.int16])
@pytest.mark.parametrize("per", ["tensor", "axis", "block"])
@SETTINGS
@given(data=st.data())
def test_quantize_and_dequantize_linear(data, dtype, per):
    shapes = {"tensor": (), "axis": (4,), "block": (3, 2)}
    attrs = {"tensor": (), "axis": (("axis", 1),), "block": (("axis", 1), ("block_size", 2))}[per]
    q = _compiled("QuantizeLinear", (("x", DType.float32, (3, 4)), ("s", DType.float32, shapes[per]),
                                        ("z", dtype, shapes[per])), (("y", dtype, (3, 4)),), attrs)
    d = _compiled("DequantizeLinear", (("x", dtype, (3, 4)), ("s", DType.float32, shapes[per]),
                                          ("z", dtype, shapes[per])), (("y", DType.float32, (3, 4)),), attrs)
    info = np.iinfo(dtype.numpy)
    scale = data.draw(hnp.arrays(np.float32, shapes[per], elements=st.floats(2.0**-10, 2.0**10, width=32)))
    zero = data.draw(hnp.arrays(dtype.numpy, shapes[per], elements=st.integers(info.min, info.max)))
    x = data.draw(_floats(np.float32, (3, 4)))
    _check(*q, {"x": x, "s": scale, "z": zero}, exact=True)
    xq = data.draw(hnp.arrays(dtype.numpy, (3, 4), elements=st.integers(info.min, info.max)))
    _check(*d, {"x": xq, "s": scale, "z": zero}, exact=True)


@pytest.mark.parametrize("largest", [0, 1])
@SETTINGS
@given(data=st.data())
def test_topk_orders_ties_and_nans_as_the_reference(data, largest):
    compiled, graph = _compiled("TopK", (("x", DType.float32, (3, 5)), ("k", DType.int64, (1,))),
                                (("v", DType.float32, (3, 2)), ("i", DType.int64, (3, 2))),
                                (("axis", 1), ("largest", largest)))
    x = data.draw(hnp.arrays(np.float32, (3, 5), elements=st.sampled_from([0.0, -1.5, 2.0, 7.0, np.nan])))
    _check(compiled, graph, {"x": x, "k": np.array([2], np.int64)}, exact=True)
    with pytest.raises(ember.ExecutionError, match="TopK.*k = 3"):
        compiled.run({"x": x, "k": np.array([3], np.int64)})


@pytest.mark.parametrize("axis", [0, 1, -1])
@SETTINGS
@given(data=st.data())
def test_hardmax_marks_the_first_largest(data, axis):
    compiled, graph = _compiled("Hardmax", (("x", DType.float32, (3, 4)),), (("y", DType.float32, (3, 4)),),
                                (("axis", axis),))
    x = data.draw(hnp.arrays(np.float32, (3, 4), elements=st.sampled_from([0.0, -1.5, 2.0, 7.0])))
    _check(compiled, graph, {"x": x}, exact=True)


@pytest.mark.parametrize("equation, shapes, out", [("ij,jk->ik", ((3, 4), (4, 2)), (3, 2)),
                                                   ("bii->bi", ((2, 3, 3),), (2, 3)),
                                                   ("ij->", ((3, 4),), ())])
@SETTINGS
@given(data=st.data())
def test_einsum(data, equation, shapes, out):
    names = tuple((f"x{i}", DType.float32, s) for i, s in enumerate(shapes))
    compiled, graph = _compiled("Einsum", names, (("y", DType.float32, out),), (("equation", equation),))
    small = st.integers(-64, 64).map(np.float32)  # sums exact in any order, so the check can be too
    _check(compiled, graph, {n: data.draw(hnp.arrays(np.float32, s, elements=small)) for n, _, s in names}, exact=True)


def test_squeeze_of_a_fused_value_whose_unit_dim_is_a_size_symbol():
    """Squeeze(Neg(x), axes=[1]) with x: [a, b, c], b = 1 only when it runs: the squeezed
    dim is not visible in the sizes, so the kernel must not guess it from them."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Neg", ["x"], ["n"]),
             helper.make_node("Squeeze", ["n", "axes"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["a", "b", "c"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = ember.compile(model)
    assert compiled.stats.fallback_nodes == []
    x = np.random.default_rng(0).standard_normal((2, 1, 3)).astype(np.float32)
    np.testing.assert_array_equal(compiled.run({"x": x})["y"], -x[:, 0, :])


@settings(max_examples=25, deadline=None)
@given(data=st.data(), half=st.integers(1, 5), heads=st.integers(1, 3), tokens=st.integers(0, 4),
       shared=st.booleans())
def test_rotary_embedding_kernel_matches_its_reference(data, half, heads, tokens, shared):
    """ember.RotaryEmbedding as one generated kernel; cos/sin per token (shared over heads)
    or per element."""
    d = 2 * half
    x = data.draw(hnp.arrays(np.float32, (tokens, heads, d), elements=st.floats(-3, 3, width=32)))
    table = (tokens, 1, d) if shared else (tokens, heads, d)
    cos = data.draw(hnp.arrays(np.float32, table, elements=st.floats(-1, 1, width=32)))
    sin = data.draw(hnp.arrays(np.float32, table, elements=st.floats(-1, 1, width=32)))
    f32 = DType.float32
    inputs = [Value("x", TensorType(f32, x.shape)), Value("cos", TensorType(f32, table)),
              Value("sin", TensorType(f32, table))]
    g = Graph("g", inputs=inputs, opsets={"": 28})
    g.outputs = g.add_node("ember.RotaryEmbedding", inputs, [Value("y", TensorType(f32, x.shape))]).outputs
    feeds = {"x": x, "cos": cos, "sin": sin}
    compiled = ember.compile(g, opt_level=0)
    assert compiled.stats.fallback_nodes == []
    want = ember.compile(g, opt_level=0, codegen=False).run(feeds)["y"]
    np.testing.assert_allclose(compiled.run(feeds)["y"], want, rtol=1e-6, atol=1e-6)
