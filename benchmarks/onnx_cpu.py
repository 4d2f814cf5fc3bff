"""ember vs onnxruntime on the CPU, in one run: latency (median of --runs after warm-up,
in blocks of --block runs per engine, the blocks alternating so that both engines see
the same drift in machine speed) and peak resident memory (each engine alone in a fresh
process, VmHWM).

Idle worker threads spin before they sleep: onnxruntime's for ~40 ms of CPU after a run,
ember's OpenMP threads for ~10 ms (measured with time.process_time over an idle pause
after a run). So each block starts with untimed runs of its engine for at least
--settle seconds (default 0.1; busy, so the cores do not idle): neither engine's timed
runs share the cores with the other's spinning threads. (With one untimed run only,
MiniLM b1's ember runs right after an onnxruntime block took 26 ms instead of 19.)

Workloads: MiniLM (batch 1 and 8, sequence 128, real tokens) and onnx's light ResNet-50
(batch 1). onnxruntime runs with every graph optimization and the same thread count.

    python benchmarks/onnx_cpu.py [--runs 40] [--block 5] [--threads N] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx

import ember
from ember import _builtin

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
PASSAGE = ("ember is a model compiler and inference runtime. It lowers ONNX graphs and Hugging Face "
           "language models into one intermediate representation, optimizes them with graph passes, "
           "and generates fused kernels for CPUs and GPUs. ") * 8


def minilm(batch: int) -> tuple[Path, dict[str, np.ndarray]]:
    feeds = _builtin.tokenize([PASSAGE] * batch, max_length=128)
    assert feeds["input_ids"].shape == (batch, 128), feeds["input_ids"].shape
    return _builtin.export_minilm(), feeds


def workloads() -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    out = {f"MiniLM b{batch}x128": minilm(batch) for batch in (1, 8)}
    model = onnx.load(LIGHT / "light_resnet50.onnx", load_external_data=False)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    out["ResNet-50 b1"] = (LIGHT / "light_resnet50.onnx", {model.graph.input[0].name: x})
    return out


def make_runner(engine: str, path: Path, threads: int):
    if engine == "ember":
        compiled = ember.compile(str(path), intra_op_threads=threads)
        assert not compiled.stats.fallback_nodes, compiled.stats.fallback_nodes
        return lambda feeds: list(compiled.run(feeds).values())
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda feeds: session.run(None, feeds)


def latency(runs: int, warmup: int, threads: int, block: int = 5, only: str | None = None,
            settle: float = 0.1) -> list[dict]:
    rows = []
    for name, (path, feeds) in workloads().items():
        if only and only.lower() not in name.lower():
            continue
        runners = {engine: make_runner(engine, path, threads) for engine in ("ember", "onnxruntime")}
        outs = {engine: run(feeds) for engine, run in runners.items()}
        diff = max(float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
                   for a, b in zip(outs["ember"], outs["onnxruntime"]))
        times = {engine: [] for engine in runners}
        for engine, run in runners.items():
            for _ in range(warmup):
                run(feeds)
        while len(times["ember"]) < runs:
            for engine, run in runners.items():
                until = time.perf_counter() + settle
                run(feeds)  # untimed, for at least `settle` s: the other engine's threads stop spinning
                while time.perf_counter() < until:
                    run(feeds)
                for _ in range(min(block, runs - len(times[engine]))):
                    t0 = time.perf_counter()
                    run(feeds)
                    times[engine].append(time.perf_counter() - t0)
        e, o = (float(np.median(times[k])) * 1e3 for k in ("ember", "onnxruntime"))
        rows.append({"workload": name, "ember_ms": e, "onnxruntime_ms": o, "ratio": e / o, "max_abs_diff": diff})
        print(f"{name:18s} ember {e:8.2f} ms   onnxruntime {o:8.2f} ms   ratio {e / o:5.2f}   "
              f"max|diff| {diff:.1e}", flush=True)
    return rows


def high_water_kib() -> int:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that across
    exec, so a child started by a big parent would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def peak_rss(engine: str, batch: int, threads: int, runs: int) -> float:
    """Peak RSS (MiB) of a fresh process that loads, compiles and runs MiniLM on one engine."""
    code = ("import sys; sys.path.insert(0, %r); import onnx_cpu as b; "
            "path, feeds = b.minilm(%d); run = b.make_runner(%r, path, %d); "
            "[run(feeds) for _ in range(%d)]; "
            "print(b.high_water_kib())") % (
        str(Path(__file__).parent), batch, engine, threads, runs)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40, help="timed runs per engine (default 40)")
    parser.add_argument("--block", type=int, default=5, help="runs per engine before switching (default 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads (default: all cores)")
    parser.add_argument("--only", help="run the workloads whose name contains this (e.g. ResNet); skips memory")
    parser.add_argument("--settle", type=float, default=0.1,
                        help="seconds of untimed runs before each block, while the other engine's threads stop spinning")
    parser.add_argument("--write", type=Path, help="replace this benchmark's section of a markdown file")
    args = parser.parse_args(argv)
    from _report import cpu_name  # benchmarks/_report.py (here: tests load this file by its path)

    machine = f"{cpu_name()}, {platform.machine()}, {os.cpu_count()} cores"
    print(f"{machine}; threads {args.threads}; median of {args.runs} runs after {args.warmup} warm-up")
    rows = latency(args.runs, args.warmup, args.threads, args.block, args.only, args.settle)
    if args.only:
        return 0
    rss = {engine: peak_rss(engine, 8, args.threads, 5) for engine in ("ember", "onnxruntime")}
    print(f"peak RSS, MiniLM b8x128: ember {rss['ember']:.0f} MiB, onnxruntime {rss['onnxruntime']:.0f} MiB, "
          f"ratio {rss['ember'] / rss['onnxruntime']:.2f}")
    if args.write:
        import onnxruntime
        import torch

        table = ["| workload | ember (ms) | onnxruntime (ms) | ember / onnxruntime | max abs diff |",
                 "|---|---|---|---|---|"]
        table += [f"| {r['workload']} | {r['ember_ms']:.2f} | {r['onnxruntime_ms']:.2f} | {r['ratio']:.2f} | "
                  f"{r['max_abs_diff']:.1e} |" for r in rows]
        section = "\n".join([
            "## CPU latency — ember vs onnxruntime", "",
            "`python benchmarks/onnx_cpu.py --write docs/benchmarks.md` — medians of "
            f"{args.runs} runs per engine ({args.warmup} warm-up runs, then alternating blocks of {args.block}, "
            f"each after {args.settle:g} s of untimed runs), "
            f"{args.threads} threads each, onnxruntime with ORT_ENABLE_ALL.", "",
            f"{time.strftime('%Y-%m-%d')}, {machine}, Python {platform.python_version()}, torch {torch.__version__}, "
            f"onnxruntime {onnxruntime.__version__}:", "", *table, "",
            f"Peak resident memory, MiniLM b8x128 (a fresh process per engine: load, compile, 5 runs): "
            f"ember {rss['ember']:.0f} MiB, onnxruntime {rss['onnxruntime']:.0f} MiB "
            f"(ratio {rss['ember'] / rss['onnxruntime']:.2f}).", "", ""])
        text = args.write.read_text()
        start = text.find("## CPU latency")
        if start >= 0:
            end = text.find("\n## ", start + 1)
            text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
        else:
            head = text.find("\n## ")
            text = text[:head + 1] + section + "\n" + text[head + 1:]
        args.write.write_text(text)
    print(json.dumps({"rows": rows, "peak_rss_mib": rss}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
