"""Extern kernels that hand their output over (oneDNN's GEMM allocates it): the buffer is
adopted, not copied, read by later kernels, fallbacks and externs, and let go after its
last reader."""

import numpy as np
import pytest

import ember
from ember.codegen import cpu
from ember.ir import DType, Graph, TensorType, Value, get_op, symbol

pytestmark = pytest.mark.skipif(cpu.compiler() is None, reason="no C++ compiler on this machine")
N = symbol("n")


def _linear_chain() -> tuple[Graph, dict]:
    """x -> Linear -> Sin -> Linear(relu) -> Add(first linear) -> y"""
    rng = np.random.default_rng(0)
    g = Graph("g", opsets={"": 28})
    x = Value("x", TensorType(DType.float32, (N, 8)))
    g.inputs.append(x)
    t = lambda name, m: Value(name, TensorType(DType.float32, (N, m)))  # noqa: E731
    w1, b1 = g.add_constant("w1", rng.standard_normal((8, 16)).astype(np.float32)), \
        g.add_constant("b1", rng.standard_normal(16).astype(np.float32))
    w2 = g.add_constant("w2", rng.standard_normal((16, 16)).astype(np.float32))
    h = g.add_node("ember.Linear", [x, w1, b1], [t("h", 16)]).outputs[0]
    s = g.add_node("Sin", [h], [t("s", 16)]).outputs[0]
    k = g.add_node("ember.Linear", [s, w2], [t("k", 16)], {"activation": "relu"}).outputs[0]
    g.outputs = g.add_node("Add", [k, h], [t("y", 16)]).outputs
    return g, {"x": rng.standard_normal((5, 8)).astype(np.float32)}


@pytest.mark.parametrize("sin_on_fallback", [False, True])
def test_adopted_linear_outputs_feed_kernels_and_fallbacks(sin_on_fallback, monkeypatch):
    from ember.ir.ops import _lowering

    from ember.runtime import externs

    monkeypatch.setattr(_lowering, "SMALL_PATH_WEIGHT", 0)  # (a step with a small path writes its planned buffer)
    monkeypatch.setattr(externs._TiledWeight, "of", classmethod(lambda cls, w: None))  # (so does the tiled GEMM): oneDNN's GEMM, as where it does not build
    if sin_on_fallback:
        monkeypatch.setattr(get_op("Sin"), "lower", None)
    g, feeds = _linear_chain()
    want = ember.compile(_linear_chain()[0], opt_level=0, codegen=False).run(feeds)["y"]
    compiled = ember.compile(g, opt_level=0)
    executor = compiled._executor
    assert any("packed" in step.params for _, _, step in executor._steps), "torch without oneDNN"
    assert len(executor._adopted) == 2
    assert (compiled.stats.fallback_nodes != []) == sin_on_fallback
    for batch in (5, 2, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 8)).astype(np.float32)
        want = ember.compile(_linear_chain()[0], opt_level=0, codegen=False).run({"x": x})["y"]
        np.testing.assert_allclose(compiled.run({"x": x})["y"], want, rtol=1e-5, atol=1e-5)
    # each adopted buffer is released after its last reader (the final Add)
    assert sorted(n for names in executor._release.values() for n in names) == sorted(executor._adopted.values())
