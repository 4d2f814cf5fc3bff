"""Batch-1 decoding: how much of each engine step is spent outside the model's run
(scheduler, step inputs, sampler, detokenizer, output bookkeeping), on the built-in
Q4_1 SmolLM2 (or --model).

The model runner's call of the executor and each `LLMEngine.step` are timed around
(wrappers on the one engine); one request of --tokens greedy tokens after a warm-up
request; medians and p90 over the decode steps (the prefill step left out).

    python benchmarks/llm_step_overhead.py [--model PATH] [--tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from _report import cpu_name  # benchmarks/_report.py

import ember


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="LLM folder or GGUF file (default: the built-in SmolLM2-135M-Instruct)")
    parser.add_argument("--tokens", type=int, default=128)
    args = parser.parse_args(argv)
    llm = ember.LLM(args.model, max_num_seqs=4)
    engine, executor = llm.engine, llm.engine.runner.executor
    runs, steps = [], []
    run, step = executor.run, engine.step

    def timed_run(*a, **k):
        start = time.perf_counter()
        out = run(*a, **k)
        runs.append(time.perf_counter() - start)
        return out

    def timed_step(*a, **k):
        start = time.perf_counter()
        out = step(*a, **k)
        steps.append(time.perf_counter() - start)
        return out

    executor.run, engine.step = timed_run, timed_step
    params = ember.SamplingParams(max_tokens=args.tokens, temperature=0, ignore_eos=True)
    llm.generate(["The capital of France is"], params, use_tqdm=False)
    runs.clear()
    steps.clear()
    start = time.perf_counter()
    llm.generate(["The capital of France is"], params, use_tqdm=False)
    wall = time.perf_counter() - start
    decode = list(zip(steps, runs))[1:]
    outside = sorted(s - r for s, r in decode)

    def ms(values):
        return f"{statistics.median(values) * 1e3:.3f} ms"

    print(f"{cpu_name()}; {len(steps)} steps, {args.tokens / wall:.1f} tokens/s; per decode step: "
          f"{ms([s for s, _ in decode])} in all, the model's run {ms([r for _, r in decode])}, outside it "
          f"{ms(outside)} (p90 {outside[int(0.9 * len(outside))] * 1e3:.3f} ms); generate outside its steps "
          f"{(wall - sum(steps)) * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
