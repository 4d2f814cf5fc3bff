"""What every export test checks: the standard export passes onnx's full check, holds no
ember op, and runs in onnxruntime to ember's outputs; the ember-domain export comes back
through ember's frontend to the same outputs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort

from ember.export import export_onnx
from ember.frontends.onnx import load_onnx
from ember.ir import Graph, evaluate


def run_onnxruntime(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # its optimizer's warnings about shapes it cannot fold
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def check_standard_export(graph: Graph, feeds: dict[str, np.ndarray], expected: dict[str, np.ndarray] | None = None,
                          atol: float = 1e-4, rtol: float = 0.0) -> float:
    """Export `graph` with standard ops only and run it in onnxruntime; its outputs must
    be `expected` (default: ember's reference) within atol + rtol * |expected|. Returns
    the largest absolute difference."""
    expected = evaluate(graph, feeds) if expected is None else expected
    model = export_onnx(graph, standard_ops_only=True)
    onnx.checker.check_model(model, full_check=True)
    assert {n.domain for n in model.graph.node} <= {""}, [n.op_type for n in model.graph.node if n.domain]
    got = run_onnxruntime(model, feeds)
    assert list(got) == list(expected)
    worst = 0.0
    for name, want in expected.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape, (name, got[name].shape, want.shape)
        np.testing.assert_allclose(got[name], want, atol=atol, rtol=rtol, err_msg=f"output {name!r}")
        if want.size:
            worst = max(worst, float(np.max(np.abs(got[name].astype(np.float64) - want.astype(np.float64)))))
    return worst


def check_round_trip(graph: Graph, feeds: dict[str, np.ndarray]) -> Graph:
    """The ember-domain export, imported by ember again: the same ops (an Identity may be
    added where a subgraph returns a value it does not compute), the same outputs."""
    model = export_onnx(graph)
    back = load_onnx(model)
    ops = {op: n for op, n in graph.op_histogram().items() if op != "Identity"}
    assert {op: n for op, n in back.op_histogram().items() if op != "Identity"} == ops
    want, got = evaluate(graph, feeds), evaluate(back, feeds)
    assert list(got) == list(want)
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=f"output {name!r}")
    return back
