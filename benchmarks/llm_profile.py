"""Where an LLM engine's time goes on #6's mixed workload: every step of the compiled
forward graph timed (the executor's profile), summed by what ran (an extern's name, the
generated kernels) and by the kind of engine step — "decode" (every scheduled request
computes one token) or "mixed" (some prefill in it).

The workload is `llm_throughput.py`'s (seeded random prompts of 16-512 tokens, outputs of
16-256, greedy, ignore_eos), --requests of them handed to one `generate` call. Profiling
runs each step on its own (no chained run), so the wall time is a little longer than
llm_throughput.py's.

    python benchmarks/llm_profile.py [--requests 24] [--quantization none] [--kv-cache-dtype float16]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import defaultdict

from llm_throughput import workload  # benchmarks/llm_throughput.py

import ember
from ember import _builtin
from ember.runtime.profiler import _kind


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="LLM folder or GGUF file (default: the built-in SmolLM2-135M-Instruct)")
    parser.add_argument("--requests", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--quantization", help="as ember.LLM's (default: a GGUF file's blocks kept)")
    parser.add_argument("--kv-cache-dtype", help="as ember.LLM's (default: the model's dtype)")
    args = parser.parse_args(argv)
    path = args.model or _builtin.default_llm()
    llm = ember.LLM(str(path), intra_op_threads=args.threads, quantization=args.quantization,
                    kv_cache_dtype=args.kv_cache_dtype)
    requests = workload(args.requests, args.seed, llm.engine.vocab_size)
    params = [ember.SamplingParams(temperature=0, max_tokens=out, ignore_eos=True) for _, out in requests]
    llm.generate([{"prompt_token_ids": requests[0][0]}], params[0], use_tqdm=False)  # warm-up
    runner = llm.engine.runner
    executor, execute = runner.executor, runner.execute
    executor.profile = []
    by_kind: dict[tuple[str, str], float] = defaultdict(float)
    steps: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])

    def timed(out):
        first, start = len(executor.profile), time.perf_counter()
        result = execute(out)
        kind = "decode" if out.num_batched_tokens == len(out.scheduled) else "mixed"
        steps[kind][0] += 1
        steps[kind][1] += time.perf_counter() - start
        for step, _, seconds in executor.profile[first:]:
            by_kind[kind, _kind(step, {})] += seconds
        del executor.profile[first:]
        return result

    runner.execute = timed
    start = time.perf_counter()
    outputs = llm.generate([{"prompt_token_ids": p} for p, _ in requests], params, use_tqdm=False)
    wall = time.perf_counter() - start
    tokens = sum(len(o.outputs[0].token_ids) for o in outputs)
    print(f"{path}, quantization={args.quantization}, kv_cache_dtype={args.kv_cache_dtype}; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.threads} threads")
    print(f"{args.requests} requests, {tokens} output tokens in {wall:.1f} s ({tokens / wall:.1f} tokens/s, profiled)")
    for kind, (count, seconds) in sorted(steps.items()):
        print(f"{kind:7s} {count:5d} steps {seconds:8.2f} s")
    for (kind, what), seconds in sorted(by_kind.items(), key=lambda item: -item[1]):
        print(f"  {kind:7s} {what:36s} {seconds:8.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
