"""Hand-written kernels: their sources, and the libraries codegen builds from them for
the Programs that call them (C++ for the cpu target, Triton for the cuda target).

Each kernel is one source file next to this module (ember's CPU prelude pasted first
where it uses the prelude's math), built once with the system C++ compiler and cached
like every kernel library. `libraries(program)` builds the ones a Program's externs may
call (its control-flow bodies' included) and returns their paths, which codegen puts in
the Program (`Program.libraries`): the runtime loads and calls them (ember/runtime/
native/) and never builds anything. Artifacts ship them (ember/artifact/kernels.py), so a
load builds nothing either.

    gemm                 cpu_gemm.cpp: the tiled GEMM of linear layers, Gemms and
                         channels-last convolutions, and the encoder attention
    small_conv           cpu_small_conv.cpp: tiny channels-first convolutions
    lstm                 cpu_lstm.cpp: a float32 LSTM's step loop
    quantized_gemm       cpu_quantized_gemm.cpp: ember.QuantizedLinear (llama.cpp's
                         quantized blocks, x quantized to int8)
    integer_gemm         cpu_integer_gemm.cpp: MatMulInteger, QLinearMatMul,
                         MatMulIntegerToFloat, ConvInteger and QLinearConv (8-bit
                         integers, exact int32 sums), DynamicQuantizeLinear, and
                         DynamicQuantizeLSTM's X.W
    quantized_lstm       cpu_quantized_lstm.cpp: com.microsoft.DynamicQuantizeLSTM's step loop
    paged_attention-T    cpu_paged_attention.cpp for element type T (float32, float16,
                         bfloat16): ember.PagedAttention, and float32 attention of packed rows
    paged_attention-T-C  the same with caches of another element type C (a float16,
                         float8e4m3fn or int8 KV cache of a float32 model)

and for the cuda target, Triton modules (written into the kernel cache, where the
runtime imports them and takes their `EXTERNS`; Triton compiles them at first launch):

    paged_attention-triton   triton_paged_attention.py: ember.PagedAttention's KV store
                             and attention
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ExecutionError
from . import cpu

log = logging.getLogger("ember.codegen")

PAGED_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}  # -> the kernel's element type
# a KV cache's may also be float8 (e4m3fn), or int8 rows with their scale
CACHE_DTYPES = {**PAGED_DTYPES, "float8e4m3fn": "F8E4M3", "int8": "I8"}


def paged_key(dtype: str, cache_dtype: str) -> str:
    """The paged-attention library's suffix for q's element type and the caches' ("T" or
    "T-C"; runtime/native/paged_attention.py names them the same way)."""
    return dtype if cache_dtype == dtype else f"{dtype}-{cache_dtype}"


def program_uses(program, predicate) -> bool:
    """Whether a step of `program`, or of a control-flow body in it, is an extern that
    `predicate(step)` accepts."""
    return any(predicate(step) or (step.name == "control"
                                   and any(program_uses(body, predicate) for body in step.params.get("programs", ())))
               for step in program.steps if step.kind == "extern")


def paged_dtypes_used(program) -> list[str]:
    """The element types (`paged_key`s) `program`'s steps (its bodies' included) run the
    paged-attention kernel for: its paged-attention steps' (q's and the caches') and its
    float32 attention steps' (packed rows run on it: `dense_attention`)."""
    used = set()
    for step in program.steps:
        if step.kind != "extern":
            continue
        if step.name in ("attention", "paged_attention"):
            dtype = program.buffers[step.args[0]].dtype.name
            cache = program.buffers[step.args[3]].dtype.name if step.name == "paged_attention" else dtype
            if dtype in PAGED_DTYPES and cache in CACHE_DTYPES and (step.name == "paged_attention"
                                                                    or dtype == "float32"):
                used.add(paged_key(dtype, cache))
        elif step.name == "control":
            for body in step.params.get("programs", ()):
                used.update(paged_dtypes_used(body))
    return sorted(used)


