"""The throughput cost of structured outputs: #6's offline workload (benchmarks/llm_throughput.py)
plain, and with a JSON schema on every request (`ember-json`), each engine in a process of
its own, alternating rounds; medians of output tokens/s. #24's target: the schema costs at
most 10% of the plain output tokens/s.

    python benchmarks/structured_throughput.py [--rounds 3] [--requests 64] [--write docs/benchmarks.md]
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

from _report import cpu_name, write_section  # benchmarks/_report.py

HERE = Path(__file__).resolve().parent


def run(engine: str, requests: int, seed: int) -> dict:
    out = subprocess.run([sys.executable, str(HERE / "llm_throughput.py"), "--engines", engine, "--json",
                          "--requests", str(requests), "--seed", str(seed)],
                         capture_output=True, text=True, check=True)
    return next(json.loads(line) for line in out.stdout.splitlines() if line.startswith("{"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", type=Path, help="write the table into this markdown file")
    args = parser.parse_args(argv)
    rates: dict[str, list[float]] = {"ember": [], "ember-json": []}
    tokens: dict[str, list[int]] = {"ember": [], "ember-json": []}
    for i in range(args.rounds):
        for engine in (rates if i % 2 == 0 else reversed(list(rates))):
            r = run(engine, args.requests, args.seed)
            rates[engine].append(r["output_tokens"] / r["wall_s"])
            tokens[engine].append(r["output_tokens"])
            print(f"round {i + 1} {engine}: {rates[engine][-1]:.1f} output tokens/s ({r['output_tokens']} tokens, "
                  f"{r['wall_s']:.1f} s)", file=sys.stderr, flush=True)
    plain, constrained = (statistics.median(rates[e]) for e in rates)
    cost = 1 - constrained / plain
    lines = [f"## Structured outputs: throughput cost of a JSON schema on every request", "",
             f"{cpu_name()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; "
             f"`python benchmarks/structured_throughput.py --rounds {args.rounds}` (#6's workload: {args.requests} "
             "requests, greedy; each engine in its own process, alternating; medians)", "",
             "| engine | output tokens/s (median) | rounds | output tokens |", "|---|---|---|---|",
             *(f"| {e} | {statistics.median(rates[e]):.1f} | {', '.join(f'{x:.1f}' for x in rates[e])} | "
               f"{tokens[e][0]} |" for e in rates), "",
             f"cost of the schema: **{100 * cost:.1f}%** of plain output tokens/s (target: at most 10%)"]
    print("\n".join(lines))
    if args.write:
        write_section(args.write, "structured_throughput", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
