"""Memory planning at run time: a run's intermediate buffers share one arena, by liveness.
Sizes are symbolic, so the plan is made per concrete shape (once per new set of input
shapes, then kept by the executor's bindings) from the lifetimes codegen decided
(`Program.lifetimes`: each temp buffer lives from the first kernel that touches it to the
last, an alias keeping its base alive): buffers are placed largest first at the lowest
offset that does not overlap any placed buffer whose life overlaps theirs. The arena only
grows when a larger shape arrives.
"""

from __future__ import annotations

ALIGN = 64


def plan(sizes: dict[str, int], life: dict[str, tuple[int, int]]) -> tuple[dict[str, int], int]:
    """Offsets (bytes, ALIGN-aligned) for buffers of `sizes` bytes; returns (offsets, arena size)."""
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first, last)
    offsets: dict[str, int] = {}
    total = 0
    for name in sorted(sizes, key=lambda n: (-sizes[n], n)):
        size = -(-max(sizes[name], 1) // ALIGN) * ALIGN
        first, last = life.get(name, (0, 1 << 60))
        conflicts = sorted((o, e) for o, e, f, l in placed if f <= last and first <= l)
        offset = 0
        for o, e in conflicts:
            if offset + size <= o:
                break
            offset = max(offset, e)
        offsets[name] = offset
        placed.append((offset, offset + size, first, last))
        total = max(total, offset + size)
    return offsets, total
