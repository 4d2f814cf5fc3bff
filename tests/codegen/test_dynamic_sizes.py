"""Values whose sizes are known only when the graph runs: externs that allocate their
outputs and bind their sizes (NonZero, Compress, Unique, reductions with axes fed at run
time, Range, Pad/Slice/Tile/Reshape/Expand/ConstantOfShape with parameters fed at run
time), against the reference implementations on random inputs; and generated kernels
after them, running with the sizes they bound, on one compiled Program for every size."""

import copy
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
from ember.ir.types import fresh_symbol, symbol

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N, M, K = symbol("n"), symbol("m"), symbol("k")
REDUCTIONS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]


def _unknown(rank: int) -> tuple:
    return tuple(fresh_symbol() for _ in range(rank))


@functools.cache
def _compiled(op: str, inputs: tuple, outputs: tuple, attrs: tuple = ()):
    """`op` over graph inputs ((name, dtype, shape), ...; a name starting with "_" is an
    absent optional input) with outputs ((name, dtype, shape), ...), compiled once;
    every node must run on kernels."""
    values = [Value(name, TensorType(dtype, shape)) if name[0] != "_" else None for name, dtype, shape in inputs]
    g = Graph("g", inputs=[v for v in values if v is not None], opsets={"": 28})
    outs = [Value(name, TensorType(dtype, shape)) for name, dtype, shape in outputs]
    g.outputs = g.add_node(op, values, outs, dict(attrs)).outputs
    compiled = ember.compile(g, opt_level=0)
    assert compiled.stats.fallback_nodes == [], compiled.stats.fallback_nodes
    return compiled, g


def _check(compiled, graph, feeds, exact=False, rtol=1e-5):
    want = evaluate(copy.deepcopy(graph), feeds)
    got = compiled.run(feeds)
    for name in want:
        w = np.asarray(want[name])
        assert got[name].dtype == w.dtype and got[name].shape == w.shape, (name, got[name].shape, w.shape)
        if exact:
            np.testing.assert_array_equal(got[name], w, err_msg=name)
        else:
            np.testing.assert_allclose(got[name], w, rtol=rtol, atol=1e-5, err_msg=name)


def _floats(shape, low=-4.0, high=4.0):
    return hnp.arrays(np.float32, shape, elements=st.floats(low, high, width=32))


# -- reductions with axes fed at run time -----------------------------------------------
@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("keepdims", [0, 1])
@SETTINGS
@given(data=st.data())
def test_reductions_with_axes_fed_at_run_time(op, keepdims, data):
    """Any axes (negative ones, none at all, with and without noop_with_empty_axes), and
    empty reduced axes (the op's identity)."""
    count = data.draw(st.integers(0, 3))
    noop = data.draw(st.integers(0, 1))
    rank_out = 3 if keepdims or (count == 0 and noop) else 0 if count == 0 else 3 - count
    compiled, graph = _compiled(op, (("x", DType.float32, (N, M, K)), ("axes", DType.int64, (count,))),
                                (("y", DType.float32, _unknown(rank_out)),),
                                (("keepdims", keepdims), ("noop_with_empty_axes", noop)))
    shape = tuple(data.draw(st.integers(0 if op != "ReduceLogSumExp" else 1, 3)) for _ in range(3))
    low = 0.0 if op in ("ReduceLogSum", "ReduceL2") else -4.0
    x = data.draw(_floats(shape, low, 4.0))
    axes = data.draw(st.permutations(range(3)))[:count]
    axes = np.array([a - 3 if data.draw(st.booleans()) else a for a in axes], np.int64)
    _check(compiled, graph, {"x": x, "axes": axes}, rtol=1e-4)


@pytest.mark.parametrize("op", ["ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd"])
@pytest.mark.parametrize("dtype", [DType.int32, DType.int64])
@SETTINGS
@given(data=st.data())
def test_integer_reductions_with_axes_fed_at_run_time_are_exact(op, dtype, data):
    compiled, graph = _compiled(op, (("x", dtype, (N, M)), ("axes", DType.int64, (1,))),
                                (("y", dtype, _unknown(1)),), (("keepdims", 0),))
    shape = (data.draw(st.integers(0, 4)), data.draw(st.integers(0, 4)))
    x = data.draw(hnp.arrays(dtype.numpy, shape, elements=st.integers(-9, 9)))
    axes = np.array([data.draw(st.sampled_from([0, 1, -1, -2]))], np.int64)
    _check(compiled, graph, {"x": x, "axes": axes}, exact=True)


