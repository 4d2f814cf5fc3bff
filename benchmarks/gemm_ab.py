"""Two builds of the tiled GEMM (ember/codegen/cpu_gemm.cpp) against each other in one
process: MiniLM's linear layers (6 layers of [384 x 1152], [384 x 384], [384 x 1536] + GELU,
[1536 x 384] + residual, each layer with weights of its own, so that they stream from memory
as in the model) as a chain at each row count, the two builds called alternately run by
run. On a VM whose speed swings 1.2-1.5x within minutes, separate processes minutes apart
cannot see a 3% change; alternating runs in one process see both builds through the same
swings. Prints each GEMM's median time ratio (new / base; over 6 x runs calls each) and the
chain's (its medians over runs: noisier). Run it A/A first (`--base HEAD` on an unchanged
tree) to see the floor: on a 2-core AMD EPYC Zen 3 VM the per-GEMM ratios of A/A runs came
within 1-4% of 1, the chain's within 1-9%.

    python benchmarks/gemm_ab.py                       # the working tree against HEAD
    python benchmarks/gemm_ab.py --base HEAD~2 --rows 128,2048 --runs 40
    python benchmarks/gemm_ab.py --new other.cpp       # a file of your own against HEAD

Each build is the file with ember's CPU prelude in front, compiled as codegen compiles it
(ember/codegen/cpu.py FLAGS); the weights are packed by each build's own `ember_gemm_pack`
into `native.empty` arrays (huge pages, as in a compiled model).
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _report import cpu_name  # benchmarks/_report.py

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "ember/codegen/cpu_gemm.cpp"
HIDDEN, FFN, LAYERS = 384, 1536, 6
# (K, N, activation: gemm.ACTIVATIONS's code, residual) of one MiniLM layer's linear layers
SHAPES = [(HIDDEN, 3 * HIDDEN, 0, False), (HIDDEN, HIDDEN, 0, True), (HIDDEN, FFN, 2, False), (FFN, HIDDEN, 0, True)]


def build(source: str, out: Path, entry: str = "ember_gemm", flags: tuple[str, ...] = ()) -> ctypes.CDLL:
    """`source` (cpu_gemm.cpp's text, or another hand-written kernel's whose `entry` the
    caller declares) behind the prelude, built into `out` (codegen's flags, then `flags`) and
    loaded."""
    from ember.codegen import cpu
    from ember.codegen.cpu_prelude import PRELUDE

    src = out.with_suffix(".cpp")
    src.write_text(PRELUDE + source)
    cxx = cpu.compiler()
    if cxx is None:
        raise SystemExit("no C++ compiler")
    proc = subprocess.run([cxx, *cpu.FLAGS, *flags, str(src), "-o", str(out)], capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{out.name} did not build:\n{proc.stderr[-3000:]}")
    lib = ctypes.CDLL(str(out))  # (RTLD_LOCAL: the two builds' symbols stay apart)
    if entry != "ember_gemm":
        return lib
    P, I = ctypes.c_void_p, ctypes.c_int64
    lib.ember_gemm.argtypes = [P, I, P, P, P, I, P, I, I, I, I, I, I]
    lib.ember_gemm_pack.argtypes = [P, I, I, I, I, P]
    lib.ember_gemm_panel.restype = I
    return lib


def packed(lib, w: np.ndarray) -> np.ndarray:
    from ember.runtime import native

    k, n = w.shape
    nr = lib.ember_gemm_panel()
    out = native.empty(-(-n // nr) * nr * k, np.float32)
    lib.ember_gemm_pack(w.ctypes.data, k, n, n, 1, out.ctypes.data)
    return out


def chain(lib, weights, rows: int, threads: int, bufs: dict, times: list[list[float]]) -> float:
    """One run of the 6 layers' GEMMs; each GEMM's seconds appended to times[g]."""
    a, q, o, f, bias = bufs["a"], bufs["q"], bufs["o"], bufs["f"], bufs["bias"]
    start = time.perf_counter()
    for layer in weights:
        calls = [(a, HIDDEN, q, 3 * HIDDEN, None), (q, 3 * HIDDEN, o, HIDDEN, a), (o, HIDDEN, f, FFN, None),
                 (f, FFN, a, HIDDEN, o)]  # x, its row stride, y, its row stride, residual
        for g, ((k, n, act, _), w, (x, lda, y, ldy, res)) in enumerate(zip(SHAPES, layer, calls)):
            t = time.perf_counter()
            lib.ember_gemm(x.ctypes.data, lda, w.ctypes.data, bias.ctypes.data,
                           None if res is None else res.ctypes.data, HIDDEN, y.ctypes.data, ldy, rows, k, n, act,
                           threads)
            times[g].append(time.perf_counter() - t)
    return time.perf_counter() - start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="HEAD", help="the git revision whose cpu_gemm.cpp is the base (default HEAD)")
    ap.add_argument("--new", default=None, help="the new build's source file (default: the working tree's)")
    ap.add_argument("--rows", default="128,1024,2048", help="comma-separated row counts (tokens)")
    ap.add_argument("--runs", type=int, default=0, help="runs per build (default: ~4 s of each, at least 10)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    base_src = subprocess.run(["git", "show", f"{args.base}:{SOURCE}"], cwd=ROOT, capture_output=True, text=True)
    if base_src.returncode:
        raise SystemExit(f"git show {args.base}:{SOURCE} failed: {base_src.stderr.strip()}")
    new_src = Path(args.new).read_text() if args.new else (ROOT / SOURCE).read_text()
    work = Path(tempfile.mkdtemp(prefix="ember-gemm-ab-"))
    libs = [build(base_src.stdout, work / "base.so"), build(new_src, work / "new.so")]
    rng = np.random.default_rng(0)
    dense = [[(rng.standard_normal((k, n)) * 0.05).astype(np.float32) for k, n, _, _ in SHAPES] for _ in range(LAYERS)]
    weights = [[[packed(lib, w) for w in layer] for layer in dense] for lib in libs]
    print(f"{cpu_name()}; {args.threads} threads; new ({args.new or 'working tree'}) / base ({args.base}), "
          "medians of alternating runs")
    for rows in (int(r) for r in args.rows.split(",")):
        bufs = {"a": rng.standard_normal((rows, HIDDEN)).astype(np.float32),
                "q": np.zeros((rows, 3 * HIDDEN), np.float32), "o": np.zeros((rows, HIDDEN), np.float32),
                "f": np.zeros((rows, FFN), np.float32), "bias": np.zeros(FFN, np.float32)}
        flops = LAYERS * sum(2 * rows * k * n for k, n, _, _ in SHAPES)
        runs = args.runs or max(10, int(4 * 150e9 / flops))
        times = [[[] for _ in SHAPES] for _ in libs]
        total: list[list[float]] = [[], []]
        for lib, w in zip(libs, weights):  # a warm-up run each
            chain(lib, w, rows, args.threads, bufs, [[] for _ in SHAPES])
        for r in range(2 * runs):
            v = r % 2
            total[v].append(chain(libs[v], weights[v], rows, args.threads, bufs, times[v]))
        med = [statistics.median(t) for t in total]
        per = "  ".join(f"{k}x{n} {statistics.median(times[1][g]) / statistics.median(times[0][g]):.3f}"
                        for g, (k, n, _, _) in enumerate(SHAPES))
        print(f"rows {rows:5d}: base {med[0] * 1e3:8.2f} ms ({flops / med[0] / 1e9:5.1f} GFLOP/s)  new {med[1] * 1e3:8.2f} ms"
              f"  new/base {med[1] / med[0]:.3f}  |  {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
