"""What the benchmark scripts share: the name of the CPU that ran them, a markdown table of
their rows, writing it into its own marked section of docs/benchmarks.md (replaced on
each run, the rest kept), and running a script's worker in a process of its own."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path


def cpu_name() -> str:
    """The CPU's model name as lscpu gives it, with the vector extensions that change the
    figures (AVX-512, AMX) where it has them: every figure names the machine it ran on."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                name = line.split(":", 1)[1].strip()
                flags = next((ln for ln in out.splitlines() if ln.startswith("Flags:")), "")
                extras = [f for f in ("avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if f" {f}" in flags]
                if "avx512f" not in extras and " avx2" in flags:
                    extras.append("avx2, no avx512")
                family = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("CPU family:")), "")
                model = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model:")), "")
                if family:  # (a VM may name its CPU only "AMD EPYC": the family tells Zen 3 / 4 / 5 apart)
                    extras.insert(0, f"family {family} model {model}")
                return name + (f" ({', '.join(extras)})" if extras else "")
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def markdown_table(first: str, labels: list, rows: list[dict[str, float]]) -> list[str]:
    """A table with a `first` column of `labels`, then one column per key of the rows."""
    keys = list(rows[0])
    lines = [f"| {first} | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for label, row in zip(labels, rows):
        lines.append(f"| {label} | " + " | ".join(f"{row[k]:.2f}" for k in keys) + " |")
    return lines


def write_section(path: Path, name: str, lines: list[str]) -> None:
    """Put `lines` between <!-- name:begin --> and <!-- name:end --> in `path`."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = "\n".join([begin, *lines, end])
    if begin in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def run_worker(script: str, engine: str, path: Path, *args: str, python: str | None = None) -> dict:
    """`script`'s worker (`script --worker ENGINE PATH ARGS`) for `engine` on `path`, in a
    process of its own (of `python`: default this one's interpreter): the JSON object its
    last line of output holds."""
    out = subprocess.run([python or sys.executable, script, "--worker", engine, str(path), *args],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{engine} on {path.name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])