@dataclass(frozen=True)
class HandWritten:
    """Kernel `name`: `file` (next to this module), with ember's CPU prelude first where
    `prelude`, then `header`; `used_by(program)` says whether a Program may call it."""

    name: str
    file: str
    used_by: Callable
    prelude: bool = False
    header: str = ""
    what: str = ""  # for messages: what it is...
    instead: str = "torch's"  # ...and what runs where it does not build
    renderer: str = "cpp"  # the target's renderer it serves: "cpp" | "triton"

    def source(self) -> str:
        text = Path(__file__).with_name(self.file).read_text()
        if self.header:
            text = f"{self.header}\n{text}"
        if self.prelude:
            from .cpu_prelude import PRELUDE

            text = f"{PRELUDE}\n{text}" if self.header else PRELUDE + text
        return text

    def library(self) -> Path | None:
        """The built library (built now if the kernel cache lacks it; a Triton module
        written there); None without a C++ compiler. ExecutionError where it does not build."""
        if self.renderer == "triton":
            from . import triton

            return triton.write(self.source())
        return None if cpu.compiler() is None else cpu.build(self.source())


def _paged(dtype: str, cache: str) -> HandWritten:
    key = paged_key(dtype, cache)
    header = f"#define EMBER_PAGED_ELEMENT {PAGED_DTYPES[dtype]}"
    if cache != dtype:
        header += f"\n#define EMBER_PAGED_CACHE {CACHE_DTYPES[cache]}"
    return HandWritten(f"paged_attention-{key}", "cpu_paged_attention.cpp",
                       lambda program: key in paged_dtypes_used(program), prelude=True, header=header,
                       what=f"{dtype} paged-attention" + (f" over a {cache} cache" if cache != dtype else ""))


KERNELS: dict[str, HandWritten] = {k.name: k for k in [
    HandWritten("gemm", "cpu_gemm.cpp", prelude=True, what="tiled GEMM", instead="oneDNN's",
                # a float32 linear layer or Gemm (their constant weight packed for it), an
                # attention that is not causal, or a channels-last convolution
                used_by=lambda program: program_uses(program, lambda step: step.name in ("linear", "gemm")
                                                     or (step.name == "attention" and not step.params.get("causal"))
                                                     or (step.name == "conv" and step.params.get("channels_last")))),
    HandWritten("small_conv", "cpu_small_conv.cpp", what="small convolution",
                used_by=lambda program: program_uses(
                    program, lambda step: step.name == "conv" and not step.params.get("channels_last"))),
    HandWritten("lstm", "cpu_lstm.cpp", prelude=True, what="LSTM",
                used_by=lambda program: program_uses(
                    program, lambda step: step.name == "recurrent" and step.params.get("op") == "LSTM")),
    HandWritten("quantized_gemm", "cpu_quantized_gemm.cpp", what="quantized GEMM", instead="numpy's, dequantized",
                used_by=lambda program: program_uses(program, lambda step: step.name in ("quantized_linear",
                                                                                        "quantized_gather"))),
    HandWritten("integer_gemm", "cpu_integer_gemm.cpp", what="8-bit integer GEMM", instead="torch's, in float64",
                used_by=lambda program: program_uses(program, lambda step: step.name in (
                    "integer_matmul", "integer_conv", "dynamic_quantize", "quantized_lstm"))),
    HandWritten("quantized_lstm", "cpu_quantized_lstm.cpp", what="DynamicQuantizeLSTM", instead="the reference",
                used_by=lambda program: program_uses(program, lambda step: step.name == "quantized_lstm")),
    *(_paged(dtype, cache) for dtype in PAGED_DTYPES for cache in CACHE_DTYPES),
    HandWritten("paged_attention-triton", "triton_paged_attention.py", renderer="triton",
                what="Triton paged-attention", instead="torch's",
                used_by=lambda program: program_uses(program, lambda step: step.name == "paged_attention")),
]}


def build(name: str) -> str | None:
    """The path of kernel `name`'s library, built now if the kernel cache lacks it; None
    without a C++ compiler or where it does not build (logged: the externs then take
    their other path)."""
    kernel = KERNELS[name]
    try:
        built = kernel.library()
    except ExecutionError as e:
        log.warning("ember: the %s kernel did not build; it runs on %s instead:\n%s", kernel.what, kernel.instead, e)
        return None
    return None if built is None else str(built)


def used(program, renderer: str = "cpp") -> list[str]:
    """The hand-written kernels of `renderer` that `program` (its control-flow bodies
    included) may call."""
    return [name for name, kernel in KERNELS.items() if kernel.renderer == renderer and kernel.used_by(program)]


def libraries(program, renderer: str = "cpp") -> dict[str, str | None]:
    """Kernel name -> its library's path (None where it did not build) for every
    hand-written kernel of `renderer` that `program` may call: what codegen puts in
    `Program.libraries`."""
    return {name: build(name) for name in used(program, renderer)}
