"""Checking one com.microsoft node against onnxruntime: ember's reference (the
interpreter), and ember's compiled kernels at O0 (codegen expands the node) and O2 (the
expand_ops pass does), each compiled once per model and run on many input sizes."""

from __future__ import annotations

import functools

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import ember
from ember.codegen.expand import expansion_nodes
from ember.ir.ops._lowering import NotLowerable
from ember.frontends.onnx import load_onnx
from ember.ir.interpreter import evaluate

ELEMENT = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int32): TensorProto.INT32,
           np.dtype(np.int64): TensorProto.INT64, np.dtype(np.uint8): TensorProto.UINT8,
           np.dtype(np.int8): TensorProto.INT8}


def contrib_model(op_type: str, inputs: list[tuple[str, np.dtype, list] | None], outputs: list[str],
                  domain: str = "com.microsoft", initializers: dict[str, np.ndarray] | None = None,
                  **attrs) -> bytes:
    """A one-node model: inputs are (name, dtype, shape with str for symbolic dims) or
    None for an absent input; an input named in `initializers` is a constant instead;
    outputs named "" are absent. Serialized, so it can key a cache."""
    initializers = initializers or {}
    names = [spec[0] if spec else "" for spec in inputs]
    node = helper.make_node(op_type, names, outputs, domain=domain, **attrs)
    graph_inputs = [helper.make_tensor_value_info(n, ELEMENT[np.dtype(d)], s)
                    for n, d, s in (spec for spec in inputs if spec) if n not in initializers]
    graph_outputs = [onnx.ValueInfoProto(name=o) for o in outputs if o]  # onnxruntime infers their types
    inits = [onnx.numpy_helper.from_array(a, n) for n, a in initializers.items()]
    graph = helper.make_graph([node], op_type, graph_inputs, graph_outputs, inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8).SerializeToString()


@functools.lru_cache(maxsize=None)
def _session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


@functools.lru_cache(maxsize=None)
def _compiled(model: bytes, opt_level: int):
    return ember.compile(onnx.load_from_string(model), opt_level=opt_level)


@functools.lru_cache(maxsize=None)
def _graph(model: bytes):
    return load_onnx(onnx.load_from_string(model))


def check(model: bytes, feeds: dict[str, np.ndarray], *, rtol: float = 1e-4, atol: float = 1e-5,
          compare: list[int] | None = None, fallback: str | None = None, want: list | None = None) -> dict:
    """ember's reference and compiled kernels (O0, O2) vs onnxruntime on `feeds`; outputs
    at indices `compare` only (default all). `fallback`: the node is expected to run on its
    reference, for a reason containing this text (otherwise no node may fall back).
    `want`: the expected outputs, for an op onnxruntime has no CPU kernel for.
    Returns the compiled models' stats by level."""
    want = _session(model).run(None, feeds) if want is None else want
    keep = compare if compare is not None else range(len(want))
    got = list(evaluate(_graph(model), feeds).values())
    for i in keep:
        np.testing.assert_allclose(got[i], want[i], rtol=rtol, atol=atol, err_msg=f"reference, output {i}")
    if fallback is not None:  # the expansion declines, saying why
        node = _graph(model).nodes[0]
        with pytest.raises(NotLowerable, match=fallback):
            expansion_nodes(node, [True] * len(node.outputs))
    stats = {}
    for level in (0, 2):
        compiled = _compiled(model, level)
        stats[level] = compiled.stats
        if fallback is None:
            assert not compiled.stats.fallback_nodes, f"O{level}: {compiled.stats}"
        else:
            assert compiled.stats.fallback_nodes, f"O{level}: expected a fallback ({fallback})"
        out = list(compiled.run(feeds).values())
        for i in keep:
            np.testing.assert_allclose(out[i], want[i], rtol=rtol, atol=atol, err_msg=f"O{level}, output {i}")
    return stats
