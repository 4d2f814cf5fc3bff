"""If and Scan on kernels: their bodies compiled as programs of their own, against the
reference interpreter, over random shapes, axes and directions; and the cases that must
stay on the fallback."""

import contextlib
from unittest import mock

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import ember
from ember.codegen import cpu

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")
F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _scan_model(rows, cols, in_axis, in_dir, out_axis, out_dir):
    """state' = state + x_t * w (w read from the enclosing graph); y_t = state' * 2."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["x_t", "w"], ["xw"]), helper.make_node("Add", ["s", "xw"], ["s_next"]),
         helper.make_node("Mul", ["s_next", "two"], ["y_t"])],
        "body",
        [helper.make_tensor_value_info("s", F, [cols]), helper.make_tensor_value_info("x_t", F, [cols])],
        [helper.make_tensor_value_info("s_next", F, [cols]), helper.make_tensor_value_info("y_t", F, [cols])],
        [helper.make_tensor("two", F, [], [2.0])])
    x_shape = [rows, cols] if in_axis == 0 else [cols, rows]
    y_shape = [rows, cols] if out_axis == 0 else [cols, rows]
    scan = helper.make_node("Scan", ["s0", "x"], ["s_final", "y"], body=body, num_scan_inputs=1,
                            scan_input_axes=[in_axis], scan_input_directions=[in_dir],
                            scan_output_axes=[out_axis], scan_output_directions=[out_dir])
    return _model([scan], [helper.make_tensor_value_info(n, F, s) for n, s in
                           (("s0", [cols]), ("x", x_shape), ("w", [cols]))],
                  [helper.make_tensor_value_info("s_final", F, [cols]), helper.make_tensor_value_info("y", F, y_shape)])


def _check(model, feeds):
    compiled = ember.compile(model)
    reference = ember.compile(model, codegen=False)
    got, want = compiled.run(feeds), reference.run(feeds)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5)
    return compiled


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(0, 5), cols=st.integers(1, 4), in_axis=st.sampled_from([0, 1]), in_dir=st.sampled_from([0, 1]),
       out_axis=st.sampled_from([0, 1]), out_dir=st.sampled_from([0, 1]), seed=st.integers(0, 2**16))
def test_scan_runs_its_body_on_kernels(rows, cols, in_axis, in_dir, out_axis, out_dir, seed):
    rng = np.random.default_rng(seed)
    model = _scan_model(rows, cols, in_axis, in_dir, out_axis, out_dir)
    feeds = {"s0": rng.standard_normal(cols).astype(np.float32),
             "x": rng.standard_normal([rows, cols] if in_axis == 0 else [cols, rows]).astype(np.float32),
             "w": rng.standard_normal(cols).astype(np.float32)}
    with _direct_scans() as direct:
        compiled = _check(model, feeds)
    assert compiled.stats.fallback_nodes == []
    assert direct == ([True] if rows else [])  # every step on the body's kernels alone
    event(f"scan on the body's kernels alone: {bool(direct)}")


@contextlib.contextmanager
def _direct_scans():
    """Whether each Scan run inside went through `Executor.direct` (True) or ran its
    body step by step (False)."""
    from ember.runtime import externs_control

    seen, real = [], externs_control._scan_direct

    def spy(*args):
        final = real(*args)
        seen.append(final is not None)
        return final
    with mock.patch.object(externs_control, "_scan_direct", spy):
        yield seen


def test_a_framing_scan_runs_on_its_body_kernels_over_strided_frames():
    """wespeaker's front end: the state keeps the last 240 samples, each step's frame is
    the state and the next 160 (Concat, Slice). With a batch of 2 and the scan axis 1, a
    step's frame and its output row are not C-contiguous: copied through buffers of
    their own. Every step runs the body's kernels alone; both batches match the reference."""
    body = helper.make_graph(
        [helper.make_node("Concat", ["prev", "curr"], ["frame"], axis=1),
         helper.make_node("Slice", ["frame", "hop", "end", "axis"], ["next"])],
        "body",
        [helper.make_tensor_value_info("prev", F, ["b", 24]), helper.make_tensor_value_info("curr", F, ["b", 16])],
        [helper.make_tensor_value_info("next", F, ["b", 24]), helper.make_tensor_value_info("frame", F, ["b", 40])],
        [helper.make_tensor("hop", TensorProto.INT64, [1], [16]),
         helper.make_tensor("end", TensorProto.INT64, [1], [99]),
         helper.make_tensor("axis", TensorProto.INT64, [1], [1])])
    scan = helper.make_node("Scan", ["x0", "x"], ["last", "frames"], body=body, num_scan_inputs=1,
                            scan_input_axes=[1], scan_output_axes=[1])
    model = _model([scan], [helper.make_tensor_value_info("x0", F, ["b", 24]),
                            helper.make_tensor_value_info("x", F, ["b", "t", 16])],
                   [helper.make_tensor_value_info("last", F, ["b", 24]),
                    helper.make_tensor_value_info("frames", F, ["b", "t", 40])])
    rng = np.random.default_rng(3)
    compiled = ember.compile(model)
    reference = ember.compile(model, codegen=False)
    for batch, steps in ((2, 7), (1, 5), (2, 7)):
        feeds = {"x0": rng.standard_normal((batch, 24)).astype(np.float32),
                 "x": rng.standard_normal((batch, steps, 16)).astype(np.float32)}
        with _direct_scans() as direct:
            got = compiled.run(feeds)
        want = reference.run(feeds)
        assert direct == [True]
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
    assert compiled.stats.fallback_nodes == []


