"""quantize_weights: weight-only quantization of linear layers into llama.cpp's blocks.

    ember.Linear(x, W, b, activation)   (W a float constant [K, N], K a multiple of 32)
        -> ember.QuantizedLinear(x, blocks(W^T), b, format=scheme, activation)
    MatMul(x, W)                        (the same W, x of rank 2 or more)
        -> ember.QuantizedLinear(x, blocks(W^T), format=scheme)

`scheme` is a block format (ember/ir/quant_formats.py): "q8_0" (int8, one scale per 32
weights: the "int8" scheme), "q4_0" (int4, symmetric: "int4"), "q4_1" (int4 with a
minimum per block: "int4_asym"), "q5_0", "q5_1". The blocks are what llama.cpp's own tools
write (gguf's quantizer). x stays float; the CPU kernel quantizes it to int8 per block of
32 as it runs (cpu_quantized_gemm.cpp).

What stays float is a rule list the caller can change (`keep_float`, fnmatch patterns of
the weight's constant name): by default a language model's head ("lm_head*", "*lm_head*",
"*embed*") — its logits are the most sensitive to rounding — and any weight of fewer than
`min_weights` elements (too small for its bandwidth to matter). Norms, softmax and
everything else that is not a linear layer stay float whatever the scheme.

Not in the default pipelines: `compile(model, quantization="int8")` (or a Quantization)
runs it after the fusions, and `ember.quantize` returns the quantized graph.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from ..errors import UnsupportedError
from ..ir.graph import Graph
from ..ir.quant_formats import BLOCK, SCHEMES, block_format
from .base import Pass, PassResult
from .registry import register_pass
from .rewriter import Match, Rewrite, apply_rewrites, RewriteReport

KEEP_FLOAT = ("lm_head*", "*lm_head*", "*embed*")


@dataclass(frozen=True)
class Quantization:
    """How `quantize_weights` quantizes: the scheme (SCHEMES), the weights it leaves float
    (fnmatch patterns of their names), the smallest weight it quantizes, and the weights
    that share a scale (`group_size`: 32, or 64, 128, ... for int8, int4 and int4_asym —
    coarser than 32, as schemes made for group-wise kernels ask; the blocks stay the
    kernel's blocks of 32, each with its group's scale)."""

    scheme: str = "int8"
    keep_float: tuple[str, ...] = KEEP_FLOAT
    min_weights: int = 4096
    group_size: int = BLOCK

    def __post_init__(self):
        if self.scheme not in SCHEMES:
            raise UnsupportedError(f"quantization scheme {self.scheme!r} is not one ember has; choose one of "
                                   f"{', '.join(SCHEMES)}")
        if not block_format(self.format).takes_group(self.group_size):
            raise UnsupportedError(f"group_size {self.group_size}: {self.scheme} quantizes in groups of {BLOCK}; "
                                   f"int8, int4 and int4_asym in multiples of {BLOCK}")
        object.__setattr__(self, "keep_float", tuple(self.keep_float))

    @property
    def format(self) -> str:
        """The block format the scheme writes (ember/ir/quant_formats.py)."""
        return SCHEMES[self.scheme]

    @classmethod
    def of(cls, value) -> "Quantization":
        """A Quantization from what `compile(quantization=...)` takes: one, or a scheme name."""
        if isinstance(value, Quantization):
            return value
        if isinstance(value, str):
            return cls(value)
        raise UnsupportedError(f"quantization must be a scheme name ({', '.join(SCHEMES)}) or an "
                               f"ember.Quantization, got {value!r}")

    def keeps_float(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.keep_float)


def _rewrite(q: Quantization, biased: bool, matmul: bool = False) -> Rewrite:
    fmt = block_format(q.format)

    def pattern(op, x, w, b, activation):
        if matmul:
            return op("MatMul", x, w)
        return op("ember.Linear", x, w, *([b] if biased else []), activation=activation)

    def check(m: Match) -> str | None:
        w = m.constant("w")
        if w is None or w.ndim != 2 or w.dtype not in (np.float32, np.float16) and w.dtype.name != "bfloat16":
            return "the weight is not a float constant matrix"
        x = m["x"].type
        if x is None or x.dtype is None or x.dtype.name != "float32":
            return "x is not float32 (the kernel's)"
        if matmul and (x.shape is None or len(x.shape) < 2):
            return "x is not a matrix (or a batch of them)"
        if w.shape[0] % q.group_size:
            return f"its {w.shape[0]} input features are not a multiple of {q.group_size}"
        if w.size < q.min_weights:
            return f"{w.size} weights, fewer than {q.min_weights}"
        if q.keeps_float(m["w"].name):
            return f"{m['w'].name!r} stays float (keep_float)"
        return None

    def replacement(op, x, w, b=None, activation=""):
        blocks = fmt.quantize_groups(np.asarray(w.const, dtype=np.float32).T, q.group_size)
        blocks.flags.writeable = False
        weight = op.graph.add_constant(f"{w.name}.{fmt.name}", blocks)
        return op("ember.QuantizedLinear", x, weight, *([b] if biased else []), format=fmt.name,
                  activation=activation)

    name = "matmul" if matmul else "linear_bias" if biased else "linear"
    return Rewrite(f"quantize_{name}_{fmt.name}", pattern, replacement, check)


@register_pass
class QuantizeWeights(Pass):
    name = "quantize_weights"

    def __init__(self, quantization: Quantization | str = "int8"):
        self.quantization = Quantization.of(quantization)
        self.report = RewriteReport()

    def run(self, graph: Graph) -> PassResult:
        rewrites = [*(_rewrite(self.quantization, biased) for biased in (True, False)),
                    _rewrite(self.quantization, False, matmul=True)]
        self.report = apply_rewrites(graph, rewrites)
        return PassResult(graph, bool(self.report.applied))


def with_quantization(pipeline: list[Pass], quantization: Quantization | str | None) -> list[Pass]:
    """`pipeline` with a quantize_weights pass for `quantization` (None: as it is) after
    its fusions (which make the linear layers and their epilogues it quantizes)."""
    if quantization is None:
        return pipeline
    names = [p.name for p in pipeline]
    at = names.index("fuse_bias_activation") + 1 if "fuse_bias_activation" in names else len(pipeline)
    return [*pipeline[:at], QuantizeWeights(quantization), *pipeline[at:]]
