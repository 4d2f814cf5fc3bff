import copy
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
FLOATS = st.floats(-4, 4, width=32)


def _graph(norm: str, square: str, divide: str, d: int, *, scale=None, bias=None, swap=False,
           eps=1e-5, axis=-1, two=2.0) -> Graph:
    """A norm over the last axis of x: [n, 3, d] written out in primitives."""
    full, row = TensorType(DType.float32, (N, 3, d)), TensorType(DType.float32, (N, 3, 1))
    x = Value("x", full)
    g = Graph("g", inputs=[x], opsets={"": 28})
    c = lambda v, dtype=np.float32: g.add_constant(f"c{len(g.constants)}", np.asarray(v, dtype))

    def add(op, *ins, t=full, **attrs):
        ins = ins[::-1] if swap and op in ("Add", "Mul") else ins
        return g.add_node(op, list(ins), [Value(f"v{len(g.nodes)}", t)], attrs).outputs[0]

    mean = lambda v: add("ReduceMean", v, c([axis], np.int64), t=row, keepdims=1)
    dev = add("Sub", x, mean(x)) if norm == "LayerNormalization" else x
    squared = add("Pow", dev, c(two)) if square == "pow" else add("Mul", dev, dev)
    root = add("Sqrt", add("Add", mean(squared), c(eps), t=row), t=row)
    y = {"div": lambda: add("Div", dev, root),
         "reciprocal": lambda: add("Mul", dev, add("Reciprocal", root, t=row)),
         "rsqrt": lambda: add("Mul", dev, add("Div", c(1.0), root, t=row))}[divide]()
    if scale is not None:
        y = add("Mul", y, c(scale))
    if bias is not None:
        y = add("Add", y, c(bias))
    g.outputs = [y]
    return g


FORMS = [(norm, square, divide) for norm in ("LayerNormalization", "RMSNormalization")
         for square in ("pow", "mul") for divide in ("div", "reciprocal", "rsqrt")]


@pytest.mark.parametrize("norm, square, divide", FORMS)
@settings(max_examples=12, deadline=None)
@given(d=st.integers(2, 6), affine=st.sampled_from(["", "scale", "bias", "scale_bias"]), swap=st.booleans(),
       eps=st.sampled_from([1e-6, 1e-5, 1e-3]), last=st.booleans(), data=st.data())
def test_norm_forms_fuse_to_one_op(norm, square, divide, d, affine, swap, eps, last, data):
    if norm == "RMSNormalization":
        affine = affine.replace("bias", "").strip("_")  # RMSNormalization has no bias
    vec = lambda: data.draw(hnp.arrays(np.float32, (d,), elements=FLOATS))
    g = _graph(norm, square, divide, d, scale=vec() if "scale" in affine else None,
               bias=vec() if "bias" in affine else None, swap=swap, eps=eps, axis=2 if last else -1)
    x = data.draw(hnp.arrays(np.float32, (2, 3, d), elements=FLOATS))
    after = check_pass(get_pass("fuse_norms"), g, {"x": x}, rtol=1e-4, atol=1e-5)
    (node,) = after.nodes
    assert node.op == norm and node.attrs["axis"] == -1 and np.isclose(node.attrs["epsilon"], eps)
    assert len(node.inputs) == (3 if "bias" in affine else 2)


@pytest.mark.parametrize("case, reason", [
    ("axes", "var_axes is [1], not the last axis"),
    ("cube", "two is 3.0, not 2"),
    ("eps_input", "epsilon is not a constant scalar"),
])
def test_non_norms_are_rejected_with_a_reason(case, reason):
    g = _graph("LayerNormalization", "pow", "div", 4, two=3.0 if case == "cube" else 2.0)
    if case == "axes":
        variance = [n for n in g.nodes if n.op == "ReduceMean"][1]
        variance.inputs[1].const = np.array([1], np.int64)
    if case == "eps_input":
        add = next(n for n in g.nodes if n.op == "Add")
        add.inputs[1] = Value("eps", TensorType(DType.float32, ()))
        g.inputs.append(add.inputs[1])
    p = get_pass("fuse_norms")
    p.run(g)
    assert "LayerNormalization" not in [n.op for n in g]
    assert ("LayerNormalization_pow_div", g.outputs[0].producer.name, reason) in p.report.rejected, p.report.rejected


