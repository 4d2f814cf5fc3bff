import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import ember
from ember.ir import DType, Graph, TensorType, Value, symbol
from ember.passes import get_pass
from ember.testing import check_pass

N = symbol("n")
T = TensorType(DType.float32, (N, 4))
FLOATS = st.floats(-8, 8, width=32)


def _graph(gated: bool, swap_silu: bool, swap_gate: bool, up_shape=(N, 4)) -> Graph:
    """silu(x) = x * sigmoid(x); gated: silu(x) * up."""
    x = Value("x", T)
    g = Graph("g", inputs=[x], opsets={"": 28})
    add = lambda op, *ins: g.add_node(op, list(ins), [Value(f"v{len(g.nodes)}", T)]).outputs[0]
    s = add("Sigmoid", x)
    y = add("Mul", *((s, x) if swap_silu else (x, s)))
    if gated:
        up = Value("up", TensorType(DType.float32, up_shape))
        g.inputs.append(up)
        y = add("Mul", *((up, y) if swap_gate else (y, up)))
    g.outputs = [y]
    return g


@settings(max_examples=40, deadline=None)
@given(gated=st.booleans(), swap_silu=st.booleans(), swap_gate=st.booleans(), broadcast_up=st.booleans(),
       data=st.data())
def test_silu_and_swiglu_fuse(gated, swap_silu, swap_gate, broadcast_up, data):
    up_shape = (4,) if broadcast_up else (N, 4)
    g = _graph(gated, swap_silu, swap_gate, up_shape)
    feeds = {"x": data.draw(hnp.arrays(np.float32, (3, 4), elements=FLOATS))}
    if gated:
        feeds["up"] = data.draw(hnp.arrays(np.float32, (4,) if broadcast_up else (3, 4), elements=FLOATS))
    after = check_pass(get_pass("fuse_silu"), g, feeds, rtol=1e-5, atol=1e-6)
    (node,) = after.nodes
    if gated:
        assert node.op == "ember.SwiGLU" and [v.name for v in node.inputs] == ["x", "up"]
    else:
        assert node.op == "Swish" and node.attrs["alpha"] == 1.0


def test_a_swish_read_elsewhere_is_not_folded_into_swiglu():
    g = _graph(gated=True, swap_silu=False, swap_gate=False)
    swish_of = g.nodes[1].outputs[0]
    g.outputs.append(swish_of)  # the SiLU is an output too
    p = get_pass("fuse_silu")
    x = np.linspace(-4, 4, 8, dtype=np.float32).reshape(2, 4)
    after = check_pass(p, g, {"x": x, "up": x[::-1].copy()})
    assert [n.op for n in after] == ["Swish", "Mul"]
    assert any(name == "swish_mul_to_swiglu" and "used outside the pattern" in reason
               for name, _, reason in p.report.rejected), p.report.rejected


def test_other_products_are_left_alone():
    x, y = Value("x", T), Value("y", T)
    g = Graph("g", inputs=[x, y], opsets={"": 28})
    s = g.add_node("Sigmoid", [y], [Value("s", T)]).outputs[0]
    g.outputs = g.add_node("Mul", [x, s], [Value("z", T)]).outputs  # x * sigmoid(y): not SiLU
    get_pass("fuse_silu").run(g)
    assert [n.op for n in g] == ["Sigmoid", "Mul"]


def _export(module, args, path, names):
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, path, dynamo=False, opset_version=17, input_names=names,
                          output_names=["y"], dynamic_axes={name: {0: "b", 1: "s"} for name in names})
        return module(*args).numpy()


@pytest.mark.parametrize("kind", ["silu", "llama_mlp"])
def test_torch_exports_fuse_and_match_torch(kind, tmp_path):
    from transformers.models.llama.modeling_llama import LlamaConfig, LlamaMLP

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=16, intermediate_size=40, num_attention_heads=2, num_key_value_heads=2)
    module = torch.nn.SiLU() if kind == "silu" else LlamaMLP(config).eval()
    x = torch.randn(2, 5, 16) * 3
    path = tmp_path / f"{kind}.onnx"
    want = _export(module, (x,), path, ["x"])
    compiled = ember.compile(str(path), opt_level=1, passes=[("fuse_silu", "after", "canonicalize")])
    assert compiled.stats.op_histogram == ({"Swish": 1} if kind == "silu" else {"MatMul": 3, "ember.SwiGLU": 1})
    np.testing.assert_allclose(compiled.run({"x": x.numpy()})["y"], want, rtol=1e-4, atol=1e-5)
