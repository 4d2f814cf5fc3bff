import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ember
from ember.ir import DType, Graph, TensorType, Value, symbol
from ember.passes import get_pass
from ember.testing import check_pass

T = TensorType(DType.float32, (symbol("n"), 4))


def _graph(form: str) -> Graph:
    x = Value("x", T)
    g = Graph("g", inputs=[x], opsets={"": 28})
    c = lambda v: g.add_constant(f"c{len(g.constants)}", np.array(v, np.float32))  # noqa: E731
    add = lambda op, *ins: g.add_node(op, list(ins), [Value(f"v{len(g.nodes)}", T)]).outputs[0]  # noqa: E731
    if form.startswith("erf"):
        scaled = add("Div", x, c(math.sqrt(2))) if "div" in form else add("Mul", c(1 / math.sqrt(2)), x)
        one_plus = add("Add", c(1.0), add("Erf", scaled))
        if "half_first" in form:
            y = add("Mul", one_plus, add("Mul", x, c(0.5)))
        else:
            y = add("Mul", c(0.5), add("Mul", x, one_plus))
    else:
        cube = add("Mul", add("Pow", x, c(3.0)), c(0.044715))
        inner = add("Tanh", add("Mul", add("Add", x, cube), c(math.sqrt(2 / math.pi))))
        y = add("Mul", add("Mul", x, c(0.5)), add("Add", inner, c(1.0)))
    g.outputs = [y]
    return g


FORMS = ["erf_div_inner_first", "erf_mul_inner_first", "erf_div_half_first", "erf_mul_half_first", "tanh"]


@pytest.mark.parametrize("form", FORMS)
@settings(max_examples=25, deadline=None)
@given(x=hnp.arrays(np.float32, (3, 4), elements=st.floats(-6, 6, width=32)))
def test_gelu_forms_fuse_to_one_gelu(form, x):
    after = check_pass(get_pass("fuse_gelu"), _graph(form), {"x": x}, rtol=1e-5, atol=1e-6)
    (node,) = after.nodes
    assert node.op == "Gelu" and node.attrs.get("approximate", "none") == ("tanh" if form == "tanh" else "none")


def test_wrong_constant_is_rejected_with_a_reason():
    g = _graph("erf_div_inner_first")
    g.constants[0].const = np.array(2.0, np.float32)  # x / 2 is not GELU
    p = get_pass("fuse_gelu")
    p.run(g)
    assert "Gelu" not in [n.op for n in g.nodes]
    assert any("c is [2.0], not 1.41421" in reason or "c is 2.0, not 1.41421" in reason
               for _, _, reason in p.report.rejected), p.report.rejected


def test_minilm_has_six_gelus(minilm_onnx):
    # O1 has no GELU fusion; O2 (fuse_gelu, then fuse_bias_activation) leaves each one in
    # its FFN's first ember.Linear
    assert ember.compile(str(minilm_onnx), passes=[("fuse_gelu", "after", "fold_constants")],
                         opt_level=1).stats.op_histogram.get("Gelu") == 6
    graph = ember.compile(str(minilm_onnx)).graph
    assert sum(n.op == "ember.Linear" and n.attrs.get("activation") == "gelu" for n in graph.nodes) == 6
