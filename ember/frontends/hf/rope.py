"""Rotary position embeddings: the inverse frequencies of each scaling type (as
transformers computes them, in float32 torch, so the tables match bit for bit), and the
cos/sin tables the forward graph gathers by position.

Dynamic NTK scaling rescales the base once a sequence outgrows max_position_embeddings,
per forward pass in transformers; a table fixed at build time holds the unscaled
frequencies, which is what transformers uses while sequences stay within that length.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ...errors import ModelError
from .config import ModelConfig

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")


def _base_inv_freq(base: float, dim: int) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(dtype=torch.float) / dim))


def inv_freq(config: ModelConfig) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [head_dim / 2], attention factor scaling cos and sin)."""
    p = config.rope
    kind, base, dim = p["rope_type"], p["rope_theta"], config.head_dim
    if kind not in ROPE_TYPES:
        raise ModelError(f"rope scaling {kind!r} is not supported (supported: {', '.join(ROPE_TYPES)})")
    if kind in ("default", "dynamic"):
        return _base_inv_freq(base, dim), 1.0
    if kind == "linear":
        return _base_inv_freq(base, dim) / p["factor"], 1.0
    if kind == "llama3":
        return _llama3(p, base, dim), 1.0
    return _yarn(p, base, dim, config.max_position_embeddings)


def _llama3(p, base: float, dim: int) -> torch.Tensor:
    freq = _base_inv_freq(base, dim)
    factor, low, high = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
    old_len = p["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / freq
    scaled = torch.where(wavelen > low_wavelen, freq / factor, freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def _yarn(p, base: float, dim: int, max_positions: int) -> tuple[torch.Tensor, float]:
    original = p.get("original_max_position_embeddings") or max_positions
    factor = p.get("factor") or max_positions / original

    def get_mscale(scale, mscale=1):
        return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0

    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = p.get("mscale"), p.get("mscale_all_dim")
        attention_factor = (float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
                            if mscale and mscale_all_dim else get_mscale(factor))
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def correction_dim(rotations):
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    pos_freqs = base ** (torch.arange(0, dim, 2).to(dtype=torch.float) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp
    return interpolation * (1 - keep) + extrapolation * keep, attention_factor


def cos_sin_tables(config: ModelConfig, num_positions: int) -> tuple[np.ndarray, np.ndarray]:
    """cos and sin of every position's angles, [num_positions, head_dim] float32 (the
    half-dim angles repeated, as rotate_half pairs them)."""
    freq, attention_factor = inv_freq(config)
    angles = torch.arange(num_positions, dtype=torch.float32)[:, None] * freq.float()[None, :]
    emb = torch.cat([angles, angles], dim=-1)
    return ((emb.cos() * attention_factor).numpy(), (emb.sin() * attention_factor).numpy())
