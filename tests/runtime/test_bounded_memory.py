"""What an executor keeps per input shape is bounded (issue 20, item 9): its bindings are
an LRU of MAX_BINDINGS, and oneDNN's GEMMs run at a bounded set of row counts, so its
and torch's per-shape primitive caches stop growing. The soak that measures the
process's memory is tests/models/test_soak.py (slow)."""

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.runtime import externs
from ember.runtime.executor import MAX_BINDINGS


@pytest.fixture(scope="module")
def mlp():
    """x [batch, seq, 32] @ W [32, 48] + b, then Relu: an ember.Linear on a packed weight."""
    rng = np.random.default_rng(0)
    w, b = rng.standard_normal((32, 48), dtype=np.float32), rng.standard_normal(48, dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Relu", ["a"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 32])
    graph = helper.make_graph(nodes, "mlp", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 48])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = ember.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    assert [n.op for n in model.graph.nodes] == ["ember.Linear"]
    return model, lambda x: np.maximum(x @ w + b, 0)


def test_bindings_are_a_small_lru(mlp):
    model, reference = mlp
    executor = model._executor
    rng = np.random.default_rng(1)
    shapes = [(1 + i % 3, 1 + i) for i in range(3 * MAX_BINDINGS)]
    for shape in shapes:
        x = rng.standard_normal((*shape, 32), dtype=np.float32)
        np.testing.assert_allclose(model.run({"x": x})["y"], reference(x), rtol=1e-4, atol=1e-4)
        assert len(executor._bindings) <= MAX_BINDINGS
    kept = [key[0][:2] for key in executor._bindings]
    assert kept == shapes[-MAX_BINDINGS:]  # the oldest went first
    # a shape used again is a hit and becomes the newest; the next new shape evicts the oldest other
    again = shapes[-MAX_BINDINGS]
    binding = executor._bindings[((*again, 32),)]
    model.run({"x": np.ones((*again, 32), np.float32)})
    assert next(reversed(executor._bindings)) == ((*again, 32),) and executor._bindings[((*again, 32),)] is binding
    model.run({"x": np.ones((5, 5, 32), np.float32)})
    assert ((*shapes[-MAX_BINDINGS + 1], 32),) not in executor._bindings
    assert ((*again, 32),) in executor._bindings


def test_the_arena_starts_on_a_page_as_it_grows():
    """The arena (a numpy array) is page-aligned however numpy placed it, so every planned
    buffer starts on a cache line: each larger plan reallocates it, aligned again."""
    from ember.runtime.memory import ALIGN
    from ember.runtime.executor import ARENA_ALIGNMENT

    rng = np.random.default_rng(2)
    w1, w2 = rng.standard_normal((32, 40), dtype=np.float32), rng.standard_normal((40, 8), dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("MatMul", ["t", "w2"], ["y"])]
    graph = helper.make_graph(nodes, "two", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = ember.compile(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    executor = model._executor
    sizes = set()
    for rows in (1, 40, 700, 3000):
        x = rng.standard_normal((rows, 32), dtype=np.float32)
        np.testing.assert_allclose(model.run({"x": x})["y"], np.tanh(x @ w1) @ w2, rtol=1e-4, atol=1e-4)
        sizes.add(executor._arena.size)
        assert executor._arena.ctypes.data % ARENA_ALIGNMENT == 0
        temps = [v for n, v in executor._bindings[((rows, 32),)].views.items() if n in executor._temps]
        assert temps and all(v.ctypes.data % ALIGN == 0 for v in temps)
    assert len(sizes) == 4  # it grew with every size (and was reallocated)


def test_row_classes_are_few_and_close_to_the_rows():
    classes = {externs._row_class(rows) for rows in range(1, 4097)}
    assert len(classes) == 44
    for rows in range(1, 4097):
        padded = externs._row_class(rows)
        assert rows <= padded <= 1.25 * rows and externs._row_class(padded) == padded
    assert [externs._row_class(r) for r in (1, 8, 9, 17, 128, 129, 1024)] == [1, 8, 10, 20, 128, 160, 1024]


@pytest.mark.skipif(not externs._onednn(), reason="torch without oneDNN: no packed GEMM")
@pytest.mark.parametrize("rows", [9, 37, 128, 129, 130])
@pytest.mark.parametrize("large_weight", [False, True])
def test_a_gemm_off_its_row_class_is_padded_or_runs_on_addmm(rows, large_weight, monkeypatch):
    """A GEMM past addmm's range runs on oneDNN's packed weight at a row class; at other
    row counts, padded to the class and sliced where the weight is large, on addmm where
    it is small (no oneDNN primitive for that shape either way). All match."""
    rng = np.random.default_rng(rows)
    w = torch.from_numpy(rng.standard_normal((48, 80), dtype=np.float32))
    bias = torch.from_numpy(rng.standard_normal(80, dtype=np.float32))
    monkeypatch.setattr(externs._TiledWeight, "of", classmethod(lambda cls, w: None))  # oneDNN's packed weight: as where the tiled GEMM does not build
    params = externs.prepare_linear({"activation": "relu"}, {1: w.numpy()})
    monkeypatch.setattr(externs._LinearWeight, "SMALL_MACS", 0)  # every call past addmm's range
    monkeypatch.setattr(externs._LinearWeight, "SMALL_WEIGHT", 0 if large_weight else 48 * 80)
    calls = []
    packed = externs._packed_linear
    monkeypatch.setattr(externs, "_packed_linear", lambda *a: calls.append(1) or packed(*a))
    externs._padding.buffer = None
    x = torch.from_numpy(rng.standard_normal((1, rows, 48), dtype=np.float32))
    got = externs.linear(params, x, w, bias, None)
    assert got.shape == (1, rows, 80) and got.is_contiguous()
    torch.testing.assert_close(got, torch.relu(x @ w + bias), rtol=1e-4, atol=1e-4)
    out = torch.empty(1, rows, 80)
    assert externs.linear(params, x, w, bias, out) is out
    torch.testing.assert_close(out, got)
    on_class = externs._row_class(rows) == rows
    assert len(calls) == (2 if on_class or large_weight else 0)
    assert (externs._padding.buffer is not None) == (large_weight and not on_class)  # padded, sliced
