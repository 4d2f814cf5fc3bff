"""One op compiled for the CPU against its reference implementation, for the image,
pooling and signal kernel tests: the graph's output types are the shapes the reference
produces (these kernels fill static outputs), and nothing may fall back."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings

import ember
from ember.ir import DType, Graph, TensorType, Value
from ember.ir.interpreter import evaluate
from ember.ir.types import symbol

SETTINGS = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _graph(op: str, inputs: list, attrs: dict, out_types: list, consts: dict) -> Graph:
    values, args = [], []
    g = Graph("g", opsets={"": 28})
    for i, (name, array) in enumerate(inputs):
        if array is None:
            args.append(None)
        elif i in consts:
            args.append(g.add_constant(name, array))
        else:
            v = Value(name, TensorType(DType.from_numpy(array.dtype), array.shape))
            values.append(v)
            args.append(v)
    g.inputs = values
    outs = [Value(f"y{i}", t) for i, t in enumerate(out_types)]
    g.outputs = g.add_node(op, args, outs, attrs).outputs
    return g


def reference(op: str, inputs: list, attrs: dict, num_outputs: int = 1, consts=()) -> list[np.ndarray]:
    """The op's reference outputs for `inputs` ((name, array or None), ...)."""
    feeds = {name: a for i, (name, a) in enumerate(inputs) if a is not None and i not in consts}
    consts = {i: inputs[i][1] for i in consts}
    types = [TensorType(DType.float32, (symbol(f"o{i}"),)) for i in range(num_outputs)]  # not checked
    want = evaluate(_graph(op, inputs, attrs, types, consts), feeds)
    return [want[f"y{i}"] for i in range(num_outputs)]


def check_kernel(op: str, inputs: list, attrs: dict, num_outputs: int = 1, consts=(), rtol=1e-5, atol=1e-5,
                 exact: bool = False, reference_attrs: dict | None = None) -> list[np.ndarray]:
    """Compile `op` with static output types taken from the reference, assert no node falls
    back, and compare its outputs with the reference's; returns the reference outputs.
    `reference_attrs`: the same attributes spelt the way the reference takes them."""
    want = reference(op, inputs, reference_attrs or attrs, num_outputs, consts)
    types = [TensorType(DType.from_numpy(w.dtype), w.shape) for w in want]
    graph = _graph(op, inputs, attrs, types, {i: inputs[i][1] for i in consts})
    compiled = ember.compile(graph, opt_level=0)
    assert compiled.stats.fallback_nodes == [], compiled.stats.fallback_nodes
    feeds = {name: a for i, (name, a) in enumerate(inputs) if a is not None and i not in consts}
    got = compiled.run(feeds)
    for i, w in enumerate(want):
        g = got[f"y{i}"]
        assert g.dtype == w.dtype and g.shape == w.shape, (i, g.dtype, g.shape, w.dtype, w.shape)
        if exact:
            np.testing.assert_array_equal(g, w, err_msg=f"output {i}")
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, err_msg=f"output {i}")
    return want
