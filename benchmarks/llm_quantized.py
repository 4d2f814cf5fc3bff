"""Batch-1 decoding from quantized GGUF weights: ember vs llama.cpp (llama-cpp-python) on
the same file and thread count, and ember's float32 on the same weights dequantized.

Each engine runs in a process of its own (a worker: this script with --worker), rounds
alternating between engines; a round loads the model, decodes 8 tokens to warm up, then
--repeats times decodes --tokens greedy tokens after a short prompt (ignore_eos) and
reports the best of them: tokens/s = tokens / wall time (the prompt's prefill included,
6 tokens). The table gives each engine's median over rounds.

    ember         ember.LLM(file): its Q4_0/Q4_1/Q8_0/Q5 blocks kept (ember.QuantizedLinear)
    ember-f32     ember.LLM(file, quantization="none"): dequantized to float32 at load
    ember-int8    ember.LLM(file, quantization="int8"): dequantized, then quantized to q8_0 blocks
                  by ember's quantize_weights pass (weight-only int8; the head stays float32)
    llama.cpp     llama_cpp.Llama(file, n_threads=--threads), greedy sampling

The Q8_0 and Q4_K_M files (--formats q8_0,q4_k_m) are made from the built-in Q4_1 file with
llama.cpp's own quantizer (llama_model_quantize, allow_requantize) into --work, once. llama-cpp-python must
be built from source (`pip install llama-cpp-python==0.3.36`; on a CPU with AMX:
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON ..." as docs/benchmarks.md says).

    python benchmarks/llm_quantized.py [--formats q4_1,q8_0] [--rounds 3] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

from _report import cpu_name, markdown_table, run_worker, write_section  # benchmarks/_report.py

PROMPT = "The capital of France is"
# ember's engines by name: the options of their ember.LLM (ember-f32 and ember-int8 run the Q4_1 file only)
EMBER = {"ember": {}, "ember-f32": {"quantization": "none"}, "ember-int8": {"quantization": "int8"}}


def runs(engine: str, fmt: str) -> bool:
    """Whether `engine` runs on the file of `fmt`."""
    return fmt == "q4_1" or engine != "ember-int8"


def worker(engine: str, model: str, tokens: int, repeats: int, threads: int) -> dict:
    if engine in EMBER:
        import ember

        llm = ember.LLM(model, max_num_seqs=4, intra_op_threads=threads, **EMBER[engine])
        params = ember.SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
        llm.generate([PROMPT], ember.SamplingParams(temperature=0, max_tokens=8, ignore_eos=True), use_tqdm=False)
        best, ids = 0.0, None
        for _ in range(repeats):
            start = time.perf_counter()
            out = llm.generate([PROMPT], params, use_tqdm=False)[0].outputs[0]
            best = max(best, tokens / (time.perf_counter() - start))
            ids = list(out.token_ids)
        return {"tokens/s": best, "ids": ids}
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=512, verbose=False)
    prompt = llm.tokenize(PROMPT.encode())

    def decode(n):
        ids = []
        for token in llm.generate(prompt, top_k=1, temp=0.0, reset=True):
            ids.append(token)
            if len(ids) == n:
                return ids

    decode(8)
    best, ids = 0.0, None
    for _ in range(repeats):
        start = time.perf_counter()
        ids = decode(tokens)
        best = max(best, tokens / (time.perf_counter() - start))
    return {"tokens/s": best, "ids": ids}


def perplexity_worker(engine: str, model: str, tokens: int, threads: int) -> dict:
    """The perplexity of `engine` on the first `tokens` tokens of ember.testing.accuracy's
    evaluation text, in windows of 512 (each starting afresh), as `perplexity` computes it."""
    import math

    import numpy as np

    import ember
    from ember.frontends.hf import load_pretrained
    from ember.testing.accuracy import evaluation_text, perplexity

    ids = load_pretrained(model, progress=False).tokenizer().encode(evaluation_text())[:tokens]
    if engine in EMBER:
        llm = ember.LLM(model, intra_op_threads=threads, max_model_len=1024, kv_cache_memory=128 << 20,
                        **EMBER[engine])
        return {"perplexity": perplexity(llm, ids)}
    from llama_cpp import Llama

    llm = Llama(model_path=model, n_threads=threads, n_threads_batch=threads, n_ctx=512, n_batch=512,
                logits_all=True, verbose=False)
    total, count = 0.0, 0
    for start in range(0, len(ids), 512):
        window = ids[start:start + 512]
        if len(window) < 2:
            continue
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[:len(window) - 1], dtype=np.float64)
        top = logits.max(axis=1, keepdims=True)
        logprobs = logits - top - np.log(np.exp(logits - top).sum(axis=1, keepdims=True))
        total -= float(logprobs[np.arange(len(window) - 1), window[1:]].sum())
        count += len(window) - 1
    return {"perplexity": math.exp(total / count)}


REQUANTIZED = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}


def requantized(source: Path, work: Path, fmt: str) -> Path:
    """The Q4_1 file requantized to `fmt` (REQUANTIZED) by llama.cpp's quantizer (made once).
    q4_k_m: llama.cpp's mix of Q4_K and Q6_K superblocks; SmolLM2's rows of 576 are no
    multiple of 256, so only its 1536-wide ffn_down takes K-quants and the rest falls back
    to llama.cpp's formats of 32."""
    target = work / (source.stem.rsplit(".", 1)[0] + f".{fmt.upper()}.gguf")
    if not target.exists():
        import llama_cpp

        work.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, REQUANTIZED[fmt])
        params.allow_requantize = True
        params.nthread = os.cpu_count() or 1
        if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
            raise SystemExit(f"llama.cpp could not requantize {source} to {fmt}")
    return target


