"""ember's LLM engine vs transformers' generate, offline throughput, in one run.

The workload (seeded): --requests requests (default 64), prompts of random token ids with
lengths uniform in [16, 512], output lengths uniform in [16, 256], every request
generating exactly its length (ignore_eos), greedy, on the built-in SmolLM2-135M-Instruct
(or --model). Every request arrives at the start.

- ember: `ember.LLM` with its defaults (continuous batching, chunked prefill, paged KV
  cache with prefix caching; a GGUF file's quantized blocks kept), all requests handed
  to one `generate` call. ember-f32 (`--engines ember,ember-f32`): the same with the
  weights dequantized to float32 (quantization="none"). `--kv-cache-dtype float16`: ember's
  KV cache in float16 (default: float32, the model's).
- ember-json (`--engines ember-json`): ember with every request constrained to
  `JSON_SCHEMA` (structured outputs: a grammar mask on every step of every request), still
  ignore_eos and its length as the cap: a request whose JSON is complete earlier ends there
  (its tokens are counted as they are). `benchmarks/structured_throughput.py` compares it
  with plain ember, each in its own process.
- transformers: `generate` over static batches of 8 in arrival order (left padding; each
  batch runs to its longest output; only the tokens each request asked for are counted).

Reported: requests/s, output tokens/s, time to first token (TTFT: from the start to the
request's first token) and time per output token (TPOT: its decoding time over its
tokens after the first), medians and p90; the wall time of each engine.

    python benchmarks/llm_throughput.py [--requests 64] [--seed 0] [--threads N] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from _report import cpu_name, markdown_table, write_section  # benchmarks/_report.py

import ember
from ember import _builtin


@dataclass
class Result:
    engine: str
    wall_s: float
    output_tokens: int
    ttft: list[float]
    tpot: list[float]

    def row(self, requests: int) -> dict[str, float]:
        return {"requests/s": requests / self.wall_s, "output tokens/s": self.output_tokens / self.wall_s,
                "TTFT median s": float(np.median(self.ttft)), "TTFT p90 s": float(np.percentile(self.ttft, 90)),
                "TPOT median ms": 1e3 * float(np.median(self.tpot)),
                "TPOT p90 ms": 1e3 * float(np.percentile(self.tpot, 90)), "wall s": self.wall_s}


def workload(n: int, seed: int, vocab: int) -> list[tuple[list[int], int]]:
    rng = np.random.default_rng(seed)
    prompt_lens = rng.integers(16, 512, n, endpoint=True)
    output_lens = rng.integers(16, 256, n, endpoint=True)
    # ids from the ordinary vocabulary (no special tokens) so neither engine stops early
    return [(rng.integers(1000, vocab, p).tolist(), int(o)) for p, o in zip(prompt_lens, output_lens)]


# ember-json's schema: records of a few typed fields, at least as many as the output's length
# holds (so that every request, greedy, runs to its length as the plain ones do)
JSON_SCHEMA = {"type": "array", "minItems": 64, "items": {
    "type": "object", "properties": {"id": {"type": "integer"}, "name": {"type": "string", "maxLength": 24},
                                     "kind": {"enum": ["a", "b", "c"]}, "ok": {"type": "boolean"}},
    "required": ["id", "name", "kind", "ok"], "additionalProperties": False}}


def run_ember(path: Path, requests, threads: int | None, quantization: str | None = None, name: str = "ember",
              kv_cache_dtype: str | None = None, tensor_parallel_size: int = 1, target: str = "cpu",
              structured: dict | None = None) -> Result:
    """(threads None: ember's default, the cores shared by the ranks)"""
    llm = ember.LLM(str(path), intra_op_threads=threads, quantization=quantization, kv_cache_dtype=kv_cache_dtype,
                    tensor_parallel_size=tensor_parallel_size, target=target)
    params = [ember.SamplingParams(temperature=0, max_tokens=out, ignore_eos=True, structured_outputs=structured)
              for _, out in requests]
    llm.generate([{"prompt_token_ids": requests[0][0]}], params[0], use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p, _ in requests], params, use_tqdm=False)
    wall = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    assert all(len(o.outputs[0].token_ids) == out or structured for o, (_, out) in zip(outputs, requests))
    ttft = [o.metrics.first_token_time - start for o in outputs]
    tpot = [o.metrics.time_per_output_token for o in outputs]
    llm.shutdown()
    return Result(name, wall, tokens, ttft, tpot)


