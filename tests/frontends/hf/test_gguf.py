"""GGUF files: tensors of each supported type dequantized as gguf's reference does, a
tiny Llama converted the way llama.cpp converts (q/k rows permuted, config as llama.*
metadata) giving transformers' logits, and the real SmolLM2-135M GGUF's config and
tensors."""

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from transformers import LlamaConfig, LlamaForCausalLM

import ember
from ember.frontends.hf import load_pretrained
from ember.frontends.hf.gguf_file import GGUFWeights, open_gguf, unpermute

from .conftest import compare_logits, save_tiny
from .paged import PagedRunner

TYPES = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1]


def _write(path, tensors: dict, metadata=None, arch="llama"):
    """Write `tensors` (name -> (float32 data, GGML type)) to a GGUF file."""
    writer = gguf.GGUFWriter(str(path), arch)
    for key, value in (metadata or {}).items():
        getattr(writer, f"add_{key}")(value)
    for name, (data, qtype) in tensors.items():
        if qtype == Q.F32:
            writer.add_tensor(name, data.astype(np.float32))
        elif qtype == Q.F16:
            writer.add_tensor(name, data.astype(np.float16))
        elif data.dtype == np.uint8:  # its blocks already (a K-quant: gguf has no quantizer for them)
            writer.add_tensor(name, data, raw_dtype=qtype)
        else:
            writer.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("qtype", TYPES, ids=lambda q: q.name)
def test_tensors_dequantize_as_gguf_does(qtype, tmp_path):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((48, 64)).astype(np.float32)
    path = tmp_path / "t.gguf"
    _write(path, {"blk.0.ffn_up.weight": (data, qtype)})
    weights = GGUFWeights(path, open_gguf(path), {}, progress=False)
    name = "model.layers.0.mlp.up_proj.weight"
    got = weights.take(name, (48, 64))
    stored = gguf.GGUFReader(path).tensors[0]
    want = gguf.quants.dequantize(stored.data, stored.tensor_type).reshape(48, 64).astype(np.float32)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    assert weights.quant_type(name) == qtype.name
    # and close to what was written (the quantization's own error)
    tolerance = {Q.F32: 0, Q.F16: 1e-2, Q.BF16: 2e-2, Q.Q8_0: 3e-2, Q.Q4_0: 0.5, Q.Q4_1: 0.5}[qtype]
    np.testing.assert_allclose(got, data, atol=tolerance)


def _permute(w, heads):
    """llama.cpp's converter (convert_hf_to_gguf.py, LlamaModel.permute)."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_undoes_llama_cpp():
    w = np.arange(8 * 12 * 3, dtype=np.float32).reshape(8 * 12, 3)
    np.testing.assert_array_equal(unpermute(_permute(w, 8), 8), w)


GGUF_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
              "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
              "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def _convert(model, path, qtype=Q.F32, blocks=None):
    """A transformers Llama written as llama.cpp writes it (2-d weights in `qtype`, or as
    `blocks` gives them: name -> (uint8 blocks [N, row_bytes], GGML type))."""
    c = model.config
    tensors = {}
    for name, p in model.state_dict().items():
        data = p.numpy()
        kind = qtype if data.ndim == 2 else Q.F32
        if blocks and name in blocks:
            data, kind = blocks[name]
        if name == "model.embed_tokens.weight":
            out = "token_embd.weight"
        elif name == "model.norm.weight":
            out = "output_norm.weight"
        elif name == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            out = "output.weight"
        else:
            layer, rest = name.removeprefix("model.layers.").split(".", 1)
            part, suffix = rest.rsplit(".", 1)
            out = f"blk.{layer}.{GGUF_NAMES[part]}.{suffix}"
            if part == "self_attn.q_proj":
                data = _permute(data, c.num_attention_heads)
            elif part == "self_attn.k_proj":
                data = _permute(data, c.num_key_value_heads)
        tensors[out] = (data, kind)
    _write(path, tensors, {
        "block_count": c.num_hidden_layers, "context_length": c.max_position_embeddings,
        "embedding_length": c.hidden_size, "feed_forward_length": c.intermediate_size,
        "head_count": c.num_attention_heads, "head_count_kv": c.num_key_value_heads,
        "rope_freq_base": c.rope_parameters["rope_theta"], "layer_norm_rms_eps": c.rms_norm_eps,
        "vocab_size": c.vocab_size, "rope_dimension_count": c.head_dim})


@pytest.mark.parametrize("tied", [False, True])
def test_converted_llama_matches_transformers(tied, tmp_path):
    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tied, rms_norm_eps=1e-5)
    model = save_tiny(LlamaForCausalLM, config, tmp_path / "hf")
    _convert(model, tmp_path / "tiny.gguf")
    loaded = load_pretrained(tmp_path / "tiny.gguf", progress=False)
    assert loaded.config.num_kv_heads == 2 and loaded.config.tie_word_embeddings == tied
    abs_err, rel_err = compare_logits(model, tmp_path / "tiny.gguf")
    print(f"gguf llama tied={tied}: max abs {abs_err:.2e}, max rel {rel_err:.2e}")
    assert abs_err < 1e-4


QUANTIZED = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1]


@pytest.mark.parametrize("qtype", QUANTIZED, ids=lambda q: q.name)
@pytest.mark.parametrize("tied", [False, True])
def test_quantized_blocks_are_kept(qtype, tied, tmp_path):
    """A GGUF file's Q4/Q5/Q8 weights stay its blocks (ember.QuantizedLinear, the kernel
    quantizing activations to int8 as llama.cpp does): its logits are transformers' with the
    dequantized weights, within that rounding; the head of a tied model is the embedding's blocks."""
    import torch

    from ember.ir.quant_formats import GGML_NAMES

    config = LlamaConfig(vocab_size=96, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tied, rms_norm_eps=1e-5)
    model = save_tiny(LlamaForCausalLM, config, tmp_path / "hf")
    _convert(model, tmp_path / "tiny.gguf", qtype)
    fmt = GGML_NAMES[qtype.name]
    with torch.no_grad():  # what the file holds: each 2-d weight through its blocks and back
        for p in model.parameters():
            if p.dim() == 2:
                p.copy_(torch.from_numpy(fmt.dequantize(fmt.quantize(p.numpy()))))
    _check_blocks_kept(model, tmp_path / "tiny.gguf", {fmt.name}, 0.03, f"{qtype.name}, tied={tied}")


