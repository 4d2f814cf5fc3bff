"""BERT-class encoders built straight into ember's IR, over packed rows (#25).

An embedding batch of mixed lengths padded to its longest row pays for the padding in every
linear layer and attention; packed, it pays for its real tokens. The graph takes the batch's
rows one after another:

    input_ids       int64 [1, T]   every row's tokens, row after row
    token_type_ids  int64 [1, T]   (where the model has token types)
    positions       int64 [1, T]   each token's position in its row (+ RoBERTa's offset: POSITION_OFFSET)
    starts          int64 [n + 1]  row b is tokens starts[b] to starts[b + 1]

and gives last_hidden_state [1, T, hidden] (an embedding model's, pooled by the caller row by
row), or a sequence classifier's logits [1, n, labels] from each row's first token. Each
attention is one `ember.Attention` with `starts`: a row attends to its own tokens only, with
no mask. The layers are ember's fused ops from the start (the QKV projections as one linear
layer, the residual in each SkipLayerNorm, the GELU in its linear layer), as the fusion
passes leave an exported BERT.

BERT and the RoBERTa family (roberta, xlm-roberta, camembert: positions offset past the
padding index) with absolute positions are built here; `unsupported` says why another
model is not (the caller exports it to ONNX instead and pads its rows)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...errors import ModelError
from ...ir.dtypes import DType
from ...ir.graph import Graph
from ...ir.types import symbol
from ._builder import GraphBuilder
from .weights import SafetensorsWeights

FAMILIES = {"bert": "bert", "roberta": "roberta", "xlm-roberta": "roberta", "camembert": "roberta"}
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "relu": "relu"}
PACKED_INPUTS = ("input_ids", "token_type_ids", "positions", "starts")


def _config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise ModelError(f"{folder / 'config.json'}: {type(e).__name__}: {e}") from None


def unsupported(folder: Path, task: str) -> str | None:
    """Why the transformer in `folder` cannot be built over packed rows here, or None if it can."""
    if not (folder / "model.safetensors").is_file() and not (folder / "model.safetensors.index.json").is_file():
        return "its weights are not in safetensors files"
    c = _config(folder)
    kind = c.get("model_type")
    if kind not in FAMILIES:
        return f"model_type {kind!r} is not one of {', '.join(FAMILIES)}"
    if c.get("hidden_act", "gelu") not in ACTIVATIONS:
        return f"hidden_act {c.get('hidden_act')!r}"
    if c.get("position_embedding_type", "absolute") != "absolute":
        return f"position_embedding_type {c.get('position_embedding_type')!r} (only absolute)"
    if c.get("is_decoder") or c.get("add_cross_attention"):
        return "a decoder"
    if c.get("hidden_size", 0) % max(1, c.get("num_attention_heads", 0)):
        return "hidden_size not a multiple of num_attention_heads"
    if task == "score" and not any(a.endswith("ForSequenceClassification") for a in c.get("architectures") or []):
        return "a cross-encoder that is not a *ForSequenceClassification model"
    return None


def position_offset(folder: Path) -> int:
    """What a row's first token's position is: 0 for BERT, padding index + 1 for RoBERTa."""
    c = _config(folder)
    return c.get("pad_token_id", 1) + 1 if FAMILIES.get(c.get("model_type")) == "roberta" else 0


def max_positions(folder: Path) -> int:
    """The most tokens a row may hold: the position table's rows past the offset."""
    return int(_config(folder).get("max_position_embeddings", 512)) - position_offset(folder)


