"""Small ONNX models for the artifact tests: plain kernels, a reference fallback,
control flow lowered to programs of its own and control flow that falls back."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def _model(nodes, inputs, outputs, initializers=(), opset=21) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid("ai.onnx.ml", 3)])


def matmul_gelu() -> onnx.ModelProto:
    """y = gelu((x + b) @ W), x: f32[n, 4] (a generated kernel and an extern)."""
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    return _model([helper.make_node("Add", ["x", "b"], ["s"]), helper.make_node("MatMul", ["s", "W"], ["m"]),
                   helper.make_node("Gelu", ["m"], ["y"])],
                  [helper.make_tensor_value_info("x", F, ["n", 4])], [helper.make_tensor_value_info("y", F, ["n", 3])],
                  [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.full(4, 0.25, np.float32), "b")])


def with_fallback() -> onnx.ModelProto:
    """Scaler (no kernel: its reference implementation runs) between two kernels."""
    return _model([helper.make_node("Mul", ["x", "x"], ["sq"]),
                   helper.make_node("Scaler", ["sq"], ["scaled"], domain="ai.onnx.ml", offset=[0.5, -1.0, 2.0],
                                    scale=[2.0, 0.1, 3.0]),
                   helper.make_node("Add", ["scaled", "x"], ["y"])],
                  [helper.make_tensor_value_info("x", F, ["n", 3])], [helper.make_tensor_value_info("y", F, ["n", 3])])


def with_if(branch_falls_back: bool) -> onnx.ModelProto:
    """y = If(sum(x) > 0) then x * 2 (or Scaler(x), which falls back) else -x; the
    branches read x from the enclosing graph."""
    then_node = (helper.make_node("Scaler", ["x"], ["t"], domain="ai.onnx.ml", offset=[1.0], scale=[3.0])
                 if branch_falls_back else helper.make_node("Mul", ["x", "two"], ["t"]))
    then_graph = helper.make_graph([then_node], "then", [], [helper.make_tensor_value_info("t", F, ["n", 3])])
    else_graph = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                                   [helper.make_tensor_value_info("e", F, ["n", 3])])
    return _model([helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
                   helper.make_node("Greater", ["total", "zero"], ["cond"]),
                   helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)],
                  [helper.make_tensor_value_info("x", F, ["n", 3])], [helper.make_tensor_value_info("y", F, ["n", 3])],
                  [numpy_helper.from_array(np.float32(0), "zero"), numpy_helper.from_array(np.float32(2), "two")])


def with_loop() -> onnx.ModelProto:
    """A Loop of `trips` iterations: state v += x each time, the running value scanned out."""
    body = helper.make_graph(
        [helper.make_node("Add", ["v_in", "x"], ["v_out"]), helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Identity", ["v_out"], ["scan"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", F, [3])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), helper.make_tensor_value_info("v_out", F, [3]),
         helper.make_tensor_value_info("scan", F, [3])])
    return _model([helper.make_node("Loop", ["trips", "", "v0"], ["v", "scans"], body=body)],
                  [helper.make_tensor_value_info("trips", TensorProto.INT64, []),
                   helper.make_tensor_value_info("v0", F, [3]), helper.make_tensor_value_info("x", F, [3])],
                  [helper.make_tensor_value_info("v", F, [3]), helper.make_tensor_value_info("scans", F, ["k", 3])])


def strided_conv() -> onnx.ModelProto:
    """A 3x3 convolution of stride 2 and a ceil-mode max pool over x: f32[n, 3, h, w]:
    buffer sizes such as floor((h - 1)/2) + 1 and ceiling(...), which a loaded program
    evaluates without sympy (ember/ir/sizes.py)."""
    w = np.linspace(-1, 1, 8 * 3 * 9, dtype=np.float32).reshape(8, 3, 3, 3)
    return _model([helper.make_node("Conv", ["x", "W"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
                   helper.make_node("Relu", ["c"], ["r"]),
                   helper.make_node("MaxPool", ["r"], ["y"], kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)],
                  [helper.make_tensor_value_info("x", F, ["n", 3, "h", "w"])],
                  [helper.make_tensor_value_info("y", F, None)], [numpy_helper.from_array(w, "W")])
