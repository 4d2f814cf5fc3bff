"""Loading an artifact vs compiling the model, from process start: MiniLM, each in a fresh process.

The peer of `ember.load("minilm.ember")` + the first run is `ember.compile("minilm.onnx")`
+ the first run, on the four sample sentences `ember demo` embeds (tokenized once, by the
parent, so no child imports a tokenizer); onnxruntime's `InferenceSession("minilm.onnx")`
+ the first run is timed the same way, as what a user switching from it compares with.
Every measurement is a fresh Python process (`--child`), timed as a user sees it: from the
moment the parent starts it to the end of the first run (interpreter start and `import`
included), and to its exit. The time after `import ember` (build + first run, the figure
this script reported before) is kept beside it. Compiling runs with an empty kernel cache
(the C++ build included, as on a machine that never compiled the model) and again with a
warm one; loading runs with an empty kernel cache too (the shipped library is copied into
it). The cases alternate, five rounds by default; every ember run's output must be
bit-identical to the others', and onnxruntime's close to them. Python modules come from
their bytecode caches, as after anyone's first import (a child unsets
PYTHONDONTWRITEBYTECODE, which some sandboxes set: every process then compiles ember's
~100 modules from source again, ~0.2 s on a 2-core EPYC; the priming run writes them).

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
from _report import cpu_name, write_section  # benchmarks/_report.py

ROOT = Path(__file__).resolve().parents[1]
LOAD, COMPILE_COLD, COMPILE_WARM, ORT = ("load artifact, empty kernel cache", "compile, empty kernel cache",
                                          "compile, warm kernel cache", "onnxruntime InferenceSession")


def child(mode: str, model: str, feeds_path: str, output: str, spawned: float) -> None:
    """One measurement, in this (fresh) process: prints a JSON line. `spawned` is the
    parent's time.time() just before it started this process."""
    feeds = dict(np.load(feeds_path))
    start = time.perf_counter()
    if mode == "onnxruntime":
        import onnxruntime

        imported = time.perf_counter()
        session = onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])
        built = time.perf_counter()
        out = session.run([output], feeds)[0]
        timings = {}
    else:
        import ember

        imported = time.perf_counter()
        compiled = ember.load(model) if mode == "load" else ember.compile(model)
        built = time.perf_counter()
        out = compiled.run(feeds)[output]
        timings = compiled.stats.timings
    done = time.perf_counter()
    from_start = time.time() - spawned
    np.save(Path(feeds_path).with_name(f"out-{mode}.npy"), out)
    print(json.dumps({"import_s": imported - start, "build_s": built - imported, "first_run_s": done - built,
                      "total_s": done - imported, "from_start_s": from_start, "timings": timings,
                      "output_sha256": hashlib.sha256(out.tobytes()).hexdigest()}))