def run_transformers(path: Path, requests, threads: int, batch: int = 8) -> Result:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    torch.set_num_threads(threads)
    model = _builtin.transformers_llm(path)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0

    class Clock(StoppingCriteria):  # called once per generated token: when each token came
        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores, **kwargs):
            self.times.append(time.perf_counter())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    with torch.no_grad():  # warm-up
        model.generate(torch.tensor([requests[0][0][:16]]), max_new_tokens=2, do_sample=False, pad_token_id=pad)
    ttft, tpot, tokens = [], [], 0
    start = time.perf_counter()
    for b in range(0, len(requests), batch):
        group = requests[b:b + batch]
        width = max(len(p) for p, _ in group)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p, _ in group])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in group])
        longest = max(out for _, out in group)
        clock = Clock()
        with torch.no_grad():
            model.generate(ids, attention_mask=mask, max_new_tokens=longest, min_new_tokens=longest,
                           do_sample=False, pad_token_id=pad, stopping_criteria=StoppingCriteriaList([clock]))
        for _, out in group:
            tokens += out
            ttft.append(clock.times[0] - start)
            tpot.append((clock.times[out - 1] - clock.times[0]) / max(out - 1, 1))
    return Result("transformers", time.perf_counter() - start, tokens, ttft, tpot)


def table(results: list[Result], requests: int) -> list[str]:
    return markdown_table("engine", [r.engine for r in results], [r.row(requests) for r in results])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="LLM folder or GGUF file (default: the built-in SmolLM2-135M-Instruct)")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--engines", default="ember,transformers", help="comma-separated, run in this order")
    parser.add_argument("--kv-cache-dtype", help="ember's KV cache element type (default: the model's, float32)")
    parser.add_argument("--write", type=Path, help="write the table into this markdown file")
    parser.add_argument("--json", action="store_true", help="print each engine's result as a JSON line too")
    args = parser.parse_args(argv)
    path = Path(args.model) if args.model else _builtin.default_llm()
    from ember.frontends.hf import load_pretrained

    vocab = load_pretrained(path, progress=False).config.vocab_size
    requests = workload(args.requests, args.seed, vocab)
    results = []
    for engine in args.engines.split(","):
        kv = {"kv_cache_dtype": args.kv_cache_dtype}
        run = {"ember": lambda *a: run_ember(*a, **kv), "transformers": run_transformers,
               # ember with a GGUF file's weights dequantized to float32 (the default keeps its blocks)
               "ember-f32": lambda *a: run_ember(*a, quantization="none", name="ember-f32", **kv),
               "ember-json": lambda *a: run_ember(*a, name="ember-json", structured={"json": JSON_SCHEMA}, **kv)}[engine]
        print(f"running {engine} on {len(requests)} requests ...", file=sys.stderr, flush=True)
        results.append(run(path, requests, args.threads))
        if args.json:
            r = results[-1]
            print(json.dumps({"engine": r.engine, "wall_s": r.wall_s, "output_tokens": r.output_tokens}), flush=True)
        print("\n".join(table(results[-1:], len(requests))), file=sys.stderr, flush=True)
    lines = table(results, len(requests))
    if len(results) == 2:
        ratio = results[0].output_tokens / results[0].wall_s / (results[1].output_tokens / results[1].wall_s)
        lines.append("")
        lines.append(f"{results[0].engine} / {results[1].engine} output tokens/s: **{ratio:.2f}x**")
    header = [f"## LLM throughput: {path.name}, {len(requests)} requests (seed {args.seed})", "",
              f"{cpu_name()}, {os.cpu_count()} cores, {args.threads} threads; "
              f"{time.strftime('%Y-%m-%d')}; `python benchmarks/llm_throughput.py`", ""]
    print("\n".join(header + lines))
    if args.write:
        write_section(args.write, "llm_throughput", header + lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
