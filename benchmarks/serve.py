"""`ember serve` under load: request throughput, output tokens/s, time to first token and
inter-token latency at several concurrencies.

The server: `ember serve` on the built-in SmolLM2-135M-Instruct (or --model), started by
this script in a subprocess on a free port and stopped at the end; or, with --url, a
server that is already running (another engine with an OpenAI-compatible API, vLLM say,
to compare with on the same workload).

The workload (seeded): for each concurrency C in --concurrency, --requests requests whose
prompts are random token ids of lengths uniform in [--min-prompt, --max-prompt], each
generating exactly --max-tokens tokens (ignore_eos, greedy), sent by C clients that each
send their next request when their last one has finished (a closed loop), streamed
through the official openai client (`/v1/completions`, `stream: true`).

Reported for each C: requests/s and output tokens/s over the level's wall time; TTFT
(from sending a request to its first text) and ITL (the gaps between a stream's chunks:
one engine step's text each), p50/p90/p99 in milliseconds.

    python benchmarks/serve.py [--concurrency 1,8,32] [--requests 64] [--max-tokens 128] [--write docs/benchmarks.md]
    python benchmarks/serve.py --requests 4 --max-tokens 8 --concurrency 1,2     # a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from _report import markdown_table, write_section  # benchmarks/_report.py

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Level:
    concurrency: int
    wall_s: float = 0.0
    output_tokens: int = 0
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    num_requests: int = 0

    def row(self) -> dict[str, float]:
        def pct(values, q):
            return 1e3 * float(np.percentile(values, q)) if values else float("nan")

        return {"requests/s": self.num_requests / self.wall_s, "output tokens/s": self.output_tokens / self.wall_s,
                **{f"TTFT p{q} ms": pct(self.ttft, q) for q in (50, 90, 99)},
                **{f"ITL p{q} ms": pct(self.itl, q) for q in (50, 90, 99)}}


def workload(n: int, seed: int, vocab: int, min_prompt: int, max_prompt: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_prompt, max_prompt, n, endpoint=True)
    # ids from the ordinary vocabulary (no special tokens)
    return [rng.integers(1000, vocab, k).tolist() for k in lengths]


async def run_level(url: str, model: str, prompts: list[list[int]], max_tokens: int, concurrency: int) -> Level:
    import openai

    level = Level(concurrency, num_requests=len(prompts))
    queue: asyncio.Queue = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)

    async def client_loop(client):
        while not queue.empty():
            prompt = queue.get_nowait()
            sent = time.perf_counter()
            last = None
            stream = await client.completions.create(
                model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
            async for chunk in stream:
                now = time.perf_counter()
                if chunk.usage is not None:
                    level.output_tokens += chunk.usage.completion_tokens
                if not chunk.choices or not chunk.choices[0].text:
                    continue
                if last is None:
                    level.ttft.append(now - sent)
                else:
                    level.itl.append(now - last)
                last = now

    async with openai.AsyncOpenAI(base_url=url, api_key=os.environ.get("EMBER_API_KEY", "unused"),
                                  max_retries=0, timeout=3600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        level.wall_s = time.perf_counter() - start
    return level


class Server:
    """`ember serve` in a subprocess on a free port, until stop()."""

    def __init__(self, model: str | None, extra_args: list[str]):
        args = [sys.executable, "-m", "ember.cli", "serve", *([model] if model else []), "--port", "0", *extra_args]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        self.process = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + 600
        while True:
            match = next((m for m in map(re.compile(r"serving .*?at (http://\S+/v1)").search, self.lines) if m), None)
            if match:
                self.url = match[1]
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("ember serve did not start:\n" + "".join(self.lines))
            time.sleep(0.1)

    def _read(self):
        for line in self.process.stderr:
            self.lines.append(line)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()


def table(levels: list[Level]) -> list[str]:
    return markdown_table("concurrency", [lv.concurrency for lv in levels], [lv.row() for lv in levels])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="LLM folder or GGUF file (default: the built-in SmolLM2-135M-Instruct)")
    parser.add_argument("--url", help="benchmark the server already running at this /v1 URL instead of starting one")
    parser.add_argument("--served-model", help="with --url: the model name to ask for (default: its first)")
    parser.add_argument("--serve-args", default="", help="more `ember serve` options, e.g. '--max-num-seqs 32'")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts (default: 1,8,32)")
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level (default: 64)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens each request generates (default: 128)")
    parser.add_argument("--min-prompt", type=int, default=32)
    parser.add_argument("--max-prompt", type=int, default=512)
    parser.add_argument("--vocab-size", type=int, help="draw prompt ids below this (default: the model's vocabulary)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, help="write the table into this markdown file")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]

    if args.url:
        name, vocab = "the server at " + args.url, args.vocab_size or 32000
        server = None
    else:
        from ember import _builtin
        from ember.frontends.hf import load_pretrained

        path = Path(args.model) if args.model else _builtin.default_llm()
        name = path.name
        vocab = args.vocab_size or load_pretrained(path, progress=False).config.vocab_size
        print(f"starting ember serve {path.name} ...", file=sys.stderr, flush=True)
        server = Server(args.model, shlex.split(args.serve_args))
    url = args.url or server.url
    try:
        import openai

        model = args.served_model or openai.OpenAI(base_url=url, api_key=os.environ.get("EMBER_API_KEY", "unused"),
                                                   max_retries=0).models.list().data[0].id
        warm = workload(1, args.seed + 1, vocab, args.min_prompt, args.max_prompt)
        asyncio.run(run_level(url, model, warm, min(args.max_tokens, 8), 1))
        results = []
        for i, concurrency in enumerate(levels):
            prompts = workload(args.requests, args.seed + 100 * i, vocab, args.min_prompt, args.max_prompt)
            print(f"concurrency {concurrency}: {len(prompts)} requests ...", file=sys.stderr, flush=True)
            results.append(asyncio.run(run_level(url, model, prompts, args.max_tokens, concurrency)))
            print("\n".join(table(results[-1:])), file=sys.stderr, flush=True)
    finally:
        if server is not None:
            server.stop()
    header = [f"## Serving: {name}, {args.requests} requests per level (seed {args.seed})", "",
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; "
              f"prompts of {args.min_prompt}-{args.max_prompt} random tokens, {args.max_tokens} output tokens each, "
              f"greedy, streamed; `python benchmarks/serve.py {shlex.join(argv if argv is not None else sys.argv[1:])}`",
              ""]
    lines = header + table(results)
    print("\n".join(lines))
    if args.write:
        write_section(args.write, "serve", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