def measure(mode: str, model: Path, feeds: Path, output: str, cache: Path) -> dict:
    env = {**os.environ, "EMBER_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    spawned = time.time()
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", mode, str(model), str(feeds), output, repr(spawned)],
                          env=env, capture_output=True, text=True)
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
    parser.add_argument("--child", nargs=5, metavar=("MODE", "MODEL", "FEEDS", "OUTPUT", "SPAWNED"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        mode, model, feeds, output, spawned = args.child
        child(mode, model, feeds, output, float(spawned))
        return 0

    import ember
    from ember import _builtin

    onnx_path = _builtin.export_minilm()
    with tempfile.TemporaryDirectory(prefix="ember-artifact-bench-") as tmp:
        tmp = Path(tmp)
        feeds = tmp / "feeds.npz"
        np.savez(feeds, **_builtin.tokenize(_builtin.SAMPLE_SENTENCES))
        artifact = ember.compile(onnx_path).save(tmp / "minilm.ember")
        warm = tmp / "warm-cache"
        measure("compile", onnx_path, feeds, _builtin.OUTPUT_NAME, warm)  # primes the warm cache (and bytecode)
        measure("load", artifact, feeds, _builtin.OUTPUT_NAME, tmp / "primer")
        cases = {COMPILE_COLD: ("compile", onnx_path, True), COMPILE_WARM: ("compile", onnx_path, False),
                 LOAD: ("load", artifact, True), ORT: ("onnxruntime", onnx_path, False)}
        results: dict[str, list[dict]] = {name: [] for name in cases}
        for i in range(args.runs):
            for name, (mode, model, cold) in cases.items():
                cache = tmp / f"cold-{mode}-{i}" if cold else warm
                results[name].append(measure(mode, model, feeds, _builtin.OUTPUT_NAME, cache))
                print(f"run {i + 1}/{args.runs} {name}: {results[name][-1]['from_start_s']:.2f} s from process start",
                      file=sys.stderr, flush=True)
        size = artifact.stat().st_size
        ort_out, ember_out = np.load(tmp / "out-onnxruntime.npy"), np.load(tmp / "out-load.npy")
    ember_cases = [name for name in cases if name != ORT]
    digests = {r["output_sha256"] for name in ember_cases for r in results[name]}
    if len(digests) != 1:
        raise SystemExit(f"ember's outputs differ between runs: {sorted(digests)}")
    ort_diff = float(np.abs(ort_out.astype(np.float64) - ember_out).max())
    if ort_diff > 1e-3:
        raise SystemExit(f"onnxruntime's output differs from ember's by {ort_diff}")

    def median(name: str, key: str) -> float:
        return float(np.median([r[key] for r in results[name]]))

    lines = ["| case | import (s) | build (s) | first run (s) | after import: build + first run (s) | "
             "**process start → first result (s)** | each run from start (s) | whole process (s) |",
             "|---|---|---|---|---|---|---|---|"]
    for name, rs in results.items():
        lines.append(f"| {name} | {median(name, 'import_s'):.3f} | {median(name, 'build_s'):.3f} | "
                     f"{median(name, 'first_run_s'):.3f} | {median(name, 'total_s'):.3f} | "
                     f"**{median(name, 'from_start_s'):.2f}** | {_seconds([r['from_start_s'] for r in rs])} | "
                     f"{median(name, 'process_s'):.2f} |")
    load_timings = results[LOAD][len(results[LOAD]) // 2]["timings"]

    def ratio(a: str, b: str, key: str) -> str:
        return f"**{median(a, key) / median(b, key):.1f}x**"

    lines += ["", "Medians. `import ember` loads no heavy library: compiling imports sympy and onnx within build, "
              "loading neither (a loaded program's sizes are `ember.ir.sizes.Size`s, its graph parsed on first "
              "use), torch only where a step runs on it (none of MiniLM's does). Compile / load, from "
              "process start: "
              f"{ratio(COMPILE_COLD, LOAD, 'from_start_s')} (empty kernel cache), "
              f"{ratio(COMPILE_WARM, LOAD, 'from_start_s')} (warm); after `import ember` (build + first run): "
              f"{ratio(COMPILE_COLD, LOAD, 'total_s')} (empty), {ratio(COMPILE_WARM, LOAD, 'total_s')} (warm). "
              f"ember's load / onnxruntime's session, from process start: "
              f"{ratio(LOAD, ORT, 'from_start_s')}. ember's outputs bit-identical across all "
              f"{sum(len(results[n]) for n in ember_cases)} runs; onnxruntime's within {ort_diff:.1e} of them. "
              f"Loading (one run): reading and checking the {size / 1e6:.0f} MB artifact {load_timings['load']:.3f} s, "
              f"preparing the executor (weights packed for its GEMMs) {load_timings['prepare']:.3f} s."]
    import onnxruntime
    import torch

    cpu = cpu_name()
    header = ["## Artifact load vs compile — MiniLM", "",
              f"`python benchmarks/artifact_load.py --runs {args.runs}` — all-MiniLM-L6-v2 (ONNX, opset 17) on the "
              f"four sample sentences of `ember demo`; each measurement a fresh process, timed from its start (as a "
              f"user sees it: interpreter and imports included) to the end of the first run.", "",
              f"{time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
              f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}:", ""]
    print("\n".join(header + lines))
    if args.write:
        write_section(args.write, "artifact", header + lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
