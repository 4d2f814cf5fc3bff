"""ember vs onnxruntime when another process keeps one core busy: MiniLM b1x128 latency
with and without a busy loop pinned to one core (`taskset -c CORE`), and their ratio.

Each engine (and each ember variant, e.g. an OpenMP wait policy set in its environment)
runs in a process of its own, started once and kept: the driver asks each in turn for
--runs timed runs (after --settle s of untimed ones, so no other engine's idle workers
still spin), with the busy loop on or off, alternating the two conditions round by
round, and reports the medians. Threads: --threads for every engine (default: all cores).

    python benchmarks/contention.py [--rounds 6] [--runs 15] [--core 1]
    python benchmarks/contention.py --variant passive=OMP_WAIT_POLICY=PASSIVE   # an ember variant

On a machine others are using too, --high-priority (root) runs the engines and the busy
loop in a scheduling group of their own at nice -20 (Linux's autogroups give each
session an equal share whatever its processes' nice), so that "quiet" means what it
says: the engines and the one busy loop, not everyone else's work.
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
from _report import cpu_name  # benchmarks/_report.py

HERE = Path(__file__).resolve().parent


def worker(engine: str, threads: int) -> None:
    """Serve `time RUNS SETTLE` lines on stdin with a JSON list of latencies (s) on stdout."""
    sys.path.insert(0, str(HERE))
    import onnx_cpu

    path, feeds = onnx_cpu.minilm(1)
    run = onnx_cpu.make_runner(engine, path, threads)
    for _ in range(5):
        run(feeds)
    print("ready", flush=True)
    for line in sys.stdin:
        _, runs, settle = line.split()
        until = time.perf_counter() + float(settle)
        while time.perf_counter() < until:
            run(feeds)
        times = []
        for _ in range(int(runs)):
            t0 = time.perf_counter()
            run(feeds)
            times.append(time.perf_counter() - t0)
        print(json.dumps(times), flush=True)


class Engine:
    def __init__(self, name: str, engine: str, threads: int, env: dict[str, str]):
        self.name = name
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--worker", engine, "--threads", str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env})
        line = self.process.stdout.readline()
        assert line.strip() == "ready", f"{name} did not start: {line!r}"

    def time(self, runs: int, settle: float) -> list[float]:
        self.process.stdin.write(f"time {runs} {settle}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)


def busy_loop(core: int) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c", "while True: pass"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds, each timing every engine quiet and busy")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per engine per condition per round")
    parser.add_argument("--settle", type=float, default=0.3, help="untimed seconds before each timed block")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--core", type=int, default=1, help="the core the busy loop is pinned to")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=VAR=VALUE[,VAR=VALUE]",
                        help="also time ember with these environment variables (repeatable); the pseudo-variable "
                             "threads=N sets its thread count instead")
    parser.add_argument("--no-baseline", action="store_true", help="time only the --variant embers and onnxruntime")
    parser.add_argument("--high-priority", action="store_true",
                        help="run everything at nice -20 in an autogroup of its own (needs root)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.threads)
        return 0
    if args.high_priority:
        os.setsid()
        Path("/proc/self/autogroup").write_text("-20")
        os.nice(-20 - os.nice(0))
    cpu = cpu_name()
    print(f"{cpu}, {os.cpu_count()} cores, {platform.machine()}; threads {args.threads}; busy loop on core "
          f"{args.core}; load average before: {os.getloadavg()[0]:.1f}"
          f"{'; at nice -20 in an autogroup of its own' if args.high_priority else ''}", flush=True)
    specs = [] if args.no_baseline else [("ember", "ember", {})]
    for spec in args.variant:
        name, _, assignments = spec.partition("=")
        env = dict(a.split("=", 1) for a in assignments.split(","))
        specs.append((f"ember {name}", "ember", env))
    specs.append(("onnxruntime", "onnxruntime", {}))
    engines = [Engine(name, engine, int(env.pop("threads", args.threads)), env) for name, engine, env in specs]
    times = {(e.name, busy): [] for e in engines for busy in (False, True)}
    try:
        for r in range(args.rounds):
            for busy in ((False, True) if r % 2 == 0 else (True, False)):
                loop = busy_loop(args.core) if busy else None
                try:
                    time.sleep(0.2 if busy else 0)
                    order = engines if r % 2 == 0 else engines[::-1]
                    for e in order:
                        times[(e.name, busy)].extend(e.time(args.runs, args.settle))
                finally:
                    if loop is not None:
                        loop.kill()
                        loop.wait()
    finally:
        for e in engines:
            e.close()
    print(f"\nMiniLM b1x128, medians of {args.rounds * args.runs} runs each (ms):")
    print(f"{'engine':<24} {'quiet':>8} {'busy core':>10} {'busy/quiet':>11}")
    rows = []
    for e in engines:
        quiet, busy = (float(np.median(times[(e.name, b)])) * 1e3 for b in (False, True))
        rows.append({"engine": e.name, "quiet_ms": quiet, "busy_ms": busy, "ratio": busy / quiet})
        print(f"{e.name:<24} {quiet:8.2f} {busy:10.2f} {busy / quiet:11.2f}")
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
