"""Running a graph's Kernel IR through the Triton renderer (codegen/triton.py): without a
GPU on CPU tensors, every kernel in Triton's interpreter (TRITON_INTERPRET=1, set before
triton is imported), with one on it: the buffers as flat torch tensors (a view shares its base's), the sizes bound
from the inputs' shapes, the kernels launched in order. Graphs whose lowering has an
extern or a fallback are not this harness's (`Unsupported`)."""

from __future__ import annotations

import os

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402

from ember.codegen import triton as renderer  # noqa: E402
from ember.codegen.lowering import lower_graph  # noqa: E402
from ember.ir.ops._lowering import NotLowerable  # noqa: E402
from ember.ir.sizes import evaluate  # noqa: E402
from ember.runtime._torch import torch_dtype  # noqa: E402
from ember.runtime.device import _to_device, _to_host  # noqa: E402


class Unsupported(Exception):
    """The lowering has kernels this harness does not run (externs, fallbacks)."""


def run(graph, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    try:
        lowered = lower_graph(graph)
    except NotLowerable as e:  # sequences or optionals at the graph's boundary
        raise Unsupported(str(e)) from None
    if lowered.fallbacks:
        raise Unsupported(f"fallbacks: {lowered.fallbacks[:3]}")
    kinds = {k.kind for k in lowered.kernels}
    if kinds - {"pointwise", "reduction"}:
        raise Unsupported(f"kernels of kind {sorted(kinds - {'pointwise', 'reduction'})}")
    buffers = lowered.buffers
    values: dict = {}
    for name, feed in zip(lowered.inputs, feeds.values()):
        for d, n in zip(buffers[name].shape, np.shape(feed)):
            if getattr(d, "is_Symbol", False):
                values[d] = int(n)
    symbols = sorted(values, key=lambda s: s.name)
    source = renderer.render(lowered.kernels, buffers, symbols)
    module = renderer.load(source)
    tensors: dict[str, torch.Tensor] = {}

    def numel(b) -> int:
        return int(np.prod([evaluate(d, values) for d in b.shape])) if b.shape else 1

    for name, b in buffers.items():
        if b.view_of is not None:
            continue
        dtype = torch_dtype(b.dtype.numpy)
        if b.kind == "input":
            feed = feeds[list(feeds)[lowered.inputs.index(name)]]
            tensors[name] = _to_device(np.asarray(feed, dtype=b.dtype.numpy), DEVICE)
        elif b.kind == "constant":
            tensors[name] = _to_device(np.asarray(lowered.constants[name], dtype=b.dtype.numpy), DEVICE)
        elif b.kind == "fill":
            tensors[name] = torch.tensor([evaluate(f, values) for f in b.fill], dtype=dtype, device=DEVICE)
        else:
            tensors[name] = torch.full((max(numel(b), 1),), 7, dtype=dtype, device=DEVICE) if dtype != torch.bool \
                else torch.zeros(max(numel(b), 1), dtype=dtype, device=DEVICE)
    for name, b in buffers.items():
        root = b
        while root.view_of is not None:
            root = buffers[root.view_of]
        tensors[name] = tensors[root.name]
    S = [values[s] for s in symbols]
    for k in lowered.kernels:
        getattr(module, f"launch_{k.name}")(tensors, S)
    out = {}
    for name, value in zip(lowered.outputs, graph.outputs):
        b = buffers[name]
        shape = tuple(evaluate(d, values) for d in b.shape)
        out[value.name] = _to_host(tensors[name][:numel(b)]).reshape(shape)
    return out
