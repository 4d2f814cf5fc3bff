"""Per-step timings of a compiled program: a table by op kind and a Chrome trace.

`ember.compile(model, profile=True)` records every step of every run;
`compiled.profile()` summarises them and `compiled.profile(trace="trace.json")` also
writes a Chrome-trace JSON that Perfetto (ui.perfetto.dev) and chrome://tracing open.
A segment of generated kernels is one step: its time is shared among the graph nodes it
computes only in the trace's arguments, not split."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ProfileRow:
    kind: str        # what ran: an extern's name, "generated", or "fallback:<op>"
    calls: int
    total_ms: float

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.calls if self.calls else 0.0


def _kind(step, ops: dict[str, str]) -> str:
    if step.kind == "segment":
        return "generated kernels"
    if step.kind == "extern":
        return f"extern {step.name}"
    return f"fallback {ops.get(step.name, step.name)}"


def summarize(records: list, ops: dict[str, str], runs: int) -> list[ProfileRow]:
    """Rows by kind, slowest first; times are per run."""
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for step, _, seconds in records:
        row = totals[_kind(step, ops)]
        row[0] += 1
        row[1] += seconds * 1e3
    rows = [ProfileRow(k, int(c / max(runs, 1)), t / max(runs, 1)) for k, (c, t) in totals.items()]
    return sorted(rows, key=lambda r: -r.total_ms)


def format_table(rows: list[ProfileRow]) -> str:
    total = sum(r.total_ms for r in rows) or 1.0
    lines = [f"{'kind':32s} {'calls':>6s} {'ms/run':>9s} {'share':>6s}"]
    lines += [f"{r.kind:32s} {r.calls:6d} {r.total_ms:9.3f} {100 * r.total_ms / total:5.1f}%" for r in rows]
    lines.append(f"{'total':32s} {'':6s} {total:9.3f}")
    return "\n".join(lines)


def trace_events(records: list, ops: dict[str, str], t0: float | None = None) -> list[dict]:
    """Chrome-trace complete events ("ph": "X"), one per step run, times in µs from `t0`
    (a `time.perf_counter()` reading; default: the first step's start)."""
    if not records:
        return []
    t0 = records[0][1] if t0 is None else t0
    return [{"name": step.name if step.kind != "segment" else f"{step.name} ({len(step.kernels)} kernels)",
             "cat": _kind(step, ops), "ph": "X", "pid": 0, "tid": 0,
             "ts": (start - t0) * 1e6, "dur": seconds * 1e6,
             "args": {"nodes": list(step.nodes)[:50]}} for step, start, seconds in records]


def write_trace(records: list, ops: dict[str, str], path: str | Path) -> None:
    Path(path).write_text(json.dumps({"traceEvents": trace_events(records, ops), "displayTimeUnit": "ms"}))
