"""fuse_qkv: three projections of one input feeding an attention become one GEMM whose
output the attention reads packed; outputs unchanged (reference before and after, and
the compiled kernels), and what it must leave alone."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
from ember.ir import DType, Graph, TensorType, Value
from ember.passes import get_pass
from ember.testing import check_pass


def _graph(rng, hidden, heads, kv_heads, d, biased, masked, batch=2, seq=5, q_read_again=False) -> Graph:
    f32 = DType.float32
    x = Value("x", TensorType(f32, (batch, seq, hidden)))
    inputs = [x]
    if masked:
        inputs.append(Value("mask", TensorType(f32, (batch, 1, 1, seq))))
    g = Graph("g", inputs=inputs, opsets={"": 28})
    projections = []
    for name, width in (("q", heads * d), ("k", kv_heads * d), ("v", kv_heads * d)):
        ins = [x, g.add_constant(f"w{name}", rng.standard_normal((hidden, width)).astype(np.float32))]
        if biased:
            ins.append(g.add_constant(f"b{name}", rng.standard_normal(width).astype(np.float32)))
        projections.append(g.add_node("ember.Linear", ins, [Value(name, TensorType(f32, (batch, seq, width)))],
                                      name=f"proj_{name}").outputs[0])
    ins = projections + ([inputs[1]] if masked else [])
    y = g.add_node("ember.Attention", ins, [Value("y", TensorType(f32, (batch, seq, heads * d)))],
                   {"num_heads": heads, "kv_num_heads": kv_heads}, name="attention").outputs[0]
    g.outputs = [y]
    if q_read_again:
        g.outputs.append(g.add_node("Neg", [projections[0]], [Value("q_neg", projections[0].type)],
                                    name="again").outputs[0])
    return g


def _feeds(rng, g):
    return {v.name: rng.standard_normal(v.type.shape).astype(np.float32) for v in g.inputs}


@settings(max_examples=20, deadline=None)
@given(heads=st.sampled_from([1, 2, 4]), group=st.sampled_from([1, 2]), d=st.sampled_from([2, 4]),
       hidden=st.integers(1, 8), biased=st.booleans(), masked=st.booleans(), seed=st.integers(0, 2**16))
def test_projections_become_one_linear_with_the_same_outputs(heads, group, d, hidden, biased, masked, seed):
    rng = np.random.default_rng(seed)
    kv_heads = max(heads // group, 1)
    g = _graph(rng, hidden, heads, kv_heads, d, biased, masked)
    feeds = _feeds(rng, g)
    after = check_pass(get_pass("fuse_qkv"), g, feeds, rtol=1e-5, atol=1e-5)
    ops = [n.op for n in after]
    assert ops == ["ember.Linear", "ember.Attention"], ops
    attention = after.nodes[-1]
    assert attention.inputs[1] is None and attention.inputs[2] is None
    compiled = ember.compile(after, opt_level=0)  # the extern kernel on the packed tensor
    assert compiled.stats.fallback_nodes == []
    want = ember.compile(_graph(np.random.default_rng(seed), hidden, heads, kv_heads, d, biased, masked),
                         opt_level=0, codegen=False).run(feeds)["y"]
    np.testing.assert_allclose(compiled.run(feeds)["y"], want, rtol=1e-4, atol=1e-5)


def test_a_projection_read_elsewhere_is_left_alone():
    rng = np.random.default_rng(0)
    fuse = get_pass("fuse_qkv")
    g = _graph(rng, 4, 2, 2, 2, True, False, q_read_again=True)
    fuse.run(g)
    assert [n.op for n in g].count("ember.Linear") == 3


@pytest.mark.parametrize("biased", [True, False])
def test_one_biased_projection_among_unbiased_is_left_alone(biased):
    rng = np.random.default_rng(1)
    g = _graph(rng, 4, 2, 2, 2, biased, True)
    if not biased:  # give only q a bias: neither rewrite's pattern matches
        q = next(n for n in g.nodes if n.name == "proj_q")
        q.inputs = [*q.inputs, g.add_constant("bq", np.ones(4, np.float32))]
    get_pass("fuse_qkv").run(g)
    assert [n.op for n in g].count("ember.Linear") == (1 if biased else 3)
