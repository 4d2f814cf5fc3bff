"""Peak resident memory with MiniLM (86 MiB of weights), each case in a fresh process
(VmHWM, as benchmarks/onnx_cpu.py measures it).

Issue 4 asks that ember's peak for MiniLM b8x128 (load, compile, 5 runs) be no more
than 1.2x onnxruntime's, measured the same way for both: this runs the benchmark's own
measurement. The frontend's part has a bound of its own, sharper than the ratio: loading
holds the weights about once (it used to peak near 7x them, through onnx's version
converter and shape inference copying the whole proto)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ember

pytest.importorskip("onnxruntime")

BENCHMARK = Path(__file__).parents[2] / "benchmarks" / "onnx_cpu.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("onnx_cpu", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_loading_holds_the_weights_about_once(minilm_onnx):
    code = ("import sys; sys.path.insert(0, %r); import onnx_cpu as b; "
            "from ember.frontends.onnx import load_onnx; "
            "before = b.high_water_kib(); graph = load_onnx(%r); print(before, b.high_water_kib())") % (
        str(BENCHMARK.parent), str(minilm_onnx))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    before, after = (int(x) / 1024 for x in out.stdout.split()[-2:])
    weights = minilm_onnx.stat().st_size / 2**20
    assert after - before <= 1.4 * weights, (
        f"loading MiniLM ({weights:.0f} MiB) raised the peak RSS by {after - before:.0f} MiB "
        f"(from {before:.0f} to {after:.0f}); the frontend holds its weights more than once")


def test_peak_within_1_2x_onnxruntime(minilm_onnx):
    bench = load_benchmark()
    threads = os.cpu_count()
    ours, theirs = (bench.peak_rss(engine, 8, threads, 5) for engine in ("ember", "onnxruntime"))
    assert ours <= 1.2 * theirs, (
        f"peak RSS for MiniLM b8x128: ember {ours:.0f} MiB, onnxruntime {theirs:.0f} MiB "
        f"(ratio {ours / theirs:.2f}, at most 1.2)")


def test_only_a_large_models_compile_collects_and_trims(monkeypatch):
    """A compile of many weights hands its freed heap back (a full collection, ~0.1 s, then
    malloc_trim); a small model's skips it, so the thousands of tiny compiles in the tests
    and a user's small graphs do not pay for it."""
    from ember import api
    from tests.artifact import models

    calls = []
    monkeypatch.setattr(api, "_return_freed_heap", lambda: calls.append(1))
    ember.compile(models.matmul_gelu())
    assert calls == []
    monkeypatch.setattr(api, "_LARGE_MODEL_PARAMETERS", 1)
    ember.compile(models.matmul_gelu())
    assert calls == [1]
    monkeypatch.undo()
    api._return_freed_heap()  # and it runs here (glibc) or does nothing, without an error
