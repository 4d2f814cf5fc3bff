"""If, Loop and Scan bodies that read values of the enclosing graph, whatever computed
them: a graph input, a pointwise intermediate that fusion would leave without a buffer
(read by the body only, or also outside), a Linear's output (an extern whose output
tensor the executor adopts), a reshaped view. The body runs on kernels or, holding an
LSTM with clip (which the kernel declines), on the reference fallback. Compared with
onnxruntime on random inputs (hypothesis).

(A fallback's body read a Linear output through its scope, which the executor did not
count as a read: it saw the arena's stale bytes, or a KeyError where the buffer had none.)
"""

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.codegen import cpu

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")
F = TensorProto.FLOAT
SHAPE = [1, 4, 2]  # [seq, batch, size]: also an LSTM's input
OUTER = {  # kind -> nodes computing value "v_<kind>" from x
    "input": [helper.make_node("Identity", ["x"], ["v_input"])],
    "fused_once": [helper.make_node("Add", ["x", "one"], ["t0"]), helper.make_node("Sigmoid", ["t0"], ["v_fused_once"])],
    "fused_shared": [helper.make_node("Mul", ["x", "x"], ["v_fused_shared"]),
                     helper.make_node("Add", ["v_fused_shared", "one"], ["side"])],
    "linear": [helper.make_node("MatMul", ["x", "M"], ["t1"]), helper.make_node("Add", ["t1", "bias"], ["v_linear"])],
    "view": [helper.make_node("Reshape", ["x", "flat"], ["t2"]), helper.make_node("Relu", ["t2"], ["t3"]),
             helper.make_node("Reshape", ["t3", "shape"], ["v_view"])],
}


def _initializers(rng):
    arrays = {"one": np.float32(1.0), "zero": np.float32(0.0), "M": rng.standard_normal((2, 2)).astype(np.float32),
              "bias": rng.standard_normal(2).astype(np.float32), "flat": np.array([4, 2], np.int64),
              "shape": np.array(SHAPE, np.int64), "trips": np.array(2, np.int64), "axis0": np.array([0], np.int64),
              "W": (rng.standard_normal((1, 8, 2)) * 0.5).astype(np.float32),
              "R": (rng.standard_normal((1, 8, 2)) * 0.5).astype(np.float32)}
    return [numpy_helper.from_array(np.asarray(a), n) for n, a in arrays.items()]


def _combine(prefix: str, a: str, b: str, falls_back: bool) -> list:
    """Nodes computing `prefix`_out from a and b: b + LSTM(a)'s Y_h (clip: declined, so
    the body falls back) or b + a * a (kernels)."""
    if falls_back:
        return [helper.make_node("LSTM", [a, "W", "R"], ["", f"{prefix}_h"], hidden_size=2, clip=50.0),
                helper.make_node("Add", [b, f"{prefix}_h"], [f"{prefix}_out"])]
    return [helper.make_node("Mul", [a, a], [f"{prefix}_sq"]), helper.make_node("Add", [b, f"{prefix}_sq"], [f"{prefix}_out"])]


def _vi(name):
    return helper.make_tensor_value_info(name, F, SHAPE)


def _container(kind: str, a: str, b: str, falls_back: bool) -> list:
    if kind in ("If", "nested If"):
        then = helper.make_graph(_combine("th", a, b, falls_back), "then", [], [_vi("th_out")])
        other = helper.make_graph(_combine("el", b, a, False), "else", [], [_vi("el_out")])
        if kind == "nested If":
            then = helper.make_graph([helper.make_node("If", ["cond"], ["in_out"], then_branch=then, else_branch=other)],
                                     "outer_then", [], [_vi("in_out")])
        return [helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other)]
    if kind == "Loop":
        body = helper.make_graph(
            [*_combine("lp", a, b, falls_back), helper.make_node("Add", ["c", "lp_out"], ["c_next"]),
             helper.make_node("Identity", ["keep"], ["keep_next"])], "body",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("keep", TensorProto.BOOL, []),
             _vi("c")], [helper.make_tensor_value_info("keep_next", TensorProto.BOOL, []), _vi("c_next")])
        return [helper.make_node("Loop", ["trips", "", "x"], ["y"], body=body)]
    body = helper.make_graph(  # Scan over [2, *SHAPE]: state + x_t + combine(a, b) each step
        [*_combine("sc", a, b, falls_back), helper.make_node("Add", ["s", "x_t"], ["s1"]),
         helper.make_node("Add", ["s1", "sc_out"], ["s_next"]), helper.make_node("Identity", ["s_next"], ["y_t"])],
        "body", [_vi("s"), _vi("x_t")], [_vi("s_next"), _vi("y_t")])
    return [helper.make_node("Unsqueeze", ["x", "axis0"], ["x1"]), helper.make_node("Concat", ["x1", "x1"], ["xs"], axis=0),
            helper.make_node("Scan", ["x", "xs"], ["y", "ys"], body=body, num_scan_inputs=1)]


