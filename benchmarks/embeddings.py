"""Sentence embeddings: ember.Encoder vs sentence-transformers' encode on the same folder
(the built-in all-MiniLM-L6-v2), 2,000 sentences of mixed length (#25's workload).

The sentences are 3-120 words each (uniform, seeded), cut from ember.testing.accuracy's
local evaluation text (standard-library docstrings), so nothing is downloaded. Each engine
runs in a process of its own (a worker: this script with --worker), rounds alternating:
a round loads the model, embeds 64 sentences to warm up, then times one embedding of all
of them; the table gives each engine's median over rounds and the cosine of its
embeddings against sentence-transformers' (torch) on the first 200 sentences.

    ember                  ember.Encoder(folder).embed(sentences) (its default batches: at most
                           2,048 padded tokens)
    sentence-transformers  SentenceTransformer(folder, device="cpu").encode(sentences)
                           (torch, its default batch size 32)
    st-onnx                the same with backend="onnx" (onnxruntime, through `optimum`)
    ember-server           `ember serve FOLDER` under load: 32 concurrent clients (the openai
                           client, in the worker's process) each sending /v1/embeddings
                           requests of 4 sentences, the next when the last is answered

optimum pins transformers below 5 and sentence-transformers' onnx backend needs it, so the
sentence-transformers workers may run in another Python (`--peer-python`, a venv with
`pip install "sentence-transformers==5.1.2" "optimum[onnxruntime]==2.1.0" "transformers==4.57.6"
hypothesis` and this repository's ember installed --no-deps, for the sentences; unpinned, pip
backtracked for minutes); st-onnx is left out with a note where no interpreter at hand has
optimum.

    python benchmarks/embeddings.py [--sentences 2000] [--rounds 3] [--peer-python PATH] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from _report import cpu_name, markdown_table, run_worker, write_section  # benchmarks/_report.py

ENGINES = ("ember", "ember-server", "sentence-transformers", "st-onnx")


def sentences(count: int, seed: int = 0) -> list[str]:
    from ember.testing.accuracy import evaluation_text

    words = evaluation_text().split()
    rng = np.random.default_rng(seed)
    out = []
    for n in rng.integers(3, 121, count):
        start = int(rng.integers(0, len(words) - n))
        out.append(" ".join(words[start:start + n]))
    return out


CLIENTS, PER_REQUEST = 32, 4  # ember-server's load: 32 concurrent clients, 4 sentences a request
TRUNCATE = {"truncate_prompt_tokens": -1}  # (at the model's limit, as sentence-transformers truncates; the
                                           # server refuses longer inputs unless asked)


def serve_embeddings(folder: str, texts: list[str]) -> tuple[float, np.ndarray]:
    """`ember serve FOLDER` in a subprocess, sent `texts` as /v1/embeddings requests of
    PER_REQUEST sentences by CLIENTS clients at once (each sends its next request when its
    last one is answered); (seconds from the first request to the last answer, the vectors)."""
    import asyncio

    import openai
    from serve import Server  # benchmarks/serve.py

    server = Server(folder, [])
    try:
        chunks = [texts[i:i + PER_REQUEST] for i in range(0, len(texts), PER_REQUEST)]
        vectors: list = [None] * len(chunks)

        async def run() -> float:
            client = openai.AsyncOpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=600)
            await client.embeddings.create(model=Path(folder).name, input=texts[:64], extra_body=TRUNCATE)  # warm up
            todo = iter(range(len(chunks)))

            async def loop():
                for i in todo:
                    answer = await client.embeddings.create(model=Path(folder).name, input=chunks[i],
                                                            extra_body=TRUNCATE)
                    vectors[i] = [d.embedding for d in answer.data]

            start = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(CLIENTS)))
            return time.perf_counter() - start

        seconds = asyncio.run(run())
    finally:
        server.stop()
    return seconds, np.asarray([v for chunk in vectors for v in chunk], np.float32)


def worker(engine: str, folder: str, count: int, out: str) -> dict:
    texts = sentences(count)
    if engine == "ember-server":
        seconds, vectors = serve_embeddings(folder, texts)
        np.save(out, vectors[:200])
        return {"s": seconds}
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
    parser.add_argument("--peer-python", metavar="PATH",
                        help="the interpreter of the sentence-transformers workers (default: this one)")
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
    peer_python = args.peer_python or sys.executable
    has_optimum = subprocess.run([peer_python, "-c", "import optimum.onnxruntime"], capture_output=True).returncode == 0
    if "st-onnx" in engines and not has_optimum:
        engines.remove("st-onnx")
        notes.append(f"st-onnx left out: sentence-transformers' onnx backend needs `optimum`, which {peer_python} "
                     "does not have (--peer-python)")
    versions = subprocess.run([peer_python, "-c", "import sentence_transformers, transformers; "
                               "print(sentence_transformers.__version__, transformers.__version__)"],
                              capture_output=True, text=True).stdout.split()
    if versions and any(not e.startswith("ember") for e in engines):
        notes.append(f"sentence-transformers {versions[0]} (transformers {versions[1]}) in {peer_python}")
    args.work.mkdir(parents=True, exist_ok=True)
    times: dict[str, list[float]] = {}
    for r in range(args.rounds):
        for engine in engines:
            out = args.work / f"embeddings-{engine}.npy"
            seconds = run_worker(__file__, engine, folder, "--sentences", str(args.sentences), "--out", str(out),
                                 python=None if engine.startswith("ember") else peer_python)["s"]
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
    section = header + lines + ([""] + notes if notes else [])
    print("\n".join(section))
    if args.write:
        write_section(args.write, "embeddings", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
