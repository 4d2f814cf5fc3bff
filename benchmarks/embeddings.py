"""Sentence embeddings: ember.Encoder vs sentence-transformers' encode on the same folder
(the built-in all-MiniLM-L6-v2), 2,000 sentences of mixed length (#25's workload).

The sentences are 3-120 words each (uniform, seeded), cut from ember.testing.accuracy's
local evaluation text (standard-library docstrings), so nothing is downloaded. Each engine
runs in a process of its own (a worker: this script with --worker), rounds alternating:
a round loads the model, embeds 64 sentences to warm up, then times one embedding of all
of them; the table gives each engine's median over rounds and the cosine of its
embeddings against sentence-transformers' (torch) on the first 200 sentences.

    ember                  ember.Encoder(folder).embed(sentences) (batch size 32)
    sentence-transformers  SentenceTransformer(folder, device="cpu").encode(sentences)
                           (torch, its default batch size 32)
    st-onnx                the same with backend="onnx" (onnxruntime; needs `optimum`, and
                           is left out with a note where that is not installed)

    python benchmarks/embeddings.py [--sentences 2000] [--rounds 3] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from _report import cpu_name, markdown_table, run_worker, write_section  # benchmarks/_report.py

ENGINES = ("ember", "sentence-transformers", "st-onnx")


def sentences(count: int, seed: int = 0) -> list[str]:
    from ember.testing.accuracy import evaluation_text

    words = evaluation_text().split()
    rng = np.random.default_rng(seed)
    out = []
    for n in rng.integers(3, 121, count):
        start = int(rng.integers(0, len(words) - n))
        out.append(" ".join(words[start:start + n]))
    return out


def worker(engine: str, folder: str, count: int, out: str) -> dict:
    texts = sentences(count)
    if engine == "ember":
        import ember

        encoder = ember.Encoder(folder)
        embed = lambda batch: encoder.embed(batch)  # noqa: E731
    else:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        options = {"backend": "onnx"} if engine == "st-onnx" else {}
        model = SentenceTransformer(folder, device="cpu", **options)
        embed = lambda batch: model.encode(batch)  # noqa: E731
    embed(texts[:64])
    start = time.perf_counter()
    vectors = embed(texts)
    seconds = time.perf_counter() - start
    np.save(out, np.asarray(vectors[:200], np.float32))
    return {"s": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated, of {', '.join(ENGINES)}")
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "ember" / "benchmarks")
    parser.add_argument("--write", type=Path, help="write the table into this markdown file")
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "FOLDER"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.sentences, args.out)))
        return 0
    from ember._builtin import minilm_dir

    folder = minilm_dir()
    engines = args.engines.split(",")
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engines {unknown}: choose from {', '.join(ENGINES)}")
    notes = []
    if "st-onnx" in engines and importlib.util.find_spec("optimum") is None:
        engines.remove("st-onnx")
        notes.append("st-onnx left out: sentence-transformers' onnx backend needs `optimum`, not installed here")
    args.work.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for engine in engines:
            out = args.work / f"embeddings-{engine}.npy"
            seconds = run_worker(__file__, engine, folder, "--sentences", str(args.sentences), "--out", str(out))["s"]
            times.setdefault(engine, []).append(seconds)
            print(f"round {r + 1}: {engine}: {seconds:.2f} s", file=sys.stderr, flush=True)
    reference = np.load(args.work / "embeddings-sentence-transformers.npy") \
        if "sentence-transformers" in engines else None
    peer = statistics.median(times["sentence-transformers"]) if "sentence-transformers" in engines else None
    rows = []
    for engine in engines:
        median = statistics.median(times[engine])
        row = {"s (median)": median, "min": min(times[engine]), "max": max(times[engine]),
               "sentences/s": args.sentences / median}
        if peer is not None:
            row["x sentence-transformers' speed"] = peer / median
            mine = np.load(args.work / f"embeddings-{engine}.npy").astype(np.float64)
            ref = reference.astype(np.float64)
            row["min cosine vs sentence-transformers"] = float(
                ((mine * ref).sum(1) / np.linalg.norm(mine, axis=1) / np.linalg.norm(ref, axis=1)).min())
        rows.append(row)
    lines = markdown_table("engine", engines, rows)
    header = ["## Sentence embeddings: all-MiniLM-L6-v2, ember vs sentence-transformers", "",
              f"{cpu_name()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; {args.sentences} sentences of "
              f"3-120 words, one embedding of all of them per round, median of {args.rounds} rounds, each engine in "
              "its own process, rounds alternating; `python benchmarks/embeddings.py`", ""]
    text = "\n".join(header + lines + ([""] + notes if notes else []))
    print(text)
    if args.write:
        write_section(args.write, "embeddings", header + lines + ([""] + notes if notes else []))
    return 0


if __name__ == "__main__":
    sys.exit(main())