def build_packed_encoder(folder: Path, task: str = "embed") -> Graph:
    """The transformer in `folder` (config.json + safetensors) over packed rows (see the
    module's notes): `task` "embed" gives last_hidden_state, "score" a sequence classifier's
    logits. ModelError where the folder's weights do not fit its config."""
    if (why := unsupported(folder, task)) is not None:
        raise ModelError(f"{folder}: not built over packed rows: {why}")
    c = _config(folder)
    family = FAMILIES[c["model_type"]]
    hidden, heads, layers = c["hidden_size"], c["num_attention_heads"], c["num_hidden_layers"]
    inner, eps = c["intermediate_size"], float(c.get("layer_norm_eps", 1e-12))
    activation = ACTIVATIONS[c.get("hidden_act", "gelu")]
    weights = SafetensorsWeights(folder, progress=False)
    prefix = next((p for p in ("", "bert.", "roberta.", f"{c['model_type']}.")
                   if f"{p}embeddings.word_embeddings.weight" in weights), None)
    if prefix is None:
        raise ModelError(f"{folder}: no embeddings.word_embeddings.weight among its tensors")
    types = c.get("type_vocab_size", 0) > 0 and f"{prefix}embeddings.token_type_embeddings.weight" in weights

    g = GraphBuilder(f"{c['model_type']}_packed")
    rows = (1, symbol("num_tokens"))
    ids = g.input("input_ids", DType.int64, rows)
    type_ids = g.input("token_type_ids", DType.int64, rows) if types else None
    positions = g.input("positions", DType.int64, rows)
    starts = g.input("starts", DType.int64, (symbol("num_starts"),))
    def tensor(name, shape):
        return weights.take(prefix + name, shape)

    def const(name, shape):
        return g.const(prefix + name, tensor(name, shape))

    def linear(x, name, n_in, n_out, act=""):  # (name: the tensors' whole name)
        w = np.ascontiguousarray(weights.take(name + ".weight", (n_out, n_in)).T)
        return g("ember.Linear", x, g.const(name + ".weight", w), g.const(name + ".bias", weights.take(
            name + ".bias", (n_out,))), activation=act)

    e = "embeddings."
    h = g("Add", g("Gather", const(e + "word_embeddings.weight", (c["vocab_size"], hidden)), ids, axis=0),
          g("Gather", const(e + "position_embeddings.weight", (c["max_position_embeddings"], hidden)), positions,
            axis=0))
    if types:
        h = g("Add", h, g("Gather", const(e + "token_type_embeddings.weight", (c["type_vocab_size"], hidden)),
                          type_ids, axis=0))
    h = g("LayerNormalization", h, const(e + "LayerNorm.weight", (hidden,)), const(e + "LayerNorm.bias", (hidden,)),
          axis=-1, epsilon=eps)
    for i in range(layers):
        p = f"encoder.layer.{i}."
        s = p + "attention.self."
        qkv_w = np.concatenate([tensor(s + n + ".weight", (hidden, hidden)).T for n in ("query", "key", "value")], 1)
        qkv_b = np.concatenate([tensor(s + n + ".bias", (hidden,)) for n in ("query", "key", "value")])
        qkv = g("ember.Linear", h, g.const(prefix + s + "qkv.weight", np.ascontiguousarray(qkv_w)),
                g.const(prefix + s + "qkv.bias", qkv_b))
        attn = g("ember.Attention", qkv, None, None, None, starts, num_heads=heads)
        o = linear(attn, prefix + p + "attention.output.dense", hidden, hidden)
        h = g("ember.SkipLayerNorm", o, h, const(p + "attention.output.LayerNorm.weight", (hidden,)),
              const(p + "attention.output.LayerNorm.bias", (hidden,)), epsilon=eps)
        f = linear(h, prefix + p + "intermediate.dense", hidden, inner, activation)
        o = linear(f, prefix + p + "output.dense", inner, hidden)
        h = g("ember.SkipLayerNorm", o, h, const(p + "output.LayerNorm.weight", (hidden,)),
              const(p + "output.LayerNorm.bias", (hidden,)), epsilon=eps)
    if task != "score":
        out = g("Identity", h, name="last_hidden_state")
    else:  # each row's first token through the classifier head
        labels = c.get("num_labels") or len(c.get("id2label") or {}) or 2
        first = g("Gather", h, g("Slice", starts, g.ints([0]), g.ints([-1]), g.ints([0])), axis=1)
        if family == "bert":
            pooled = g("Tanh", linear(first, prefix + "pooler.dense", hidden, hidden))
            out = linear(pooled, "classifier", hidden, labels)
        else:
            pooled = g("Tanh", linear(first, "classifier.dense", hidden, hidden))
            out = linear(pooled, "classifier.out_proj", hidden, labels)
        out = g("Identity", out, name="logits")
    return g.finish([out])


def packed_feeds(rows: list[tuple[list[int], list[int] | None]], offset: int, types: bool) -> dict[str, np.ndarray]:
    """The graph's inputs for `rows` (token ids, token types or None) packed one after another."""
    lengths = np.fromiter((len(ids) for ids, _ in rows), np.int64, len(rows))
    starts = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(lengths, out=starts[1:])
    total = int(starts[-1])
    ids = np.fromiter((t for r, _ in rows for t in r), np.int64, total)
    # position within the row: the token's index less its row's start
    positions = np.arange(total, dtype=np.int64) - np.repeat(starts[:-1], lengths) + offset
    feeds = {"input_ids": ids[None], "positions": positions[None], "starts": starts}
    if types:
        feeds["token_type_ids"] = np.fromiter((t for r, ty in rows for t in (ty if ty is not None else [0] * len(r))),
                                              np.int64, total)[None]
    return feeds
