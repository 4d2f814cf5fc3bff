"""One sequence, token by token, over an LLM's compiled forward graph: the smallest
driver of the paged-KV contract (ember/frontends/hf builds the graph). The prompt is one
prefill step, then each decode step feeds the last token; greedy, or sampled with a
temperature and top-p from a seeded generator (ember/runtime/sampler.py); it stops at a
stop token or after `max_tokens`. Issue 6's engine batches many requests over the same
graph.

    generator = SequenceGenerator(compiled, config)
    result = generator.generate(prompt_ids, max_tokens=64, stop_ids={eos})
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from .request import SamplingParams
from .sampler import Sampler, SamplingState


@dataclass
class Generation:
    """What one call of `generate` made: the new token ids, why it stopped ("stop" at a
    stop token, "length" at max_tokens), and the time prefill and decode took."""

    token_ids: list[int]
    finish_reason: str
    prompt_tokens: int
    prefill_s: float
    decode_s: float

    @property
    def decode_tokens_per_s(self) -> float:
        """Tokens after the first (which prefill made) per second of decoding."""
        steps = len(self.token_ids) - 1
        return steps / self.decode_s if steps > 0 and self.decode_s > 0 else math.nan


class SequenceGenerator:
    """Runs `compiled` (the forward graph of `config`'s model, built with `block_size`)
    for one sequence of up to `max_len` tokens; the KV cache is allocated once and
    reused by every call."""

    def __init__(self, compiled, config, *, block_size: int = 16, max_len: int = 2048):
        from ..frontends.hf.decoder import cache_names, cache_shape

        self.compiled, self.block_size, self.max_len = compiled, block_size, max_len
        blocks = -(-max_len // block_size)
        shape = cache_shape(config, blocks, block_size)
        self.caches = {name: np.zeros(shape, np.float32) for i in range(config.num_layers)
                       for name in cache_names(i)}
        self.table = np.arange(blocks, dtype=np.int64)[None, :]  # the sequence owns every block, in order

    def _step(self, tokens: list[int], start: int) -> np.ndarray:
        """Logits of the last of `tokens`, placed at positions start.. of the sequence."""
        end = start + len(tokens)
        positions = np.arange(start, end, dtype=np.int64)
        used = -(-end // self.block_size)
        feeds = {"input_ids": np.asarray(tokens, np.int64), "positions": positions, "slot_mapping": positions,
                 "block_tables": np.ascontiguousarray(self.table[:, :used]),
                 "query_start_loc": np.array([0, len(tokens)], np.int64),
                 "seq_lens": np.array([end], np.int64),
                 "logit_indices": np.array([len(tokens) - 1], np.int64), **self.caches}
        return self.compiled.run(feeds)["logits"][0]

    def generate(self, prompt_ids: list[int], *, max_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int | None = None, stop_ids: Iterable[int] = (),
                 on_token: Callable[[int], None] | None = None) -> Generation:
        prompt_ids = [int(t) for t in prompt_ids]
        if not prompt_ids:
            raise InputError("the prompt has no tokens")
        if len(prompt_ids) + max_tokens > self.max_len:
            raise InputError(f"{len(prompt_ids)} prompt tokens + max_tokens {max_tokens} exceed the "
                             f"{self.max_len} positions this generator's KV cache holds")
        sampler = Sampler()
        state = SamplingState(SamplingParams(temperature=temperature, top_p=top_p, seed=seed, max_tokens=max_tokens),
                              prompt_ids)
        stop = set(stop_ids)
        start = time.perf_counter()
        logits = self._step(prompt_ids, 0)
        prefill_s = time.perf_counter() - start
        out: list[int] = []
        reason = "length"
        start = time.perf_counter()
        while len(out) < max_tokens:
            token = sampler.sample(torch.as_tensor(logits, dtype=torch.float32)[None], [state]).token_ids[0]
            out.append(token)
            if on_token is not None:
                on_token(token)
            if token in stop:
                reason = "stop"
                break
            if len(out) == max_tokens:
                break
            logits = self._step([token], len(prompt_ids) + len(out) - 1)
        return Generation(out, reason, len(prompt_ids), prefill_s, time.perf_counter() - start)
