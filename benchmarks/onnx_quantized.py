"""Quantized ONNX models, ember vs onnxruntime on the same file: all-MiniLM-L6-v2 (the
built-in model, exported to ONNX) quantized by onnxruntime.quantization, run at batch x
sequence (default 8 x 128).

    dynamic         quantize_dynamic, int8 weights per tensor (DynamicQuantizeLinear ->
                    MatMulInteger -> Cast -> Mul -> Add around each MatMul)
    dynamic-column  quantize_dynamic, int8 weights per column
    qdq             quantize_static in the QDQ format, the MatMuls' inputs quantized (uint8
                    activations per tensor, int8 weights per column), calibrated on 15 chunks of
                    ember.testing.accuracy's evaluation text

ember runs them as the files are, by default: the integer ops on its exact integer GEMM
(codegen's cpu_integer_gemm.cpp), fuse_integer_matmul and fold_qdq folding the rescales in.
onnxruntime runs them with its default graph optimizations and intra_op_num_threads
--threads. Each engine runs in a process of its own (a worker: this script with --worker),
rounds alternating between engines: a round loads the model, runs 3 warm-up runs, then
times --repeats runs and reports their median; the table gives each engine's median over
rounds. Also: each engine's output against ember's reference interpreter on the same file
and feeds (max |difference| over the tokens; onnxruntime with optimizations off for the
spec's arithmetic computed its way).

    python benchmarks/onnx_quantized.py [--rounds 5] [--models dynamic,qdq] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _report import cpu_name, markdown_table, run_worker, write_section  # benchmarks/_report.py

MODELS = ("dynamic", "dynamic-column", "qdq")
ENGINES = ("ember", "onnxruntime")


def feeds(path: Path, batch: int, seq: int) -> dict:
    import onnx

    rng = np.random.default_rng(0)
    values = {"input_ids": rng.integers(1000, 20000, (batch, seq)), "attention_mask": np.ones((batch, seq)),
              "token_type_ids": np.zeros((batch, seq))}
    names = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]
    return {k: v.astype(np.int64) for k, v in values.items() if k in names}


def make(model: str, work: Path) -> Path:
    """The quantized file of `model` under `work` (made once)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static

    from ember._builtin import export_minilm, minilm_dir

    work.mkdir(parents=True, exist_ok=True)
    path = work / f"minilm-{model}.onnx"
    if path.exists():
        return path
    source = str(export_minilm())
    if model.startswith("dynamic"):
        quantize_dynamic(source, str(path), weight_type=QuantType.QInt8, per_channel=model == "dynamic-column")
        return path
    from transformers import AutoTokenizer

    from ember.testing.accuracy import calibration_feeds

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(calibration_feeds(AutoTokenizer.from_pretrained(minilm_dir())))

        def get_next(self):
            return next(self.batches, None)

    quantize_static(source, str(path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8, op_types_to_quantize=["MatMul"])
    return path


def worker(engine: str, path: str, batch: int, seq: int, repeats: int, threads: int) -> dict:
    f = feeds(Path(path), batch, seq)
    if engine == "ember":
        import ember

        model = ember.compile(path, intra_op_threads=threads)
        run = lambda: model.run(f)  # noqa: E731
    else:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        run = lambda: session.run(None, f)  # noqa: E731
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return {"ms": 1e3 * statistics.median(times)}


def agreement(path: Path, batch: int, seq: int) -> dict:
    """Max |output - the reference interpreter's| over the tokens, per engine (in this process:
    not timed)."""
    import onnxruntime as ort

    import ember
    from ember.frontends.onnx import load_onnx
    from ember.ir.interpreter import evaluate

    f = feeds(path, batch, seq)
    want = list(evaluate(load_onnx(path), f).values())[0]
    got = {"ember": list(ember.compile(path).run(f).values())[0]}
    for name, level in (("onnxruntime", ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
                        ("onnxruntime, no optimizations", ort.GraphOptimizationLevel.ORT_DISABLE_ALL)):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        got[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, f)[0]
    return {name: float(np.abs(v - want).max()) for name, v in got.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "ember" / "benchmarks")
    parser.add_argument("--write", type=Path, help="write the table into this markdown file")
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.batch, args.seq, args.repeats, args.threads)))
        return 0
    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}: choose from {', '.join(MODELS)}")
    paths = {m: make(m, args.work) for m in models}
    times: dict[tuple[str, str], list[float]] = {}
    for r in range(args.rounds):
        for model, path in paths.items():
            for engine in ENGINES:
                ms = run_worker(__file__, engine, path, "--batch", str(args.batch), "--seq", str(args.seq),
                                "--repeats", str(args.repeats), "--threads", str(args.threads))["ms"]
                times.setdefault((model, engine), []).append(ms)
                print(f"round {r + 1}: {model} {engine}: {ms:.1f} ms", file=sys.stderr, flush=True)
    labels, rows = [], []
    for model, path in paths.items():
        diffs = agreement(path, 2, 16)
        peer = statistics.median(times[(model, "onnxruntime")])
        for engine in ENGINES:
            values = times[(model, engine)]
            labels.append(f"{model} {engine}")
            rows.append({"ms (median)": statistics.median(values), "min": min(values), "max": max(values),
                         "x onnxruntime": statistics.median(values) / peer,
                         "max diff vs reference": diffs[engine]})
        print(f"{model}: onnxruntime with graph optimizations off vs the reference: "
              f"{diffs['onnxruntime, no optimizations']:.2e}", file=sys.stderr)
    lines = markdown_table("file, engine", labels, rows)
    header = ["## Quantized ONNX: all-MiniLM-L6-v2 quantized by onnxruntime.quantization", "",
              f"{cpu_name()}, {os.cpu_count()} cores, {args.threads} threads; {time.strftime('%Y-%m-%d')}; batch "
              f"{args.batch} x {args.seq} tokens, median of {args.repeats} runs per round, median of {args.rounds} "
              "rounds, each engine in its own process, rounds alternating; max diff: the last hidden state "
              "against ember's reference interpreter at 2 x 16 tokens; `python benchmarks/onnx_quantized.py`", ""]
    print("\n".join(header + lines))
    if args.write:
        write_section(args.write, "onnx_quantized", header + lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
