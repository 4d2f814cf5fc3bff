"""Targets: what `ember.compile(model, target=...)` selects.

A Target names the device its programs run on, the renderer of its generated kernels,
the dtypes those kernels take, the externs its runtime has (None: every extern in
runtime/externs*.py) and the float dtypes they take, and its pipeline adjustments (the
passes it leaves out: cuda runs no channels-last rewrite). A node whose kernels the target lacks (an extern it has not, a
dtype its renderer has not) runs its reference implementation on the CPU, counted in
`stats.fallback_nodes`.

    cpu    C++/OpenMP kernels (codegen/cpu.py) built with the system compiler, every extern
    cuda   Triton kernels (codegen/triton.py) on a CUDA GPU's torch tensors, the externs
           that run on torch alone (GEMMs on cuBLAS, convolutions on cuDNN, attention on
           SDPA) and paged
           attention on ember's Triton kernels (triton_paged_attention.py); without a GPU,
           with TRITON_INTERPRET=1, the same path on CPU tensors in Triton's interpreter
           (how CI tests it)
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import UnsupportedError
from ..ir.dtypes import DType


@dataclass(frozen=True)
class Target:
    name: str
    device: str  # the torch device its buffers live on
    renderer: str  # "cpp" | "triton"
    kernel_dtypes: frozenset
    extern_floats: frozenset  # the float dtypes its externs take
    externs: frozenset | None = None  # the externs its runtime runs (None: all)
    # its pipeline adjustments: passes of the opt level's pipeline it leaves out
    skip_passes: frozenset = frozenset()

    def pipeline(self, passes: list) -> list:
        """`passes` (an opt level's pipeline) as this target runs it."""
        return [p for p in passes if p.name not in self.skip_passes]

    def check(self) -> None:
        """UnsupportedError where this machine cannot run the target."""
        if self.name == "cuda" and not interpreted():
            import torch

            if not torch.cuda.is_available():
                raise UnsupportedError("target 'cuda' needs a CUDA GPU (torch.cuda.is_available() is False here); "
                                       "set TRITON_INTERPRET=1 to run its kernels in Triton's interpreter on the CPU")
            import importlib.util

            if importlib.util.find_spec("triton") is None:
                raise UnsupportedError("target 'cuda' needs triton: pip install 'ember[cuda]'")

    def run_device(self) -> str:
        """The device a program runs on here: the CPU under Triton's interpreter."""
        return "cpu" if self.name == "cuda" and interpreted() else self.device


def interpreted() -> bool:
    """Whether Triton kernels run in Triton's interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _cpu_dtypes() -> frozenset:
    from .lowering import KERNEL_DTYPES

    return frozenset(KERNEL_DTYPES)


CPU = Target("cpu", "cpu", "cpp", _cpu_dtypes(), frozenset({DType.float32, DType.float64}))
CUDA = Target("cuda", "cuda", "triton",
              frozenset({DType.float32, DType.float64, DType.float16, DType.bfloat16, DType.int8, DType.int16,
                         DType.int32, DType.int64, DType.uint8, DType.uint16, DType.uint32, DType.uint64, DType.bool}),
              frozenset({DType.float32, DType.float64, DType.float16, DType.bfloat16}),
              externs=frozenset({"matmul", "linear", "gemm", "attention", "paged_attention", "conv", "conv16",
                                 "all_reduce", "all_gather"}),
              # channels-last exists for the CPU's convolutions (oneDNN's, ember's direct one);
              # torch's on a GPU take the ONNX layout as it is, with no transposes around them
              skip_passes=frozenset({"channels_last"}))
TARGETS = {"cpu": CPU, "cuda": CUDA}
