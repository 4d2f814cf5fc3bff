"""TfIdfVectorizer: schema, type function and reference are ONNX's. The lowering reads
the n-gram pool once (which n-grams count, into which output column) and runs a torch
extern that matches every window of the input against it."""

from __future__ import annotations

from ..dtypes import DType
from ._lowering import NotLowerable, attrs, out_type, register_lowering
from .onnx_standard import standard_op

standard_op("TfIdfVectorizer")


def pool_ngrams(a: dict) -> dict[int, dict[tuple[int, ...], int]]:
    """n -> {n-gram: output column} for the sizes min_gram_length..max_gram_length, as the
    reference's trie holds them (ids numbered through every size; a repeated n-gram takes
    its last id)."""
    pool, counts = list(a["pool_int64s"]), list(a["ngram_counts"])
    grams: dict[int, dict[tuple[int, ...], int]] = {}
    ngram_id = 1
    for i, start in enumerate(counts):
        n = i + 1
        end = counts[i + 1] if i + 1 < len(counts) else len(pool)
        for k in range(max(end - start, 0) // n):
            if a["min_gram_length"] <= n <= a["max_gram_length"]:
                gram = tuple(int(t) for t in pool[start + k * n:start + (k + 1) * n])
                grams.setdefault(n, {})[gram] = int(a["ngram_indexes"][ngram_id - 1])
            ngram_id += 1
    return grams


@register_lowering("TfIdfVectorizer")
def _lower_tfidf(ctx, node, ins):
    (x,) = ins
    a = attrs(node)
    if not a["pool_int64s"] or x.dtype not in (DType.int32, DType.int64) or len(x.shape) > 2:
        raise NotLowerable("a string pool, or input not [C] or [B, C] integers")
    grams = pool_ngrams(a)
    return ctx.extern("tfidf", [x], [out_type(node)], grams={n: list(g.items()) for n, g in grams.items()},
                      min_n=a["min_gram_length"], max_n=a["max_gram_length"], max_skip=a["max_skip_count"],
                      mode=a["mode"], weights=[float(w) for w in (a["weights"] or [])])