@settings(max_examples=30, deadline=None)
@given(container=st.sampled_from(["If", "nested If", "Loop", "Scan"]),
       kinds=st.lists(st.sampled_from(list(OUTER)), min_size=2, max_size=2),
       falls_back=st.booleans(), seed=st.integers(0, 2 ** 32 - 1), positive=st.booleans())
def test_bodies_read_any_outer_value(container, kinds, falls_back, seed, positive):
    event(f"{container}, body on the {'fallback' if falls_back else 'kernels'}")
    event(f"reads {kinds[0]} and {kinds[1]}")
    rng = np.random.default_rng(seed)
    a, b = (f"v_{k}" for k in kinds)
    nodes = [n for k in dict.fromkeys(kinds) for n in OUTER[k]]
    nodes += [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0), helper.make_node("Greater", ["s", "zero"], ["cond"])]
    nodes += _container(container, a, b, falls_back)
    outputs = [_vi("y")] + ([_vi("side")] if "fused_shared" in kinds else [])
    graph = helper.make_graph(nodes, "g", [_vi("x")], outputs, _initializers(rng))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.abs(rng.standard_normal(SHAPE)).astype(np.float32) * (1 if positive else -1)
    compiled = ember.compile(model)
    containers = [n for n in compiled.graph.nodes if n.op in ("If", "Loop", "Scan")]
    assert compiled.stats.fallback_nodes == ([containers[0].name] if falls_back else [])
    want = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})
    for _ in range(2):  # a second run: nothing read from a buffer the first left behind
        got = compiled.run({"x": x})
        for g, w in zip(got.values(), want):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_a_declined_lowering_leaves_no_ref_on_a_buffer_it_dropped():
    """A lowering that realizes values (its inputs, or the outer values a body reads) and
    then declines is rolled back: those values are lazy again, not left naming a buffer
    the rollback removed."""
    from ember.codegen.lowering import LoweringContext
    from ember.frontends.onnx import load_onnx

    nodes = [helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Neg", ["s"], ["y"])]
    graph = load_onnx(helper.make_model(helper.make_graph(nodes, "g", [_vi("x")], [_vi("y")]),
                                        opset_imports=[helper.make_opsetid("", 17)]))
    ctx = LoweringContext(graph)
    ctx.refs[id(graph.inputs[0])] = ctx._ref_for_source(graph.inputs[0], "input")
    ctx._lower_in_order(graph.nodes[:1])
    ref = ctx.refs[id(graph.nodes[0].outputs[0])]
    assert ref.lazy
    state = ctx._checkpoint()
    buffer = ctx.realize(ref)
    assert not ref.lazy and buffer.name in ctx.buffers
    ctx._rollback(state)
    assert ref.lazy and buffer.name not in ctx.buffers
    assert ctx.realize(ref).name in ctx.buffers  # realized again when a later step needs it


def test_a_scan_body_keeps_the_outer_constants_it_reads_as_constants():
    """A Scan body that slices its carried state by indices the enclosing graph holds as
    initializers (a waveform framer, as onnx-asr's wespeaker front-end): the body's copy
    keeps them as its own constants, so its Slice is static and runs in its one kernel
    segment, rather than being fed them every step and slicing on an extern."""
    rng = np.random.default_rng(0)
    body = helper.make_graph(
        [helper.make_node("Concat", ["state", "hop"], ["frame"], axis=1),
         helper.make_node("Slice", ["frame", "starts", "ends", "axes"], ["next"])],
        "framer",
        [helper.make_tensor_value_info("state", F, [1, 6]), helper.make_tensor_value_info("hop", F, [1, 4])],
        [helper.make_tensor_value_info("next", F, [1, 6]), helper.make_tensor_value_info("frame", F, [1, 10])])
    scan = helper.make_node("Scan", ["s0", "hops"], ["final", "frames"], body=body, num_scan_inputs=1,
                            scan_input_axes=[1])
    inits = [numpy_helper.from_array(np.array([4], np.int64), "starts"),
             numpy_helper.from_array(np.array([10], np.int64), "ends"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    graph = helper.make_graph([scan], "g", [helper.make_tensor_value_info("s0", F, [1, 6]),
                                            helper.make_tensor_value_info("hops", F, [1, "steps", 4])],
                              [helper.make_tensor_value_info("final", F, None),
                               helper.make_tensor_value_info("frames", F, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    compiled = ember.compile(model)
    assert compiled.stats.fallback_nodes == []
    (control,) = [step for kind, _, step in compiled._executor._steps if step.name == "control"]
    (body_executor,) = control.params["executors"]
    assert [(kind, step.kind) for kind, _, step in body_executor._steps] == [("segment", "segment")]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for steps in (1, 7):
        feeds = {"s0": rng.standard_normal((1, 6)).astype(np.float32),
                 "hops": rng.standard_normal((1, steps, 4)).astype(np.float32)}
        want = session.run(None, feeds)
        got = compiled.run(feeds)
        np.testing.assert_allclose(got["final"], want[0], rtol=1e-6)
        np.testing.assert_allclose(got["frames"], want[1], rtol=1e-6)
