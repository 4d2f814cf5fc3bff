"""Generated kernels against the reference implementations, on random graphs and on MiniLM."""

import copy

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

import ember
from ember.codegen import cpu
from ember.ir.interpreter import evaluate
from ember.testing import graphs_and_feeds

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=graphs_and_feeds())
def test_random_graphs_match_the_reference(case):
    graph, feeds = case
    want = evaluate(copy.deepcopy(graph), feeds)
    compiled = ember.compile(graph, opt_level=0)
    got = compiled.run(feeds)
    assert list(got) == list(want)
    for name in want:
        assert got[name].dtype == want[name].dtype and got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


def test_minilm_runs_on_kernels_only_and_never_recompiles(minilm_onnx, monkeypatch):
    from ember import _builtin

    compiled = ember.compile(str(minilm_onnx))
    reference = ember.compile(str(minilm_onnx), codegen=False)
    assert compiled.stats.fallback_nodes == [] and compiled.stats.num_kernels > 0
    monkeypatch.setattr(cpu, "build", lambda source: pytest.fail("recompiled"))
    for sentences in (_builtin.SAMPLE_SENTENCES, _builtin.SAMPLE_SENTENCES[:1], _builtin.SAMPLE_SENTENCES[1:3]):
        feeds = _builtin.tokenize(sentences)
        (got,) = compiled.run(feeds).values()
        (want,) = reference.run(feeds).values()
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert len(compiled._executor._bindings) == 3  # one per (batch, seq), one library


def test_profile_reports_every_kind(minilm_onnx, tmp_path):
    import json

    from ember import _builtin

    compiled = ember.compile(str(minilm_onnx), profile=True)
    compiled.run(_builtin.tokenize(_builtin.SAMPLE_SENTENCES))
    table = compiled.profile(trace=tmp_path / "trace.json")
    assert "extern linear" in table and "extern attention" in table and "generated kernels" in table
    events = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    assert events and all(e["ph"] == "X" and e["dur"] >= 0 for e in events)


def test_isinf_detecting_nothing_is_all_false():
    from ember.ir import DType, Graph, TensorType, Value

    x = Value("x", TensorType(DType.float32, (3,)))
    g = Graph("g", inputs=[x], opsets={"": 28})
    g.outputs = g.add_node("IsInf", [x], [Value("y", TensorType(DType.bool, (3,)))],
                           {"detect_negative": 0, "detect_positive": 0}).outputs
    compiled = ember.compile(g, opt_level=0)
    assert not compiled.stats.fallback_nodes
    assert not compiled.run({"x": np.array([np.nan, np.inf, 1], np.float32)})["y"].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int8])