def test_reduce_max_of_an_empty_set_of_booleans_is_false():
    compiled, graph = _compiled("ReduceMax", (("x", DType.bool, (2, 0, 4)), ("axes", DType.int64, (1,))),
                                (("y", DType.bool, (2, 1, 4)),), (("keepdims", 1),))
    _check(compiled, graph, {"x": np.zeros((2, 0, 4), bool), "axes": np.array([1], np.int64)}, exact=True)


# -- parameters fed at run time ---------------------------------------------------------
@SETTINGS
@given(data=st.data(), steps=st.booleans(), axes=st.booleans())
def test_slice_with_starts_ends_axes_and_steps_fed_at_run_time(data, steps, axes):
    inputs = [("x", DType.float32, (N, M)), ("starts", DType.int64, (2,)), ("ends", DType.int64, (2,)),
              ("axes" if axes else "_axes", DType.int64, (2,)), ("steps" if steps else "_steps", DType.int64, (2,))]
    compiled, graph = _compiled("Slice", tuple(inputs), (("y", DType.float32, _unknown(2)),))
    shape = (data.draw(st.integers(0, 6)), data.draw(st.integers(0, 6)))
    feeds = {"x": data.draw(_floats(shape))}
    bound = st.sampled_from([-2**63, -9, -3, -1, 0, 1, 2, 5, 9, 2**63 - 1])
    feeds["starts"] = np.array([data.draw(bound) for _ in range(2)], np.int64)
    feeds["ends"] = np.array([data.draw(bound) for _ in range(2)], np.int64)
    if axes:
        feeds["axes"] = np.array(data.draw(st.permutations([0, -1])), np.int64)
    if steps:
        feeds["steps"] = np.array([data.draw(st.sampled_from([-3, -1, 1, 2])) for _ in range(2)], np.int64)
    _check(compiled, graph, {k: v for k, v in feeds.items() if not k.startswith("_")}, exact=True)


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "wrap"])
@SETTINGS
@given(data=st.data())
def test_pad_with_pads_fed_at_run_time(mode, data):
    compiled, graph = _compiled("Pad", (("x", DType.float32, (N, M)), ("pads", DType.int64, (4,)),
                                        ("value", DType.float32, ())),
                                (("y", DType.float32, _unknown(2)),), (("mode", mode),))
    shape = (data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5)))
    pads = np.array([data.draw(st.integers(0, 7)) for _ in range(4)], np.int64)  # numpy's pad: no cropping
    feeds = {"x": data.draw(_floats(shape)), "pads": pads, "value": np.float32(data.draw(st.floats(-2, 2)))}
    _check(compiled, graph, feeds, exact=True)


@pytest.mark.parametrize("dtype", [DType.int64, DType.int32, DType.float32])
@SETTINGS
@given(data=st.data())
def test_range_of_a_length_fed_at_run_time(dtype, data):
    compiled, graph = _compiled("Range", (("a", dtype, ()), ("b", dtype, ()), ("d", dtype, ())),
                                (("y", dtype, _unknown(1)),))
    a, b = data.draw(st.integers(-20, 20)), data.draw(st.integers(-20, 20))
    d = data.draw(st.sampled_from([-3, -1, 1, 2, 5]))
    scale = 0.25 if dtype == DType.float32 else 1
    feeds = {k: np.asarray(v * scale, dtype.numpy) for k, v in (("a", a), ("b", b), ("d", d))}
    _check(compiled, graph, feeds, exact=True)


@SETTINGS
@given(data=st.data(), fed=st.booleans())
def test_tile(data, fed):
    """Repeats fed at run time (torch), or constant (a generated kernel)."""
    repeats = (data.draw(st.integers(0, 3)), data.draw(st.integers(1, 3)))
    shape = (data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4)))
    x = data.draw(_floats(shape))
    if fed:
        compiled, graph = _compiled("Tile", (("x", DType.float32, (N, M)), ("r", DType.int64, (2,))),
                                    (("y", DType.float32, _unknown(2)),))
        _check(compiled, graph, {"x": x, "r": np.array(repeats, np.int64)}, exact=True)
        return
    g = Graph("g", inputs=[Value("x", TensorType(DType.float32, (N, M)))], opsets={"": 28})
    r = g.add_constant("r", np.array(repeats, np.int64))
    g.outputs = g.add_node("Tile", [g.inputs[0], r], [Value("y", TensorType(DType.float32, (N * repeats[0],
                                                                                             M * repeats[1])))]).outputs
    compiled = ember.compile(g, opt_level=0)
    assert compiled.stats.fallback_nodes == [] and not any(s.kind == "extern" for s in compiled.program.steps)
    _check(compiled, g, {"x": x}, exact=True)


