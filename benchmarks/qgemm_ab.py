"""Two builds of the quantized GEMM (ember/codegen/cpu_quantized_gemm.cpp) against each other in
one process, as benchmarks/gemm_ab.py does for the float32 GEMM: SmolLM2-135M's linear layers
(q, k, v, o, gate, up, down of each of --layers layers, weights of their own, in llama.cpp's
blocks of --format, packed by each build's own ember_qgemm_pack) as a chain at each row count,
the two builds called alternately run by run. Prints the chain's integer GOP/s (2 per
multiply-add) and each shape's median time ratio, new / base. Run it A/A first (`--base HEAD`
on an unchanged tree) to see the floor.

    python benchmarks/qgemm_ab.py                          # the working tree against HEAD
    python benchmarks/qgemm_ab.py --format q8_0 --rows 1,64,256 --runs 20
"""

from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from _report import cpu_name  # benchmarks/_report.py
from gemm_ab import ROOT, build  # benchmarks/gemm_ab.py

SOURCE = "ember/codegen/cpu_quantized_gemm.cpp"
HIDDEN, FFN, KV = 576, 1536, 192
SHAPES = [(HIDDEN, HIDDEN), (KV, HIDDEN), (KV, HIDDEN), (HIDDEN, HIDDEN), (FFN, HIDDEN), (FFN, HIDDEN),
          (HIDDEN, FFN)]  # (n, k) of one layer's weights: q, k, v, o, gate, up, down
NAMES = ["q", "k", "v", "o", "gate", "up", "down"]
FORMATS = {"q8_0": (0, 34), "q4_0": (1, 18), "q4_1": (2, 20), "q5_0": (3, 22), "q5_1": (4, 24)}  # code, bytes a block


def blocks(rng, code: int, size: int, n: int, k: int) -> np.ndarray:
    """A weight [n, k] of random quants with small float16 scales (and mins), as a file stores it."""
    w = rng.integers(0, 256, (n, k // 32, size), dtype=np.uint8)
    heads = 4 if code in (2, 4) else 2
    w[:, :, :heads] = (rng.standard_normal((n, k // 32, heads // 2)) * 0.01).astype(np.float16).view(np.uint8)
    return w.reshape(n, -1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="HEAD", help="the git revision whose source is the base (default HEAD)")
    ap.add_argument("--new", default=None, help="the new build's source file (default: the working tree's)")
    ap.add_argument("--format", default="q4_1", choices=sorted(FORMATS))
    ap.add_argument("--rows", default="1,64,256", help="comma-separated row counts (tokens)")
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--runs", type=int, default=20, help="runs per build and row count")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--define", action="append", default=[], metavar="NAME",
                    help="#define NAME in both builds, e.g. EMBER_QGEMM_NO_AVX512 (AVX2's groups of 8 on an "
                         "AVX-512 CPU) or EMBER_QGEMM_NO_VNNI (maddubs' int16 sums); repeatable")
    ap.add_argument("--cflags", default="", help="more compiler flags for both builds, e.g. -mno-avx512f (an AVX2 "
                                                 "machine's code, registers and all)")
    args = ap.parse_args(argv)

    base_src = subprocess.run(["git", "show", f"{args.base}:{SOURCE}"], cwd=ROOT, capture_output=True, text=True)
    if base_src.returncode:
        raise SystemExit(f"git show {args.base}:{SOURCE} failed: {base_src.stderr.strip()}")
    new_src = Path(args.new).read_text() if args.new else (ROOT / SOURCE).read_text()
    defines = "".join(f"#define {name} 1\n" for name in args.define)
    work = Path(tempfile.mkdtemp(prefix="ember-qgemm-ab-"))
    libs = [build(defines + base_src.stdout, work / "base.so", "ember_qgemm", tuple(args.cflags.split())),
            build(defines + new_src, work / "new.so", "ember_qgemm", tuple(args.cflags.split()))]
    P, I = ctypes.c_void_p, ctypes.c_int64
    for lib in libs:
        lib.ember_qgemm.argtypes = [I, P, I, I, I, P, I, I, P, P, I, I, I]
        lib.ember_qgemm_packed_bytes.argtypes = [I, I, I]
        lib.ember_qgemm_packed_bytes.restype = I
        lib.ember_qgemm_pack.argtypes = [I, P, I, I, I, P]
    code, size = FORMATS[args.format]
    rng = np.random.default_rng(0)
    raw = [[blocks(rng, code, size, n, k) for n, k in SHAPES] for _ in range(args.layers)]

    def pack(lib, w, n, k):
        out = np.zeros(lib.ember_qgemm_packed_bytes(code, n, k), np.uint8)
        lib.ember_qgemm_pack(code, w.ctypes.data, n, k, w.strides[0], out.ctypes.data)
        return out

    packed = [[[pack(lib, w, n, k) for w, (n, k) in zip(layer, SHAPES)] for layer in raw] for lib in libs]
    variant = "".join(" -D" + d for d in args.define) + (" " + args.cflags if args.cflags else "")
    print(f"{cpu_name()}; {args.threads} threads; {args.format}{variant}; new ({args.new or 'working tree'}) / base "
          f"({args.base}), medians of alternating runs")
    for rows in (int(r) for r in args.rows.split(",")):
        x = {k: rng.standard_normal((rows, k)).astype(np.float32) for k in (HIDDEN, FFN)}
        ys = [np.zeros((rows, n), np.float32) for n, _ in SHAPES]
        check = [np.zeros((rows, n), np.float32) for n, _ in SHAPES]
        times = [[[] for _ in SHAPES] for _ in libs]
        total: list[list[float]] = [[], []]
        for run in range(args.runs + 1):
            for which, (lib, weights) in enumerate(zip(libs, packed)):
                start = time.perf_counter()
                for layer in weights:
                    for s, ((n, k), w) in enumerate(zip(SHAPES, layer)):
                        t = time.perf_counter()
                        lib.ember_qgemm(code, x[k].ctypes.data, rows, k, k, w.ctypes.data, n, 0, None,
                                        (ys if which else check)[s].ctypes.data, n, 0, args.threads)
                        if run:
                            times[which][s].append(time.perf_counter() - t)
                if run:
                    total[which].append(time.perf_counter() - start)
        diff = max(float(np.abs(a - b).max()) for a, b in zip(ys, check))
        ops = args.layers * sum(2 * rows * n * k for n, k in SHAPES)
        base, new = (statistics.median(t) for t in total)
        per = "  ".join(f"{name} {statistics.median(times[1][s]) / statistics.median(times[0][s]):.3f}"
                        for s, name in enumerate(NAMES))
        print(f"rows {rows:4d}: base {base * 1e3:8.2f} ms ({ops / base / 1e9:6.1f} GOP/s)  new {new * 1e3:8.2f} ms "
              f"({ops / new / 1e9:6.1f} GOP/s)  new/base {new / base:.3f}  |  {per}  |  max|new - base| {diff:.1e}",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