def test_selects_on_outer_indices_are_blended_and_exact(dtype):
    """A zero-padded copy selects on its outer indices (inside the padding or not): that
    condition is computed before the vectorized innermost loop, and the select becomes a
    bit blend (`ember_blend`), which gcc vectorizes where it leaves a scalar-condition
    select scalar. Exact for every value, NaN and infinities included."""
    from onnx import TensorProto, helper, numpy_helper

    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    pads = numpy_helper.from_array(np.array([0, 2, 1, 0, 1, 3, 2, 0], np.int64), "pads")
    graph = helper.make_graph(
        [helper.make_node("Pad", ["x", "pads"], ["p"]), helper.make_node("Neg", ["p"], ["y"])], "g",
        [helper.make_tensor_value_info("x", onnx_type, [2, 3, 4, 32])],
        [helper.make_tensor_value_info("y", onnx_type, None)], [pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    compiled = ember.compile(model)
    assert "ember_blend<" in compiled.program.source
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((2, 3, 4, 32)) * 50).astype(dtype)
    if np.dtype(dtype).kind == "f":
        x.flat[:3] = [np.nan, np.inf, -np.inf]
    want = -np.pad(x, [(0, 1), (2, 3), (1, 2), (0, 0)])
    np.testing.assert_array_equal(compiled.run({"x": x})["y"], want)


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_innermost_concat_and_pad_run_as_one_loop_per_range(dtype):
    """A Concat along the innermost axis (channels-last channels) and a Pad of it select
    per element between reads at clamped indices, which gcc leaves scalar (gathers): the
    innermost loop is split where the selects change arm (`inner_split`), each range a
    loop of plain reads. Exact against numpy, the ranges' edges included."""
    from onnx import TensorProto, helper, numpy_helper

    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    pads = numpy_helper.from_array(np.array([0, 0, 0, 3, 0, 0, 0, 5], np.int64), "pads")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["a"], ["ra"]),
         helper.make_node("Concat", ["ra", "b", "c"], ["cat"], axis=3),
         helper.make_node("Pad", ["cat", "pads"], ["padded"]),
         helper.make_node("Neg", ["padded"], ["y"])], "g",
        [helper.make_tensor_value_info("a", onnx_type, [2, 3, 4, 24]),
         helper.make_tensor_value_info("b", onnx_type, [2, 3, 4, 8]),
         helper.make_tensor_value_info("c", onnx_type, [2, 3, 4, 17])],
        [helper.make_tensor_value_info("y", onnx_type, None)], [pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    compiled = ember.compile(model)
    source = compiled.program.source
    for start in (3, 27, 35, 52):  # the ranges' loops: pad | a | b | c | pad
        assert f"int64_t x3 = {start}; x3 <" in source, start
    rng = np.random.default_rng(1)
    feeds = {name: (rng.standard_normal((2, 3, 4, n)) * 9).astype(dtype) for name, n in (("a", 24), ("b", 8), ("c", 17))}
    cat = np.concatenate([np.maximum(feeds["a"], 0), feeds["b"], feeds["c"]], axis=3)
    want = -np.pad(cat, [(0, 0), (0, 0), (0, 0), (3, 5)])
    np.testing.assert_array_equal(compiled.run(feeds)["y"], want)


def test_trailing_unit_loops_go_and_moving_addresses_keep_their_calls_out_of_the_vector_loop():
    """A kernel over [b, t, 40, 1] vectorizes its loop of 40 (the trailing one of 1 is
    no loop, its variable a constant 0); where a batch offset is a floor division of a
    symbolic size (the rows of s[:, 8:2**30], Min(2**30, n) - Min(8, n) long), it is
    computed once before the vectorized loop (`base0`) rather than in each address: gcc
    left both loops scalar. Exact against numpy at three sizes, one of them with no
    frames at all."""
    from onnx import TensorProto, helper, numpy_helper

    shape = numpy_helper.from_array(np.array([0, -1, 4], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Neg", ["a"], ["y"]),
         helper.make_node("Slice", ["s", "start", "end", "axis"], ["cut"]),
         helper.make_node("Reshape", ["cut", "shape"], ["frames"]),
         helper.make_node("Neg", ["frames"], ["z"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["b", "t", 40, 1]),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [2, "n"])],
        [helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in "yz"],
        [shape, *(numpy_helper.from_array(np.array([v], np.int64), name)
                  for v, name in ((8, "start"), (1 << 30, "end"), (1, "axis")))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    compiled = ember.compile(model)
    source = compiled.program.source
    assert "const int64_t x3 = 0;" in source and "for (int64_t x3" not in source
    assert "const int64_t base0 = " in source
    rng = np.random.default_rng(4)
    for b, t, n in ((1, 3, 48), (2, 5, 8), (3, 1, 100)):
        feeds = {"a": rng.standard_normal((b, t, 40, 1)).astype(np.float32),
                 "s": rng.standard_normal((2, n)).astype(np.float32)}
        out = compiled.run(feeds)
        np.testing.assert_array_equal(out["y"], -feeds["a"])
        np.testing.assert_array_equal(out["z"], -feeds["s"][:, 8:].reshape(2, -1, 4))


def test_a_short_innermost_loop_is_not_the_vectorized_one():
    """An NCHW image of 3 channels transposed to NHWC (and negated): the innermost loop
    runs 3 channels, so the loop over the width (contiguous reads) is the vectorized one,
    inside the channel loop. A kernel of 8 channels keeps its innermost loop. Exact
    against numpy at two image sizes."""
    import re

    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 3, 1]), helper.make_node("Neg", ["t"], ["y"]),
         helper.make_node("Transpose", ["b"], ["u"], perm=[0, 2, 3, 1]), helper.make_node("Neg", ["u"], ["z"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["n", 3, 40, 64]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["n", 8, 40, 64])],
        [helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in "yz"])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    compiled = ember.compile(model)
    simd_loops = re.findall(r"#pragma omp simd\n\s*for \(int64_t (x\d) = 0; x\d < (\d+);", compiled.program.source)
    assert sorted(simd_loops) == [("x2", "64"), ("x3", "8")], simd_loops
    rng = np.random.default_rng(5)
    for n in (1, 2):
        feeds = {"a": rng.standard_normal((n, 3, 40, 64)).astype(np.float32),
                 "b": rng.standard_normal((n, 8, 40, 64)).astype(np.float32)}
        out = compiled.run(feeds)
        np.testing.assert_array_equal(out["y"], -feeds["a"].transpose(0, 2, 3, 1))
        np.testing.assert_array_equal(out["z"], -feeds["b"].transpose(0, 2, 3, 1))