@SETTINGS
@given(data=st.data())
def test_reshape_expand_and_constant_of_shape_to_shapes_fed_at_run_time(data):
    n, m = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 4))
    x = data.draw(_floats((n, m)))
    reshape, graph = _compiled("Reshape", (("x", DType.float32, (N, M)), ("s", DType.int64, (3,))),
                               (("y", DType.float32, _unknown(3)),))
    target = data.draw(st.sampled_from([[0, 1, -1], [-1, 1, 1], [1, n * m, 1], [0, 0, 1]]))
    _check(reshape, graph, {"x": x, "s": np.array(target, np.int64)}, exact=True)
    expand, graph = _compiled("Expand", (("x", DType.float32, (N, M)), ("s", DType.int64, (3,))),
                              (("y", DType.float32, _unknown(3)),))
    target = [data.draw(st.integers(0, 3)), data.draw(st.sampled_from([1, n])), data.draw(st.sampled_from([1, m]))]
    _check(expand, graph, {"x": x, "s": np.array(target, np.int64)}, exact=True)
    g = Graph("g", inputs=[Value("s", TensorType(DType.int64, (2,)))], opsets={"": 28})
    g.outputs = g.add_node("ConstantOfShape", g.inputs, [Value("y", TensorType(DType.int32, _unknown(2)))],
                           {"value": np.array([7], np.int32)}).outputs
    full = ember.compile(g, opt_level=0)
    assert full.stats.fallback_nodes == []
    _check(full, g, {"s": np.array([n, m], np.int64)}, exact=True)


@SETTINGS
@given(data=st.data())
def test_squeeze_and_unsqueeze_with_axes_fed_at_run_time(data):
    x = data.draw(_floats(tuple(data.draw(st.sampled_from([1, 3])) for _ in range(3))))
    count = data.draw(st.integers(1, 2))
    unsqueeze, graph = _compiled("Unsqueeze", (("x", DType.float32, (N, M, K)), ("a", DType.int64, (count,))),
                                 (("y", DType.float32, _unknown(3 + count)),))
    axes = data.draw(st.permutations(range(3 + count)))[:count]
    _check(unsqueeze, graph, {"x": x, "a": np.array([a - 3 - count if a % 2 else a for a in axes], np.int64)},
           exact=True)
    ones = [i for i, n in enumerate(x.shape) if n == 1]
    if len(ones) >= count:
        squeeze, graph = _compiled("Squeeze", (("x", DType.float32, (N, M, K)), ("a", DType.int64, (count,))),
                                   (("y", DType.float32, _unknown(3 - count)),))
        _check(squeeze, graph, {"x": x, "a": np.array(data.draw(st.permutations(ones))[:count], np.int64)},
               exact=True)


# -- data-dependent sizes ---------------------------------------------------------------
@SETTINGS
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=4),
                    elements=st.sampled_from([0.0, 1.0, -2.0])))
def test_nonzero(x):
    compiled, graph = _compiled("NonZero", (("x", DType.float32, _unknown(x.ndim)),),
                                (("y", DType.int64, (x.ndim, fresh_symbol())),))
    _check(compiled, graph, {"x": x}, exact=True)


@pytest.mark.parametrize("axis", [None, 0, -1])
@SETTINGS
@given(data=st.data())
def test_compress(axis, data):
    attrs = (("axis", axis),) if axis is not None else ()
    out = _unknown(1 if axis is None else 2)
    compiled, graph = _compiled("Compress", (("x", DType.float32, (N, M)), ("c", DType.bool, (K,))),
                                (("y", DType.float32, out),), attrs)
    shape = (data.draw(st.integers(0, 4)), data.draw(st.integers(0, 4)))
    length = int(np.prod(shape)) if axis is None else shape[axis]
    c = data.draw(hnp.arrays(np.bool_, data.draw(st.integers(0, length))))  # shorter: the rest left out
    _check(compiled, graph, {"x": data.draw(_floats(shape)), "c": c}, exact=True)


