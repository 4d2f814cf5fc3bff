"""codegen.store_weights_transposed: a float32 matrix only ember.Linear reads as its weight
is kept in Fortran order (oneDNN packs it without a transposed copy), artifacts keep the
layout, and any other reader keeps the array in C order."""

import numpy as np
import pytest

import ember
from ember.codegen import cpu
from ember.ir import DType, Graph, TensorType, Value, symbol

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")


def _graph(also_added: bool) -> tuple[Graph, np.ndarray]:
    """y = Linear(x, W) (+ W[0] broadcast, read by a generated kernel, when also_added)."""
    w = np.random.default_rng(0).standard_normal((8, 5)).astype(np.float32)
    g = Graph("g", opsets={"": 28})
    x = Value("x", TensorType(DType.float32, (symbol("n"), 8)))
    weight = g.add_constant("W", w)
    g.inputs = [x]
    (y,) = g.add_node("ember.Linear", [x, weight], [Value("y", TensorType(DType.float32, (symbol("n"), 5)))]).outputs
    if also_added:
        (y,) = g.add_node("Add", [y, weight], [Value("z", TensorType(DType.float32, (8, 5)))]).outputs
    g.outputs = [y]
    return g, w


@pytest.mark.parametrize("also_added", [False, True])
def test_a_weight_only_linear_reads_is_stored_transposed(tmp_path, also_added):
    g, w = _graph(also_added)
    x = np.random.default_rng(1).standard_normal((8 if also_added else 3, 8)).astype(np.float32)
    want = x @ w + (w if also_added else 0)
    compiled = ember.compile(g, opt_level=0)
    (constant,) = [a for a in compiled._executor._constants.values() if a.shape == w.shape]  # (not the small path's)
    assert constant.flags.f_contiguous != also_added  # a generated kernel reads it: C order
    np.testing.assert_allclose(compiled.run({"x": x})[g.outputs[0].name], want, rtol=1e-5, atol=1e-5)
    loaded = ember.load(compiled.save(tmp_path / "m.ember"))
    (constant,) = [a for a in loaded._executor._constants.values() if a.shape == w.shape]
    assert constant.flags.f_contiguous != also_added  # the artifact kept the layout
    np.testing.assert_array_equal(loaded.run({"x": x})[g.outputs[0].name], compiled.run({"x": x})[g.outputs[0].name])


def test_a_weight_kept_in_c_order_is_packed_transposed():
    """A weight a generated kernel reads too stays in C order; its Linear packs a
    transposed copy and computes x @ w."""
    g, w = _graph(also_added=True)
    compiled = ember.compile(g, opt_level=0)
    x = np.ones((8, 8), np.float32)
    np.testing.assert_allclose(compiled.run({"x": x})[g.outputs[0].name], x @ w + w, rtol=1e-5, atol=1e-5)
