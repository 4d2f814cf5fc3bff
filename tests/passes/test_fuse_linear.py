import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ember
from ember.ir import DType, Graph, TensorType, Value, symbol
from ember.passes import get_pass
from ember.testing import check_pass

N = symbol("n")


def _graph(w: np.ndarray, b: np.ndarray, bias_first: bool, weight_is_input: bool = False) -> Graph:
    k, m = w.shape
    x = Value("x", TensorType(DType.float32, (N, 3, k)))
    g = Graph("g", inputs=[x], opsets={"": 28})
    if weight_is_input:
        wv = Value("w", TensorType(DType.float32, (k, m)))
        g.inputs.append(wv)
    else:
        wv = g.add_constant("w", w)
    bv = g.add_constant("b", b)
    h = g.add_node("MatMul", [x, wv], [Value("h", TensorType(DType.float32, (N, 3, m)))], name="mm").outputs[0]
    ins = [bv, h] if bias_first else [h, bv]
    g.outputs = g.add_node("Add", ins, [Value("y", TensorType(DType.float32, (N, 3, m)))], name="add").outputs
    return g


@settings(max_examples=50, deadline=None)
@given(k=st.integers(1, 5), m=st.integers(1, 5), bias_first=st.booleans(), data=st.data())
def test_matmul_add_becomes_one_linear(k, m, bias_first, data):
    floats = st.floats(-4, 4, width=32)
    w = data.draw(hnp.arrays(np.float32, (k, m), elements=floats))
    b = data.draw(hnp.arrays(np.float32, (m,), elements=floats))
    x = data.draw(hnp.arrays(np.float32, (2, 3, k), elements=floats))
    after = check_pass(get_pass("fuse_linear"), _graph(w, b, bias_first), {"x": x})
    assert [n.op for n in after] == ["ember.Linear"]
    assert after.outputs[0].name == "y" and after.outputs[0].type.shape == (N, 3, m)


@pytest.mark.parametrize("case, reason", [
    ("weight_is_input", "the weight is not a constant matrix"),
    ("bias_mismatch", "the bias is not a constant vector of 3"),
])
def test_non_linear_shapes_are_left_alone(case, reason):
    w = np.ones((2, 3), np.float32)
    b = np.ones((1,), np.float32) if case == "bias_mismatch" else np.ones((3,), np.float32)
    g = _graph(w, b, bias_first=False, weight_is_input=case == "weight_is_input")
    p = get_pass("fuse_linear")
    p.run(g)
    assert [n.op for n in g] == ["MatMul", "Add"]
    assert p.report.rejected == [("matmul_add_to_linear", "add", reason)]


def test_minilm_linears(minilm_onnx):
    hist = ember.compile(str(minilm_onnx)).stats.op_histogram
    # 6 layers x (q|k|v in one (fuse_qkv), out, ffn up, ffn down); QK^T and PV end up in ember.Attention
    assert hist.get("ember.Linear") == 24 and "MatMul" not in hist
