import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ember
from ember.ir.ops.ember_nn import attention
from ember.passes import get_pass


@settings(max_examples=60, deadline=None)
@given(b=st.integers(1, 2), sq=st.integers(1, 5), extra=st.integers(0, 3), group=st.sampled_from([1, 2]),
       kv_heads=st.integers(1, 2), d=st.sampled_from([1, 4, 8]), causal=st.booleans(),
       masked=st.booleans(), packed=st.booleans(), seed=st.integers(0, 2**16))
def test_reference_is_sdpa(b, sq, extra, group, kv_heads, d, causal, masked, packed, seed):
    """ember.Attention's numpy meaning equals torch's scaled_dot_product_attention."""
    rng = np.random.default_rng(seed)
    h, sk = kv_heads * group, sq + extra
    q = rng.standard_normal((b, h, sq, d), dtype=np.float32)
    k, v = (rng.standard_normal((b, kv_heads, sk, d), dtype=np.float32) for _ in range(2))
    bias = None
    if masked:
        keep = rng.random((b, 1, 1, sk)) < 0.7
        keep[..., -1] = True  # every row keeps a key: torch gives NaN for fully masked rows
        bias = np.where(keep, 0, -np.inf).astype(np.float32)
    t = torch.from_numpy
    want = torch.nn.functional.scaled_dot_product_attention(
        t(q), t(np.repeat(k, group, 1)), t(np.repeat(v, group, 1)), attn_mask=None if bias is None else t(bias),
        is_causal=False).numpy() if not causal else None
    if causal:  # torch aligns the causal mask to the top-left; ember (like KV caches) to the end
        visible = np.arange(sk)[None, :] <= np.arange(sq)[:, None] + (sk - sq)
        causal_bias = np.where(visible, 0, -np.inf).astype(np.float32)
        full = causal_bias if bias is None else causal_bias + bias
        want = torch.nn.functional.scaled_dot_product_attention(
            t(q), t(np.repeat(k, group, 1)), t(np.repeat(v, group, 1)), attn_mask=t(full)).numpy()
    if packed:
        pack = lambda x: x.transpose(0, 2, 1, 3).reshape(x.shape[0], x.shape[2], -1)  # noqa: E731
        got = attention(pack(q), pack(k), pack(v), bias, num_heads=h, kv_num_heads=kv_heads, causal=causal)
        want = pack(want)
    else:
        got = attention(q, k, v, bias, num_heads=h, kv_num_heads=kv_heads, causal=causal)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_fully_masked_rows_are_zero():
    q = np.ones((1, 2, 4), np.float32)
    bias = np.full((1, 1, 1, 2), -np.inf, np.float32)
    assert not np.any(attention(q, q, q, bias, num_heads=2))


def _tiny_bert(tmp_path, implementation: str, output_attentions: bool = False):
    import transformers

    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=48, max_position_embeddings=32,
                                     attn_implementation=implementation)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    ids = torch.randint(0, 64, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.int64)
    mask[1, 4:] = 0
    path = tmp_path / f"bert_{implementation}.onnx"

    class Wrapped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, ids, mask):
            out = self.model(input_ids=ids, attention_mask=mask, output_attentions=output_attentions)
            return (out.last_hidden_state, out.attentions[0]) if output_attentions else out.last_hidden_state

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Wrapped().eval(), (ids, mask), path, dynamo=False, opset_version=17,
                          input_names=["ids", "mask"], dynamic_axes={"ids": {0: "b", 1: "s"}, "mask": {0: "b", 1: "s"}})
        want = model(input_ids=ids, attention_mask=mask).last_hidden_state.numpy()
    return path, {"ids": ids.numpy(), "mask": mask.numpy()}, want


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_transformers_bert_attention_fuses(tmp_path, implementation):
    path, feeds, want = _tiny_bert(tmp_path, implementation)
    compiled = ember.compile(path)
    assert compiled.stats.op_histogram.get("ember.Attention") == 2
    assert not {"Softmax", "MatMul", "Transpose"} & set(compiled.stats.op_histogram)
    got = compiled.run(feeds)
    np.testing.assert_allclose(next(iter(got.values())), want, rtol=1e-4, atol=1e-5)


def test_probabilities_read_elsewhere_are_not_fused(tmp_path):
    """With output_attentions the softmax is also an output: fusing would compute it twice."""
    path, feeds, want = _tiny_bert(tmp_path, "eager", output_attentions=True)
    graph = ember.compile(path, opt_level=1).graph
    fuse = get_pass("fuse_attention")
    fuse.run(graph)
    assert sum(n.op == "ember.Attention" for n in graph) == 1  # layer 0's probabilities are returned
    assert any("also used outside the pattern" in reason for _, _, reason in fuse.report.rejected)


def test_minilm_attention(minilm_onnx):
    hist = ember.compile(str(minilm_onnx)).stats.op_histogram
    assert hist.get("ember.Attention") == 6 and "Softmax" not in hist
