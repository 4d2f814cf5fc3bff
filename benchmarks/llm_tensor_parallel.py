"""ember's LLM engine sharded over 2 processes (tensor_parallel_size=2, one thread per rank)
against one process with two threads, on llm_throughput.py's workload, in one run.

Each configuration runs in a process of its own, alternating (tp=1, tp=2, tp=1, ...) for
--rounds rounds; the table has each one's median output tokens/s (and its time to first
token and per output token). The built-in SmolLM2-135M-Instruct's Q4_1 blocks by default
(--model for another).

    python benchmarks/llm_tensor_parallel.py [--requests 32] [--rounds 2] [--write docs/benchmarks.md]

--gpu adds tp=1 on the GPU (the cuda target) to the rounds, for reference: one GPU cannot
host two NCCL ranks, so the GPU machine's tensor-parallel figure is tp=2 over its CPU cores
(benchmarks/device_check.sh's `tp` step, on a SmolLM2-shaped Llama of random weights).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _report import cpu_name, markdown_table, write_section  # benchmarks/_report.py

HERE = Path(__file__).resolve().parent


CONFIGS = {1: "tp=1 (1 process, all cores)", 2: "tp=2 (2 processes, half the cores each)",
           0: "tp=1 on the GPU (cuda target)"}


def child(model: str | None, tp: int, requests: int, seed: int) -> None:
    from llm_throughput import run_ember, workload

    from ember import _builtin
    from ember.frontends.hf import load_pretrained

    path = Path(model) if model else _builtin.default_llm()
    work = workload(requests, seed, load_pretrained(path, progress=False).config.vocab_size)
    threads = os.cpu_count() if tp == 1 else None  # tp=2: the cores shared, one thread per rank here
    if tp == 0:  # (--gpu: tp=1 on the cuda target)
        result = run_ember(path, work, None, target="cuda", name="gpu")
    else:
        result = run_ember(path, work, threads, tensor_parallel_size=tp, name=f"tp={tp}")
    print("RESULT " + json.dumps(result.row(requests)), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="LLM folder or GGUF file (default: the built-in SmolLM2-135M-Instruct)")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--write", type=Path, help="write the table into this markdown file")
    parser.add_argument("--gpu", action="store_true", help="also tp=1 on the GPU (the cuda target), for reference")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args.model, args.child, args.requests, args.seed)
        return 0
    configs = (1, 2, 0) if args.gpu else (1, 2)
    rows: dict[int, list[dict]] = {tp: [] for tp in configs}
    for r in range(args.rounds):
        for tp in configs:
            command = [sys.executable, str(Path(__file__).resolve()), "--child", str(tp), "--requests",
                       str(args.requests), "--seed", str(args.seed)] + (["--model", args.model] if args.model else [])
            out = subprocess.run(command, capture_output=True, text=True, cwd=HERE)
            line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
            if line is None:
                print(out.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{CONFIGS[tp]} failed (exit {out.returncode})")
            rows[tp].append(json.loads(line[7:]))
            print(f"round {r + 1} {CONFIGS[tp]}: {rows[tp][-1]['output tokens/s']:.1f} output tokens/s",
                  file=sys.stderr, flush=True)
    keys = ["output tokens/s", "TTFT median s", "TPOT median ms", "wall s"]
    medians = {tp: {k: float(np.median([row[k] for row in rows[tp]])) for k in keys} for tp in rows}
    lines = markdown_table("engine", [CONFIGS[tp] for tp in configs], [medians[tp] for tp in configs])
    ratio = medians[2]["output tokens/s"] / medians[1]["output tokens/s"]
    lines += ["", f"tp=2 / tp=1 output tokens/s: **{ratio:.2f}x** (medians of {args.rounds} rounds, alternating). "
              "A step runs two collectives per layer and two more (SmolLM2: 62, over gloo); where the ranks "
              "share one machine's cores, tp=2 adds their latency and no compute: it is for a model that "
              "outgrows one process, or ranks on machines of their own."]
    model = Path(args.model).name if args.model else "SmolLM2-135M-Instruct (Q4_1 GGUF)"
    header = [f"## LLM tensor parallelism: {model}, {args.requests} requests (seed {args.seed})", "",
              f"{cpu_name()}, {os.cpu_count()} cores; {time.strftime('%Y-%m-%d')}; "
              "`python benchmarks/llm_tensor_parallel.py`", ""]
    print("\n".join(header + lines))
    if args.write:
        write_section(args.write, "llm_tensor_parallel", header + lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