def test_a_scale_that_is_not_a_vector_stays_a_mul():
    scale = np.arange(12, dtype=np.float32).reshape(3, 4)
    g = _graph("RMSNormalization", "pow", "div", 4, scale=scale)
    p = get_pass("fuse_norms")
    after = check_pass(p, g, {"x": np.linspace(-3, 3, 24, dtype=np.float32).reshape(2, 3, 4)}, rtol=1e-4, atol=1e-5)
    assert [n.op for n in after] == ["RMSNormalization", "Mul"]
    assert {r[2] for r in p.report.rejected} == {"the scale is f32[3, 4], not a vector of 4 f32"}


# -- torch exports -------------------------------------------------------------------
class ManualLayerNorm(torch.nn.Module):
    """x * x and torch.rsqrt instead of pow and division."""

    def __init__(self, d: int):
        super().__init__()
        self.weight, self.bias = torch.nn.Parameter(torch.randn(d)), torch.nn.Parameter(torch.randn(d))

    def forward(self, x):
        dev = x - x.mean(-1, keepdim=True)
        return self.weight * (dev * torch.rsqrt((dev * dev).mean(-1, keepdim=True) + 1e-6)) + self.bias


def _modules():
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    torch.manual_seed(0)
    rms = LlamaRMSNorm(16, eps=1e-6)
    layer, scale_only = torch.nn.LayerNorm(16), torch.nn.LayerNorm(16, bias=False)
    for m in (rms, layer, scale_only):
        for param in m.parameters():
            torch.nn.init.normal_(param)
    return {
        "layer_norm": (layer, 14, {"LayerNormalization": 1}),
        "layer_norm_scale_only": (scale_only, 14, {"LayerNormalization": 1}),
        "layer_norm_no_affine": (torch.nn.LayerNorm(16, elementwise_affine=False), 14, {"LayerNormalization": 1}),
        "manual_layer_norm": (ManualLayerNorm(16), 14, {"LayerNormalization": 1}),
        "llama_rms_norm": (rms, 17, {"RMSNormalization": 1}),
        "llama_rms_norm_f16": (copy.deepcopy(rms).half(), 17, {"Cast": 2, "RMSNormalization": 1, "Mul": 1}),
    }


@pytest.mark.parametrize("name", ["layer_norm", "layer_norm_scale_only", "layer_norm_no_affine",
                                  "manual_layer_norm", "llama_rms_norm", "llama_rms_norm_f16"])
def test_torch_exports_fuse_and_match_torch(name, tmp_path):
    module, opset, histogram = _modules()[name]
    half = name.endswith("f16")
    x = torch.randn(2, 5, 16, dtype=torch.float16 if half else torch.float32)
    path = tmp_path / f"{name}.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), path, dynamo=False, opset_version=opset, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b", 1: "s"}})
        want = module(x).numpy()
    compiled = ember.compile(str(path), opt_level=1, passes=[("fuse_norms", "after", "canonicalize")])
    assert compiled.stats.op_histogram == histogram
    got = compiled.run({"x": x.numpy()})["y"]
    tol = 2e-3 if half else 1e-5
    np.testing.assert_allclose(got.astype(np.float32), want.astype(np.float32), rtol=tol * 10, atol=tol)


def test_minilm_at_opset_14_gets_its_13_layer_norms_back():
    from ember import _builtin

    path = _builtin.export_minilm(opset=14)
    fused = ember.compile(str(path), opt_level=1, passes=[("fuse_norms", "after", "canonicalize")])
    assert fused.stats.op_histogram.get("LayerNormalization") == 13  # embeddings + 2 per layer
    assert not {"Pow", "Sqrt", "ReduceMean"} & set(fused.stats.op_histogram)
    feeds = _builtin.tokenize(_builtin.SAMPLE_SENTENCES[:2])
    want = ember.compile(str(path), opt_level=1).run(feeds)["last_hidden_state"]
    np.testing.assert_allclose(fused.run(feeds)["last_hidden_state"], want, rtol=1e-4, atol=1e-4)