def _check_blocks_kept(model, path, formats: set, bound: float, what: str):
    """The file's 2 x 7 + 1 linear layers on its blocks (ember.QuantizedLinear, in `formats`),
    their logits within `bound` (relative) of transformers' `model`; dequantized at load, within
    float32 rounding."""
    from ember.runtime.native import quantized_gemm

    loaded = load_pretrained(path, progress=False)
    loaded.weights.keep_quantized = True
    graph = loaded.graph(block_size=4)
    nodes = [n for n in graph.nodes if n.op == "ember.QuantizedLinear"]
    assert len(nodes) == 2 * 7 + 1 and {n.attrs["format"] for n in nodes} == formats
    # the embedding looked up from its blocks (no float table); a tied head reads the same constant
    (lookup,) = [n for n in graph.nodes if n.op == "ember.QuantizedGather"]
    assert not [n for n in graph.nodes if n.op == "Gather" and n.inputs[0].const is not None
                and n.inputs[0].const.shape == (model.config.vocab_size, model.config.hidden_size)]
    assert (nodes[-1].inputs[1] is lookup.inputs[0]) == bool(model.config.tie_word_embeddings)
    abs_err, rel_err = compare_logits(model, path, keep_quantized=True)
    print(f"gguf {what}, blocks kept: max abs {abs_err:.2e}, max rel {rel_err:.2e}")
    assert rel_err < bound
    assert quantized_gemm.available()  # (its library built and installed: the layers ran on it)
    dequantized = compare_logits(model, path)  # the weights dequantized at load
    assert dequantized[0] < 1e-4


# a Q4_K_M-like mix (llama.cpp's: most layers Q4_K, attn_v and ffn_down Q6_K), with Q5_K for
# the output projection so that every K-quant runs; the embedding (and a tied head) Q6_K
K_MIX = {"self_attn.q_proj": Q.Q4_K, "self_attn.k_proj": Q.Q4_K, "self_attn.v_proj": Q.Q6_K,
         "self_attn.o_proj": Q.Q5_K, "mlp.gate_proj": Q.Q4_K, "mlp.up_proj": Q.Q4_K, "mlp.down_proj": Q.Q6_K}


@pytest.mark.parametrize("tied", [False, True])
def test_k_quant_blocks_are_kept(tied, tmp_path):
    """A GGUF file's Q4_K / Q5_K / Q6_K superblocks stay its blocks on the quantized GEMM
    (nothing dequantized but the embedding's lookup): logits of transformers with the same
    weights dequantized, within the activations' int8 rounding — which, on weights of
    random bytes (no quantizer writes K-quants here), is ~0.7% of each layer's output, a
    few % of the logits after 14 layers (the kernel itself equals that rounding emulated:
    tests/codegen/test_quantized_gemm.py); a block read in the wrong place is ~100%."""
    import torch

    from ember.ir.quant_formats import GGML_NAMES
    from tests.codegen.test_quantized_gemm import blocks_of

    config = LlamaConfig(vocab_size=96, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=tied, rms_norm_eps=1e-5)
    model = save_tiny(LlamaForCausalLM, config, tmp_path / "hf")
    rng = np.random.default_rng(tied)
    blocks = {}
    with torch.no_grad():  # random superblocks, and the model's weights what they dequantize to
        for name, p in model.named_parameters():
            if p.dim() != 2:
                continue
            part = name.removeprefix("model.layers.").split(".", 1)[-1].rsplit(".", 1)[0]
            qtype = K_MIX.get(part, Q.Q6_K)
            fmt = GGML_NAMES[qtype.name]
            b = blocks_of(fmt, p.shape[0], p.shape[1], rng, scale=0.002)
            p.copy_(torch.from_numpy(fmt.dequantize(b)))
            blocks[name] = (b, qtype)  # (_convert permutes q's and k's rows, whole rows of blocks)
    _convert(model, tmp_path / "tiny.gguf", blocks=blocks)
    _check_blocks_kept(model, tmp_path / "tiny.gguf", {"q4_k", "q5_k", "q6_k"}, 0.1, f"K-quants, tied={tied}")


