"""What the benchmark scripts share: a markdown table of their rows, and writing it into
its own marked section of docs/benchmarks.md (replaced on each run, the rest kept)."""

from __future__ import annotations

from pathlib import Path


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
