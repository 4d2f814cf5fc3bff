"""The tiled kernels' step forms (runtime/externs.py NATIVE: linear, gemm, conv, attention):
an executor's chained run calls them from C with the generated steps around them. Each
model here runs chained and then on the plan of Python calls (what a profiled run takes),
at several input sizes of one Program; the outputs must be bitwise equal (the same kernel,
threads and split), and the chain must hold the step (counted by hypothesis events)."""

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.ir import DType, Graph, TensorType, Value, symbol
from ember.runtime.native import gemm

STEPS = ("linear", "gemm", "conv", "attention")


def _in_c(compiled) -> list[str]:
    """The names of the extern steps of the last binding's plan that run from C as step
    forms (not those that run their small path's generated code)."""
    binding = list(compiled.executor._bindings.values())[-1]
    return [e[2].name for entry in binding.chained or [] if entry[0] == 4 for e in entry[1][4]
            if e[0] != 0 and e[2].name in STEPS]


def _both_ways(compiled, feeds) -> tuple[dict, dict, list[str]]:
    """The outputs of a chained run and of a run on Python calls, and the steps that ran from C."""
    chained = {k: np.array(v) for k, v in compiled.run(feeds).items()}
    in_c = _in_c(compiled)
    compiled.executor.profile = []  # (a profiled run takes the plan of Python calls)
    try:
        python = {k: np.array(v) for k, v in compiled.run(feeds).items()}
    finally:
        compiled.executor.profile = None
    return chained, python, in_c


def _model(nodes, inputs, initializers) -> bytes:
    graph = helper.make_graph(nodes, "m", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]).SerializeToString()


def _encoder_block(k: int, n: int, activation: str, seed: int) -> bytes:
    """x [rows, k] -> MatMul + bias (+ activation) -> Gemm back to k -> + x -> Relu: two
    tiled GEMMs and a generated step."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m"]), helper.make_node("Add", ["m", "b1"], ["h"])]
    if activation:
        nodes.append(helper.make_node(activation, ["h"], ["a"]))
    nodes += [helper.make_node("Gemm", ["a" if activation else "h", "w2", "b2"], ["g"]),
              helper.make_node("Add", ["g", "x"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    inits = [numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((n, k)) / np.sqrt(n)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(k).astype(np.float32), "b2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["rows", k])], inits)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.sampled_from([48, 70, 128]), n=st.sampled_from([96, 200]),
       activation=st.sampled_from(["", "Relu", "Gelu"]), first=st.integers(700, 1200),
       more=st.lists(st.integers(1, 1200), max_size=2), seed=st.integers(0, 2**16))
def test_linear_and_gemm_steps_equal_their_externs(k, n, activation, first, more, seed):
    compiled = ember.compile(_encoder_block(k, n, activation, seed))
    before, steps = gemm.RUNS[0], 0
    for r in [first, *more]:  # sizes of one Program (the first past the externs' small paths)
        x = np.random.default_rng(seed + r).standard_normal((r, k)).astype(np.float32)
        chained, python, in_c = _both_ways(compiled, {"x": x})
        assert set(in_c) <= {"linear", "gemm"} and (r != first or len(in_c) == 2), (r, in_c)
        event(f"{len(in_c)} GEMM steps from C")
        np.testing.assert_array_equal(chained["y"], python["y"])
        steps += len(in_c)
    assert gemm.RUNS[0] - before == 2 * steps  # each on the tiled kernel, from C and then from Python


def _conv_block(c: int, o: int, kernel: int, stride: int, pads: list[int], seed: int) -> bytes:
    """x [N, C, H, W] -> Conv (k x k) -> Relu -> Conv 1x1 back to o -> + first -> Relu (an NHWC
    chain after the channels-last rewrite)."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[kernel, kernel],
                              strides=[stride, stride], pads=pads),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[1, 1]),
             helper.make_node("Add", ["c2", "c1"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    inits = [numpy_helper.from_array((rng.standard_normal((o, c, kernel, kernel)) / np.sqrt(c * kernel * kernel))
                                     .astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((o, o, 1, 1)) / np.sqrt(o)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.standard_normal(o).astype(np.float32), "b2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", c, "h", "w"])], inits)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from([(8, 16, 3, 1), (64, 64, 3, 1), (16, 32, 5, 2), (72, 64, 3, 1)]),
       pad=st.integers(0, 2), first=st.tuples(st.integers(64, 72), st.integers(64, 72)),
       more=st.lists(st.tuples(st.integers(1, 2), st.integers(6, 40), st.integers(6, 40)), max_size=2),
       seed=st.integers(0, 2**16))
def test_conv_steps_equal_their_externs(case, pad, first, more, seed):
    c, o, kernel, stride = case
    compiled = ember.compile(_conv_block(c, o, kernel, stride, [pad] * 4, seed))
    before, steps = (gemm.RUNS[0], gemm.CONV_RUNS[0], gemm.WINOGRAD_RUNS[0]), 0
    for n, h, w in [(2, *first), *more]:  # sizes of one Program (the first past the externs' small paths)
        x = np.random.default_rng(seed + h * w).standard_normal((n, c, h, w)).astype(np.float32)
        chained, python, in_c = _both_ways(compiled, {"x": x})
        # the k x k (direct or Winograd) and the 1x1 (tiled GEMM)
        assert set(in_c) <= {"conv"} and (h, w) != first or len(in_c) == 2, ((n, h, w), in_c)
        np.testing.assert_array_equal(chained["y"], python["y"])
        steps += len(in_c)
    ran = [b - a for a, b in zip(before, (gemm.RUNS[0], gemm.CONV_RUNS[0], gemm.WINOGRAD_RUNS[0]))]
    assert sum(ran) == 2 * steps and ran[0] >= 2, ran  # each on its kernel, from C and then from Python
    event("Winograd from C" if ran[2] else "direct from C")