def perplexity_table(args, files: dict, engines: list[str]) -> int:
    labels, rows, base = [], [], {}
    for fmt, path in files.items():
        for engine in engines:
            if not runs(engine, fmt):
                continue
            value = run_worker(__file__, engine, path, "--perplexity", str(args.perplexity), "--threads",
                               str(args.threads))["perplexity"]
            base.setdefault(fmt, {})[engine] = value
            print(f"{fmt} {engine}: perplexity {value:.4f}", file=sys.stderr, flush=True)
    for fmt, by_engine in base.items():
        for engine, value in by_engine.items():
            peer = by_engine.get("llama.cpp")
            labels.append(f"{fmt} {engine}")
            rows.append({"perplexity": value, "x llama.cpp": value / peer if peer else float("nan")})
    lines = markdown_table("weights, engine", labels, rows)
    header = [f"## Perplexity of quantized weights: {files['q4_1'].name}", "",
              f"{cpu_name()}; {time.strftime('%Y-%m-%d')}; the first {args.perplexity} tokens of "
              "ember.testing.accuracy's evaluation text (standard-library docstrings, Python "
              f"{sys.version.split()[0]}), windows of 512; `python benchmarks/llm_quantized.py --perplexity "
              f"{args.perplexity}`", ""]
    print("\n".join(header + lines))
    if args.write:
        write_section(args.write, "llm_perplexity", header + lines)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--formats", default="q4_1,q8_0",
                        help="comma-separated: q4_1 (the built-in file), q8_0, q4_k_m (requantized by llama.cpp)")
    parser.add_argument("--engines", default="ember,llama.cpp,ember-f32,ember-int8")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "ember" / "benchmarks")
    parser.add_argument("--write", type=Path, help="write the table into this markdown file")
    parser.add_argument("--perplexity", type=int, metavar="TOKENS", default=0,
                        help="instead of timing, compare the engines' perplexity on TOKENS tokens of "
                             "ember.testing.accuracy's evaluation text (e.g. 2048)")
    parser.add_argument("--worker", nargs=2, metavar=("ENGINE", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        if args.perplexity:
            print(json.dumps(perplexity_worker(*args.worker, args.perplexity, args.threads)))
        else:
            print(json.dumps(worker(*args.worker, args.tokens, args.repeats, args.threads)))
        return 0
    from ember._builtin import default_llm

    source = default_llm()
    files = {"q4_1": source}
    for fmt in args.formats.split(","):
        if fmt in REQUANTIZED:
            files[fmt] = requantized(source, args.work, fmt)
    engines = args.engines.split(",")
    if args.perplexity:
        return perplexity_table(args, files, engines)
    results: dict[tuple[str, str], list[float]] = {}
    ids: dict[tuple[str, str], list[int]] = {}
    for r in range(args.rounds):
        for fmt, path in files.items():
            for engine in engines:
                if not runs(engine, fmt):
                    continue
                got = run_worker(__file__, engine, path, "--tokens", str(args.tokens), "--repeats", str(args.repeats),
                                 "--threads", str(args.threads))
                results.setdefault((fmt, engine), []).append(got["tokens/s"])
                ids[(fmt, engine)] = got["ids"]
                print(f"round {r + 1}: {fmt} {engine}: {got['tokens/s']:.1f} tokens/s", file=sys.stderr, flush=True)
    labels, rows = [], []
    for (fmt, engine), values in results.items():
        peer = results.get((fmt, "llama.cpp"))
        same = sum(a == b for a, b in zip(ids[(fmt, engine)], ids.get((fmt, "llama.cpp"), [])))
        labels.append(f"{fmt} {engine}")
        rows.append({"tokens/s (median)": statistics.median(values), "min": min(values), "max": max(values),
                     "x llama.cpp": statistics.median(values) / statistics.median(peer) if peer else float("nan"),
                     "greedy tokens as llama.cpp's": same})
    lines = markdown_table("weights, engine", labels, rows)
    header = [f"## Quantized decoding, batch 1: {source.name}", "",
              f"{cpu_name()}, {os.cpu_count()} cores, {args.threads} threads; {time.strftime('%Y-%m-%d')}; "
              f"{args.tokens} greedy tokens after a {len(PROMPT.split())}-word prompt, best of {args.repeats} per "
              f"round, median of {args.rounds} rounds, each engine in its own process; "
              "`python benchmarks/llm_quantized.py`", ""]
    print("\n".join(header + lines))
    if args.write:
        write_section(args.write, "llm_quantized", header + lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
