"""The forward graph of a Llama-style decoder (pre-norm RMSNorm blocks, rotary
attention over a paged KV cache, SwiGLU MLP), over a flattened batch of tokens.

Inputs (T new tokens of B sequences; N positions whose logits are wanted):

    input_ids [T], positions [T], slot_mapping [T]          int64
    block_tables [B, max_blocks], query_start_loc [B+1], seq_lens [B], logit_indices [N]   int64
    k_cache_{i}, v_cache_{i} [num_blocks, block_size, Hkv, D]   per layer, the model's dtype (or
                                                            ForwardOptions.kv_cache_dtype), written
                                                            in place (see ember.PagedAttention)

Output: logits [N, vocab] of the tokens at logit_indices (rows of the flattened batch).

Weights keep Hugging Face's names (`model.layers.0.self_attn.q_proj.weight`); a linear
layer's [out, in] weight becomes ember.Linear's [in, out] (a transposed view).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ModelError
from ...ir.dtypes import DType
from ...ir.graph import Graph, Value
from ...ir.ops.paged_attention import row_extra
from ...ir.types import symbol
from ...ir.forward import FEEDS  # noqa: F401 - re-exported: the graph's per-step inputs, then the caches
from ._builder import GraphBuilder
from .config import ModelConfig
from .rope import cos_sin_tables
from .weights import Weights



@dataclass(frozen=True)
class ForwardOptions:
    block_size: int = 16              # tokens per KV-cache block
    max_model_len: int | None = None  # longest sequence (positions with rotary tables); default: the config's
    kv_cache_dtype: DType | None = None  # the KV cache's element type; default: the model's


def cache_shape(config: ModelConfig, num_blocks: int, block_size: int, dtype: DType | None = None) -> tuple[int, int, int, int]:
    """The shape of each layer's k (and v) cache of `dtype` (an int8 cache's rows hold their scale too)."""
    return (num_blocks, block_size, config.num_kv_heads, config.head_dim + row_extra(dtype or DType.float32))


def cache_names(layer: int) -> tuple[str, str]:
    return f"k_cache_{layer}", f"v_cache_{layer}"


def weight_names(config: ModelConfig, weights: Weights) -> list[str]:
    """Every tensor the graph takes (for the progress bar)."""
    names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not (config.tie_word_embeddings and "lm_head.weight" not in weights):
        names.append("lm_head.weight")
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        names += [p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
        for proj in ("q", "k", "v", "o"):
            names.append(f"{p}self_attn.{proj}_proj.weight")
            if config.attention_bias and proj != "o" or config.o_proj_bias and proj == "o":
                names.append(f"{p}self_attn.{proj}_proj.bias")
        if config.num_experts:
            names.append(f"{p}block_sparse_moe.gate.weight")
            names += [f"{p}block_sparse_moe.experts.{e}.w{j}.weight" for e in range(config.num_experts)
                      for j in (1, 2, 3)]
            continue
        for proj in ("gate", "up", "down"):
            names.append(f"{p}mlp.{proj}_proj.weight")
            if config.mlp_bias:
                names.append(f"{p}mlp.{proj}_proj.bias")
    return names


def tensor_parallel_plan(config: ModelConfig) -> dict[str, str]:
    """How passes/shard_tensor_parallel.py splits this decoder's weights over ranks,
    Megatron-style: attention by heads (the KV heads replicated where the ranks outnumber
    them), the MLP's gate and up by columns and down by rows, each expert of a mixture the
    same way (its router replicated), the embedding and the head by vocabulary rows;
    norms, rotary tables and biases of row-split layers replicated."""
    d = config.head_dim
    return {
        "model.embed_tokens.weight": "vocab", "lm_head.weight": "vocab",
        "model.layers.*.self_attn.[qkv]_proj.*": f"heads/{d}",
        "model.layers.*.self_attn.o_proj.weight": f"row/{d}",
        "model.layers.*.mlp.gate_proj.*": "column", "model.layers.*.mlp.up_proj.*": "column",
        "model.layers.*.mlp.down_proj.weight": "row",
        "model.layers.*.block_sparse_moe.experts.*.w[13].weight": "column",
        "model.layers.*.block_sparse_moe.experts.*.w2.weight": "row",
    }


@dataclass(frozen=True)
class BatchInputs:
    """The graph inputs of a forward step (see the module docstring), as every family's
    builder declares them."""

    ids: Value
    positions: Value
    logit_indices: Value
    caches: list[tuple[Value, Value]]
    paging: tuple[Value, ...]  # slot_mapping, block_tables, query_start_loc, seq_lens

    def paged(self, layer: int) -> tuple[Value, ...]:
        """ember.PagedAttention's inputs after q, k, v for `layer`: its caches, then the paging."""
        return (*self.caches[layer], *self.paging)


