"""native.empty: the arrays the kernels' packed weights live in (pools of huge pages past
256 KiB), and the packers that use it."""

import gc
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from ember.runtime import native


def _mapping_of(address: int) -> dict[str, str] | None:
    """/proc/self/smaps' fields of the mapping holding `address` (None: no such mapping)."""
    text = Path("/proc/self/smaps").read_text()
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        lo, hi = (int(v, 16) for v in block.split(None, 1)[0].split("-"))
        if lo <= address < hi:
            return dict(line.split(":", 1) for line in block.splitlines()[1:] if ":" in line)
    return None


def test_small_arrays_are_numpys_and_large_ones_come_from_a_pool():
    small = native.empty(1000, np.float32)
    assert small.base is None and small.size == 1000 and small.dtype == np.float32
    arrays = [native.empty(n, np.float32) for n in (1 << 16, (1 << 16) + 3, 3 << 17)]  # 256 KiB and up
    for a, n in zip(arrays, (1 << 16, (1 << 16) + 3, 3 << 17)):
        assert a.size == n and a.dtype == np.float32 and a.flags.writeable and a.ctypes.data % 64 == 0
        assert isinstance(a.base, memoryview)  # a view of the pool's mapping
    for i, a in enumerate(arrays):
        a[:] = i
    for i, a in enumerate(arrays):  # no two overlap
        assert (a == i).all()
    quantized = native.empty(5 << 20, np.uint8)  # bytes, as the quantized GEMM packs
    assert quantized.size == 5 << 20 and quantized.dtype == np.uint8


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/smaps and transparent huge pages are Linux's")
def test_a_pool_is_advised_onto_huge_pages_and_unmapped_once_its_arrays_are_gone():
    setting = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    mode = re.search(r"\[(\w+)\]", setting.read_text()).group(1) if setting.exists() else "never"
    big = native.empty(native.POOL_BYTES // 2 + 4096, np.uint8)  # over half a pool: a mapping of its own
    address = big.ctypes.data
    fields = _mapping_of(address)
    assert fields is not None
    if "THPeligible" in fields:  # (kernels since 4.19 report it)
        assert int(fields["THPeligible"]) == (mode in ("always", "madvise")), (mode, fields["THPeligible"])
    del big
    gc.collect()
    assert _mapping_of(address) is None  # freed with its last array


def test_the_packers_use_it(monkeypatch):
    from tests.native import install

    from ember.runtime.native import gemm

    install("gemm")
    calls = []
    real = native.empty

    def counting(count, dtype):
        calls.append(int(count) * np.dtype(dtype).itemsize)
        return real(count, dtype)

    monkeypatch.setattr(gemm, "empty", counting)
    rng = np.random.default_rng(0)
    w = rng.standard_normal((384, 1536)).astype(np.float32)
    panels = gemm.pack(w)
    assert calls and calls[-1] == panels.nbytes and isinstance(panels.base, memoryview)
    x = rng.standard_normal((7, 384)).astype(np.float32)
    y = np.empty((7, 1536), np.float32)
    gemm.run(x, panels, None, None, y, 7, 384, 1536, "", 2)
    np.testing.assert_allclose(y, x @ w, rtol=1e-4, atol=1e-4)
    conv = gemm.conv_pack(rng.standard_normal((256, 128, 3, 3)).astype(np.float32))
    assert calls[-1] == conv.nbytes and isinstance(conv.base, memoryview)