@pytest.mark.parametrize("axis, sort, rank", [(None, 1, 2), (0, 1, 2), (-1, 1, 2), (None, 0, 1), (0, 0, 2)])
@SETTINGS
@given(data=st.data())
def test_unique_gives_all_four_outputs_in_onnx_order(axis, sort, rank, data):
    """Unsorted only where the reference is well defined (it takes the values along axis
    0, whatever the axis): along axis 0, or of a vector."""
    attrs = (("sorted", sort),) + ((("axis", axis),) if axis is not None else ())
    k = fresh_symbol()
    outs = (("y", DType.float32, (k,) if axis is None else ((k, M) if axis == 0 else (N, k))),
            ("first", DType.int64, (fresh_symbol(),)), ("inverse", DType.int64, (fresh_symbol(),)),
            ("counts", DType.int64, (fresh_symbol(),)))
    compiled, graph = _compiled("Unique", (("x", DType.float32, (N, M)[:rank]),), outs, attrs)
    shape = (data.draw(st.integers(1, 5)), data.draw(st.integers(1, 3)))[:rank]
    values = [0.0, 1.5, -2.0, 3.0] + ([np.nan] if axis is None else [])  # numpy: one NaN value, flattened
    x = data.draw(hnp.arrays(np.float32, shape, elements=st.sampled_from(values)))
    _check(compiled, graph, {"x": x}, exact=True)


# -- generated kernels after a size bound when it runs ------------------------------------
def _compress_then_kernels() -> Graph:
    """y = sum(sin(Compress(x, c)) * 2 + x[0], axis 1): a data-dependent size, then
    generated pointwise and reduction kernels over it."""
    g = Graph("g", inputs=[Value("x", TensorType(DType.float32, (N, M))), Value("c", TensorType(DType.bool, (N,)))],
              opsets={"": 28})
    kept = fresh_symbol()
    picked = g.add_node("Compress", g.inputs, [Value("p", TensorType(DType.float32, (kept, M)))], {"axis": 0})
    s = g.add_node("Sin", picked.outputs, [Value("s", TensorType(DType.float32, (kept, M)))]).outputs[0]
    two = g.add_constant("two", np.array(2.0, np.float32))
    d = g.add_node("Mul", [s, two], [Value("d", TensorType(DType.float32, (kept, M)))]).outputs[0]
    axes = g.add_constant("axes", np.array([1], np.int64))
    g.outputs = g.add_node("ReduceSum", [d, axes], [Value("y", TensorType(DType.float32, (kept,)))],
                           {"keepdims": 0}).outputs
    return g


def test_generated_kernels_after_a_data_dependent_size_run_with_each_size_on_one_program():
    g = _compress_then_kernels()
    compiled = ember.compile(g, opt_level=0)
    assert compiled.stats.fallback_nodes == []
    kinds = [s.kind for s in compiled.program.steps]
    assert kinds[0] == "extern" and "segment" in kinds[1:]
    rng = np.random.default_rng(0)
    for n, m in [(5, 3), (1, 1), (8, 2), (0, 3), (5, 3)]:
        feeds = {"x": rng.standard_normal((n, m)).astype(np.float32), "c": rng.random(n) < 0.5}
        want = evaluate(_compress_then_kernels(), feeds)["y"]
        got = compiled.run(feeds)["y"]
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_a_run_time_unit_dim_broadcasts_in_generated_kernels():
    """x - ReduceMax(x, axes fed at run time, keepdims): the maximum's dims are fresh
    sizes that are 1 when it runs; the generated Sub reads it broadcast."""
    g = Graph("g", inputs=[Value("x", TensorType(DType.float32, (N, M))), Value("axes", TensorType(DType.int64, (1,)))],
              opsets={"": 28})
    top = g.add_node("ReduceMax", g.inputs, [Value("t", TensorType(DType.float32, _unknown(2)))], {"keepdims": 1})
    g.outputs = g.add_node("Sub", [g.inputs[0], top.outputs[0]], [Value("y", TensorType(DType.float32, (N, M)))]).outputs
    compiled = ember.compile(g, opt_level=0)
    assert compiled.stats.fallback_nodes == []
    rng = np.random.default_rng(1)
    for (n, m), axis in [((3, 4), 0), ((3, 4), 1), ((5, 2), -1), ((1, 6), 0)]:
        x = rng.standard_normal((n, m)).astype(np.float32)
        got = compiled.run({"x": x, "axes": np.array([axis], np.int64)})["y"]
        np.testing.assert_array_equal(got, x - x.max(axis=axis, keepdims=True))


def test_a_declared_size_the_run_disagrees_with_is_an_error():
    compiled, _ = _compiled("Slice", (("x", DType.float32, (6,)), ("starts", DType.int64, (1,)),
                                      ("ends", DType.int64, (1,))), (("y", DType.float32, (2,)),))
    x = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(compiled.run({"x": x, "starts": np.array([1]), "ends": np.array([3])})["y"], [1, 2])
    with pytest.raises(ember.ExecutionError, match="Slice.*declares"):
        compiled.run({"x": x, "starts": np.array([1]), "ends": np.array([5])})


