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
INT64_MAX = np.iinfo(np.int64).max
FLOATS = st.floats(-4, 4, width=32)


def _graph(d: int, cos_shape, *, split=None, hi_end=INT64_MAX, negative_start=False, steps=True,
           last_axis=-1, swap=False) -> Graph:
    """x: [n, 2, d];  x * cos + Concat(-x[..., split:], x[..., :split]) * sin."""
    split = d // 2 if split is None else split
    full = TensorType(DType.float32, (N, 2, d))
    x = Value("x", full)
    cos, sin = (Value(name, TensorType(DType.float32, cos_shape)) for name in ("cos", "sin"))
    g = Graph("g", inputs=[x, cos, sin], opsets={"": 28})
    c = lambda v: g.add_constant(f"c{len(g.constants)}", np.array([v], np.int64))

    def add(op, *ins, t=full, **attrs):
        ins = ins[::-1] if swap and op in ("Add", "Mul") else ins
        return g.add_node(op, list(ins), [Value(f"v{len(g.nodes)}", t)], attrs).outputs[0]

    def part(start, end, width):
        ins = [x, c(start), c(end), c(last_axis)] + ([c(1)] if steps else [])
        return add("Slice", *ins, t=TensorType(DType.float32, (N, 2, width)))

    upper = part(split - d if negative_start else split, hi_end, d - split)
    rotated = add("Concat", add("Neg", upper, t=upper.type), part(0, split, split), axis=last_axis)
    g.outputs = [add("Add", add("Mul", x, cos), add("Mul", rotated, sin))]
    return g


@settings(max_examples=40, deadline=None)
@given(d=st.sampled_from([2, 4, 6, 8]), cos_rank=st.integers(1, 3), hi_end=st.sampled_from(["d", "big", "max"]),
       negative_start=st.booleans(), steps=st.booleans(), last_axis=st.sampled_from([-1, 2]), swap=st.booleans(),
       data=st.data())
def test_rotate_half_forms_fuse(d, cos_rank, hi_end, negative_start, steps, last_axis, swap, data):
    cos_shape = ((N, 1, d), (2, d), (d,))[3 - cos_rank]
    end = {"d": d, "big": 1 << 40, "max": INT64_MAX}[hi_end]
    g = _graph(d, cos_shape, hi_end=end, negative_start=negative_start, steps=steps, last_axis=last_axis, swap=swap)
    concrete = tuple(3 if s == N else s for s in cos_shape)
    feeds = {"x": data.draw(hnp.arrays(np.float32, (3, 2, d), elements=FLOATS)),
             "cos": data.draw(hnp.arrays(np.float32, concrete, elements=FLOATS)),
             "sin": data.draw(hnp.arrays(np.float32, concrete, elements=FLOATS))}
    after = check_pass(get_pass("fuse_rotary"), g, feeds, rtol=1e-6, atol=0)
    (node,) = after.nodes
    assert node.op == "ember.RotaryEmbedding" and [v.name for v in node.inputs] == ["x", "cos", "sin"]


@pytest.mark.parametrize("kwargs, reason", [
    ({"split": 3}, "the halves are [0:3] and [3:8] of 8, not split at 4"),
    ({"hi_end": 7}, "the halves are [0:4] and [4:7] of 8, not split at 4"),
    ({"cos_shape": (N, 1, 1)}, "cos is f32[n, 1, 1], not broadcastable to x with a last dim of 8"),
])
def test_other_rotations_are_rejected_with_a_reason(kwargs, reason):
    cos_shape = kwargs.pop("cos_shape", (N, 1, 8))
    g = _graph(8, cos_shape, **kwargs)
    p = get_pass("fuse_rotary")
    p.run(g)
    assert "ember.RotaryEmbedding" not in [n.op for n in g]
    assert ("rotate_half_steps", g.outputs[0].producer.name, reason) in p.report.rejected, p.report.rejected


class Rotary(torch.nn.Module):
    """transformers' apply_rotary_pos_emb on q and k, cos/sin given or from LlamaRotaryEmbedding."""

    def __init__(self, computed: bool):
        super().__init__()
        from transformers.models.llama import modeling_llama as llama

        config = llama.LlamaConfig(hidden_size=32, num_attention_heads=2, num_key_value_heads=2)
        self.rotary = llama.LlamaRotaryEmbedding(config) if computed else None

    def forward(self, q, k, cos_or_positions, sin=None):
        from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

        cos, sin = self.rotary(q, cos_or_positions) if sin is None else (cos_or_positions, sin)
        return apply_rotary_pos_emb(q, k, cos, sin)


@pytest.mark.parametrize("computed", [False, True], ids=["cos_sin_inputs", "llama_rotary_embedding"])
def test_transformers_rotary_fuses_and_matches_torch(computed, tmp_path):
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 5, 16), torch.randn(2, 2, 5, 16)
    extra = (torch.arange(5).repeat(2, 1),) if computed else (torch.randn(2, 5, 16), torch.randn(2, 5, 16))
    names = ["q", "k", *(["positions"] if computed else ["cos", "sin"])]
    axes = {"q": {0: "b", 2: "s"}, "k": {0: "b", 2: "s"}, **{name: {0: "b", 1: "s"} for name in names[2:]}}
    module, path = Rotary(computed), tmp_path / "rotary.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (q, k, *extra), path, dynamo=False, opset_version=17, input_names=names,
                          output_names=["q_out", "k_out"], dynamic_axes=axes)
        want = [t.numpy() for t in module(q, k, *extra)]
    compiled = ember.compile(str(path), opt_level=1, passes=[("fuse_rotary", "after", "canonicalize")])
    hist = compiled.stats.op_histogram
    assert hist["ember.RotaryEmbedding"] == 2 and "Slice" not in hist and "Neg" not in hist
    got = compiled.run(dict(zip(names, (t.numpy() for t in (q, k, *extra)))))
    for name, expected in zip(["q_out", "k_out"], want):
        np.testing.assert_allclose(got[name], expected, rtol=1e-4, atol=1e-5)
