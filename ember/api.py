"""The public compile-then-run API: `ember.compile(model).run(feeds)`, and
`InferenceSession`, onnxruntime's call shape over the same compiled model."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._signature import TensorInfo, check_feeds
from .errors import InputError, UnsupportedError
from .frontends.onnx import load_onnx
from .ir.graph import Graph
from .ir.verifier import verify as verify_graph
from .passes import PassManager, PassStats, build_pipeline
from .runtime.executor import Executor

TARGETS = ("cpu",)


@dataclass
class CompileStats:
    """What compilation produced: node counts, the op histogram, which nodes run on the
    reference fallback, and how long each phase took (seconds)."""

    target: str
    num_nodes: int
    op_histogram: dict[str, int]
    fallback_nodes: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    passes: list[PassStats] = field(default_factory=list)

    def __str__(self) -> str:
        ops = ", ".join(f"{op}×{n}" for op, n in self.op_histogram.items())
        times = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.timings.items())
        lines = [f"target {self.target}: {self.num_nodes} nodes ({ops}); "
                 f"{len(self.fallback_nodes)} on the reference fallback; {times}"]
        lines += [f"  {p}" for p in self.passes]
        return "\n".join(lines)


class CompiledModel:
    """A model compiled for one target. `run` takes and returns numpy arrays by name."""

    def __init__(self, graph: Graph, target: str, timings: dict[str, float],
                 passes: list[PassStats] | None = None):
        self.graph = graph
        self.target = target
        t0 = time.perf_counter()
        self._executor = Executor(graph)
        timings["prepare"] = time.perf_counter() - t0
        self.inputs = [TensorInfo(v.name, v.type) for v in graph.inputs]
        self.outputs = [TensorInfo(v.name, v.type) for v in graph.outputs]
        histogram = graph.op_histogram()  # subgraph nodes included, as num_nodes
        self.stats = CompileStats(target, sum(histogram.values()), histogram,
                                  self._executor.fallback_nodes, timings, list(passes or []))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        """Run on `feeds` (input name -> array). Returns output name -> array (a list of
        arrays for a sequence output, None for an empty optional)."""
        ordered = check_feeds(self.graph.inputs, feeds)
        results = self._executor.run(ordered)
        return {info.name: out for info, out in zip(self.outputs, results)}

    __call__ = run

    def __repr__(self) -> str:
        sig = ", ".join(map(str, self.inputs))
        out = ", ".join(map(str, self.outputs))
        return f"<CompiledModel ({sig}) -> ({out}) on {self.target}, {self.stats.num_nodes} nodes>"


def compile(model: Any, target: str = "cpu", *, opt_level: int = 2, verify: bool | None = None,
            dump_ir: str | os.PathLike | None = None, passes: list[tuple[str, str, str]] | None = None,
            **options: Any) -> CompiledModel:
    """Compile `model` (an ONNX path, bytes, `onnx.ModelProto` or an ember `Graph`) for
    `target`.

    opt_level: 0-3, the pass pipeline (`ember.passes.PIPELINES`); default 2.
    verify: verify the IR after every pass (default: EMBER_VERIFY=1).
    dump_ir: a folder to write the printed IR to after every pass (default: EMBER_DUMP_IR).
    passes: extra registered passes placed by name, e.g. [("my_fusion", "after", "fold_constants")].

    Raises `ModelError` for a model ember cannot take, `UnsupportedError` for an unknown
    target, option or pass. A `Graph` is compiled as given: passes edit it in place."""
    if target not in TARGETS:
        raise UnsupportedError(f"target {target!r} is not available; choose one of {', '.join(TARGETS)}")
    base_dir = options.pop("base_dir", None)
    if options:
        raise UnsupportedError(f"unknown compile option(s): {', '.join(sorted(options))}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if isinstance(model, Graph):
        verify_graph(model)
        graph = model
    else:
        graph = load_onnx(model, base_dir=base_dir)
    timings["import"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    manager = PassManager(build_pipeline(opt_level, passes), verify=verify, dump_ir=dump_ir)
    graph, pass_stats = manager.run(graph)
    timings["passes"] = time.perf_counter() - t0
    return CompiledModel(graph, target, timings, pass_stats)


@dataclass(frozen=True)
class NodeArg:
    """onnxruntime's description of an input/output: `type` is a string like
    `tensor(float)`, `shape` a list of ints and dim names."""

    name: str
    type: str
    shape: list | None

    @classmethod
    def from_info(cls, info: TensorInfo) -> NodeArg:
        shape = None if info.shape is None else [d if isinstance(d, int) else str(d) for d in info.shape]
        return cls(info.name, info.onnx_type, shape)


class InferenceSession:
    """onnxruntime's `InferenceSession`, backed by ember: switching is one import.

        sess = ember.InferenceSession("model.onnx")
        (logits,) = sess.run(None, {"input": x})
    """

    def __init__(self, path_or_bytes: Any, sess_options: Any = None, providers: list | None = None,
                 **kwargs: Any):
        target = "cpu"
        for provider in providers or []:
            name = provider[0] if isinstance(provider, tuple) else provider
            if name not in ("CPUExecutionProvider", "EmberCPU"):
                warnings.warn(f"provider {name!r} is not available in ember; using the CPU", stacklevel=2)
        base = os.path.dirname(os.fspath(path_or_bytes)) if isinstance(path_or_bytes, (str, os.PathLike)) else None
        self._model = compile(path_or_bytes, target=target, **({"base_dir": base} if base else {}))

    def get_inputs(self) -> list[NodeArg]:
        return [NodeArg.from_info(i) for i in self._model.inputs]

    def get_outputs(self) -> list[NodeArg]:
        return [NodeArg.from_info(o) for o in self._model.outputs]

    def get_providers(self) -> list[str]:
        return ["CPUExecutionProvider"]

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any], run_options: Any = None) -> list[Any]:
        results = self._model.run(input_feed)
        names = output_names or [o.name for o in self._model.outputs]
        missing = [n for n in names if n not in results]
        if missing:
            raise InputError(f"unknown output {missing[0]!r}; outputs are {', '.join(results)}")
        return [results[n] for n in names]
