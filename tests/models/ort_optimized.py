"""Tiny random BERT and GPT-2 exported here by torch.onnx.export, then rewritten by
onnxruntime's transformer optimizer (shipped in the onnxruntime wheel) into the
com.microsoft fused ops that optimized exports carry."""

from __future__ import annotations

import collections
import warnings
from pathlib import Path

import numpy as np

VOCAB, HIDDEN, HEADS, LAYERS, MAX_POSITIONS = 64, 32, 4, 2, 32


def _perturb(model, seed: int) -> None:
    """Random weights everywhere (LayerNorm scales and biases too, which start as ones
    and zeros and would hide a swapped gamma/beta)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=generator))


def export_bert(path: Path) -> Path:
    import torch
    import transformers

    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                     num_attention_heads=HEADS, intermediate_size=48,
                                     max_position_embeddings=MAX_POSITIONS, attn_implementation="eager")
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    _perturb(model, 0)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state, out.pooler_output

    feeds = bert_feeds(np.random.default_rng(0), 2, 7)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    _export(Encoder(), tuple(torch.from_numpy(feeds[n]) for n in names), path, names,
            ["last_hidden_state", "pooler_output"])
    return path


def export_gpt2(path: Path) -> Path:
    import torch
    import transformers

    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                     n_positions=MAX_POSITIONS, attn_implementation="eager",
                                     bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    model = transformers.GPT2Model(config).eval()
    _perturb(model, 1)

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask):
            # with an explicit mask transformers skips its packed-sequence detection
            # (torch.diff, which the exporter lacks)
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state

    feeds = gpt2_feeds(np.random.default_rng(0), 2, 7)
    names = ["input_ids", "attention_mask"]
    _export(Decoder(), tuple(torch.from_numpy(feeds[n]) for n in names), path, names, ["last_hidden_state"])
    return path


def _export(module, args, path: Path, inputs: list[str], outputs: list[str]) -> None:
    import torch

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=17, input_names=inputs,
                          output_names=outputs, dynamic_axes={n: {0: "batch", 1: "seq"} for n in inputs})


def optimize(source: Path, target: Path, model_type: str, num_heads: int = HEADS, hidden_size: int = HIDDEN,
             **options) -> Path:
    """onnxruntime.transformers.optimizer's fusions of `source` (options: FusionOptions
    attributes, or raw_mask=True for a [B, S] attention mask input to Attention)."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    fusion = FusionOptions(model_type)
    if options.pop("raw_mask", False):
        fusion.use_raw_attention_mask(True)
    for key, value in options.items():
        setattr(fusion, key, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimized = optimize_model(str(source), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                                   optimization_options=fusion)
    optimized.save_model_to_file(str(target))
    return target


def contrib_ops(path: Path) -> collections.Counter:
    import onnx

    return collections.Counter(n.op_type for n in onnx.load(str(path)).graph.node if n.domain == "com.microsoft")


def _lengths(rng, batch: int, seq: int) -> np.ndarray:
    lengths = rng.integers(1, seq + 1, batch)
    lengths[0] = seq  # one full row, so the padded ones are padding
    return lengths


def bert_feeds(rng, batch: int, seq: int) -> dict[str, np.ndarray]:
    mask = (np.arange(seq)[None, :] < _lengths(rng, batch, seq)[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(0, VOCAB, (batch, seq)).astype(np.int64), "attention_mask": mask,
            "token_type_ids": rng.integers(0, 2, (batch, seq)).astype(np.int64)}


def gpt2_feeds(rng, batch: int, seq: int) -> dict[str, np.ndarray]:
    return {"input_ids": rng.integers(0, VOCAB, (batch, seq)).astype(np.int64),
            "attention_mask": np.ones((batch, seq), np.int64)}
