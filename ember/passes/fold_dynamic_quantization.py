"""fold_dynamic_quantization: onnxruntime's dynamically quantized MatMul (what
`onnxruntime.quantization.quantize_dynamic` writes) becomes one block-quantized linear layer.

    (xq, x_scale, x_zero) = DynamicQuantizeLinear(x)
    Mul(Cast(MatMulInteger(xq, Wq, x_zero, W_zero), to=float), Mul(x_scale, W_scale))
        -> ember.QuantizedLinear(x, q8_0 blocks of (Wq - W_zero) * W_scale)

Wq a constant int8/uint8 [K, N] (K a multiple of 32), W_zero and W_scale constants of one
value or one per column. The rescale is fused, as onnxruntime fuses it (its
DynamicQuantizeMatMul), and the product runs on ember's quantized GEMM
(ember/codegen/cpu_quantized_gemm.cpp). The arithmetic is ember's, not the graph's: x is
quantized to int8 per block of 32 (symmetric) rather than to uint8 per tensor, and the
int8 weight is re-blocked into q8_0 (one scale per 32 weights): results differ from
onnxruntime's by the rounding of each scheme, of the same order (a per-block scale
follows x's range more closely than one scale for the whole tensor). Weights of fewer
than MIN_WEIGHTS elements (a classifier's head) keep the graph's integer ops, whose
products ember computes exactly: there the time is small and the
result stays the graph's. The DynamicQuantizeLinear that fed only folded MatMuls is
then dead code.

Not in the default pipelines, since it changes the graph's arithmetic (a BiLSTM's
attention logits moved by up to 0.1 against onnxruntime's); by default the graph's integer
ops run exactly on ember's integer GEMM (fuse_integer_matmul, cpu_integer_gemm.cpp), at
about the same speed on AVX2. Ask for it by name,

    ember.compile("model.int8.onnx", passes=[("fold_dynamic_quantization", "after", "fold_constants")])

for activations quantized per block of 32 (its sentence embeddings closer to float32's
than onnxruntime's are, on a per-column quantize_dynamic MiniLM).
"""

from __future__ import annotations

import numpy as np

from ..ir.quant_formats import BLOCK, FORMATS
from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass

FLOAT = 1  # onnx.TensorProto.FLOAT
MIN_WEIGHTS = 1 << 16  # smaller weights keep the graph's (exact) integer ops: their time is small


def _dql(m: Match):
    producer = m["xq"].producer
    return producer if producer is not None and producer.op == "DynamicQuantizeLinear" else None


def _weight_scale(scales, dql):
    """W's scale: the constant that the Mul making `scales` multiplies x's scale (the
    DynamicQuantizeLinear `dql`'s second output) by; None if `scales` is not that."""
    producer = scales.producer
    if producer is None or producer.op != "Mul" or len(producer.inputs) != 2:
        return None
    a, b = producer.inputs
    if a is dql.outputs[1] and b is not None and b.const is not None:
        return b.const
    if b is dql.outputs[1] and a is not None and a.const is not None:
        return a.const
    return None


def _check(m: Match) -> str | None:
    if m["to"] != FLOAT:
        return "the integer product is not cast to float"
    dql = _dql(m)
    if dql is None or m["xzero"] is not dql.outputs[2]:
        return "A is not a DynamicQuantizeLinear's output with its own zero point"
    x = dql.inputs[0].type
    if x is None or x.dtype is None or x.dtype.name != "float32" or x.shape is None or len(x.shape) < 2:
        return "x is not a float32 matrix (or a batch of them)"
    w, zero = m.constant("wq"), m.constant("wzero")
    if w is None or w.ndim != 2 or w.dtype not in (np.int8, np.uint8) or zero is None:
        return "B is not a constant 8-bit matrix with a constant zero point"
    if w.shape[0] % BLOCK:
        return f"its {w.shape[0]} input features are not a multiple of {BLOCK}"
    scale = _weight_scale(m["scales"], dql)
    n = w.shape[1]
    if scale is None or scale.dtype != np.float32 or scale.size not in (1, n) or zero.size not in (1, n):
        return "the rescale is not x's scale times a constant weight scale of one value or one per column"
    if any(a.size == n and a.ndim and a.shape[-1] != n for a in (scale, zero)):
        return "a per-column scale or zero point that is not along the columns"
    if w.size < MIN_WEIGHTS:
        return f"{w.size} weights, fewer than {MIN_WEIGHTS}: the graph's exact integer product costs little"
    return None


def _replacement(op, xq, wq, xzero, wzero, scales, to):
    dql = xq.producer
    w_scale = _weight_scale(scales, dql)
    # (q - zero) * scale per column (one value or N: both broadcast along the columns)
    w = (wq.const.astype(np.float32) - wzero.const.astype(np.float32).reshape(-1)) * \
        w_scale.astype(np.float32).reshape(-1)
    fmt = FORMATS["q8_0"]
    blocks = fmt.quantize(w.T)
    blocks.flags.writeable = False
    weight = op.graph.add_constant(f"{wq.name}.{fmt.name}", blocks)
    return op("ember.QuantizedLinear", dql.inputs[0], weight, format=fmt.name)


REWRITES = [Rewrite("dynamic_matmul_integer",
                    lambda op, xq, wq, xzero, wzero, scales, to:
                        op.Mul(op.Cast(op.MatMulInteger(xq, wq, xzero, wzero), to=to), scales),
                    _replacement, _check, commute=True)]


@register_pass
class FoldDynamicQuantization(RewritePass):
    name = "fold_dynamic_quantization"
    rewrites = REWRITES
