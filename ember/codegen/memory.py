"""Buffer lifetimes, decided here for the runtime's memory plan (ember/runtime/memory.py):
the intermediate buffers of a run share one arena, each placed where no buffer whose life
overlaps its own lies. A buffer lives from the first kernel that touches it to the last
(in the order the Program's steps run their kernels: `Step.parts`); an alias keeps its
base alive.
"""

from __future__ import annotations


def lifetimes(steps_touching: list[set[str]], names: set[str]) -> dict[str, tuple[int, int]]:
    """[first, last] step index of each buffer in `names`."""
    life: dict[str, tuple[int, int]] = {}
    for i, touched in enumerate(steps_touching):
        for name in touched & names:
            first, _ = life.get(name, (i, i))
            life[name] = (first, i)
    return life


def program_lifetimes(program) -> dict[str, tuple[int, int]]:
    """[first, last] kernel index (over every step's parts, in order) of each temp buffer
    of `program` that is not a view; a view's touch counts for its base."""
    touched = [{program.root(n) for n in part} for step in program.steps for part in step.parts]
    temps = {name for name, b in program.buffers.items() if b.kind == "temp" and b.view_of is None}
    return lifetimes(touched, temps)