@pytest.mark.slow  # gguf reads the 100k tokenizer strings in Python: ~5 s
def test_smollm2_gguf_config_and_tensors(smollm2_gguf):
    model = load_pretrained(smollm2_gguf, progress=False)
    c = model.config
    assert (c.family, c.num_layers, c.hidden_size, c.intermediate_size) == ("llama", 30, 576, 1536)
    assert (c.num_heads, c.num_kv_heads, c.head_dim, c.vocab_size) == (9, 3, 64, 49152)
    assert c.tie_word_embeddings and c.rope["rope_theta"] == 100000.0 and c.max_position_embeddings == 8192
    w = model.weights
    assert len(w.names()) == 272
    assert w.quant_type("model.embed_tokens.weight") == "Q8_0"
    assert w.quant_type("model.layers.0.self_attn.q_proj.weight") == "Q4_1"
    assert w.take("model.layers.0.self_attn.k_proj.weight", (192, 576)).dtype == np.float32
    assert w.take("model.layers.29.mlp.down_proj.weight", (576, 1536)).shape == (576, 1536)
    assert w.take("model.norm.weight", (576,)).shape == (576,)


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf_path):
    """(transformers' model of the SmolLM2 GGUF, ember's PretrainedModel, its compiled graph)."""
    import torch
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    # transformers' own config mapping and q/k un-permutation; both dequantize with gguf
    config = {k: v for k, v in load_gguf_checkpoint(smollm2_gguf_path)["config"].items() if k != "tokenizer"}
    reference = LlamaForCausalLM(LlamaConfig(**config)).eval()
    tensors = load_gguf_checkpoint(smollm2_gguf_path, return_tensors=True, model_to_load=reference)["tensors"]
    reference.load_state_dict({k: torch.as_tensor(v) for k, v in tensors.items()}, strict=False)
    reference.tie_weights()
    model = load_pretrained(smollm2_gguf_path, progress=False)
    return reference, model, ember.compile(model.graph(block_size=16, max_model_len=256))


@pytest.mark.slow
def test_smollm2_gguf_logits_match_transformers(smollm2):
    import torch

    reference, model, compiled = smollm2
    tokens = [1, 9690, 28, 253, 5248, 314, 2114, 30, 2]
    with torch.no_grad():
        want = reference(torch.tensor([tokens])).logits[0].numpy()
    runner = PagedRunner(lambda feeds: compiled.run(feeds)["logits"], model.config, block_size=16)
    seq = runner.add_sequence()
    got = [runner.step({seq: tokens[:5]}, all_logits=True)[seq]]
    for t in tokens[5:]:
        got.append(runner.step({seq: [t]})[seq])
    got = np.concatenate(got)
    err = np.abs(got - want).max()
    print(f"SmolLM2 GGUF: max abs {err:.2e}, max rel {err / np.abs(want).max():.2e}")
    assert err / np.abs(want).max() < 1e-4


PROMPTS = ["What is the capital of France?", "Write a haiku about the sea.", "How do I sort a list in Python?"]


@pytest.mark.slow
def test_smollm2_greedy_continuations_match_transformers(smollm2):
    """Three chat prompts decoded greedily for 32 tokens, together in one flattened batch,
    give the tokens transformers' greedy generate gives."""
    import torch

    reference, model, compiled = smollm2
    tokenizer = model.tokenizer()
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False) for p in PROMPTS]
    want = []
    with torch.no_grad():
        for p in prompts:
            # no stop at <|im_end|>, and an explicit mask: generate would otherwise mask the prompt's
            # <|im_end|> tokens, which are also SmolLM2's pad token
            out = reference.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                     max_new_tokens=32, do_sample=False, eos_token_id=None)
            want.append(out[0, len(p):].tolist())
    runner = PagedRunner(lambda feeds: compiled.run(feeds)["logits"], model.config, num_blocks=64, block_size=16)
    seqs = [runner.add_sequence() for _ in prompts]
    got = [[] for _ in prompts]
    step = {s: p for s, p in zip(seqs, prompts)}
    for _ in range(32):
        logits = runner.step(step)
        step = {s: [int(logits[s][-1].argmax())] for s in seqs}
        for s in seqs:
            got[s].append(step[s][0])
    print([tokenizer.decode(g) for g in got])
    assert got == want
