"""Resident memory under shapes that keep changing (issue 20, item 9): does it stop growing?

Two soaks, each in a process of its own, seeded:

- MiniLM (the built-in ONNX export): --runs runs (default 1,000), each with a random batch
  in [1, 8] and sequence length in [1, 128]: nearly every run a shape not seen before.
- the LLM engine: --requests requests (default 500) of random prompt lengths in [1, 96]
  and random output lengths in [1, 16], handed to `ember.LLM.generate` in groups of 1 to
  8, so the engine's steps see ever-new token counts, batch sizes and block-table widths.
  On a tiny random-init Llama (hidden 64, two layers; the built-in SmolLM2's tokenizer)
  by default, or --llm builtin for SmolLM2-135M itself.

For each: the resident set (RSS, /proc/self/statm) when the first --warmup fraction
(default 40%: what remains growing is oneDNN's GEMM primitives, one per row class, most
of which a random workload has met by then) of the work is done, the highest it reached after that, at the end, and the
growth after warm-up: (highest after warm-up - at warm-up) / at warm-up. Issue 20 asks
for less than 5%.

    python benchmarks/soak_memory.py [--runs 1000] [--requests 500] [--llm tiny|builtin] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


def rss_mib() -> float:
    """This process's resident set now (MiB)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@dataclass
class Soak:
    """RSS samples (MiB) taken after each unit of work; `warmup` of them were warm-up."""

    name: str
    warmup: int
    samples: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def at_warmup(self) -> float:
        return self.samples[self.warmup - 1]

    @property
    def highest_after(self) -> float:
        return max(self.samples[self.warmup:])

    @property
    def growth(self) -> float:
        """The growth after warm-up, as a fraction of the RSS at warm-up."""
        return self.growth_after(self.warmup)

    def growth_after(self, count: int) -> float:
        """The growth after the first `count` samples, as a fraction of the RSS then."""
        then = self.samples[count - 1]
        return (max(self.samples[count:]) - then) / then

    def row(self) -> dict[str, float]:
        return {"RSS at warm-up (MiB)": self.at_warmup, "highest after (MiB)": self.highest_after,
                "at the end (MiB)": self.samples[-1], "growth after warm-up (%)": 100 * self.growth,
                "growth after the first 20% (%)": 100 * self.growth_after(max(1, len(self.samples) // 5)),
                "work": len(self.samples), "seconds": self.seconds}


def minilm_feeds(rng: np.random.Generator, max_batch: int = 8, max_seq: int = 128) -> dict[str, np.ndarray]:
    batch, seq = int(rng.integers(1, max_batch + 1)), int(rng.integers(1, max_seq + 1))
    ids = rng.integers(1000, 30000, (batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def soak_minilm(compiled, runs: int = 1000, warmup: float = 0.4, seed: int = 0) -> Soak:
    """Run `compiled` (MiniLM) `runs` times on random batch and sequence sizes."""
    rng = np.random.default_rng(seed)
    soak = Soak("MiniLM", max(1, int(runs * warmup)))
    start = time.perf_counter()
    for _ in range(runs):
        compiled.run(minilm_feeds(rng))
        soak.samples.append(rss_mib())
    soak.seconds = time.perf_counter() - start
    return soak


def soak_llm(llm, requests: int = 500, warmup: float = 0.4, seed: int = 0, max_prompt: int = 96,
             max_tokens: int = 16) -> Soak:
    """Hand `llm` `requests` requests of random lengths, in groups of 1 to 8; one RSS
    sample per request (taken when its group is done)."""
    from ember import SamplingParams

    rng = np.random.default_rng(seed)
    soak = Soak("LLM engine", max(1, int(requests * warmup)))
    start = time.perf_counter()
    while len(soak.samples) < requests:
        group = min(int(rng.integers(1, 9)), requests - len(soak.samples))
        prompts = [{"prompt_token_ids": rng.integers(1000, 40000, int(rng.integers(1, max_prompt + 1))).tolist()}
                   for _ in range(group)]
        params = [SamplingParams(temperature=0, ignore_eos=True, max_tokens=int(rng.integers(1, max_tokens + 1)))
                  for _ in range(group)]
        llm.generate(prompts, params, use_tqdm=False)
        soak.samples.extend([rss_mib()] * group)
    soak.seconds = time.perf_counter() - start
    return soak


def tiny_llama(folder: Path) -> Path:
    """A random-init two-layer Llama (hidden 64, GQA) with the built-in SmolLM2's tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ember._builtin import default_llm
    from ember.frontends.hf import load_pretrained

    tokenizer = load_pretrained(default_llm(), progress=False).tokenizer()
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(config).eval().save_pretrained(folder)
    return folder


def run_one(which: str, args) -> Soak:
    import ember
    from ember import _builtin

    if which == "minilm":
        return soak_minilm(ember.compile(_builtin.export_minilm()), args.runs, args.warmup, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model = _builtin.default_llm() if args.llm == "builtin" else tiny_llama(Path(tmp))
        llm = ember.LLM(model, max_num_batched_tokens=256, max_num_seqs=8)
        return soak_llm(llm, args.requests, args.warmup, args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="MiniLM runs")
    parser.add_argument("--requests", type=int, default=500, help="LLM engine requests")
    parser.add_argument("--llm", choices=("tiny", "builtin"), default="tiny")
    parser.add_argument("--warmup", type=float, default=0.4, help="the fraction of each soak that is warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=("minilm", "llm"), help="run one soak in this process, print JSON")
    parser.add_argument("--write", type=Path, help="also write the table into this markdown file")
    args = parser.parse_args(argv)
    if args.only:
        soak = run_one(args.only, args)
        print(json.dumps({**asdict(soak), "row": soak.row()}))
        return 0
    rows, names = [], []
    for which in ("minilm", "llm"):  # each in a fresh process: one soak's memory is not the other's
        out = subprocess.run([sys.executable, __file__, "--only", which, *(argv or sys.argv[1:])],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            return out.returncode
        result = json.loads(out.stdout.strip().splitlines()[-1])
        names.append(result["name"])
        rows.append(result["row"])
    from _report import cpu_name, markdown_table, write_section  # benchmarks/_report.py

    cpu = cpu_name()
    lines = [f"Soak, {time.strftime('%Y-%m-%d')}, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}; "
             f"{args.runs} MiniLM runs, {args.requests} LLM requests ({args.llm} model), "
             f"warm-up the first {args.warmup:.0%}:", "",
             *markdown_table("soak", names, rows)]
    print("\n".join(lines))
    if args.write:
        write_section(args.write, "soak-memory", ["## Memory under varying shapes (soak)", "", *lines])
    return 0


if __name__ == "__main__":
    sys.exit(main())
