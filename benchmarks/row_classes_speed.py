"""MiniLM b1x128 (or --batch/--seq) run time with the GEMMs run at row classes
(externs._row_class, issue 20 item 9) and without, in one process, alternating rounds
of --runs runs; medians of each round, then the median over rounds. The rows of b1x128
(128) and b8x128 (1,024) are classes already: there the two differ only by the class
lookup; at 8x100 (800 rows, not a class) the classed run pads the GEMMs of large weights
to 896 rows and runs those of small ones on addmm.

    python benchmarks/row_classes_speed.py [--batch 1] [--seq 128] [--rounds 10] [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import ember
from ember import _builtin
from ember.runtime import externs
from _report import cpu_name  # benchmarks/_report.py


def _exact_linear(params, x, w, bias, y):
    """ember.Linear as it was before row classes: oneDNN's GEMM at the rows given."""
    packed = params.get("packed")
    if packed is not None and x.dtype == torch.float32 and x.numel() and (bias is None or bias.dtype == x.dtype):
        attr, algorithm = externs._ONEDNN_ACTIVATIONS[params.get("activation", "")]
        return externs._store(y, torch.ops.mkldnn._linear_pointwise(x, packed, bias, attr, [], algorithm or None))
    return externs.linear(params, x, w, bias, y)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    model = ember.compile(_builtin.export_minilm())
    ids = np.random.default_rng(0).integers(1000, 30000, (args.batch, args.seq), dtype=np.int64)
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    classed = externs.EXTERNS["linear"]
    variants = {"row classes": classed, "exact rows": _exact_linear}
    medians: dict[str, list[float]] = {name: [] for name in variants}
    for name, fn in variants.items():  # warm both (their primitives made)
        externs.EXTERNS["linear"] = fn
        model._executor._steps = [(k, externs.EXTERNS[s.name] if k == "extern" else f, s)
                                  for k, f, s in model._executor._steps]
        for _ in range(3):
            model.run(feeds)
    for _ in range(args.rounds):
        for name, fn in variants.items():
            model._executor._steps = [(k, fn if k == "extern" and s.name == "linear" else f, s)
                                      for k, f, s in model._executor._steps]
            times = []
            for _ in range(args.runs):
                start = time.perf_counter()
                model.run(feeds)
                times.append(time.perf_counter() - start)
            medians[name].append(statistics.median(times))
    externs.EXTERNS["linear"] = classed
    cpu = cpu_name()
    print(f"MiniLM b{args.batch}x{args.seq}, {cpu}, {torch.get_num_threads()} threads, "
          f"{args.rounds} alternating rounds of {args.runs} runs:")
    for name, values in medians.items():
        print(f"  {name:12s} median {1e3 * statistics.median(values):.2f} ms "
              f"(rounds {1e3 * min(values):.2f}-{1e3 * max(values):.2f})")


if __name__ == "__main__":
    main()