def _if_model(then_op: str, else_op: str = "Sub"):
    """y = cond ? then_op(a) : a - b (else_op(a, b), or else_op(a) for a unary one), both
    branches reading a (and b) from outside."""
    def branch(name, nodes):
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_y", F, [3])])

    then_branch = branch("then", [helper.make_node(then_op, ["a"], ["then_y"])])
    else_branch = branch("else", [helper.make_node(else_op, ["a", "b"] if else_op == "Sub" else ["a"], ["else_y"])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)
    return _model([node], [helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
                           helper.make_tensor_value_info("a", F, [3]), helper.make_tensor_value_info("b", F, [3])],
                  [helper.make_tensor_value_info("y", F, [3])])


@pytest.mark.parametrize("cond", [True, False])
def test_if_runs_the_branch_taken_on_kernels(cond):
    rng = np.random.default_rng(0)
    feeds = {"cond": np.array(cond), "a": rng.standard_normal(3).astype(np.float32),
             "b": rng.standard_normal(3).astype(np.float32)}
    compiled = _check(_if_model("Neg"), feeds)
    assert compiled.stats.fallback_nodes == []


@pytest.mark.parametrize("cond", [True, False])
def test_an_identity_branch_hands_its_value_through_without_a_run(cond, monkeypatch):
    """hey_jarvis' If: cond ? Neg(a) : Identity(a). The Identity branch is a copy of what
    it reads, made without running its program; either branch matches the reference."""
    from ember.runtime import executor

    rng = np.random.default_rng(1)
    feeds = {"cond": np.array(cond), "a": rng.standard_normal(3).astype(np.float32),
             "b": rng.standard_normal(3).astype(np.float32)}
    compiled = ember.compile(_if_model("Neg", else_op="Identity"))
    (step,) = [step for _, _, step in compiled._executor._steps if step.name == "control"]
    assert step.params["passthrough"] == [None, [0]]
    runs = []
    run = executor.Executor.run
    monkeypatch.setattr(executor.Executor, "run", lambda self, *a, **k: runs.append(self) or run(self, *a, **k))
    got = compiled.run(feeds)["y"]
    np.testing.assert_array_equal(got, -feeds["a"] if cond else feeds["a"])
    assert len(runs) == (2 if cond else 1)  # the model's own run, and the Neg branch's
    # the If step is handed the run's numpy arrays (plan code 5): no torch view of its inputs
    assert [code for code, _, step, *_ in compiled._executor._step_plan if step.name == "control"] == [5]
    assert not compiled._executor._torch_reads & {"a", "b", "cond"}


def test_a_body_with_a_fallback_node_keeps_the_whole_node_on_the_fallback():
    from ember.codegen.lowering import lower_graph

    model = _if_model("StringNormalizer")  # no kernel for it, so neither for the If
    compiled = ember.compile(model, codegen=False)
    reasons = lower_graph(compiled.graph).fallback_reasons
    assert list(reasons.values()) == [next(iter(reasons.values()))]
    assert "the then branch has nodes on the fallback" in next(iter(reasons.values()))


def _loop_model():
    """for i < M while s < limit: s += x * i; emits s * 2 each iteration (a scan output
    whose length only the run tells), reading x from the enclosing graph."""
    body = helper.make_graph(
        [helper.make_node("Cast", ["i"], ["fi"], to=F), helper.make_node("Mul", ["x", "fi"], ["xi"]),
         helper.make_node("Add", ["s", "xi"], ["s_next"]),
         helper.make_node("ReduceSum", ["s_next"], ["total"], keepdims=0),
         helper.make_node("Less", ["total", "limit"], ["go"]),
         helper.make_node("Mul", ["s_next", "two"], ["emit"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s", F, [3])],
        [helper.make_tensor_value_info("go", TensorProto.BOOL, []), helper.make_tensor_value_info("s_next", F, [3]),
         helper.make_tensor_value_info("emit", F, [3])],
        [helper.make_tensor("two", F, [], [2.0])])
    loop = helper.make_node("Loop", ["M", "c0", "s0"], ["s_final", "emitted"], body=body)
    return _model([loop], [helper.make_tensor_value_info("M", TensorProto.INT64, []),
                           helper.make_tensor_value_info("c0", TensorProto.BOOL, []),
                           helper.make_tensor_value_info("s0", F, [3]), helper.make_tensor_value_info("x", F, [3]),
                           helper.make_tensor_value_info("limit", F, [])],
                  [helper.make_tensor_value_info("s_final", F, [3]), helper.make_tensor_value_info("emitted", F, ["n", 3])])


def test_loop_runs_its_body_on_kernels_for_a_count_only_the_run_tells():
    model = _loop_model()
    compiled = ember.compile(model)
    assert compiled.stats.fallback_nodes == []
    reference = ember.compile(model, codegen=False)
    rng = np.random.default_rng(0)
    for trips, go, limit in ((5, True, 1e9), (0, True, 1e9), (7, True, 3.0), (4, False, 1e9)):
        feeds = {"M": np.array(trips, np.int64), "c0": np.array(go), "s0": rng.random(3).astype(np.float32),
                 "x": rng.random(3).astype(np.float32), "limit": np.array(limit, np.float32)}
        got, want = compiled.run(feeds), reference.run(feeds)
        for name in want:  # one program for every count
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6)


def test_scan_and_loop_outputs_are_typed_from_their_bodies():
    """With no declared output types, inference types the scan outputs from the body
    ([length, *body output] at the output axis) and Loop's as [iterations, *body output],
    so both still lower."""
    from ember.frontends.onnx import load_onnx
    from ember.ir.shape_inference import infer_types

    scan = _scan_model(4, 3, 0, 0, 1, 0)
    loop = _loop_model()
    for model in (scan, loop):
        for out in model.graph.output:
            out.type.tensor_type.ClearField("shape")
    g = load_onnx(scan)
    known = infer_types(g)
    state, ys = (known[id(v)].type.shape for v in g.nodes[-1].outputs)
    assert state == (3,) and ys == (3, 4)  # scan_output_axes=[1]: [cols, rows]
    g = load_onnx(loop)
    state, emitted = (known_t.type.shape for known_t in (infer_types(g)[id(v)] for v in g.nodes[-1].outputs))
    assert state == (3,) and len(emitted) == 2 and emitted[1] == 3
    for model in (scan, loop):
        assert ember.compile(model).stats.fallback_nodes == []
