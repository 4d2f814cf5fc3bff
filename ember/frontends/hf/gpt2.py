"""GPT-2: learned absolute positions, pre-norm LayerNorm blocks, one fused projection
for q, k and v (`c_attn`), a GELU MLP, and the LM head tied to the token embeddings.
transformers stores its projections as Conv1D, [in, out]: ember.Linear's layout as is.
The forward graph takes the same inputs as the Llama decoder's (ember/frontends/hf/decoder.py)."""

from __future__ import annotations

from typing import Any

from ...errors import ModelError
from ...ir.dtypes import DType
from ...ir.graph import Graph
from ._builder import GraphBuilder
from .config import ModelConfig, require
from .decoder import ForwardOptions, batch_inputs
from .registry import Architecture, register_architecture
from .weights import Weights

# transformers' activation names -> ONNX Gelu's `approximate`
GELUS = {"gelu_new": "tanh", "gelu_pytorch_tanh": "tanh", "gelu_fast": "tanh", "gelu": "none"}


def config_from_hf(d: dict[str, Any]) -> ModelConfig:
    where = "gpt2 config"
    hidden, heads = require(d, "n_embd", where), require(d, "n_head", where)
    return ModelConfig(
        family="gpt2",
        vocab_size=require(d, "vocab_size", where),
        hidden_size=hidden,
        intermediate_size=d.get("n_inner") or 4 * hidden,
        num_layers=require(d, "n_layer", where),
        num_heads=heads,
        num_kv_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=d.get("n_positions", 1024),
        rms_norm_eps=d.get("layer_norm_epsilon", 1e-5),  # LayerNorm's epsilon here
        rope={},
        tie_word_embeddings=bool(d.get("tie_word_embeddings", True)),
        attention_bias=True,
        o_proj_bias=True,
        mlp_bias=True,
        hidden_act=d.get("activation_function", "gelu_new"),
        raw=d,
    )


def _weight_count(config: ModelConfig, weights: Weights) -> int:
    """Tensors the graph takes (for the progress bar): wte, wpe, ln_f's two, 12 a layer, and
    an untied LM head."""
    untied = "lm_head.weight" in weights and not config.tie_word_embeddings
    return 4 + 12 * config.num_layers + untied


def build(config: ModelConfig, weights: Weights, options: ForwardOptions = ForwardOptions()) -> Graph:
    c = config
    if c.hidden_act not in GELUS:
        raise ModelError(f"gpt2: activation_function {c.hidden_act!r} is not supported ({', '.join(GELUS)})")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if c.raw.get(flag):
            raise ModelError(f"gpt2: {flag} is not supported")
    if c.raw.get("scale_attn_weights", True) is False:
        raise ModelError("gpt2: scale_attn_weights=False is not supported")
    dtype = DType.from_numpy(weights.dtype)
    g = GraphBuilder("gpt2_forward")
    inputs = batch_inputs(g, c, options, dtype)  # num_kv_heads is num_heads
    hidden, width = c.hidden_size, c.num_heads * c.head_dim
    approximate = GELUS[c.hidden_act]
    prefix = "transformer." if "transformer.wte.weight" in weights else ""

    weights.start(_weight_count(c, weights))
    try:
        def tensor(name, shape):
            return g.const(prefix + name, weights.take(prefix + name, shape))

        def linear(x, name, n_in, n_out):  # Conv1D: [in, out]
            return g("ember.Linear", x, tensor(name + ".weight", (n_in, n_out)), tensor(name + ".bias", (n_out,)))

        def layer_norm(x, name):
            return g("LayerNormalization", x, tensor(name + ".weight", (hidden,)), tensor(name + ".bias", (hidden,)),
                     axis=-1, epsilon=c.rms_norm_eps)

        wte = weights.take(prefix + "wte.weight", (c.vocab_size, hidden))
        h = g("Add", g("Gather", g.const(prefix + "wte.weight", wte), inputs.ids, axis=0),
              g("Gather", tensor("wpe.weight", (c.max_position_embeddings, hidden)), inputs.positions, axis=0))
        thirds = g.ints([width, width, width])
        for i in range(c.num_layers):
            p = f"h.{i}."
            qkv = linear(layer_norm(h, p + "ln_1"), p + "attn.c_attn", hidden, 3 * width)
            q, k, v = (g.graph.add_node("Split", [qkv, thirds], 3, {"axis": -1}, f"split_{i}").outputs)
            attn = g("ember.PagedAttention", q, k, v, *inputs.paged(i),
                     num_heads=c.num_heads, kv_num_heads=c.num_heads)
            h = g("Add", h, linear(attn, p + "attn.c_proj", width, hidden))
            up = linear(layer_norm(h, p + "ln_2"), p + "mlp.c_fc", hidden, c.intermediate_size)
            h = g("Add", h, linear(g("Gelu", up, approximate=approximate), p + "mlp.c_proj", c.intermediate_size,
                                   hidden))
        last = layer_norm(g("Gather", h, inputs.logit_indices, axis=0), "ln_f")
        if "lm_head.weight" in weights and not c.tie_word_embeddings:
            head = g.const("lm_head.weight", weights.take("lm_head.weight", (c.vocab_size, hidden)).T)
        else:
            head = g.const("lm_head.weight", wte.T)
        logits = g("ember.Linear", last, head, name="logits")
    finally:
        weights.finish()
    return g.finish([logits])


GPT2 = register_architecture(Architecture(
    family="gpt2",
    architectures=("GPT2LMHeadModel",),
    model_types=("gpt2",),
    config_from_hf=config_from_hf,
    build=build,
))
