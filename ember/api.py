"""The public compile-then-run API: `ember.compile(model).run(feeds)`, and
`InferenceSession`, onnxruntime's call shape over the same compiled model."""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._signature import TensorInfo, check_feeds
from .errors import InputError, UnsupportedError
from .frontends.onnx import load_onnx
from .ir.graph import Graph
from .ir.ops._lowering import NotLowerable
from .ir.verifier import verify as verify_graph
from .passes import PassManager, PassStats, build_pipeline
from .runtime.executor import Executor, ReferenceExecutor, default_threads

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
    num_kernels: int = 0   # generated and extern kernels the program runs
    fused_nodes: int = 0   # nodes computed inside another node's kernel

    def __str__(self) -> str:
        ops = ", ".join(f"{op}×{n}" for op, n in self.op_histogram.items())
        times = ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in self.timings.items())
        lines = [f"target {self.target}: {self.num_nodes} nodes ({ops}); {self.num_kernels} kernels, "
                 f"{self.fused_nodes} nodes fused into others, "
                 f"{len(self.fallback_nodes)} on the reference fallback; {times}"]
        lines += [f"  {p}" for p in self.passes]
        return "\n".join(lines)


@dataclass
class LLMInfo:
    """What an LLM's compiled forward graph needs beside itself to serve: its tokenizer
    (with the chat template) and the facts the engine is built with. From an artifact,
    the tokenizer is made from the saved files when first asked for."""

    vocab_size: int
    eos_token_ids: list[int]
    max_model_len: int
    block_size: int
    source: str = ""  # the folder or GGUF file it was compiled from
    _tokenizer: Any = None
    _tokenizer_files: dict[str, bytes] | None = None  # file name -> contents, from an artifact

    @property
    def tokenizer(self):
        if self._tokenizer is None and self._tokenizer_files is not None:
            from .artifact import tokenizer_from_files

            self._tokenizer = tokenizer_from_files(self._tokenizer_files)
        return self._tokenizer


