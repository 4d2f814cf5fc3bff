"""fuse_qkv: the query, key and value projections of an attention become one GEMM.

    ember.Attention(ember.Linear(x, Wq, bq), ember.Linear(x, Wk, bk), ember.Linear(x, Wv, bv), mask)
        -> ember.Attention(ember.Linear(x, [Wq | Wk | Wv], [bq | bk | bv]), mask)   (packed q, k, v)

The weights (and biases, when all three have one) are constants concatenated along the
output axis; the attention kernel reads q, k and v as strided slices of the one output,
so nothing is copied. One [K, 3N] GEMM instead of three [K, N] ones: fewer kernel calls
and a wider N for the GEMM's blocking (BERT-base layers at batch 1: onnxruntime's
attention fusion does the same)."""

from __future__ import annotations

import numpy as np

from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass

ATTENTION_ATTRS = ("num_heads", "kv_num_heads", "scale", "causal")


def projections_fit(m: Match, weights: tuple[str, str, str]) -> str | None:
    """Why the query, key and value projections (their weights bound to `weights`) of the
    attention of match `m` (x, num_heads, kv_num_heads bound) cannot be packed into one
    [K, 3N] weight; None where they can. (fuse_integer_matmul packs 8-bit ones the same way.)"""
    x = m["x"].type
    if x is None or x.shape is None or len(x.shape) != 3:
        return "the attention's input is not [batch, sequence, hidden]"
    arrays = [m.constant(w) for w in weights]
    if any(w is None or w.ndim != 2 for w in arrays):
        return "a projection's weight is not a constant matrix"
    if len({(w.shape[0], w.dtype) for w in arrays}) != 1:
        return "the projections' weights differ in input size or dtype"
    heads = m["num_heads"]
    n_q, n_k, n_v = (w.shape[1] for w in arrays)
    if n_k != n_v or n_q * (m["kv_num_heads"] or heads) != n_k * heads:
        return "the value heads are not as wide as the query and key heads"
    return None


def _rewrite(biased: bool, masked: bool) -> Rewrite:
    def pattern(op, x, wq, wk, wv, bq, bk, bv, mask, num_heads, kv_num_heads, scale, causal):
        def linear(w, b):
            return op("ember.Linear", x, w, *([b] if biased else []), activation="")

        inputs = [linear(wq, bq), linear(wk, bk), linear(wv, bv), *([mask] if masked else [])]
        return op("ember.Attention", *inputs, num_heads=num_heads, kv_num_heads=kv_num_heads, scale=scale,
                  causal=causal)

    def check(m: Match) -> str | None:
        reason = projections_fit(m, ("wq", "wk", "wv"))
        if reason:
            return reason
        weights = [m.constant(w) for w in ("wq", "wk", "wv")]
        if biased and any(m.constant(b) is None or m.constant(b).shape != (w.shape[1],)
                          for b, w in zip(("bq", "bk", "bv"), weights)):
            return "a projection's bias is not a constant vector"
        return None

    def replacement(op, x, wq, wk, wv, bq, bk, bv, mask, num_heads, kv_num_heads, scale, causal):
        w = op.constant(np.concatenate([wq.const, wk.const, wv.const], axis=1))
        inputs = [x, w]
        if biased:
            inputs.append(op.constant(np.concatenate([bq.const, bk.const, bv.const])))
        qkv = op("ember.Linear", *inputs, activation="")
        return op("ember.Attention", qkv, None, None, *([mask] if masked else []), num_heads=num_heads,
                  kv_num_heads=kv_num_heads, scale=scale, causal=causal)

    return Rewrite(f"qkv{'_bias' if biased else ''}{'_masked' if masked else ''}", pattern, replacement, check)


@register_pass
class FuseQKV(RewritePass):
    name = "fuse_qkv"
    rewrites = [_rewrite(biased, masked) for biased in (True, False) for masked in (True, False)]
