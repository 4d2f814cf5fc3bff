"""The executor's default thread count, torch's (set when torch is first imported), and
the weight packing it prepares."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ember.runtime import externs
from ember.runtime.executor import default_threads
from tests.native import install


def test_default_threads_follows_omp_num_threads(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == 3


@pytest.mark.parametrize("value", ["", "0", "-2", "four"])
def test_default_threads_is_this_process_cores_otherwise(monkeypatch, value):
    monkeypatch.setenv("OMP_NUM_THREADS", value)
    expected = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_threads() == expected


@pytest.mark.parametrize("files, cpus", [
    ({"v2": "150000 100000"}, 2), ({"v2": "50000 100000"}, 1), ({"v2": "100 100000"}, 1),
    ({"v2": "max 100000"}, None), ({"v1": ("300000", "100000")}, 3), ({"v1": ("-1", "100000")}, None),
    ({"v2": "garbage"}, None), ({}, None),
])
def test_a_cgroup_cpu_quota_caps_the_default_threads(tmp_path, monkeypatch, files, cpus):
    """A container's CPU quota (cgroup v2 cpu.max, or v1's quota / period) caps the
    default thread count at the CPUs it allows (rounded up); no quota, or no cgroup
    files, leaves the cores the process may run on."""
    from ember.runtime import _torch

    v2, quota, period = tmp_path / "cpu.max", tmp_path / "quota", tmp_path / "period"
    if "v2" in files:
        v2.write_text(files["v2"] + "\n")
    if "v1" in files:
        quota.write_text(files["v1"][0] + "\n")
        period.write_text(files["v1"][1] + "\n")
    monkeypatch.setattr(_torch, "CGROUP_CPU_MAX", str(v2))
    monkeypatch.setattr(_torch, "CGROUP_V1", ((str(quota), str(period)),))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert _torch.cgroup_cpus() == cpus
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert default_threads() == (min(cores, cpus) if cpus else cores)
    monkeypatch.setenv("OMP_NUM_THREADS", "7")  # the caller's count wins over a quota
    assert default_threads() == 7


@pytest.mark.parametrize("threads", [1, 3])
def test_torch_imported_later_runs_on_the_executors_threads(threads):
    """An executor made before torch is imported (a program on ember's kernels) still
    sets torch's thread count: when a step first needs torch, torch is imported through
    runtime/_torch.py, which sets it then; the stand-in then reads as torch does."""
    code = ("import sys\n"
            "from ember.runtime import _torch\n"
            f"_torch.set_threads({threads})\n"
            "assert 'torch' not in sys.modules and _torch.threads() == " + str(threads) + "\n"
            "assert _torch.torch.zeros(2).sum().item() == 0\n"
            "import torch\n"
            "assert _torch.torch.zeros is torch.zeros and _torch.F.relu is torch.nn.functional.relu\n"
            "print(torch.get_num_threads())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(threads)]


@pytest.mark.skipif(not externs._onednn(), reason="torch without oneDNN: the weights are not packed")
@pytest.mark.parametrize("kind", ["tiled", "packed"])  # ember's tiled GEMM's panels, oneDNN's packed weight
def test_packed_weights_are_their_own(kind, monkeypatch):
    """Two C-order linear weights packed one after the other: each GEMM still gives
    x @ w, so a packed copy never aliases a temporary of the packing."""
    if kind == "packed":
        monkeypatch.setattr(externs._TiledWeight, "of", classmethod(lambda cls, w: None))
    else:  # (called here, not through a program that names the tiled kernel's library)
        install("gemm")
    rng = np.random.default_rng(0)
    weights = [torch.from_numpy(rng.standard_normal((48, 80), dtype=np.float32)) for _ in range(2)]
    prepared = [externs.prepare_linear({}, {1: w.numpy()}) for w in weights]  # (its hook reads numpy arrays)
    assert all(kind in p for p in prepared)
    x = torch.from_numpy(rng.standard_normal((5, 48), dtype=np.float32))
    for w, p in zip(weights, prepared):
        # the tiled GEMM takes numpy arrays (no torch), oneDNN's torch tensors
        got = externs.linear(p, x.numpy(), w.numpy(), None, None) if kind == "tiled" else externs.linear(p, x, w, None, None)
        assert isinstance(got, np.ndarray if kind == "tiled" else torch.Tensor)
        torch.testing.assert_close(torch.as_tensor(got), x @ w, rtol=1e-5, atol=1e-5)