@SETTINGS
@given(data=st.data())
def test_bfloat16_values_reach_externs_as_the_same_bits(data):
    """bfloat16 buffers (ml_dtypes in numpy) are torch bfloat16 tensors to externs, and
    what the extern returns comes back bit for bit."""
    n = data.draw(st.integers(0, 8))
    x = data.draw(_floats((n,))).astype(ml_dtypes.bfloat16)
    c = data.draw(hnp.arrays(np.bool_, n))
    compressed, graph = _compiled("Compress", (("x", DType.bfloat16, (N,)), ("c", DType.bool, (N,))),
                                  (("y", DType.bfloat16, _unknown(1)),), (("axis", 0),))
    _check(compressed, graph, {"x": x, "c": c}, exact=True)
    outs = (("y", DType.bfloat16, (fresh_symbol(),)), ("first", DType.int64, (fresh_symbol(),)))
    unique, graph = _compiled("Unique", (("x", DType.bfloat16, (N,)),), outs)
    _check(unique, graph, {"x": x.round()}, exact=True)


def test_sizes_an_extern_tells_are_checked_against_those_already_bound():
    """A Reshape declared [r, n] (r fresh, n the input's length) binds r and checks n; the
    fresh k both Unique outputs share is bound once, then checked."""
    compiled, _ = _compiled("Reshape", (("x", DType.float32, (N,)), ("s", DType.int64, (2,))),
                            (("y", DType.float32, (fresh_symbol(), N)),))
    assert compiled.program.steps[0].params.get("sizes_outputs")
    x = np.arange(6, dtype=np.float32)
    np.testing.assert_array_equal(compiled.run({"x": x, "s": np.array([1, -1])})["y"], x[None])
    with pytest.raises(ember.ExecutionError, match="Reshape.*shape"):
        compiled.run({"x": x, "s": np.array([2, 3])})
    k = fresh_symbol()
    unique, graph = _compiled("Unique", (("x", DType.int64, (N,)),), (("y", DType.int64, (k,)),
                                                                      ("first", DType.int64, (k,))))
    _check(unique, graph, {"x": np.array([3, 1, 3, 2], np.int64)}, exact=True)


def test_expand_to_a_shape_fed_at_run_time_keeps_the_rank_and_the_dims_it_can_tell():
    """Expand's type: x's dims that are not 1 stay, the others are fresh sizes the
    extern binds; a generated kernel after it runs with them."""
    g = Graph("g", inputs=[Value("x", TensorType(DType.float32, (1, M))), Value("s", TensorType(DType.int64, (3,)))],
              opsets={"": 28})
    e = g.add_node("Expand", g.inputs, [Value("e")]).outputs[0]
    g.outputs = g.add_node("Neg", [e], [Value("y")]).outputs
    compiled = ember.compile(g, opt_level=0)
    assert compiled.stats.fallback_nodes == []
    (shape,) = [v.type.shape for v in compiled.graph.outputs]
    assert len(shape) == 3 and shape[2] == M
    for s in ([2, 3, 1], [1, 1, 4], [0, 2, 4]):
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        np.testing.assert_array_equal(compiled.run({"x": x, "s": np.array(s)})["y"], -(x * np.ones(s, np.float32)))


def test_a_lowering_that_declines_leaves_nothing_behind(monkeypatch):
    """What a lowering added before it raised NotLowerable (a realized input, a kernel) is
    rolled back: the fallback reads the input's own value, and no stray kernel runs."""
    from ember.ir import get_op
    from ember.ir.ops._lowering import NotLowerable

    def declines(ctx, node, ins):
        ctx.realize(ins[0])
        ctx.extern("hardmax", [ins[0]], [(DType.float32, tuple(ins[0].shape))], axis=0)
        raise NotLowerable("declines after adding a kernel")

    monkeypatch.setattr(get_op("Sin"), "lower", declines)
    g = Graph("g", inputs=[Value("x", TensorType(DType.float32, (N,)))], opsets={"": 28})
    s = g.add_node("Neg", g.inputs, [Value("s", TensorType(DType.float32, (N,)))]).outputs[0]
    t = g.add_node("Sin", [s], [Value("t", TensorType(DType.float32, (N,)))]).outputs[0]
    g.outputs = g.add_node("Cos", [t], [Value("y", TensorType(DType.float32, (N,)))]).outputs
    compiled = ember.compile(g, opt_level=0)
    assert [s.kind for s in compiled.program.steps] == ["segment", "fallback", "segment"]
    x = np.linspace(-3, 3, 7, dtype=np.float32)
    np.testing.assert_allclose(compiled.run({"x": x})["y"], np.cos(np.sin(-x)), rtol=1e-6)