@pytest.mark.parametrize("dtype", [np.float32, np.int32])
def test_strided_reads_along_the_inner_loop_are_opaque_strides(dtype):
    """Transposed reads (strides 64 and 24 along the vectorized loop: gcc 12 left such a
    loop scalar) go through `ember_opaque` strides; a read at stride 2 (a strided slice)
    keeps its constant. Exact against numpy at two sizes of the symbolic dims."""
    from onnx import TensorProto, helper, numpy_helper

    onnx_type = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    starts, ends, axes, steps = (numpy_helper.from_array(np.array([v], np.int64), name)
                                 for v, name in ((0, "starts"), (1 << 30, "ends"), (1, "axes"), (2, "steps")))
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["a"], ["t"], perm=[0, 2, 1]),
         helper.make_node("Abs", ["t"], ["y"]),
         helper.make_node("Neg", ["b"], ["nb"]),
         helper.make_node("Transpose", ["nb"], ["z"], perm=[1, 0]),
         helper.make_node("Slice", ["c", "starts", "ends", "axes", "steps"], ["s"]),
         helper.make_node("Neg", ["s"], ["w"])], "g",
        [helper.make_tensor_value_info("a", onnx_type, ["n", "l", 64]),
         helper.make_tensor_value_info("b", onnx_type, ["m", 24]),
         helper.make_tensor_value_info("c", onnx_type, [5, 40])],
        [helper.make_tensor_value_info(v, onnx_type, None) for v in "yzw"], [starts, ends, axes, steps])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    compiled = ember.compile(model)
    source = compiled.program.source
    assert "ember_opaque(64)" in source and "ember_opaque(24)" in source and "ember_opaque(2)" not in source
    rng = np.random.default_rng(2)
    for n, l, m in ((1, 99, 7), (2, 33, 40)):
        feeds = {"a": (rng.standard_normal((n, l, 64)) * 9).astype(dtype),
                 "b": (rng.standard_normal((m, 24)) * 9).astype(dtype),
                 "c": (rng.standard_normal((5, 40)) * 9).astype(dtype)}
        out = compiled.run(feeds)
        np.testing.assert_array_equal(out["y"], np.abs(feeds["a"].transpose(0, 2, 1)))
        np.testing.assert_array_equal(out["z"], -feeds["b"].T)
        np.testing.assert_array_equal(out["w"], -feeds["c"][:, ::2])


def test_a_long_float_sum_runs_as_four_sums_of_blocks():
    """A dot product of 1,000 (a Gemm of one row, generated: hey_jarvis' 1,536) sums four
    blocks of 240 in one vectorized loop, then the 40 left, so no add waits on the last;
    a sum of 200 keeps one accumulator. Both match numpy's float64 within float32 error."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(6)
    w_long = rng.standard_normal((1000, 8)).astype(np.float32)
    w_short = rng.standard_normal((200, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["a", "wl"], ["y"]), helper.make_node("Gemm", ["b", "ws"], ["z"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 1000]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [1, 200])],
        [helper.make_tensor_value_info(v, TensorProto.FLOAT, None) for v in "yz"],
        [numpy_helper.from_array(w_long, "wl"), numpy_helper.from_array(w_short, "ws")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    compiled = ember.compile(model)
    source = compiled.program.source
    assert source.count("reduction(+:acc_dot_0,acc_dot_1,acc_dot_2,acc_dot_3)") == 1
    assert "r0 < 240;" in source and "r0 = 960; r0 < 1000;" in source
    feeds = {"a": rng.standard_normal((1, 1000)).astype(np.float32),
             "b": rng.standard_normal((1, 200)).astype(np.float32)}
    out = compiled.run(feeds)
    np.testing.assert_allclose(out["y"], feeds["a"].astype(np.float64) @ w_long, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(out["z"], feeds["b"].astype(np.float64) @ w_short, rtol=1e-5, atol=1e-4)
