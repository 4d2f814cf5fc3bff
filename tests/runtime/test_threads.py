"""The executor's default thread count, and the oneDNN weight packing it prepares."""

import os

import numpy as np
import pytest
import torch

from ember.runtime import externs
from ember.runtime.executor import default_threads


def test_default_threads_follows_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3


@pytest.mark.parametrize("value", ["", "0", "-2", "four"])
def test_default_threads_is_this_process_cores_otherwise(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_threads() == expected


@pytest.mark.skipif(not externs._onednn(), reason="torch without oneDNN: the weights are not packed")
@pytest.mark.parametrize("kind", ["tiled", "packed"])  # ember's tiled GEMM's panels, oneDNN's packed weight
def test_packed_weights_are_their_own(kind, monkeypatch):
    """Two C-order linear weights packed one after the other: each GEMM still gives
    x @ w, so a packed copy never aliases a temporary of the packing."""
    if kind == "packed":
        monkeypatch.setattr(externs._TiledWeight, "MAX_WEIGHT", -1)
    rng = np.random.default_rng(0)
    weights = [torch.from_numpy(rng.standard_normal((48, 80), dtype=np.float32)) for _ in range(2)]
    prepared = [externs.prepare_linear({}, {1: w}) for w in weights]
    assert all(kind in p for p in prepared)
    x = torch.from_numpy(rng.standard_normal((5, 48), dtype=np.float32))
    for w, p in zip(weights, prepared):
        got = externs.linear(p, x, w, None, None)
        torch.testing.assert_close(got, x @ w, rtol=1e-5, atol=1e-5)