def batch_inputs(g: GraphBuilder, config: ModelConfig, options: ForwardOptions, dtype: DType) -> BatchInputs:
    T, B, N, max_blocks, num_blocks = (symbol(s) for s in ("num_tokens", "num_seqs", "num_logits", "max_blocks",
                                                            "num_blocks"))
    ids = g.input("input_ids", DType.int64, (T,))
    positions = g.input("positions", DType.int64, (T,))
    slots = g.input("slot_mapping", DType.int64, (T,))
    tables = g.input("block_tables", DType.int64, (B, max_blocks))
    starts = g.input("query_start_loc", DType.int64, (B + 1,))
    lens = g.input("seq_lens", DType.int64, (B,))
    logit_indices = g.input("logit_indices", DType.int64, (N,))
    cache_dtype = options.kv_cache_dtype or dtype
    shape = cache_shape(config, num_blocks, options.block_size, cache_dtype)
    caches = [tuple(g.input(name, cache_dtype, shape) for name in cache_names(i)) for i in range(config.num_layers)]
    return BatchInputs(ids, positions, logit_indices, caches, (slots, tables, starts, lens))


def build_decoder(config: ModelConfig, weights: Weights, options: ForwardOptions = ForwardOptions()) -> Graph:
    if config.hidden_act != "silu":
        raise ModelError(f"hidden_act {config.hidden_act!r} is not supported for {config.family} (only silu)")
    c = config
    dtype = DType.from_numpy(weights.dtype)
    g = GraphBuilder(f"{c.family}_forward")
    inputs = batch_inputs(g, c, options, dtype)
    ids, positions, logit_indices = inputs.ids, inputs.positions, inputs.logit_indices

    weights.start(len(weight_names(c, weights)))
    try:
        def tensor(name, shape):
            return g.const(name, weights.take(name, shape))

        def linear(x, name, n_in, n_out, bias):
            weight = name + ".weight"
            b = tensor(name + ".bias", (n_out,)) if bias else None
            if (blocks := weights.quantized(weight, (n_out, n_in))) is not None:
                fmt, data = blocks
                return g("ember.QuantizedLinear", x, g.const(weight, data), b, format=fmt.name)
            w = weights.take(weight, (n_out, n_in)).T
            return g("ember.Linear", x, g.const(weight, w), b)

        def norm(x, name):
            return g("RMSNormalization", x, tensor(name, (c.hidden_size,)), axis=-1, epsilon=c.rms_norm_eps)

        # the embedding's own blocks where the weights keep them (looked up and dequantized a
        # row at a time: no float table), else a float table
        embed_blocks = weights.quantized("model.embed_tokens.weight", (c.vocab_size, c.hidden_size))
        if embed_blocks is not None:
            table = g.const("model.embed_tokens.weight", embed_blocks[1])
            h = g("ember.QuantizedGather", table, ids, format=embed_blocks[0].name)
        else:
            embed = weights.take("model.embed_tokens.weight", (c.vocab_size, c.hidden_size))
            h = g("Gather", g.const("model.embed_tokens.weight", embed), ids, axis=0)
        cos_table, sin_table = cos_sin_tables(c, options.max_model_len or c.max_position_embeddings)
        cos_table, sin_table = g.const("rope.cos", cos_table.astype(weights.dtype)), \
            g.const("rope.sin", sin_table.astype(weights.dtype))
        unsqueeze = g.ints([1])
        cos = g("Unsqueeze", g("Gather", cos_table, positions, axis=0), unsqueeze)  # [T, 1, D]
        sin = g("Unsqueeze", g("Gather", sin_table, positions, axis=0), unsqueeze)
        # [T, H*D] <-> [T, H, D], naming no head count (the sharding pass splits the heads)
        heads, flat = g.ints([0, -1, c.head_dim]), g.ints([0, -1])

        def rotate(x):
            return g("Reshape", g("ember.RotaryEmbedding", g("Reshape", x, heads), cos, sin), flat)

        q_width, kv_width = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        for i in range(c.num_layers):
            p = f"model.layers.{i}."
            x = norm(h, p + "input_layernorm.weight")
            q = linear(x, p + "self_attn.q_proj", c.hidden_size, q_width, c.attention_bias)
            k = linear(x, p + "self_attn.k_proj", c.hidden_size, kv_width, c.attention_bias)
            v = linear(x, p + "self_attn.v_proj", c.hidden_size, kv_width, c.attention_bias)
            q, k = rotate(q), rotate(k)
            window = c.sliding_window if c.is_sliding(i) else 0
            attn = g("ember.PagedAttention", q, k, v, *inputs.paged(i),
                     num_heads=c.num_heads, kv_num_heads=c.num_kv_heads, sliding_window=window)
            h = g("Add", h, linear(attn, p + "self_attn.o_proj", q_width, c.hidden_size, c.o_proj_bias))
            x = norm(h, p + "post_attention_layernorm.weight")
            if c.num_experts:
                h = g("Add", h, _mixture_of_experts(g, c, x, p + "block_sparse_moe.", linear, dtype))
                continue
            gate = linear(x, p + "mlp.gate_proj", c.hidden_size, c.intermediate_size, c.mlp_bias)
            up = linear(x, p + "mlp.up_proj", c.hidden_size, c.intermediate_size, c.mlp_bias)
            h = g("Add", h, linear(g("ember.SwiGLU", gate, up), p + "mlp.down_proj", c.intermediate_size,
                                   c.hidden_size, c.mlp_bias))
        last = norm(g("Gather", h, logit_indices, axis=0), "model.norm.weight")
        tied = c.tie_word_embeddings and "lm_head.weight" not in weights
        head_name = "model.embed_tokens.weight" if tied else "lm_head.weight"
        if tied and embed_blocks is not None:  # the same blocks, one constant
            logits = g("ember.QuantizedLinear", last, table, format=embed_blocks[0].name, name="logits")
        elif (blocks := weights.quantized(head_name, (c.vocab_size, c.hidden_size), count=not tied)) is not None:
            fmt, data = blocks
            logits = g("ember.QuantizedLinear", last, g.const("lm_head.weight", data), format=fmt.name,
                       name="logits")
        else:
            head = embed.T if tied else weights.take("lm_head.weight", (c.vocab_size, c.hidden_size)).T
            logits = g("ember.Linear", last, g.const("lm_head.weight", head), name="logits")
    finally:
        weights.finish()
    return g.finish([logits])


