"""Each ember op, exported with standard ops only, runs in onnxruntime to what its
reference implementation computes (random shapes, attributes and inputs); exported as
itself, it comes back through ember's frontend unchanged."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.errors import UnsupportedError
from ember.export import export_onnx
from ember.export._decompose import DECOMPOSITIONS, NOT_DECOMPOSABLE
from ember.ir import DType, Graph, OpDef, ParamSpec, Value, register_op, registered_ops, verify
from ember.ir.shape_inference import infer_types
from ember.ir.types import TensorType, symbol
from tests.export._check import check_round_trip, check_standard_export

pytest.importorskip("onnxruntime")

SETTINGS = settings(max_examples=25, deadline=None)


def single_node(op: str, inputs: list[tuple[str, np.ndarray | None]], attrs: dict | None = None, *,
                constants: tuple[str, ...] = (), num_outputs: int = 1, returned: tuple[int, ...] | None = None):
    """A graph of one `op` node: inputs named in `constants` are constants, the others graph
    inputs (None: absent); returns (graph, feeds)."""
    g = Graph("g", opsets={"": 28})
    feeds, args = {}, []
    for name, data in inputs:
        if data is None:
            args.append(None)
        elif name in constants:
            args.append(g.add_constant(name, data))
        else:
            value = Value(name, TensorType(DType.from_numpy(data.dtype), data.shape))
            g.inputs.append(value)
            args.append(value)
            feeds[name] = data
    while args and args[-1] is None:
        args.pop()
    node = g.add_node(op, args, [Value(f"out{i}") for i in range(num_outputs)], attrs or {}, name="node")
    g.outputs = [node.outputs[i] for i in (returned if returned is not None else range(num_outputs))]
    infer_types(g)
    verify(g)
    return g, feeds


def _normal(rng, shape, dtype=np.float32, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def check(g, feeds, atol=1e-4, rtol=0.0):
    check_round_trip(g, feeds)
    return check_standard_export(g, feeds, atol=atol, rtol=rtol)


def test_every_ember_op_has_a_decomposition_or_a_reason():
    ember_ops = {op for op in registered_ops() if op.startswith("ember.")}
    assert ember_ops <= set(DECOMPOSITIONS) | set(NOT_DECOMPOSABLE), ember_ops - set(DECOMPOSITIONS)


# -- ember.Linear -----------------------------------------------------------------------
@SETTINGS
@given(batch=st.lists(st.integers(1, 3), max_size=2), k=st.integers(1, 16), n=st.integers(1, 16),
       biased=st.booleans(), activation=st.sampled_from(["", "relu", "gelu", "gelu_tanh", "silu", "hardswish"]),
       seed=st.integers(0, 2**16))
def test_linear(batch, k, n, biased, activation, seed):
    rng = np.random.default_rng(seed)
    g, feeds = single_node("ember.Linear", [("x", _normal(rng, (*batch, k))), ("w", _normal(rng, (k, n))),
                                            ("bias", _normal(rng, n) if biased else None)],
                           {"activation": activation}, constants=("w", "bias"))
    check(g, feeds)


# -- ember.QuantizedLinear ---------------------------------------------------------------
@SETTINGS
@given(fmt=st.sampled_from(["q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]), rows=st.integers(1, 3),
       blocks=st.integers(1, 3), n=st.integers(1, 9), biased=st.booleans(),
       activation=st.sampled_from(["", "relu", "silu"]), seed=st.integers(0, 2**16))
def test_quantized_linear(fmt, rows, blocks, n, biased, activation, seed):
    from ember.ir.quant_formats import FORMATS

    rng = np.random.default_rng(seed)
    k = 32 * blocks
    w = FORMATS[fmt].quantize(_normal(rng, (n, k)))
    g, feeds = single_node("ember.QuantizedLinear", [("x", _normal(rng, (rows, k))), ("w", w),
                                                     ("bias", _normal(rng, n) if biased else None)],
                           {"format": fmt, "activation": activation}, constants=("w", "bias"))
    check(g, feeds)


# -- ember.Attention --------------------------------------------------------------------
def _attention_case(rng, layout, heads, groups, d, sq, sk, bias_kind, causal, scale, dtype, batch=2):
    kv_heads = heads // groups
    if layout == "qkv":
        sk = sq
    q_heads = {"packed": (batch, sq, heads * d), "heads": (batch, heads, sq, d),
               "qkv": (batch, sq, (heads + 2 * kv_heads) * d)}[layout]
    inputs = [("q", _normal(rng, q_heads, dtype))]
    if layout == "packed":
        inputs += [("k", _normal(rng, (batch, sk, kv_heads * d), dtype)), ("v", _normal(rng, (batch, sk, kv_heads * d), dtype))]
    elif layout == "heads":
        inputs += [("k", _normal(rng, (batch, kv_heads, sk, d), dtype)), ("v", _normal(rng, (batch, kv_heads, sk, d), dtype))]
    else:
        inputs += [("k", None), ("v", None)]
    if bias_kind is not None:
        shape = {"key_mask": (batch, 1, 1, sk), "full": (batch, heads, sq, sk)}[bias_kind]
        bias = _normal(rng, shape, dtype)
        bias[rng.random(shape) < 0.3] = -np.inf  # masked keys; some rows wholly masked
        if bias_kind == "full":
            bias[0, 0, 0, :] = -np.inf
        inputs.append(("bias", bias))
    attrs = {"num_heads": heads, "kv_num_heads": kv_heads if groups > 1 else 0, "scale": scale, "causal": int(causal)}
    return single_node("ember.Attention", inputs, attrs)


@SETTINGS
@given(layout=st.sampled_from(["packed", "heads", "qkv"]), heads=st.sampled_from([1, 2, 4]),
       groups=st.sampled_from([1, 2]), d=st.sampled_from([1, 4, 8]), sq=st.integers(1, 6), sk=st.integers(1, 6),
       bias_kind=st.sampled_from([None, "key_mask", "full"]), causal=st.booleans(),
       scale=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 2**16))
def test_attention(layout, heads, groups, d, sq, sk, bias_kind, causal, scale, seed):
    groups = min(groups, heads)
    g, feeds = _attention_case(np.random.default_rng(seed), layout, heads, groups, d, sq, sk, bias_kind, causal,
                               scale, np.float32)
    check(g, feeds)


@pytest.mark.parametrize("layout", ["packed", "heads", "qkv"])
def test_attention_in_float16_computes_in_float32(layout):
    g, feeds = _attention_case(np.random.default_rng(0), layout, 4, 2, 8, 5, 5, "key_mask", True, 0.0, np.float16)
    model = export_onnx(g, standard_ops_only=True)
    assert sum(n.op_type == "Cast" for n in model.graph.node) >= 2
    check(g, feeds, atol=1e-3)  # float16's resolution at 1 is 1e-3


def test_attention_with_symbolic_sizes():
    """Batch and sequence unknown until run time; the head size (for the default scale)
    static, as fuse_attention leaves it."""
    batch, seq = symbol("batch"), symbol("seq")
    g = Graph("g", opsets={"": 28})
    q = Value("q", TensorType(DType.float32, (batch, seq, 24)))
    mask = Value("mask", TensorType(DType.float32, (batch, 1, 1, seq)))
    g.inputs = [q, mask]
    g.outputs = g.add_node("ember.Attention", [q, None, None, mask], [Value("y")], {"num_heads": 2, "causal": 1}).outputs
    infer_types(g)
    assert str(g.outputs[0].type) == "f32[batch, seq, 8]"
    model = export_onnx(g, standard_ops_only=True)
    dims = [d.dim_param or d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "seq", 8]
    rng = np.random.default_rng(1)
    for b, s in ((1, 3), (3, 7)):
        feeds = {"q": _normal(rng, (b, s, 24)), "mask": np.where(rng.random((b, 1, 1, s)) < 0.2, -np.inf, 0).astype(np.float32)}
        check(g, feeds)


def test_attention_with_a_symbolic_head_size_computes_its_scale():
    g = Graph("g", opsets={"": 28})
    d = symbol("d")
    q, k, v = (Value(n, TensorType(DType.float32, (1, 2, 3, d))) for n in "qkv")
    g.inputs = [q, k, v]
    g.outputs = g.add_node("ember.Attention", [q, k, v], [Value("y")], {"num_heads": 2}).outputs
    infer_types(g)
    rng = np.random.default_rng(2)
    check(g, {n: _normal(rng, (1, 2, 3, 5)) for n in "qkv"})


# -- ember.SkipLayerNorm ----------------------------------------------------------------
@SETTINGS
@given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=3), width=st.integers(1, 32), with_beta=st.booleans(),
       returned=st.sampled_from([(0,), (0, 1), (1,)]), epsilon=st.sampled_from([1e-5, 1e-12, 0.1]),
       seed=st.integers(0, 2**16))
def test_skip_layernorm(shape, width, with_beta, returned, epsilon, seed):
    rng = np.random.default_rng(seed)
    x = (*shape, width)
    g, feeds = single_node("ember.SkipLayerNorm",
                           [("x", _normal(rng, x)), ("skip", _normal(rng, x)), ("gamma", _normal(rng, width)),
                            ("beta", _normal(rng, width) if with_beta else None)],
                           {"epsilon": epsilon}, constants=("gamma", "beta"), num_outputs=2, returned=returned)
    check(g, feeds)


def test_skip_layernorm_without_its_sum_leaves_the_output_out():
    rng = np.random.default_rng(0)
    g, _ = single_node("ember.SkipLayerNorm", [("x", _normal(rng, (2, 4))), ("skip", _normal(rng, (2, 4))),
                                               ("gamma", _normal(rng, 4))], num_outputs=2, returned=(0,))
    (node,) = export_onnx(g).graph.node
    assert list(node.output) == ["out0"]


# -- ember.SwiGLU, ember.RotaryEmbedding, Swish -------------------------------------------
@SETTINGS
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), broadcast_up=st.booleans(), seed=st.integers(0, 2**16))
def test_swiglu(shape, broadcast_up, seed):
    rng = np.random.default_rng(seed)
    up = (1, *shape[1:]) if broadcast_up else shape
    g, feeds = single_node("ember.SwiGLU", [("gate", _normal(rng, shape, scale=4)), ("up", _normal(rng, up))])
    check(g, feeds)


@SETTINGS
@given(batch=st.integers(1, 2), seq=st.integers(1, 5), heads=st.integers(1, 3), d=st.integers(1, 8),
       cos_dtype=st.sampled_from([np.float32, np.float16]), seed=st.integers(0, 2**16))
def test_rotary_embedding(batch, seq, heads, d, cos_dtype, seed):
    rng = np.random.default_rng(seed)
    angles = rng.random((seq, 1, d)) * 6
    g, feeds = single_node("ember.RotaryEmbedding", [("x", _normal(rng, (batch, seq, heads, d))),
                                                     ("cos", np.cos(angles).astype(cos_dtype)),
                                                     ("sin", np.sin(angles).astype(cos_dtype))])
    check(g, feeds)


@pytest.mark.parametrize("alpha", [1.0, 0.5])
def test_swish_which_onnxruntime_lacks_becomes_sigmoid_times_x(alpha):
    rng = np.random.default_rng(0)
    g, feeds = single_node("Swish", [("x", _normal(rng, (3, 5), scale=4))], {"alpha": alpha})
    assert {n.op_type for n in export_onnx(g, standard_ops_only=True).graph.node} <= {"Mul", "Sigmoid"}
    check(g, feeds)


# -- ember.Conv, ember.MaxPool ------------------------------------------------------------
@SETTINGS
@given(spatial=st.sampled_from([1, 2]), channels_last=st.booleans(), group=st.sampled_from([1, 2]),
       kernel=st.integers(1, 3), stride=st.integers(1, 2), pad=st.integers(0, 1), dilation=st.integers(1, 2),
       biased=st.booleans(), residual=st.booleans(),
       activation=st.sampled_from(["", "relu", "gelu", "silu", "hardswish"]), seed=st.integers(0, 2**16))
def test_conv(spatial, channels_last, group, kernel, stride, pad, dilation, biased, residual, activation, seed):
    rng = np.random.default_rng(seed)
    c_in, c_out, size = 2 * group, 3 * group, 7
    x = _normal(rng, (2, c_in, *[size] * spatial))
    w = _normal(rng, (c_out, c_in // group, *[kernel] * spatial))
    attrs = {"group": group, "kernel_shape": [kernel] * spatial, "strides": [stride] * spatial,
             "pads": [pad] * 2 * spatial, "dilations": [dilation] * spatial, "activation": activation,
             "channels_last": int(channels_last)}
    out = (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    y = (2, c_out, *[out] * spatial)
    if channels_last:
        x, y = np.moveaxis(x, 1, -1).copy(), (y[0], *y[2:], y[1])
    g, feeds = single_node("ember.Conv", [("x", x), ("w", w), ("bias", _normal(rng, c_out) if biased else None),
                                          ("sum", _normal(rng, y) if residual else None)],
                           attrs, constants=("w", "bias"))
    if not biased and residual:  # the residual without a bias: a hole in the inputs
        assert g.nodes[0].inputs[2] is None
    check(g, feeds)


@pytest.mark.parametrize("attrs", [{"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]},
                                   {"kernel_shape": [2, 2], "ceil_mode": 1, "strides": [2, 2]},
                                   {"kernel_shape": [3], "dilations": [2]}])
def test_max_pool_channels_last(attrs):
    rng = np.random.default_rng(0)
    spatial = len(attrs["kernel_shape"])
    g, feeds = single_node("ember.MaxPool", [("x", _normal(rng, (2, *[9] * spatial, 3)))],
                           {**attrs, "channels_last": 1})
    check(g, feeds)


# -- what has no decomposition ------------------------------------------------------------
def test_paged_attention_has_no_standard_form():
    g = Graph("g", opsets={"": 28})
    f32, i32 = DType.float32, DType.int32
    ins = [Value("q", TensorType(f32, (5, 8))), Value("k", TensorType(f32, (5, 8))), Value("v", TensorType(f32, (5, 8))),
           Value("k_cache", TensorType(f32, (4, 16, 2, 4))), Value("v_cache", TensorType(f32, (4, 16, 2, 4))),
           Value("slot_mapping", TensorType(i32, (5,))), Value("block_tables", TensorType(i32, (1, 4))),
           Value("query_start_loc", TensorType(i32, (2,))), Value("seq_lens", TensorType(i32, (1,)))]
    g.inputs = ins
    g.outputs = g.add_node("ember.PagedAttention", ins, [Value("y")], {"num_heads": 2}, name="attn_0").outputs
    infer_types(g)
    with pytest.raises(UnsupportedError, match=r"'attn_0' \(op ember.PagedAttention\).*KV cache"):
        export_onnx(g, standard_ops_only=True)
    model = export_onnx(g)  # as itself it exports
    assert model.graph.node[0].domain == "ember" and model.graph.node[0].op_type == "PagedAttention"


def test_a_third_party_op_keeps_its_domain_and_is_not_standard():
    register_op(OpDef("acme.Double", inputs=(ParamSpec("x"),), outputs=(ParamSpec("y"),),
                      reference=lambda node: lambda x: (2 * x,), infer=lambda node, ins: [ins[0]]), replace=True)
    g, feeds = single_node("acme.Double", [("x", np.ones((2, 3), np.float32))])
    model = export_onnx(g)
    assert ("acme", 1) in [(o.domain, o.version) for o in model.opset_import]
    assert (model.graph.node[0].domain, model.graph.node[0].op_type) == ("acme", "Double")
    check_round_trip(g, feeds)
    with pytest.raises(UnsupportedError, match=r"\(op acme.Double\): cannot export with standard_ops_only"):
        export_onnx(g, standard_ops_only=True)


def test_builder_names_results_as_the_node_outputs():
    from ember.export._decompose import Builder
    from ember.export.onnx import _Names

    g, _ = single_node("Relu", [("x", np.ones(2, np.float32))])
    b = Builder(_Names(), g.nodes[0])
    y = b.Relu(b.Neg("x"))
    b.rename(y, "out0")    # built here: its node now writes out0
    b.rename(y, "out1")    # the same value again: a copy
    b.rename("x", "out2")  # an input passed through: a copy
    assert [(n.op_type, list(n.input), list(n.output)) for n in b.nodes] == [
        ("Neg", ["x"], [b.nodes[0].output[0]]), ("Relu", [b.nodes[0].output[0]], ["out0"]),
        ("Identity", ["out0"], ["out1"]), ("Identity", ["x"], ["out2"])]
