"""Soaks (issue 20, item 9): MiniLM run 1,000 times on random batch and sequence sizes,
and 500 LLM engine requests of random lengths (a tiny random Llama), each in a fresh
process (benchmarks/soak_memory.py, which reports the same figures). Resident memory
must stop growing once warmed up: after the first WARMUP of each soak, its highest RSS
is less than 5% above the RSS at that point.

What still grows after the executor's bindings became an LRU is oneDNN's and torch's
cache of GEMM primitives, one per row count, each run at one of a bounded set of row
classes (externs._row_class): random workloads meet a new class less and less often,
and each of them costs ~0.6 MiB a weight. The warm-up is the part of the soak in which
they have mostly been made."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "benchmarks" / "soak_memory.py"
WARMUP = 0.4
MAX_GROWTH = 0.05


def soak(which: str, *args: str) -> dict:
    out = subprocess.run([sys.executable, str(SCRIPT), "--only", which, "--warmup", str(WARMUP), *args],
                         capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def check(result: dict) -> None:
    row, samples = result["row"], result["samples"]
    assert len(samples) == row["work"] and result["warmup"] >= 1
    growth = row["growth after warm-up (%)"] / 100
    assert growth < MAX_GROWTH, (
        f"{result['name']}: RSS {row['RSS at warm-up (MiB)']:.0f} MiB after warm-up ({result['warmup']} of "
        f"{len(samples)}), then up to {row['highest after (MiB)']:.0f} MiB: +{100 * growth:.1f}%")


@pytest.mark.slow
def test_minilm_memory_stops_growing_under_random_shapes(minilm_onnx):
    check(soak("minilm", "--runs", "1000"))


@pytest.mark.slow
def test_llm_engine_memory_stops_growing_under_random_lengths():
    check(soak("llm", "--requests", "500"))
