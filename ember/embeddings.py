"""Sentence embeddings (#25, a first step): a sentence-transformers folder compiled by ember
and run the way sentence-transformers runs it — tokenized (truncated to the folder's
max_seq_length, a named prompt in front where asked), the transformer on ember's kernels,
its token vectors pooled (cls, mean, max, mean_sqrt_len, lasttoken: the folder's), and
L2-normalized where the folder has a Normalize module.

    encoder = ember.Encoder()                      # the built-in all-MiniLM-L6-v2
    encoder = ember.Encoder("path/to/folder")      # any sentence-transformers folder
    vectors = encoder.embed(["A sentence.", "Another one."])   # float32 [2, dim]

Sentences run in batches of similar length (sorted, then put back in order), each batch
padded to its longest."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import InputError
from .frontends.hf.encoder import EncoderConfig, export_onnx, read_sentence_transformer


class Encoder:
    """An embedding model: `model` a sentence-transformers folder (None: the built-in
    MiniLM). `max_seq_length` overrides the folder's; `intra_op_threads` as ember.compile's."""

    def __init__(self, model: str | os.PathLike | None = None, *, max_seq_length: int | None = None,
                 intra_op_threads: int | None = None):
        from tokenizers import Tokenizer

        from . import api
        from ._builtin import cache_dir, minilm_dir

        self.config: EncoderConfig = read_sentence_transformer(Path(model) if model is not None else minilm_dir())
        self.max_seq_length = max_seq_length or self.config.max_seq_length
        self.compiled = api.compile(str(export_onnx(self.config, cache_dir() / "encoders")),
                                    intra_op_threads=intra_op_threads)
        self._inputs = [i.name for i in self.compiled.inputs]
        self.tokenizer = Tokenizer.from_file(str(self.config.tokenizer_file))
        self.tokenizer.no_padding()
        if self.max_seq_length:
            self.tokenizer.enable_truncation(self.max_seq_length)
        else:
            self.tokenizer.no_truncation()
        self.dimension = int(self.compiled.outputs[0].shape[-1])

    def embed(self, texts: str | list[str], *, prompt_name: str | None = None, prompt: str | None = None,
              normalize: bool | None = None, batch_size: int = 32) -> np.ndarray:
        """float32 [len(texts), dimension] (one text: [dimension]): each text's embedding.
        `prompt` (or the folder's prompt `prompt_name`, else its default prompt) goes in front
        of every text; `normalize` None: as the folder says."""
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if not texts or any(not isinstance(t, str) for t in texts):
            raise InputError("embed() takes a string or a non-empty list of strings")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, not {batch_size}")
        if prompt is None:
            name = prompt_name if prompt_name is not None else self.config.default_prompt_name
            if name is not None:
                if name not in self.config.prompts:
                    raise InputError(f"prompt_name {name!r} is not one of the model's prompts "
                                     f"({', '.join(self.config.prompts) or 'none'})")
                prompt = self.config.prompts[name]
        prompt = prompt or ""
        if self.config.do_lower_case:
            texts, prompt = [t.lower() for t in texts], prompt.lower()
        encodings = self.tokenizer.encode_batch([prompt + t for t in texts])
        skip = 0
        if prompt and not self.config.include_prompt:  # the prompt's tokens, less the closing special token
            skip = max(0, len(self.tokenizer.encode(prompt)) - 1)
        out = np.empty((len(texts), self.dimension), np.float32)
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            out[rows] = self._batch([encodings[i] for i in rows], skip)
        if normalize if normalize is not None else self.config.normalize:
            out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        return out[0] if single else out

    def _batch(self, encodings, skip: int) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        feeds = {name: np.zeros((len(encodings), width), np.int64) for name in self._inputs}
        for r, e in enumerate(encodings):
            n = len(e.ids)
            feeds["input_ids"][r, :n] = e.ids
            feeds["attention_mask"][r, :n] = 1
            if "token_type_ids" in feeds:
                feeds["token_type_ids"][r, :n] = e.type_ids
        hidden = np.asarray(next(iter(self.compiled.run(feeds).values())), np.float32)
        mask = feeds["attention_mask"].astype(np.float32)
        if skip:
            mask[:, :skip] = 0
        return pool(hidden, mask, self.config.pooling)


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Token vectors hidden [B, S, H] pooled under mask [B, S] (1 where a token counts) as
    sentence-transformers' Pooling module does in `mode`."""
    m = mask[..., None]
    if mode == "cls":
        return hidden[:, 0].copy()
    if mode == "max":
        return np.where(m > 0, hidden, np.float32(-1e9)).max(axis=1)
    if mode == "lasttoken":  # the last token under the mask (right padding)
        last = np.maximum(mask.shape[1] - 1 - np.argmax(mask[:, ::-1] > 0, axis=1), 0)
        return hidden[np.arange(hidden.shape[0]), last].copy()
    summed, count = (hidden * m).sum(axis=1), np.maximum(m.sum(axis=1), 1e-9)
    if mode == "mean":
        return summed / count
    if mode == "mean_sqrt_len":
        return summed / np.sqrt(count)
    raise InputError(f"pooling mode {mode!r} is not one of cls, mean, max, mean_sqrt_len, lasttoken")
