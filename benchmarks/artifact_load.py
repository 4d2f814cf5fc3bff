"""Loading an artifact vs compiling the model: MiniLM, each in a fresh process.

The peer of `ember.load("minilm.ember")` + the first run is `ember.compile("minilm.onnx")`
+ the first run, on the four sample sentences `ember demo` embeds. Every measurement is a
fresh Python process (`--child`), timed from after `import ember` to the end of the first
run; the process's whole wall time (interpreter start and imports included) is reported
beside it. Compiling runs with an empty kernel cache (the C++ build included, as on a
machine that never compiled the model) and again with a warm one; loading runs with an
empty kernel cache too (the shipped library is copied into it). The runs alternate, five
of each by default, and every run's output must be bit-identical to the others'.

    python benchmarks/artifact_load.py [--runs 5] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _report import write_section  # benchmarks/_report.py

ROOT = Path(__file__).resolve().parents[1]


def child(mode: str, model: str) -> None:
    """One measurement, in this (fresh) process: prints a JSON line."""
    import ember
    from ember import _builtin

    feeds = _builtin.tokenize(_builtin.SAMPLE_SENTENCES)
    start = time.perf_counter()
    compiled = ember.load(model) if mode == "load" else ember.compile(model)
    built = time.perf_counter()
    out = compiled.run(feeds)[_builtin.OUTPUT_NAME]
    done = time.perf_counter()
    print(json.dumps({"build_s": built - start, "first_run_s": done - built, "total_s": done - start,
                      "timings": compiled.stats.timings, "output_sha256": hashlib.sha256(out.tobytes()).hexdigest()}))


def measure(mode: str, model: Path, cache: Path) -> dict:
    env = {**os.environ, "EMBER_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(model)], env=env, capture_output=True,
                          text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the {mode} run failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = wall
    return result


def _seconds(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per case (default: 5)")
    parser.add_argument("--write", type=Path, help="write the table into this markdown file")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child)
        return 0

    import ember
    from ember import _builtin

    onnx_path = _builtin.export_minilm()
    with tempfile.TemporaryDirectory(prefix="ember-artifact-bench-") as tmp:
        tmp = Path(tmp)
        artifact = ember.compile(onnx_path).save(tmp / "minilm.ember")
        warm = tmp / "warm-cache"
        measure("compile", onnx_path, warm)  # primes the warm cache
        cases = {"compile, empty kernel cache": ("compile", onnx_path, True),
                 "compile, warm kernel cache": ("compile", onnx_path, False),
                 "load artifact, empty kernel cache": ("load", artifact, True)}
        results: dict[str, list[dict]] = {name: [] for name in cases}
        for i in range(args.runs):
            for name, (mode, model, cold) in cases.items():
                cache = tmp / f"cold-{mode}-{i}" if cold else warm
                results[name].append(measure(mode, model, cache))
                print(f"run {i + 1}/{args.runs} {name}: {results[name][-1]['total_s']:.2f} s", file=sys.stderr,
                      flush=True)
        size = artifact.stat().st_size
    digests = {r["output_sha256"] for rs in results.values() for r in rs}
    if len(digests) != 1:
        raise SystemExit(f"outputs differ between runs: {sorted(digests)}")

    median = {name: float(np.median([r["total_s"] for r in rs])) for name, rs in results.items()}
    load_name = "load artifact, empty kernel cache"
    lines = ["| case | build (s) | first run (s) | build + first run, median (s) | each run (s) | whole process, median (s) |",
             "|---|---|---|---|---|---|"]
    for name, rs in results.items():
        lines.append(f"| {name} | {np.median([r['build_s'] for r in rs]):.3f} | "
                     f"{np.median([r['first_run_s'] for r in rs]):.3f} | **{median[name]:.3f}** | "
                     f"{_seconds([r['total_s'] for r in rs])} | {np.median([r['process_s'] for r in rs]):.2f} |")
    load_timings = results[load_name][len(results[load_name]) // 2]["timings"]
    lines += ["", f"compile (empty cache) / load, build + first run: **{median['compile, empty kernel cache'] / median[load_name]:.1f}x**; "
              f"compile (warm cache) / load: **{median['compile, warm kernel cache'] / median[load_name]:.1f}x**. "
              f"Outputs bit-identical across all {sum(len(rs) for rs in results.values())} runs. "
              f"Loading (one run): reading and checking the {size / 1e6:.0f} MB artifact {load_timings['load']:.3f} s, "
              f"preparing the executor (weights packed for oneDNN) {load_timings['prepare']:.3f} s."]
    import torch

    header = ["## Artifact load vs compile — MiniLM", "",
              f"`python benchmarks/artifact_load.py --runs {args.runs}` — all-MiniLM-L6-v2 (ONNX, opset 17) on the "
              f"four sample sentences of `ember demo`; each measurement a fresh process, timed from after "
              f"`import ember` to the end of the first run.", "",
              f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
              f"Python {platform.python_version()}, torch {torch.__version__}:", ""]
    print("\n".join(header + lines))
    if args.write:
        write_section(args.write, "artifact", header + lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