class CompiledModel:
    """A model compiled for one target. `run` takes and returns numpy arrays by name;
    `save` writes it as an artifact that `ember.load` reads back without compiling."""

    def __init__(self, graph: Graph, target: str, timings: dict[str, float],
                 passes: list[PassStats] | None = None, *, codegen: bool = True,
                 intra_op_threads: int | None = None, profile: bool = False, program=None,
                 options: dict[str, Any] | None = None):
        from .codegen import cpu, generate

        self.graph = graph
        self.target = target
        self.program = program  # given: loaded from an artifact
        self.options = dict(options or {})  # how it was compiled, as an artifact records it
        self.llm: LLMInfo | None = None
        self.artifact: dict[str, Any] | None = None  # loaded from one: its path, digest and versions
        t0 = time.perf_counter()
        if program is None and codegen and os.environ.get("EMBER_CODEGEN", "1") != "0" and cpu.compiler() is not None:
            try:
                self.program = generate(graph)
            except NotLowerable:  # sequences or optionals cross the graph's boundary
                self.program = None
            timings["codegen"] = time.perf_counter() - t0
        if self.program is not None:
            t0 = time.perf_counter()
            self._executor = Executor(self.program, threads=intra_op_threads or default_threads())
            self._executor.profile = [] if profile else None
            fallbacks, kernels, fused = self.program.fallbacks, self.program.num_kernels, self.program.fused_nodes
        else:
            t0 = time.perf_counter()
            self._executor = ReferenceExecutor(graph)
            fallbacks, kernels, fused = self._executor.fallback_nodes, 0, 0
        timings["prepare"] = time.perf_counter() - t0
        self.inputs = [TensorInfo(v.name, v.type) for v in graph.inputs]
        self.outputs = [TensorInfo(v.name, v.type) for v in graph.outputs]
        histogram = graph.op_histogram()  # subgraph nodes included, as num_nodes
        self.stats = CompileStats(target, sum(histogram.values()), histogram, list(fallbacks), timings,
                                  list(passes or []), kernels, fused)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, Any]:
        """Run on `feeds` (input name -> array). Returns output name -> array (a list of
        arrays for a sequence output, None for an empty optional)."""
        ordered = check_feeds(self.graph.inputs, feeds)
        results = self._executor.run(ordered)
        self._runs = getattr(self, "_runs", 0) + 1
        return {info.name: out for info, out in zip(self.outputs, results)}

    __call__ = run

    def save(self, path: str | os.PathLike) -> Path:
        """Write this model as one artifact file (by convention `.ember`): the optimized
        graph, the program, weights, kernel sources and the built library, and for an
        LLM its tokenizer. `ember.load(path)` runs it again with no compiling."""
        from .artifact import save

        return save(self, path)

    def profile(self, trace: str | os.PathLike | None = None) -> str:
        """The per-kernel timings of every run so far, as a table by kind (compile with
        profile=True); with `trace`, also a Chrome-trace JSON there (Perfetto opens it)."""
        from .runtime.profiler import format_table, summarize, write_trace

        records = getattr(self._executor, "profile", None)
        if records is None:
            raise UnsupportedError("profiling is off: compile with profile=True (and codegen on)")
        ops = {node.name: node.op for node in self.graph.nodes}
        if trace is not None:
            write_trace(records, ops, trace)
        return format_table(summarize(records, ops, getattr(self, "_runs", 0)))

    def export_onnx(self, path: str | os.PathLike, standard_ops_only: bool = False, **options: Any):
        """Write the optimised graph as an ONNX model (onnxruntime's `optimized_model_filepath`):
        ember's fused ops in the `ember` domain, or with `standard_ops_only=True` decomposed
        into standard ops any ONNX runtime loads. See `ember.export.export_onnx`."""
        from .export import export_onnx

        return export_onnx(self.graph, path, standard_ops_only=standard_ops_only, **options)

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
    codegen: generate C++ kernels (default; needs a C++ compiler, else every node runs its
        reference implementation); False (or EMBER_CODEGEN=0) interprets the graph.
    intra_op_threads: threads per kernel (default: OMP_NUM_THREADS where set, else every
        core this process may use).
    profile: record every kernel's time; read it with `compiled.profile()`.

    Raises `ModelError` for a model ember cannot take, `UnsupportedError` for an unknown
    target, option or pass. A `Graph` is compiled as given: passes edit it in place."""
    if target not in TARGETS:
        raise UnsupportedError(f"target {target!r} is not available; choose one of {', '.join(TARGETS)}")
    base_dir = options.pop("base_dir", None)
    codegen = options.pop("codegen", True)
    threads = options.pop("intra_op_threads", None)
    profile = options.pop("profile", False)
    if options:
        raise UnsupportedError(f"unknown compile option(s): {', '.join(sorted(options))}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if isinstance(model, Graph):
        verify_graph(model)
        graph = model
    elif isinstance(model, (str, os.PathLike)) and _is_artifact(model):
        raise UnsupportedError(f"{model} is a compiled artifact: load it with ember.load({str(model)!r})")
    else:
        graph = load_onnx(model, base_dir=base_dir)
    timings["import"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    manager = PassManager(build_pipeline(opt_level, passes), verify=verify, dump_ir=dump_ir)
    graph, pass_stats = manager.run(graph)
    timings["passes"] = time.perf_counter() - t0
    recorded = {"opt_level": opt_level, "codegen": bool(codegen),
                 "passes": [list(p) for p in passes or []]}
    return CompiledModel(graph, target, timings, pass_stats, codegen=codegen, intra_op_threads=threads,
                         profile=profile, options=recorded)


def _is_artifact(path) -> bool:
    from .artifact import is_artifact

    return is_artifact(path)


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
    """onnxruntime's `InferenceSession`, backed by ember: switching is one import. It
    takes an ember artifact (`model.ember`) as well as an ONNX model.

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
        if isinstance(path_or_bytes, (str, os.PathLike)) and _is_artifact(path_or_bytes):
            from .artifact import load

            self._model = load(path_or_bytes)
            return
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
