"""Hypothesis strategies for random, well-typed ember graphs and inputs for them.

    from hypothesis import given
    from ember.testing import graphs_and_feeds, check_pass

    @given(graphs_and_feeds())
    def test_my_pass(case):
        check_pass(MyPass(), *case)

Graphs mix elementwise ops with broadcasting, reductions, MatMul, Reshape, Transpose,
Slice, Concat, Gather and Cast over float32 values, some dims symbolic (`n`), with
constants (something to fold), repeated subexpressions (something to deduplicate) and
unused nodes (something to sweep)."""

from __future__ import annotations

import numpy as np
import sympy
from hypothesis import strategies as st

from ..ir.dtypes import DType
from ..ir.graph import Graph, Value
from ..ir.types import TensorType, symbol

N = symbol("n")
UNARY = ["Relu", "Neg", "Abs", "Sigmoid", "Tanh", "Floor"]
BINARY = ["Add", "Sub", "Mul", "Max", "Min"]
REDUCE = ["ReduceSum", "ReduceMax", "ReduceMean"]


class _Builder:
    def __init__(self, draw):
        self.draw = draw
        self.graph = Graph("random", opsets={"": 28})
        self.pool: list[Value] = []

    def fresh(self, shape) -> Value:
        return Value(f"v{sum(1 for _ in self.graph.values())}", TensorType(DType.float32, tuple(shape)))

    def node(self, op, inputs, shape, attrs=None) -> Value:
        out = self.fresh(shape)
        self.graph.add_node(op, inputs, [out], attrs or {}, name=f"{op}_{len(self.graph.nodes)}")
        self.pool.append(out)
        return out

    def const(self, data: np.ndarray, dtype=np.float32) -> Value:
        return self.graph.add_constant(f"c{len(self.graph.constants)}", np.asarray(data, dtype))

    def pick(self) -> Value:
        return self.draw(st.sampled_from(self.pool))

    def random_const(self, shape) -> Value:
        values = self.draw(st.lists(st.integers(-4, 4), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
        return self.const(np.array(values, np.float32).reshape(shape) / 2)

    # -- one random step --------------------------------------------------------------
    def step(self) -> None:
        x = self.pick()
        shape = x.type.shape
        static = [i for i, d in enumerate(shape) if isinstance(d, int)]
        kind = self.draw(st.sampled_from(["unary", "binary", "binary_const", "const_chain", "reduce",
                                          "matmul", "transpose", "reshape", "slice", "concat",
                                          "gather", "cast", "repeat"]))
        if kind == "unary":
            self.node(self.draw(st.sampled_from(UNARY)), [x], shape)
        elif kind == "binary":
            same = [v for v in self.pool if v.type.shape == shape]
            self.node(self.draw(st.sampled_from(BINARY)), [x, self.draw(st.sampled_from(same))], shape)
        elif kind == "binary_const" and static and static[-1] == len(shape) - 1:
            # broadcasting: a constant over the trailing static dim
            c = self.random_const((shape[-1],))
            self.node(self.draw(st.sampled_from(BINARY)), [x, c], shape)
        elif kind == "const_chain" and static and static[-1] == len(shape) - 1:
            # constant-only arithmetic feeding the live graph: fold_constants' food
            a, b = self.random_const((shape[-1],)), self.random_const((shape[-1],))
            folded = self.node(self.draw(st.sampled_from(BINARY)), [a, b], (shape[-1],))
            self.node("Add", [x, folded], shape)
        elif kind == "reduce" and len(shape) > 1:
            axis = self.draw(st.integers(0, len(shape) - 1))
            keep = self.draw(st.booleans())
            out = list(shape)
            if keep:
                out[axis] = 1
            else:
                del out[axis]
            # the mean of nothing (an axis an empty slice left 0 long) is NaN in onnx.reference
            # and ember, 0 in onnxruntime: a case the peers disagree on, not drawn here
            ops = [op for op in REDUCE if not (op == "ReduceMean" and shape[axis] == 0)]
            self.node(self.draw(st.sampled_from(ops)), [x, self.const([axis], np.int64)], out,
                      {"keepdims": int(keep)})
        elif kind == "matmul" and static and static[-1] == len(shape) - 1:
            k = self.draw(st.integers(1, 4))
            self.node("MatMul", [x, self.random_const((shape[-1], k))], (*shape[:-1], k))
        elif kind == "transpose" and len(shape) > 1:
            perm = self.draw(st.permutations(range(len(shape))))
            self.node("Transpose", [x], [shape[p] for p in perm], {"perm": list(perm)})
        elif kind == "reshape":
            size = sympy.Mul(*shape) if not all(isinstance(d, int) for d in shape) else int(np.prod(shape))
            self.node("Reshape", [x, self.const([-1], np.int64)], (size,))
        elif kind == "slice" and static:
            axis = self.draw(st.sampled_from(static))
            dim = shape[axis]
            start = self.draw(st.integers(0, max(dim - 1, 0)))
            end = self.draw(st.integers(start, dim))
            out = list(shape)
            out[axis] = end - start
            self.node("Slice", [x, self.const([start], np.int64), self.const([end], np.int64),
                                self.const([axis], np.int64)], out)
        elif kind == "concat" and static:
            axis = self.draw(st.sampled_from(static))
            same = [v for v in self.pool if v.type.shape == shape]
            y = self.draw(st.sampled_from(same))
            out = list(shape)
            out[axis] = 2 * shape[axis]
            self.node("Concat", [x, y], out, {"axis": axis})
        elif kind == "gather" and static and static[0] == 0 and shape[0] > 0:
            idx = self.draw(st.lists(st.integers(0, shape[0] - 1), min_size=1, max_size=3))
            self.node("Gather", [x, self.const(idx, np.int64)], (len(idx), *shape[1:]), {"axis": 0})
        elif kind == "cast":
            wide = self.fresh(shape)
            wide.type = TensorType(DType.float64, tuple(shape))
            self.graph.add_node("Cast", [x], [wide], {"to": DType.float64.onnx_code}, name=f"Cast_{len(self.graph.nodes)}")
            self.node("Cast", [wide], shape, {"to": DType.float32.onnx_code})
        elif kind == "repeat" and self.graph.nodes:
            # the same op on the same inputs again: common-subexpression elimination's food
            prev = self.draw(st.sampled_from(self.graph.nodes))
            if len(prev.outputs) == 1 and prev.outputs[0].type.dtype is DType.float32:
                self.node(prev.op, list(prev.inputs), prev.outputs[0].type.shape, dict(prev.attrs))


@st.composite
def graphs(draw, max_steps: int = 8) -> Graph:
    """A random well-typed Graph over float32 inputs; dim `n` is symbolic."""
    b = _Builder(draw)
    num_inputs = draw(st.integers(1, 2))
    base = [draw(st.sampled_from([N, 1, 2, 3]))] + draw(st.lists(st.integers(1, 4), min_size=0, max_size=2))
    for i in range(num_inputs):
        x = Value(f"x{i}", TensorType(DType.float32, tuple(base)))
        b.graph.inputs.append(x)
        b.pool.append(x)
    for _ in range(draw(st.integers(1, max_steps))):
        b.step()
    live = [v for v in b.pool if v.producer is not None] or b.pool[:1]
    b.graph.outputs = draw(st.lists(st.sampled_from(live), min_size=1, max_size=2, unique_by=id))
    return b.graph


def feeds_for(graph: Graph, draw) -> dict[str, np.ndarray]:
    """Random inputs for `graph`, binding each symbol to one size (1-4)."""
    sizes: dict = {}
    feeds = {}
    for v in graph.inputs:
        shape = []
        for d in v.type.shape:
            if not isinstance(d, int):
                d = sizes.setdefault(d, draw(st.integers(1, 4)))
            shape.append(d)
        n = int(np.prod(shape))
        values = draw(st.lists(st.integers(-8, 8), min_size=n, max_size=n))
        feeds[v.name] = (np.array(values, np.float32) / 4).reshape(shape)
    return feeds


@st.composite
def graphs_and_feeds(draw, max_steps: int = 8) -> tuple[Graph, dict[str, np.ndarray]]:
    graph = draw(graphs(max_steps=max_steps))
    return graph, feeds_for(graph, draw)
