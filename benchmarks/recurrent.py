"""ember vs onnxruntime on small recurrent models (the size of voice-activity and
diacritization models): latency of one run, each engine in its own process.

Each round starts one fresh process per engine, in alternating order; a process compiles
(or creates its session), warms up, and prints the median of --runs timed runs; the table
gives the median over --rounds of those medians. Engines never share a process
(onnxruntime's idle workers spin after a run and would slow what runs next).

Workloads, exported from torch.nn modules (batch 1, float32): LSTM hidden 64 over 50
steps, the same bidirectional, GRU hidden 64 over 50 steps, and an LSTM with
sequence_lens (batch 4, lengths 50, 37, 20, 5), built with onnx.helper.

    python benchmarks/recurrent.py [--rounds 5] [--runs 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from _report import cpu_name  # benchmarks/_report.py

HIDDEN, SEQ, SIZE = 64, 50, 40


def _export(module, x, path: Path) -> None:
    import torch

    torch.onnx.export(module.eval(), (x,), str(path), input_names=["x"], dynamo=False,
                      dynamic_axes={"x": {0: "seq"}})


def _lstm_with_lengths(path: Path) -> dict:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((1, 4 * HIDDEN, SIZE)) * 0.1).astype(np.float32), "W")
    r = numpy_helper.from_array((rng.standard_normal((1, 4 * HIDDEN, HIDDEN)) * 0.1).astype(np.float32), "R")
    node = helper.make_node("LSTM", ["x", "W", "R", "", "lens"], ["y", "y_h"], hidden_size=HIDDEN)
    graph = helper.make_graph([node], "lstm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", 4, SIZE]),
                                               helper.make_tensor_value_info("lens", TensorProto.INT32, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y_h", TensorProto.FLOAT, None)], [w, r])
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return {"x": rng.standard_normal((SEQ, 4, SIZE)).astype(np.float32), "lens": np.array([50, 37, 20, 5], np.int32)}


def workloads(folder: Path) -> dict[str, tuple[Path, dict]]:
    import torch

    torch.manual_seed(0)
    x = torch.randn(SEQ, 1, SIZE)
    feeds = {"x": x.numpy()}
    out = {}
    for name, module in (("LSTM h64 s50 b1", torch.nn.LSTM(SIZE, HIDDEN)),
                         ("BiLSTM h64 s50 b1", torch.nn.LSTM(SIZE, HIDDEN, bidirectional=True)),
                         ("GRU h64 s50 b1", torch.nn.GRU(SIZE, HIDDEN))):
        path = folder / (name.split()[0] + ".onnx")
        _export(module, x, path)
        out[name] = (path, feeds)
    path = folder / "lstm_lengths.onnx"
    out["LSTM h64 s50 b4 lens"] = (path, _lstm_with_lengths(path))
    return out


def time_one(engine: str, path: str, feeds_path: str, runs: int, threads: int) -> None:
    """In a process of its own: the median latency (ms) of `runs` runs, and the outputs' digest."""
    import time

    feeds = dict(np.load(feeds_path))
    if engine == "ember":
        import ember

        compiled = ember.compile(path, intra_op_threads=threads)
        assert not compiled.stats.fallback_nodes, compiled.stats.fallback_nodes
        run = lambda: list(compiled.run(feeds).values())  # noqa: E731
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        run = lambda: session.run(None, feeds)  # noqa: E731
    outs = run()
    for _ in range(20):
        run()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    print(json.dumps({"ms": float(np.median(times)) * 1e3, "out": [np.asarray(o).tolist() for o in outs]}))


def _child(engine, path, feeds_path, runs, threads) -> dict:
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import recurrent; "
            f"recurrent.time_one({engine!r}, {str(path)!r}, {str(feeds_path)!r}, {runs}, {threads})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="processes per engine (default 5)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per process (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    parser.add_argument("--only", help="run the workloads whose name contains this")
    args = parser.parse_args(argv)
    cpu = cpu_name()
    print(f"{cpu}, {os.cpu_count()} cores; threads {args.threads}; median over {args.rounds} processes per "
          f"engine of the median of {args.runs} runs")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (path, feeds) in workloads(Path(tmp)).items():
            if args.only and args.only.lower() not in name.lower():
                continue
            feeds_path = Path(tmp) / "feeds.npz"
            np.savez(feeds_path, **feeds)
            medians = {"ember": [], "onnxruntime": []}
            outs = {}
            for i in range(args.rounds):
                for engine in (("ember", "onnxruntime") if i % 2 == 0 else ("onnxruntime", "ember")):
                    result = _child(engine, path, feeds_path, args.runs, args.threads)
                    medians[engine].append(result["ms"])
                    outs[engine] = result["out"]
            diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(outs["ember"], outs["onnxruntime"]))
            e, o = float(np.median(medians["ember"])), float(np.median(medians["onnxruntime"]))
            rows.append({"workload": name, "ember_ms": e, "onnxruntime_ms": o, "ratio": e / o, "max_abs_diff": diff})
            print(f"{name:22s} ember {e:7.3f} ms   onnxruntime {o:7.3f} ms   ratio {e / o:5.2f}   "
                  f"max|diff| {diff:.1e}", flush=True)
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
