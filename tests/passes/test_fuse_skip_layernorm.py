import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ember
from ember.ir import DType, Graph, TensorType, Value, symbol
from ember.passes import get_pass
from ember.testing import check_pass

N = symbol("n")
FLOATS = st.floats(-4, 4, width=32)


def _graph(width: int, skip_shape: tuple, with_beta: bool, axis: int = -1) -> tuple[Graph, Value]:
    t = TensorType(DType.float32, (N, 3, width))
    x, skip = Value("x", t), Value("skip", TensorType(DType.float32, skip_shape))
    g = Graph("g", inputs=[x, skip], opsets={"": 28})
    gamma = g.add_constant("gamma", np.linspace(0.5, 1.5, width, dtype=np.float32))
    beta = g.add_constant("beta", np.linspace(-1, 1, width, dtype=np.float32)) if with_beta else None
    total = g.add_node("Add", [x, skip], [Value("sum", t)], name="add").outputs[0]
    ins = [total, gamma] + ([beta] if with_beta else [])
    g.outputs = g.add_node("LayerNormalization", ins, [Value("y", t)], {"axis": axis, "epsilon": 1e-3},
                           name="ln").outputs
    return g


@settings(max_examples=40, deadline=None)
@given(width=st.integers(2, 6), with_beta=st.booleans(), data=st.data())
def test_add_layernorm_becomes_skip_layernorm(width, with_beta, data):
    g = _graph(width, (N, 3, width), with_beta)
    feeds = {name: data.draw(hnp.arrays(np.float32, (2, 3, width), elements=FLOATS)) for name in ("x", "skip")}
    after = check_pass(get_pass("fuse_skip_layernorm"), g, feeds, rtol=1e-4, atol=1e-4)
    assert [n.op for n in after] == ["ember.SkipLayerNorm"]
    assert after.nodes[0].attrs["epsilon"] == 1e-3


def test_broadcast_skip_and_inner_axis_are_left_alone():
    fuse = get_pass("fuse_skip_layernorm")
    fuse.run(g := _graph(4, (4,), True))
    assert [n.op for n in g] == ["Add", "LayerNormalization"]
    assert fuse.report.rejected == [("add_layernorm", "ln", "x and skip are not tensors of one shape and dtype")]
    fuse.run(g := _graph(4, (N, 3, 4), True, axis=1))
    assert fuse.report.rejected == [("add_layernorm", "ln", "the norm runs over axis 1, not the last")]


def test_minilm_skip_layernorms(minilm_onnx):
    hist = ember.compile(str(minilm_onnx)).stats.op_histogram
    # the embeddings' norm has no residual; each of the 6 layers has two
    assert hist.get("ember.SkipLayerNorm") == 12 and hist.get("LayerNormalization") == 1
