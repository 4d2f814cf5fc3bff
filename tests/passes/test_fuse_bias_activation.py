import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ember
from ember.ir import DType, Graph, TensorType, Value
from ember.passes import get_pass
from ember.testing import check_pass

FLOATS = st.floats(-3, 3, width=32)
SOURCES = {"relu": ("Relu", {}), "gelu": ("Gelu", {}), "gelu_tanh": ("Gelu", {"approximate": "tanh"}),
           "silu": ("Swish", {"alpha": 1.0})}


def _graph(w, b, op: str, attrs: dict) -> Graph:
    t = TensorType(DType.float32, (2, w.shape[1]))
    x = Value("x", TensorType(DType.float32, (2, w.shape[0])))
    g = Graph("g", inputs=[x], opsets={"": 28})
    ins = [x, g.add_constant("w", w)] + ([g.add_constant("b", b)] if b is not None else [])
    h = g.add_node("ember.Linear", ins, [Value("h", t)], name="linear").outputs[0]
    g.outputs = g.add_node(op, [h], [Value("y", t)], attrs, name="act").outputs
    return g


@pytest.mark.parametrize("activation", sorted(SOURCES))
@settings(max_examples=25, deadline=None)
@given(k=st.integers(1, 4), n=st.integers(1, 4), biased=st.booleans(), data=st.data())
def test_activation_becomes_epilogue(activation, k, n, biased, data):
    w = data.draw(hnp.arrays(np.float32, (k, n), elements=FLOATS))
    b = data.draw(hnp.arrays(np.float32, (n,), elements=FLOATS)) if biased else None
    x = data.draw(hnp.arrays(np.float32, (2, k), elements=FLOATS))
    op, attrs = SOURCES[activation]
    after = check_pass(get_pass("fuse_bias_activation"), _graph(w, b, op, attrs), {"x": x}, rtol=1e-5, atol=1e-5)
    assert [(n.op, n.attrs.get("activation")) for n in after] == [("ember.Linear", activation)]


def test_other_swish_is_left_alone():
    fuse = get_pass("fuse_bias_activation")
    g = _graph(np.ones((2, 2), np.float32), None, "Swish", {"alpha": 2.0})
    fuse.run(g)
    assert [n.op for n in g] == ["ember.Linear", "Swish"]
    assert fuse.report.rejected == [("linear_silu", "act", "Swish alpha=2.0")]


def test_minilm_o2_folds_gelu_into_the_ffn(minilm_onnx):
    hist = ember.compile(str(minilm_onnx), opt_level=2).stats.op_histogram
    assert hist.get("ember.Linear") == 24 and "Gelu" not in hist  # q, k and v: one Linear a layer (fuse_qkv)
