"""Running a Program on torch tensors of one device: the cuda target's (its generated
kernels Triton, codegen/triton.py), on a GPU, or on the CPU in Triton's interpreter.

Each run binds the sizes from the inputs' shapes, keeps every buffer as a flat tensor on
the device (a view shares its base's), launches each segment's kernels through the
program's module (`launch_<kernel>(buffers, sizes)`), calls the externs on shaped views of
the buffers (the target's externs run on torch alone), and runs a fallback node's
reference implementation on the CPU, its inputs copied to the host and its outputs back:
explicit copies, counted in `stats.fallback_nodes`. Outputs come back to the host as
numpy arrays (`run`), or stay on the device (`run_device`, what the LLM model runner
calls). No arena and no per-shape state: a run allocates its buffers (torch's caching
allocator reuses them).

An input given as a contiguous tensor of its dtype on the device is used as it is, not
copied: the KV caches an LLM's paged attention writes in place are the runner's own
device tensors. Given as a numpy array instead, such an input written in place is copied
back into it after the run, so `CompiledModel.run` means what it means on the cpu target.

The externs are the runtime's (runtime/externs*.py), and those of the Triton modules the
program names in `Program.libraries` (their `EXTERNS`, written by codegen: ember's paged
attention) ahead of them; such an extern returns False where it does not take the
tensors it was given, and the runtime's runs instead.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmberError, ExecutionError, InputError
from ..ir.kernel import Program
from ..ir.registry import get_op
from ..ir.sizes import evaluate, is_symbol
from ._torch import array, tensor, torch, torch_dtype
from .executor import run_reference
from .externs import EXTERNS


def _to_device(a: np.ndarray, device: str):
    """A flat copy of `a` on `device` (never a view of the caller's array)."""
    return tensor(np.ascontiguousarray(a).reshape(-1)).to(device, copy=True)


def _to_host(t) -> np.ndarray:
    return array(t.detach().cpu())


@functools.lru_cache(maxsize=64)
def _module(path: str):
    """The Triton module codegen wrote at `path`, imported once per process."""
    spec = importlib.util.spec_from_file_location(Path(path).stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Buffers(dict):
    """Buffer name -> its flat tensor, a view's name resolving to its base's."""

    def __init__(self, roots: dict[str, str]):
        super().__init__()
        self.roots = roots

    def __missing__(self, name: str):
        return dict.__getitem__(self, self.roots[name])


class DeviceExecutor:
    def __init__(self, program: Program, device: str):
        import torch

        self.torch, self.program, self.device = torch, program, device
        self.profile = None
        p = program
        self._module = _module(p.library) if p.library else None
        self._roots = {name: p.root(name) for name in p.buffers}
        self._externs: dict[str, list] = {name: [fn] for name, fn in EXTERNS.items()}
        for path in p.libraries.values():
            if path and path.endswith(".py"):
                for name, fn in _module(path).EXTERNS.items():
                    self._externs.setdefault(name, []).insert(0, fn)
        # inputs a step writes in place (the paged-attention caches): its extern's, or its
        # reference's (`writes_inputs`)
        written = set()
        for step in p.steps:
            if step.kind == "extern" and step.name == "paged_attention":
                written |= {step.args[3], step.args[4]}
            elif step.kind not in ("segment", "extern"):
                written |= {step.args[i] for i in get_op(step.params["node"].op).writes_inputs}
        self._written = sorted(written & set(p.inputs))
        self._constants = {name: _to_device(np.asarray(a, dtype=p.buffers[name].dtype.numpy), device)
                           for name, a in p.constants.items()}
        self._references: dict[int, Any] = {}  # step index -> its node's reference implementation

    @property
    def fallback_nodes(self) -> list[str]:
        return list(self.program.fallbacks)

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        """Run on `inputs` (numpy arrays, or tensors on the device); the outputs as numpy arrays."""
        outputs, buffers = self._guarded(inputs)
        for name, value in zip(self.program.inputs, inputs):
            if name in self._written and isinstance(value, np.ndarray) and value.flags.writeable:
                np.copyto(value, _to_host(buffers[name]).reshape(value.shape), casting="unsafe")
        return [_to_host(t) for t in outputs]

    def run_device(self, inputs: Sequence[Any]) -> list[Any]:
        """Run on `inputs`; the outputs as tensors on the device."""
        return self._guarded(inputs)[0]

    def _guarded(self, inputs):
        try:
            return self._run(inputs)
        except (EmberError, KeyboardInterrupt):
            raise
        except Exception as e:  # noqa: BLE001 - a library's failure (torch's, Triton's), named
            raise ExecutionError(f"a run on {self.device} failed: {type(e).__name__}: {e}") from e

    def _input(self, name: str, value, sizes: dict):
        """Input `name`'s flat tensor on the device: `value` itself where it is a contiguous
        tensor of its dtype there."""
        b = self.program.buffers[name]
        if isinstance(value, self.torch.Tensor):
            if value.dim() != len(b.shape):
                raise InputError(f"input {name!r}: rank {value.dim()}, expected {len(b.shape)}")
            self._bind(name, tuple(value.shape), sizes, "input")
            dtype = torch_dtype(b.dtype.numpy)
            if value.device.type == self.torch.device(self.device).type and value.dtype == dtype \
                    and value.is_contiguous():
                return value.view(-1)
            return value.to(self.device, dtype).contiguous().view(-1)
        array = np.asarray(value, dtype=b.dtype.numpy)
        if array.ndim != len(b.shape):
            raise InputError(f"input {name!r}: rank {array.ndim}, expected {len(b.shape)}")
        self._bind(name, array.shape, sizes, "input")
        return _to_device(array, self.device)

    def _run(self, inputs: Sequence[Any]):
        p = self.program
        sizes: dict = {}
        buffers = _Buffers(self._roots)
        for name, value in zip(p.inputs, inputs):
            buffers[name] = self._input(name, value, sizes)
        buffers.update(self._constants)
        for i, step in enumerate(p.steps):
            if step.kind == "segment":
                for launch in self._launches(step, buffers, sizes):
                    launch()
            elif step.kind == "extern":
                self._extern(step, buffers, sizes, ", ".join(step.nodes[:3]) or step.name)
            else:
                self._fallback(i, step, buffers, sizes)
        return [self._view(name, buffers, sizes) for name in p.outputs], buffers

    # -- sizes and buffers --------------------------------------------------------------
    def _shape(self, name: str, sizes: dict) -> tuple[int, ...]:
        return tuple(int(evaluate(d, sizes)) for d in self.program.buffers[name].shape)

    def _bind(self, name: str, shape: tuple, sizes: dict, what: str) -> None:
        for d, n in zip(self.program.buffers[name].shape, shape):
            if is_symbol(d):
                if d in sizes and sizes[d] != n:
                    raise InputError(f"{what} {name!r}: size {d} is {n} here and {sizes[d]} elsewhere")
                sizes[d] = int(n)
            elif int(evaluate(d, sizes)) != n:
                raise InputError(f"{what} {name!r}: shape {list(shape)}, expected {list(self.program.buffers[name].shape)}")

    def _allocate(self, names, buffers: _Buffers, sizes: dict) -> None:
        torch, p = self.torch, self.program
        for name in names:
            root = self._roots.get(name)
            if not name or root in buffers:
                continue
            b = p.buffers[root]
            if b.kind == "fill":
                buffers[root] = torch.tensor([int(evaluate(f, sizes)) for f in b.fill],
                                             dtype=torch_dtype(b.dtype.numpy), device=self.device)
                continue
            numel = int(np.prod(self._shape(root, sizes))) if b.shape else 1
            buffers[root] = torch.empty(max(numel, 1), dtype=torch_dtype(b.dtype.numpy), device=self.device)

    def _view(self, name: str, buffers: _Buffers, sizes: dict):
        shape = self._shape(name, sizes)
        return buffers[name][:int(np.prod(shape))].view(shape)

    def _store(self, name: str, result, buffers: _Buffers, sizes: dict, where: str) -> None:
        """An output whose size the step told: bind its sizes, keep it flat."""
        result = result if isinstance(result, self.torch.Tensor) else _to_device(np.asarray(result),
                                                                                  self.device).view(np.shape(result))
        self._bind(name, tuple(result.shape), sizes, f"{where}: output")
        root = self._roots[name]
        if root != name:
            raise ExecutionError(f"{where}: a sized output that views another buffer")
        b = self.program.buffers[name]
        buffers[root] = result.to(self.device, torch_dtype(b.dtype.numpy)).contiguous().reshape(-1)

    # -- steps ----------------------------------------------------------------------------
    def _launches(self, step, buffers: _Buffers, sizes: dict) -> list:
        """A segment's kernel launches, its buffers allocated (a run calls them; a plan keeps them)."""
        self._allocate(step.args, buffers, sizes)
        values = [sizes.get(s) for s in self.program.symbols]
        return [functools.partial(getattr(self._module, f"launch_{kernel}"), buffers, values)
                for kernel in step.kernels]

    def _extern_call(self, step, buffers: _Buffers, sizes: dict):
        """An extern step with outputs of known size as one call (its outputs allocated)."""
        ins = [self._view(a, buffers, sizes) if a else None for a in step.args[:step.num_inputs]]
        outs = step.args[step.num_inputs:]
        self._allocate(outs, buffers, sizes)
        views = [self._view(a, buffers, sizes) for a in outs]
        return functools.partial(_call_extern, self._externs[step.name], step.params, ins, views)

    def _extern(self, step, buffers: _Buffers, sizes: dict, where: str) -> None:
        if not step.params.get("sizes_outputs"):
            self._extern_call(step, buffers, sizes)()
            return
        ins = [self._view(a, buffers, sizes) if a else None for a in step.args[:step.num_inputs]]
        outs = step.args[step.num_inputs:]
        results = self._externs[step.name][0](step.params, *ins, *([None] * len(outs)))
        for name, result in zip(outs, results):
            self._store(name, result, buffers, sizes, where)

    def plan(self, inputs: Sequence[Any]) -> StaticRun:
        """This program planned for `inputs` (in order, each a shape, for an input tensor the
        plan makes, or a tensor used as it is, like the KV caches): see StaticRun."""
        return StaticRun(self, inputs)

    def _fallback(self, i: int, step, buffers: _Buffers, sizes: dict) -> None:
        node = step.params["node"]
        fn = self._references.get(i)
        if fn is None:
            fn = self._references[i] = get_op(node.op).reference(node)
        hosts: dict[str, np.ndarray] = {}

        def host(name: str) -> np.ndarray:
            hosts[name] = _to_host(self._view(name, buffers, sizes))
            return hosts[name]

        results = run_reference(fn, step, host)
        for k in get_op(node.op).writes_inputs:  # state the reference wrote in place: back to the device
            name = step.args[k] if k < step.num_inputs else ""
            if name:
                self._view(name, buffers, sizes).copy_(tensor(np.ascontiguousarray(hosts[name])))
        for name, result in zip(step.args[step.num_inputs:], results):
            if self.program.buffers[name].kind == "dynamic":
                raise ExecutionError(f"{node.describe()}: a sequence or optional output on {self.device}")
            self._store(name, np.asarray(result), buffers, sizes, node.describe())


def _call_extern(fns: list, params: dict, ins: list, views: list) -> None:
    """The first of `fns` (a library's, then the runtime's) that takes these tensors, its
    result written into the single output's view where it made a tensor of its own."""
    for fn in fns:
        result = fn(params, *ins, *views)
        if result is not False:  # (False: a library's extern that does not take these tensors)
            break
    if len(views) == 1 and isinstance(result, torch.Tensor) and result.data_ptr() != views[0].data_ptr():
        views[0].copy_(result.reshape(views[0].shape))


class StaticRun:
    """A program planned once for one set of input shapes (what a CUDA graph captures):
    every size bound, every buffer allocated and kept, every kernel's arguments fixed, so a
    run allocates nothing, reads nothing back from the device and launches the same
    kernels on the same memory each time. Its inputs are `inputs` (input index -> a tensor
    the caller fills before each run; those given as tensors are the caller's own), its
    outputs `outputs` (tensors the next run overwrites).

    `run()` launches the kernels; on a GPU, `capture()` records them once in a CUDA graph
    and `run()` replays it. A program with a fallback node or an output sized only as it
    runs cannot be planned (UnsupportedError)."""

    def __init__(self, executor: DeviceExecutor, inputs: Sequence[Any]):
        from ..errors import UnsupportedError

        ex, p = executor, executor.program
        torch = ex.torch
        if p.fallbacks:
            raise UnsupportedError(f"a program with fallback nodes cannot be planned ({p.fallbacks[0]} runs on the CPU)")
        sizes: dict = {}
        buffers = _Buffers(ex._roots)
        self.inputs = {}
        for i, (name, value) in enumerate(zip(p.inputs, inputs)):
            if not isinstance(value, torch.Tensor):
                value = self.inputs[i] = torch.zeros(tuple(value), dtype=torch_dtype(p.buffers[name].dtype.numpy),
                                                     device=ex.device)
            buffers[name] = ex._input(name, value, sizes)
        buffers.update(ex._constants)
        self._calls = []
        for step in p.steps:
            if step.kind == "segment":
                self._calls += ex._launches(step, buffers, sizes)
            elif step.kind == "extern" and not step.params.get("sizes_outputs"):
                self._calls.append(ex._extern_call(step, buffers, sizes))
            else:
                raise UnsupportedError(f"step {step.name} ({', '.join(step.nodes[:2])}) sizes its outputs as it runs: "
                                       "the program cannot be planned")
        self.outputs = [ex._view(name, buffers, sizes) for name in p.outputs]
        self._buffers = buffers  # (kept alive: the calls hold views of them)
        self.graph = None
        self.runs = 0

    def capture(self, pool=None) -> None:
        """Record the run in a CUDA graph (a GPU only): one warm-up run on a side stream
        first (Triton compiles, cuBLAS chooses), then the capture."""
        import torch

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            self._launch()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            self._launch()
        self.graph = graph

    def run(self) -> list:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._launch()
        self.runs += 1
        return self.outputs

    def _launch(self) -> None:
        for call in self._calls:
            call()