def _attention_graph(heads: int, kv: int, d: int, packed: bool, mask: str | None) -> Graph:
    """ember.Attention (not causal) over symbolic batch and sequence, then Relu."""
    b, s = symbol("b"), symbol("s")
    g = Graph("g", opsets={"": 28})
    if packed:
        g.inputs = [Value("qkv", TensorType(DType.float32, (b, s, (heads + 2 * kv) * d)))]
        args = [g.inputs[0], None, None]
    else:
        g.inputs = [Value("q", TensorType(DType.float32, (b, s, heads * d))),
                    Value("k", TensorType(DType.float32, (b, s, kv * d))),
                    Value("v", TensorType(DType.float32, (b, s, kv * d)))]
        args = list(g.inputs)
    if mask is not None:
        shape = {"keys": (b, 1, 1, s), "full": (b, heads, s, s), "shared": (1, 1, s, s), "2d": (s, s)}[mask]
        g.inputs.append(Value("bias", TensorType(DType.float32, shape)))
        args.append(g.inputs[-1])
    att = g.add_node("ember.Attention", args, [Value("a", TensorType(DType.float32, (b, s, heads * d)))],
                     {"num_heads": heads, "kv_num_heads": kv, "causal": 0})
    relu = g.add_node("Relu", list(att.outputs), [Value("y", TensorType(DType.float32, (b, s, heads * d)))])
    g.outputs = list(relu.outputs)
    return g


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(heads=st.sampled_from([1, 2, 4]), group=st.sampled_from([1, 2]), d=st.sampled_from([8, 32]),
       packed=st.booleans(), mask=st.sampled_from([None, "keys", "full", "shared", "2d"]),
       sizes=st.lists(st.tuples(st.integers(1, 3), st.integers(1, 40)), min_size=1, max_size=2),
       seed=st.integers(0, 2**16))
def test_attention_steps_equal_their_externs(heads, group, d, packed, mask, sizes, seed):
    kv = max(heads // group, 1)
    compiled = ember.compile(_attention_graph(heads, kv, d, packed, mask), opt_level=0)
    before = gemm.ATTENTION_RUNS[0]
    for b, s in sizes:
        rng = np.random.default_rng(seed + s)
        feeds = {"qkv": rng.standard_normal((b, s, (heads + 2 * kv) * d))} if packed else {
            "q": rng.standard_normal((b, s, heads * d)), "k": rng.standard_normal((b, s, kv * d)),
            "v": rng.standard_normal((b, s, kv * d))}
        if mask is not None:
            shape = {"keys": (b, 1, 1, s), "full": (b, heads, s, s), "shared": (1, 1, s, s), "2d": (s, s)}[mask]
            bias = rng.standard_normal(shape)
            bias[..., -1] = -np.inf  # the last key hidden (a one-key row: every key masked)
            feeds["bias"] = bias
        feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
        chained, python, in_c = _both_ways(compiled, feeds)
        assert in_c == ["attention"], in_c
        np.testing.assert_array_equal(chained["y"], python["y"])
    event(f"attention from C, {'packed' if packed else 'three buffers'}, mask {mask}")
    assert gemm.ATTENTION_RUNS[0] - before == 2 * len(sizes)  # both runs on the encoder kernel


def test_a_profiled_run_reports_each_step_and_equals_the_chained_one():
    """MiniLM-sized block: the chained run (one call into C) and the profiled run (a record
    per step) give the same output."""
    compiled = ember.compile(_encoder_block(384, 1536, "Gelu", 0), profile=True)
    x = np.random.default_rng(1).standard_normal((128, 384)).astype(np.float32)
    profiled = compiled.run({"x": x})["y"]
    table = compiled.profile()
    assert "extern linear" in table and "extern gemm" in table, table
    compiled.executor.profile = None
    np.testing.assert_array_equal(compiled.run({"x": x})["y"], profiled)
    assert _in_c(compiled) == ["linear", "gemm"]


def test_a_library_built_before_the_step_forms_runs_the_externs(tmp_path):
    """An older artifact ships the tiled kernels' library built before they had step forms
    (and their C run counters): with it installed, each step runs as its Python extern on
    that library, and the outputs are the same."""
    from pathlib import Path

    from ember.codegen import cpu
    from ember.codegen.cpu_prelude import PRELUDE
    from ember.runtime import native

    source = (Path(ember.__file__).parent / "codegen" / "cpu_gemm.cpp").read_text()
    older = cpu.build(PRELUDE + source[:source.index("// ---- step forms")])
    compiled = ember.compile(_encoder_block(48, 96, "Relu", 3))
    x = np.random.default_rng(4).standard_normal((900, 48)).astype(np.float32)
    want = compiled.run({"x": x})["y"]
    assert _in_c(compiled) == ["linear", "gemm"]
    current = native.installed("gemm")
    native.install({"gemm": str(older)})
    try:
        before = gemm.RUNS[0]  # (the older library has no C counter: Python's calls only)
        x2 = np.concatenate([x, x[:5]])  # a new size: a new binding, its chain made with the older library
        got = compiled.run({"x": x2})["y"]
        assert _in_c(compiled) == [] and gemm.RUNS[0] - before == 2
        np.testing.assert_array_equal(got[:900], want)
    finally:
        native.install({"gemm": current})


if __name__ == "__main__":
    pytest.main([__file__, "-q"])
