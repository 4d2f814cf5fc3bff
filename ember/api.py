"""The public compile-then-run API: `ember.compile(model).run(feeds)`. onnxruntime's
session API over the same compiled model is `_session.InferenceSession`."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ._signature import TensorInfo, check_feeds, check_out, place_output
from .errors import EmberError, InputError, ModelError, UnsupportedError
from .ir.graph import Graph
from .runtime._malloc import return_freed_heap as _return_freed_heap
from .runtime.executor import Executor, ReferenceExecutor, default_threads

if TYPE_CHECKING:  # the frontend and the passes load in compile(): ember.load needs neither
    from .artifact import DeferredGraph
    from .passes import PassStats

TARGETS = ("cpu", "cuda")  # codegen/target.py


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

    def __init__(self, graph: Graph | DeferredGraph, target: str, timings: dict[str, float],
                 passes: list[PassStats] | None = None, *, codegen: bool = True,
                 intra_op_threads: int | None = None, profile: bool = False, program=None,
                 options: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None):
        from .codegen import cpu, generate

        # a loaded model's graph is parsed when first asked for (`graph`): loading and
        # running need only what a DeferredGraph holds
        self._graph = graph if isinstance(graph, Graph) else None
        self._deferred_graph = None if isinstance(graph, Graph) else graph
        self.target = target
        self.program = program  # given: loaded from an artifact
        self.options = dict(options or {})  # how it was compiled, as an artifact records it
        # the source ONNX model's producer, doc strings, version and metadata_props
        # (`frontends.onnx.model_metadata`); empty for a Graph compiled as given
        self.metadata = dict(metadata or {})
        self.llm: LLMInfo | None = None
        self.artifact: dict[str, Any] | None = None  # loaded from one: its path, digest and versions
        t0 = time.perf_counter()
        generating = program is None and codegen and os.environ.get("EMBER_CODEGEN", "1") != "0"
        # Triton kernels on torch tensors of a device (codegen/target.py): generated now, or loaded
        device = target != "cpu" and (generating or program is not None)
        if device:
            from .codegen.target import TARGETS as _TARGETS
            from .runtime.device import DeviceExecutor
        if device and generating:
            from .ir.ops._lowering import NotLowerable

            try:
                self.program = generate(graph, _TARGETS[target])
            except NotLowerable:  # values the device cannot hold: every node on the reference
                self.program, device = None, False
            timings["codegen"] = time.perf_counter() - t0
        elif generating and cpu.compiler() is not None:
            from .ir.ops._lowering import NotLowerable  # (the ops load with the compiler, not for ember.load)

            try:
                self.program = generate(graph)
            except NotLowerable:  # sequences or optionals cross the graph's boundary
                self.program = None
            timings["codegen"] = time.perf_counter() - t0
        if device:
            t0 = time.perf_counter()
            self._executor = DeviceExecutor(self.program, _TARGETS[target].run_device())
            fallbacks, kernels, fused = self.program.fallbacks, self.program.num_kernels, self.program.fused_nodes
        elif self.program is not None:
            t0 = time.perf_counter()
            self._executor = Executor(self.program, threads=intra_op_threads or default_threads())
            self._executor.profile = [] if profile else None
            fallbacks, kernels, fused = self.program.fallbacks, self.program.num_kernels, self.program.fused_nodes
        else:
            t0 = time.perf_counter()
            self._executor = ReferenceExecutor(graph)
            fallbacks, kernels, fused = self._executor.fallback_nodes, 0, 0
        timings["prepare"] = time.perf_counter() - t0
        self._graph_inputs = graph.inputs  # what feeds are checked against (its identity keys the check's plan)
        program = getattr(self, "program", None)
        position = {name: i for i, name in enumerate(program.inputs)} if program is not None else {}
        # inputs read as indices (token ids into an embedding): their range is checked before
        # a run, as the kernels only clamp an index (the reference raises)
        self._index_checks = [(position[b], n, where) for b, (n, where) in
                              (program.index_bounds.items() if program is not None else ()) if b in position]
        self.inputs = [TensorInfo(v.name, v.type) for v in graph.inputs]
        self.outputs = [TensorInfo(v.name, v.type) for v in graph.outputs]
        histogram = graph.op_histogram()  # subgraph nodes included, as num_nodes
        self.stats = CompileStats(target, sum(histogram.values()), histogram, list(fallbacks), timings,
                                  list(passes or []), kernels, fused)
        if self._graph is not None and self._graph.num_parameters() >= _LARGE_MODEL_PARAMETERS:
            _return_freed_heap()  # (a compile's: loading frees no passes' memory)

    @property
    def executor(self):
        """What runs the program: the cpu target's Executor, the device target's
        DeviceExecutor (`run_device` keeps tensors on the device), or the reference
        interpreter; `run(inputs)` takes the inputs in `inputs`' order, unchecked."""
        return self._executor

    @property
    def graph(self) -> Graph:
        """The optimized graph (a loaded model's is parsed from the artifact on first use)."""
        if self._graph is None:
            self._graph = self._deferred_graph.parse()
        return self._graph

    def run(self, feeds: dict[str, np.ndarray], *, out: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """Run on `feeds` (input name -> array). Returns output name -> array (a list of
        arrays for a sequence output, None for an empty optional).

        out: output name -> a preallocated array of the output's dtype and this run's
            shape; the output is written there (and returned as it). The generated
            program's kernels write into it directly; an output whose size only the run
            tells, or one the whole-graph interpreter computes, is copied in once."""
        return self._run_into(feeds, None if not out else check_out(self.outputs, out))[0]

    def _run_into(self, feeds, targets: list[np.ndarray | None] | None) -> tuple[dict[str, Any], list[str]]:
        """`run` into `targets` (`check_out`'s list: an array or None per output), and the
        names of the outputs it had to copy into their array."""
        ordered = check_feeds(self._graph_inputs, feeds)
        for i, n, where in self._index_checks:
            _check_indices(self._graph_inputs[i].name, ordered[i], n, where)
        if targets is not None and isinstance(self._executor, Executor):
            results = self._executor.run(ordered, out=targets)
        else:
            results = self._executor.run(ordered)
        self._runs = getattr(self, "_runs", 0) + 1
        copied = []
        if targets is not None:
            for i, (info, target) in enumerate(zip(self.outputs, targets)):
                if target is not None and results[i] is not target:
                    results[i] = place_output(info.name, results[i], target)
                    copied.append(info.name)
        return {info.name: result for info, result in zip(self.outputs, results)}, copied

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


_LARGE_MODEL_PARAMETERS = 1 << 23  # from this many weights a compile returns its freed heap (~0.1 s)


def _check_indices(name: str, values, n: int, where: str) -> None:
    """InputError unless every one of `values` (fed as `name`) indexes a dim of n elements."""
    values = np.asarray(values)
    if values.size and values.dtype.kind in "iu":
        low, high = values.min(), values.max()
        if low < -n or high >= n:
            bad = int(low if low < -n else high)
            raise InputError(f"input {name!r}: index {bad} is outside [{-n}, {n - 1}]: {where} reads it as an "
                             f"index into a dim of {n}")


def check_target(target: str) -> None:
    """UnsupportedError for a target ember lacks or this machine cannot run."""
    if target not in TARGETS:
        raise UnsupportedError(f"target {target!r} is not available; choose one of {', '.join(TARGETS)}")
    if target == "cpu":  # (runs wherever ember does; ember.load of a cpu artifact imports no codegen)
        return
    from .codegen.target import TARGETS as _TARGETS

    _TARGETS[target].check()


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
        core this process may use, capped by a cgroup CPU quota: `default_threads`).
    profile: record every kernel's time; read it with `compiled.profile()`.
    fixed_dims: {dim name: size}: an ONNX model's symbolic dims of those names (dim_param)
        compiled at that size, e.g. {"batch": 1}; the model then takes only that size.
    fixed_denotations: the same by dim denotation ({"DATA_BATCH": 1}).
    quantization: weight-only quantization of the linear layers (the `quantize_weights`
        pass, after the fusions): a scheme, "int8" (llama.cpp's q8_0 blocks), "int4"
        (q4_0), "int4_asym" (q4_1), "q5_0", "q5_1", or an `ember.Quantization` that also
        says which weights stay float (default: a language model's head and embedding).
    tensor_parallel: (rank, size, plan): that rank's shard of the model over `size` ranks
        (the `shard_tensor_parallel` pass, after the attention fusion; `plan`: {glob over
        weight names: "column" | "row" | "row/D" | "vocab" | "heads/D"}), its collectives run over
        torch.distributed's default group.

    Raises `ModelError` for a model ember cannot take, `UnsupportedError` for an unknown
    target, option or pass. A `Graph` is compiled as given: passes edit it in place."""
    check_target(target)
    base_dir = options.pop("base_dir", None)
    codegen = options.pop("codegen", True)
    threads = options.pop("intra_op_threads", None)
    profile = options.pop("profile", False)
    fixed = {key: _fixed(options.pop(key, None) or {}, key) for key in ("fixed_dims", "fixed_denotations")}
    quantization = options.pop("quantization", None)
    if quantization is not None:
        from .passes.quantize_weights import Quantization

        quantization = Quantization.of(quantization)
    sharding = options.pop("tensor_parallel", None)
    if sharding is not None:
        from .passes.shard_tensor_parallel import ShardTensorParallel

        if not (isinstance(sharding, (tuple, list)) and len(sharding) == 3 and isinstance(sharding[2], dict)):
            raise InputError(f"tensor_parallel is (rank, size, plan), got {sharding!r}")
        sharding = ShardTensorParallel(sharding[1], sharding[0], sharding[2])
    if options:
        raise UnsupportedError(f"unknown compile option(s): {', '.join(sorted(options))}")
    try:
        return _compile(model, target, opt_level, verify, dump_ir, passes, base_dir, codegen, threads, profile, fixed,
                        quantization, sharding)
    except EmberError:
        raise
    except RecursionError as e:
        raise ModelError(f"ember could not compile this model: it nests too deeply ({e})") from e
    except Exception as e:  # noqa: BLE001 - a malformed model must not escape as a library's error
        raise ModelError(f"ember could not compile this model: {type(e).__name__}: {e}") from e


def quantize(model: Any, quantization: Any = "int8", *, opt_level: int = 2, **options: Any) -> Graph:
    """`model` (an ONNX path, bytes, `onnx.ModelProto` or an ember `Graph`) after the
    passes of `opt_level` with its linear layers' weights quantized (`quantization`: a
    scheme or an `ember.Quantization`, as `compile` takes it): an ember Graph, whose
    weights are llama.cpp's blocks, to compile (`ember.compile(graph)`) or inspect.
    options: `base_dir`, `fixed_dims`, `fixed_denotations` (as `compile`)."""
    from .frontends.onnx import load_onnx
    from .passes import PassManager, build_pipeline
    from .passes.quantize_weights import Quantization, with_quantization

    quantization = Quantization.of(quantization)
    base_dir = options.pop("base_dir", None)
    fixed = {key: _fixed(options.pop(key, None) or {}, key) for key in ("fixed_dims", "fixed_denotations")}
    if options:
        raise UnsupportedError(f"unknown quantize option(s): {', '.join(sorted(options))}")
    graph = model if isinstance(model, Graph) else load_onnx(model, base_dir=base_dir, **fixed)
    graph, _ = PassManager(with_quantization(build_pipeline(opt_level), quantization)).run(graph)
    return graph


def _fixed(sizes: Any, what: str) -> dict[str, int]:
    if not isinstance(sizes, dict) or not all(isinstance(k, str) and k and isinstance(v, int)
                                              and not isinstance(v, bool) and v >= 0 for k, v in sizes.items()):
        raise InputError(f"{what} must be a dict of dim name -> size (an integer >= 0), got {sizes!r}")
    return dict(sizes)


def _compile(model, target, opt_level, verify, dump_ir, passes, base_dir, codegen, threads, profile,
             fixed: dict[str, dict[str, int]], quantization=None, sharding=None) -> CompiledModel:
    from .frontends.onnx import load_onnx
    from .ir.verifier import verify as verify_graph
    from .passes import PassManager, build_pipeline

    timings: dict[str, float] = {}
    metadata: dict[str, Any] = {}
    t0 = time.perf_counter()
    if isinstance(model, Graph):
        if any(fixed.values()):
            raise UnsupportedError("fixed_dims and fixed_denotations apply to an ONNX model, not to an ember Graph")
        verify_graph(model)
        graph = model
    elif isinstance(model, (str, os.PathLike)) and _is_artifact(model):
        raise UnsupportedError(f"{model} is a compiled artifact: load it with ember.load({str(model)!r})")
    else:
        graph = load_onnx(model, base_dir=base_dir, metadata=metadata, **fixed)
    timings["import"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    from .codegen.target import TARGETS as _TARGETS

    from .passes.quantize_weights import with_quantization

    pipeline = with_quantization(_TARGETS[target].pipeline(build_pipeline(opt_level, passes)), quantization)
    if sharding is not None:
        from .passes.shard_tensor_parallel import with_sharding

        pipeline = with_sharding(pipeline, sharding)
    manager = PassManager(pipeline, verify=verify, dump_ir=dump_ir)
    graph, pass_stats = manager.run(graph)
    timings["passes"] = time.perf_counter() - t0
    recorded = {"opt_level": opt_level, "codegen": bool(codegen),
                 "passes": [list(p) for p in passes or []], **{k: v for k, v in fixed.items() if v}}
    if quantization is not None:
        recorded["quantization"] = {"scheme": quantization.scheme, "keep_float": list(quantization.keep_float),
                                    "min_weights": quantization.min_weights, "group_size": quantization.group_size}
    if sharding is not None and sharding.size > 1:
        recorded["tensor_parallel"] = {"rank": sharding.rank, "size": sharding.size}
    return CompiledModel(graph, target, timings, pass_stats, codegen=codegen, intra_op_threads=threads,
                         profile=profile, options=recorded, metadata=metadata)


def _is_artifact(path) -> bool:
    from .artifact import is_artifact

    return is_artifact(path)