def _mixture_of_experts(g, c: ModelConfig, x, prefix: str, linear, dtype: DType):
    """Mixtral's sparse MLP: the router's top-k logits, softmaxed, weigh the SwiGLU experts
    they pick (softmax over all experts then renormalized over the top k is the same
    distribution). Every expert runs on every token and its weight is 0 where it was not
    picked: exact, E/k times the work of routing; a grouped-GEMM kernel is the engine's."""
    router = linear(x, prefix + "gate", c.hidden_size, c.num_experts, False)  # [T, E]
    top = g.graph.add_node("TopK", [router, g.ints([c.experts_per_token])], 2,
                           {"axis": -1, "largest": 1, "sorted": 1}, f"{prefix}top_k").outputs
    probs = g("Softmax", top[0], axis=-1)
    zeros = g("ConstantOfShape", g("Shape", router), value=np.zeros(1, dtype.numpy))
    weights = g("ScatterElements", zeros, top[1], probs, axis=1)  # [T, E], 0 where not picked
    total = None
    for e in range(c.num_experts):
        name = f"{prefix}experts.{e}."
        gate = linear(x, name + "w1", c.hidden_size, c.intermediate_size, False)
        up = linear(x, name + "w3", c.hidden_size, c.intermediate_size, False)
        y = linear(g("ember.SwiGLU", gate, up), name + "w2", c.intermediate_size, c.hidden_size, False)
        share = g("Slice", weights, g.ints([e]), g.ints([e + 1]), g.ints([1]))  # [T, 1]
        y = g("Mul", y, share)
        total = y if total is None else g("Add", total, y)
    return total
