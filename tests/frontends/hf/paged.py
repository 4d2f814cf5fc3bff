"""Helpers of the HF-frontend and engine tests: tiny random-init transformers models, and
a minimal driver of the forward graph (a paged KV cache with blocks handed out in a
shuffled order, and feeds for a step that adds some tokens to each sequence)."""

from __future__ import annotations

import numpy as np
import torch

from ember.frontends.hf import cache_names


class PagedRunner:
    def __init__(self, run, config, num_blocks: int = 64, block_size: int = 4, seed: int = 0,
                 dtype=np.float32):
        self.run, self.block_size = run, block_size
        shape = (num_blocks, block_size, config.num_kv_heads, config.head_dim)
        self.caches = {name: np.zeros(shape, dtype) for i in range(config.num_layers) for name in cache_names(i)}
        self.free = list(np.random.default_rng(seed).permutation(num_blocks))
        self.blocks: list[list[int]] = []
        self.lengths: list[int] = []

    def add_sequence(self) -> int:
        self.blocks.append([])
        self.lengths.append(0)
        return len(self.blocks) - 1

    def step(self, new_tokens: dict[int, list[int]], all_logits: bool = False) -> dict[int, np.ndarray]:
        """Append `new_tokens` (sequence -> tokens) and run one forward step. Returns each
        sequence's logits: of every new token (all_logits) or of its last."""
        ids, positions, slots, starts, lens, seqs, wanted = [], [], [], [0], [], [], []
        for seq, tokens in new_tokens.items():
            begin = self.lengths[seq]
            self.lengths[seq] += len(tokens)
            while len(self.blocks[seq]) * self.block_size < self.lengths[seq]:
                self.blocks[seq].append(self.free.pop())
            for j, tok in enumerate(tokens):
                pos = begin + j
                ids.append(tok)
                positions.append(pos)
                slots.append(self.blocks[seq][pos // self.block_size] * self.block_size + pos % self.block_size)
            first = starts[-1]
            starts.append(first + len(tokens))
            lens.append(self.lengths[seq])
            seqs.append(seq)
            wanted += list(range(first, first + len(tokens))) if all_logits else [first + len(tokens) - 1]
        max_blocks = max(len(self.blocks[s]) for s in seqs)
        tables = np.zeros((len(seqs), max_blocks), np.int64)
        for row, seq in enumerate(seqs):
            tables[row, :len(self.blocks[seq])] = self.blocks[seq]
        feeds = {"input_ids": np.array(ids, np.int64), "positions": np.array(positions, np.int64),
                 "slot_mapping": np.array(slots, np.int64), "block_tables": tables,
                 "query_start_loc": np.array(starts, np.int64), "seq_lens": np.array(lens, np.int64),
                 "logit_indices": np.array(wanted, np.int64), **self.caches}
        logits = self.run(feeds)
        out, row = {}, 0
        for seq, tokens in new_tokens.items():
            n = len(tokens) if all_logits else 1
            out[seq] = logits[row:row + n]
            row += n
        return out


def save_tiny(model_cls, config, path, seed: int = 0):
    """A random-init transformers model, saved. Every parameter is drawn (biases and norm
    weights too) at a scale that keeps activations and logits of order 1, so an error in
    the rotary angles or a mask shows well above the tolerance."""
    torch.manual_seed(seed)
    model = model_cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or ".ln_" in name:  # GPT-2 calls its LayerNorms ln_1, ln_2, ln_f
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif p.dim() == 1:
                p.normal_(0, 0.1)
            elif "embed" in name or ".wte." in name or ".wpe." in name:
                p.normal_(0, 1)
            else:
                p.normal_(0, p.shape[1] ** -0.5)
    model.save_pretrained(path)
    return model
