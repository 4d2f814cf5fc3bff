"""ember vs onnxruntime on the CPU, in one run: latency (median of --runs per engine, each
engine timed in processes of its own, --rounds of them alternating, so that both see the
same drift in machine speed) and peak resident memory (each engine alone in a fresh
process, VmHWM).

Each engine runs alone in its process: onnxruntime's idle worker threads spin for ~40 ms
of CPU after a run (ember's OpenMP threads for ~10 ms) and would slow whatever ran next in
the same process. A worker compiles or loads the model, checks its outputs, warms up for
--warmup runs and at least --settle seconds, then times its share of the runs.

Workloads: MiniLM (batch 1 and 8, sequence 128, real tokens) and onnx's light ResNet-50
(batch 1). onnxruntime runs with every graph optimization and the same thread count.

    python benchmarks/onnx_cpu.py [--runs 40] [--rounds 4] [--threads N] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

import ember
from ember import _builtin

sys.path.insert(0, str(Path(__file__).parent))
from _report import cpu_name, run_worker  # noqa: E402  (benchmarks/_report.py)

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
PASSAGE = ("ember is a model compiler and inference runtime. It lowers ONNX graphs and Hugging Face "
           "language models into one intermediate representation, optimizes them with graph passes, "
           "and generates fused kernels for CPUs and GPUs. ") * 8


def minilm(batch: int) -> tuple[Path, dict[str, np.ndarray]]:
    feeds = _builtin.tokenize([PASSAGE] * batch, max_length=128)
    assert feeds["input_ids"].shape == (batch, 128), feeds["input_ids"].shape
    return _builtin.export_minilm(), feeds


WORKLOADS = ("MiniLM b1x128", "MiniLM b8x128", "ResNet-50 b1")


def workload(name: str) -> tuple[Path, dict[str, np.ndarray]]:
    if name.startswith("MiniLM"):
        return minilm(int(name.split()[1][1:].split("x")[0]))
    model = onnx.load(LIGHT / "light_resnet50.onnx", load_external_data=False)
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    return LIGHT / "light_resnet50.onnx", {model.graph.input[0].name: x}


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


def worker(engine: str, name: str, runs: int, warmup: int, threads: int, settle: float, out: str) -> dict:
    """Time `runs` runs of one engine on one workload, alone in this process; its first
    outputs go to `out` (.npz) for the parent to compare."""
    path, feeds = workload(name)
    run = make_runner(engine, path, threads)
    np.savez(out, *[np.asarray(o) for o in run(feeds)])
    until = time.perf_counter() + settle
    for _ in range(warmup):
        run(feeds)
    while time.perf_counter() < until:
        run(feeds)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run(feeds)
        times.append(time.perf_counter() - t0)
    return {"times": times}


def latency(runs: int, warmup: int, threads: int, rounds: int = 4, only: str | None = None,
            settle: float = 0.5, work: Path | None = None) -> list[dict]:
    """Each workload's median latency per engine over `runs` runs, timed in `rounds` worker
    processes per engine, the engines alternating (and taking turns to go first)."""
    work = work or Path(tempfile.mkdtemp(prefix="onnx_cpu-"))
    rows = []
    for name in WORKLOADS:
        if only and only.lower() not in name.lower():
            continue
        engines = ["ember", "onnxruntime"]
        times: dict[str, list[float]] = {engine: [] for engine in engines}
        per_round = -(-runs // rounds)
        for r in range(rounds):
            for engine in engines if r % 2 == 0 else engines[::-1]:
                out = work / f"{engine}.npz"
                times[engine] += run_worker(__file__, engine, Path(name), str(per_round), str(warmup),
                                            str(threads), str(settle), str(out))["times"]
        outs = {engine: np.load(work / f"{engine}.npz") for engine in engines}
        diff = max(float(np.abs(outs["ember"][k].astype(np.float64) - outs["onnxruntime"][k].astype(np.float64)).max())
                   for k in outs["ember"].files)
        e, o = (float(np.median(times[k])) * 1e3 for k in engines)
        rows.append({"workload": name, "ember_ms": e, "onnxruntime_ms": o, "ratio": e / o, "max_abs_diff": diff,
                     "rounds": {k: [float(np.median(times[k][i * per_round:(i + 1) * per_round])) * 1e3
                                    for i in range(rounds)] for k in engines}})
        spread = " ".join(f"{a / b:.2f}" for a, b in zip(*rows[-1]["rounds"].values()))
        print(f"{name:18s} ember {e:8.2f} ms   onnxruntime {o:8.2f} ms   ratio {e / o:5.2f}   "
              f"(by round: {spread})   max|diff| {diff:.1e}", flush=True)
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
    parser.add_argument("--rounds", type=int, default=4,
                        help="worker processes per engine and workload, alternating (default 4)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first, in each worker (default 3)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads (default: all cores)")
    parser.add_argument("--only", help="run the workloads whose name contains this (e.g. ResNet); skips memory")
    parser.add_argument("--settle", type=float, default=0.5,
                        help="at least this many seconds of untimed runs in each worker before timing (default 0.5)")
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "WORKLOAD"), help=argparse.SUPPRESS)
    parser.add_argument("--write", type=Path, help="replace this benchmark's section of a markdown file")
    args, extra = parser.parse_known_args(argv)
    if args.worker:  # (run_worker passes: ENGINE WORKLOAD RUNS WARMUP THREADS SETTLE OUT)
        runs, warmup, threads, settle, out = extra
        print(json.dumps(worker(*args.worker, int(runs), int(warmup), int(threads), float(settle), out)))
        return 0
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    machine = f"{cpu_name()}, {platform.machine()}, {os.cpu_count()} cores"
    print(f"{machine}; threads {args.threads}; median of {args.runs} runs after {args.warmup} warm-up")
    rows = latency(args.runs, args.warmup, args.threads, args.rounds, args.only, args.settle)
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
            f"{args.runs} runs per engine, timed in {args.rounds} processes of its own per engine and workload, "
            f"alternating with the other engine's (each after {args.warmup} warm-up runs and at least "
            f"{args.settle:g} s of untimed runs), "
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
