"""onnxruntime's contrib ops (domain com.microsoft) that optimized exports carry: what
`onnxruntime.transformers.optimizer` and Optimum write for BERT, GPT-2 and LLaMA-style
models. Semantics follow onnxruntime's ContribOperators.md and its CPU kernels (masks add
`mask_filter_value`, -10000, rather than -inf, as they do).

The attention ops and rotary live in contrib_microsoft_attention.py. Each op is one
definition: schema, type function, numpy reference (its meaning),
and `expand`: the op rewritten into ember's fused ops and standard ones, which is how
it reaches kernels (the `expand_ops` pass applies it before the fusions; codegen applies
it to a node that reaches lowering). An expansion that does not cover a node's form
raises NotLowerable and the node runs on its reference.

    SkipLayerNormalization(x, skip, g, b?, bias?)     -> ember.SkipLayerNorm(x + bias, skip, g, b)
    SkipSimplifiedLayerNormalization(x, skip, g, bias?) -> RMSNormalization(x + skip + bias, g)
    SimplifiedLayerNormalization(x, g)          -> RMSNormalization(x, g)
    EmbedLayerNormalization(ids, seg?, W, P, Sg?, g, b, mask?, pos?) -> Gathers -> LayerNormalization
    Gelu, BiasGelu, FastGelu, QuickGelu, BiasAdd, FusedMatMul -> Gelu / Add / Sigmoid / MatMul
"""

from __future__ import annotations

import numpy as np
import sympy

from ..dtypes import DType
from ..graph import Node
from ..registry import AttrSpec, Known, OpDef, ParamSpec, get_op, register_op
from ..types import TensorType
from ._lowering import NotLowerable
from ._symbolic import broadcast, dtype_of, shape_of, tensor
from .ember_nn import ACTIVATIONS

MS = "com.microsoft."


# -- helpers ----------------------------------------------------------------------
def padded_inputs(node: Node, count: int) -> list:
    """node's inputs padded with None to `count` (absent trailing inputs)."""
    return (list(node.inputs) + [None] * count)[:count]


def padded_args(values: tuple, count: int) -> list:
    return (list(values) + [None] * count)[:count]


def type_shape(value) -> tuple | None:
    t = value.type if value is not None else None
    return tuple(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def type_dtype(value) -> DType | None:
    t = value.type if value is not None else None
    return t.dtype if isinstance(t, TensorType) else None


def same_dims(a, b) -> bool:
    return a is not None and b is not None and sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0


def as_f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def _layer_norm(h: np.ndarray, eps: float, gamma, beta=None, rms: bool = False):
    """(y, mean, inv_std_var) over the last axis, computed in float32 at least."""
    h = as_f32(h)
    mean = h.mean(axis=-1, keepdims=True)
    centered = h if rms else h - mean
    inv = 1 / np.sqrt((centered * centered).mean(axis=-1, keepdims=True) + eps)
    y = centered * inv * gamma
    if beta is not None:
        y = y + beta
    return y, mean, inv


def _same_type_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    dtype = dtype_of(ins[0])
    return [None if dtype is None else tensor(dtype, broadcast(*(shape_of(k) for k in ins if k is not None)))]


def define(name: str, inputs: tuple, outputs: tuple, reference, infer, expand, attrs=None, doc=""):
    register_op(OpDef(MS + name, inputs=inputs, outputs=outputs, attrs=attrs or {}, reference=reference,
                      infer=infer, expand=expand, doc=doc))


def params(*names: str, required: int = 1) -> tuple[ParamSpec, ...]:
    return tuple(ParamSpec(n, optional=i >= required) for i, n in enumerate(names))


def _scalar(op, value: float, dtype: DType | None):
    return op.constant(np.asarray(value, dtype=(dtype or DType.float32).numpy))


# -- activations: Gelu, BiasGelu, FastGelu, QuickGelu, BiasAdd --------------------
def _elementwise_reference(fn):
    def prepare(node: Node):
        opdef = get_op(node.op)
        attrs = {name: opdef.attr(node, name) for name in opdef.attrs}

        def run(*args):
            x = args[0]
            return (np.asarray(fn(*[as_f32(a) if a is not None else None for a in args], **attrs)).astype(x.dtype),)

        return run

    return prepare


def _with_bias(op, x, bias):
    return op.Add(x, bias) if bias is not None else x


define("Gelu", params("X"), params("Y"),
       _elementwise_reference(lambda x: ACTIVATIONS["gelu"](x)), _same_type_infer,
       lambda op, node, used: [op.Gelu(node.inputs[0])],
       doc="Y = X * Phi(X) (erf form)")
define("BiasGelu", params("A", "B", required=2), params("C"),
       _elementwise_reference(lambda a, b: ACTIVATIONS["gelu"](a + b)), _same_type_infer,
       lambda op, node, used: [op.Gelu(op.Add(node.inputs[0], node.inputs[1]))],
       doc="C = Gelu(A + B) (erf form); B: [hidden]")
define("FastGelu", params("X", "bias"), params("Y"),
       _elementwise_reference(lambda x, bias=None: ACTIVATIONS["gelu_tanh"](x if bias is None else x + bias)),
       _same_type_infer,
       lambda op, node, used: [op.Gelu(_with_bias(op, *padded_inputs(node, 2)), approximate="tanh")],
       doc="Y = Gelu_tanh(X + bias): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))")


def _expand_quick_gelu(op, node, used):
    x = node.inputs[0]
    alpha = get_op(node.op).attr(node, "alpha")
    return [op.Mul(x, op.Sigmoid(op.Mul(x, _scalar(op, alpha, type_dtype(x)))))]


define("QuickGelu", params("X"), params("Y"),
       _elementwise_reference(lambda x, alpha: x / (1 + np.exp(-alpha * x))), _same_type_infer,
       _expand_quick_gelu, attrs={"alpha": AttrSpec("alpha", "float", 1.702)},
       doc="Y = X * sigmoid(alpha * X)")
define("BiasAdd", params("X", "bias", "skip", required=3), params("Y"),
       _elementwise_reference(lambda x, bias, skip: x + bias + skip), _same_type_infer,
       lambda op, node, used: [op.Add(op.Add(node.inputs[0], node.inputs[1]), node.inputs[2])],
       doc="Y = X + bias + skip; X, skip: [N, S, C], bias: [C]")


# -- FusedMatMul --------------------------------------------------------------------
def _matmul_perm(rank: int, trans: bool, trans_batch: bool) -> list[int] | None:
    """The transpose FusedMatMul applies to an operand of `rank` before multiplying:
    transBatch moves the first axis just before the last one (its batch axes become
    the leading ones), then trans swaps the last two. None: no transpose."""
    perm = list(range(rank))
    if trans_batch and rank >= 3:
        perm = perm[1:-1] + [perm[0], perm[-1]]
    if trans and rank >= 2:
        perm[-2], perm[-1] = perm[-1], perm[-2]
    return None if perm == list(range(rank)) else perm


def _fused_matmul_settings(node: Node):
    opdef = get_op(node.op)
    return (float(opdef.attr(node, "alpha")), bool(opdef.attr(node, "transA")), bool(opdef.attr(node, "transB")),
            bool(opdef.attr(node, "transBatchA")), bool(opdef.attr(node, "transBatchB")))


def _fused_matmul_reference(node: Node):
    alpha, ta, tb, tba, tbb = _fused_matmul_settings(node)

    def run(a, b):
        pa, pb = _matmul_perm(a.ndim, ta, tba), _matmul_perm(b.ndim, tb, tbb)
        y = np.matmul(a.transpose(pa) if pa else a, b.transpose(pb) if pb else b)
        return ((y * alpha if alpha != 1 else y).astype(a.dtype, copy=False),)

    return run


def _fused_matmul_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    alpha, ta, tb, tba, tbb = _fused_matmul_settings(node)
    a, b, dtype = shape_of(ins[0]), shape_of(ins[1]), dtype_of(ins[0])
    if dtype is None:
        return [None]
    if a is None or b is None:
        return [tensor(dtype, None)]
    pa, pb = _matmul_perm(len(a), ta, tba), _matmul_perm(len(b), tb, tbb)
    a = [a[i] for i in pa] if pa else a
    b = [b[i] for i in pb] if pb else b
    return get_op("MatMul").infer(Node("MatMul", [], [], {}, node.name), [tensor(dtype, a), tensor(dtype, b)])


def _expand_fused_matmul(op, node, used):
    alpha, ta, tb, tba, tbb = _fused_matmul_settings(node)
    a, b = node.inputs[:2]
    ranks = type_shape(a), type_shape(b)
    if None in ranks:
        raise NotLowerable("operands of unknown rank")
    pa, pb = _matmul_perm(len(ranks[0]), ta, tba), _matmul_perm(len(ranks[1]), tb, tbb)
    y = op.MatMul(op.Transpose(a, perm=pa) if pa else a, op.Transpose(b, perm=pb) if pb else b)
    return [op.Mul(y, _scalar(op, alpha, type_dtype(a))) if alpha != 1 else y]


define("FusedMatMul", params("A", "B", required=2), params("Y"),
       _fused_matmul_reference, _fused_matmul_infer, _expand_fused_matmul,
       attrs={"alpha": AttrSpec("alpha", "float", 1.0), "transA": AttrSpec("transA", "int", 0),
              "transB": AttrSpec("transB", "int", 0), "transBatchA": AttrSpec("transBatchA", "int", 0),
              "transBatchB": AttrSpec("transBatchB", "int", 0)},
       doc="Y = alpha * op(A) @ op(B); transBatch moves the first axis behind the batch axes, trans swaps "
           "the last two")


# -- layer norms ----------------------------------------------------------------------
def _norm_outputs_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    """[y, mean, inv_std_var, sum]: y and sum like the input, the statistics [..., 1] in float32."""
    dtype, x = dtype_of(ins[0]), shape_of(ins[0])
    if dtype is None:
        return [None] * len(node.outputs)
    stats = tensor(DType.float32 if dtype.bits < 32 else dtype, None if x is None else (*x[:-1], 1))
    return [tensor(dtype, x), stats, stats, tensor(dtype, x)][:len(node.outputs)]


def _skip_norm_reference(rms: bool):
    def prepare(node: Node):
        eps = get_op(node.op).attr(node, "epsilon")

        def run(*args):
            if rms:
                (x, skip, gamma, bias), beta = padded_args(args, 4), None
            else:
                x, skip, gamma, beta, bias = padded_args(args, 5)
            total = x + skip if bias is None else x + skip + bias
            y, mean, inv = _layer_norm(total, eps, gamma, beta, rms=rms)
            return y.astype(x.dtype), mean, inv, total

        return run

    return prepare


def _skip_statistics(op, total, eps: float, rms: bool):
    """(mean, inv_std_var) of `total` over its last axis, in standard ops."""
    axes = op.constant(np.asarray([-1], np.int64))
    mean = op.ReduceMean(total, axes, keepdims=1)
    centered = total if rms else op.Sub(total, mean)
    variance = op.ReduceMean(op.Mul(centered, centered), axes, keepdims=1)
    inv = op.Reciprocal(op.Sqrt(op.Add(variance, _scalar(op, eps, type_dtype(total)))))
    return mean, inv


def _expand_skip_layernorm(op, node, used):
    x, skip, gamma, beta, bias = padded_inputs(node, 5)
    eps = get_op(node.op).attr(node, "epsilon")
    if type_dtype(x) not in (DType.float32, DType.float64):
        raise NotLowerable("not float32 or float64 (the statistics outputs are float32)")
    biased = _with_bias(op, x, bias)
    used = list(used) + [False] * (4 - len(used))
    if type_shape(x) == type_shape(skip) and type_shape(x) is not None and not (used[1] or used[2]):
        norm_inputs = [biased, skip, gamma] + ([beta] if beta is not None else [])
        if used[3]:
            y, total = op("ember.SkipLayerNorm", *norm_inputs, epsilon=eps, _outputs=2)
        else:
            y, total = op("ember.SkipLayerNorm", *norm_inputs, epsilon=eps), None
        return [y, None, None, total][:len(node.outputs)]
    total = op.Add(biased, skip)  # skip broadcasts ([1, S, H] or [S, H])
    y = op.LayerNormalization(total, gamma, *([beta] if beta is not None else []), axis=-1, epsilon=eps)
    mean, inv = _skip_statistics(op, total, eps, rms=False) if used[1] or used[2] else (None, None)
    return [y, mean, inv, total][:len(node.outputs)]


define("SkipLayerNormalization", params("input", "skip", "gamma", "beta", "bias", required=3),
       params("output", "mean", "inv_std_var", "input_skip_bias_sum"),
       _skip_norm_reference(rms=False), _norm_outputs_infer, _expand_skip_layernorm,
       attrs={"epsilon": AttrSpec("epsilon", "float", 1e-12)},
       doc="s = input + skip + bias; output = LayerNorm(s) * gamma + beta over the last axis; "
           "also mean and inv_std_var of s, and s")


def _expand_skip_simplified(op, node, used):
    x, skip, gamma, bias = padded_inputs(node, 4)
    eps = get_op(node.op).attr(node, "epsilon")
    if type_dtype(x) not in (DType.float32, DType.float64):
        raise NotLowerable("not float32 or float64 (the statistics outputs are float32)")
    used = list(used) + [False] * (4 - len(used))
    if used[1]:
        raise NotLowerable("reads the mean output, which onnxruntime does not define for an RMS norm")
    total = op.Add(_with_bias(op, x, bias), skip)
    y = op.RMSNormalization(total, gamma, axis=-1, epsilon=eps)
    inv = _skip_statistics(op, total, eps, rms=True)[1] if used[2] else None
    return [y, None, inv, total][:len(node.outputs)]


define("SkipSimplifiedLayerNormalization", params("input", "skip", "gamma", "bias", required=3),
       params("output", "mean", "inv_std_var", "input_skip_bias_sum"),
       _skip_norm_reference(rms=True), _norm_outputs_infer, _expand_skip_simplified,
       attrs={"epsilon": AttrSpec("epsilon", "float", 1e-12)},
       doc="s = input + skip + bias; output = s / sqrt(mean(s^2) + eps) * gamma over the last axis; "
           "also inv_std_var and s")


def _simplified_reference(node: Node):
    opdef = get_op(node.op)
    eps, axis = opdef.attr(node, "epsilon"), opdef.attr(node, "axis")

    def run(x, scale):
        axes = tuple(range(axis % x.ndim, x.ndim))
        h = as_f32(x)
        inv = 1 / np.sqrt((h * h).mean(axis=axes, keepdims=True) + eps)
        return (h * inv * scale).astype(x.dtype), inv

    return run


def _simplified_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    dtype, x = dtype_of(ins[0]), shape_of(ins[0])
    if dtype is None:
        return [None] * len(node.outputs)
    axis = get_op(node.op).attr(node, "axis")
    stats = None if x is None else tuple(d if i < axis % len(x) else 1 for i, d in enumerate(x))
    return [tensor(dtype, x), tensor(DType.float32 if dtype.bits < 32 else dtype, stats)][:len(node.outputs)]


def _expand_simplified(op, node, used):
    if len(used) > 1 and used[1]:
        raise NotLowerable("reads inv_std_var")
    opdef = get_op(node.op)
    x, scale = node.inputs[:2]
    return [op.RMSNormalization(x, scale, axis=opdef.attr(node, "axis"), epsilon=opdef.attr(node, "epsilon"))]


# onnxruntime defines this one in the default domain: the ONNX frontend moves such nodes here
define("SimplifiedLayerNormalization", params("X", "scale", required=2), params("Y", "inv_std_var"),
       _simplified_reference, _simplified_infer, _expand_simplified,
       attrs={"axis": AttrSpec("axis", "int", -1), "epsilon": AttrSpec("epsilon", "float", 1e-5),
              "stash_type": AttrSpec("stash_type", "int", 1)},
       doc="Y = X / sqrt(mean(X^2 over axis..) + epsilon) * scale (RMSNorm)")


# -- EmbedLayerNormalization ----------------------------------------------------------
def _embed_reference(node: Node):
    eps = get_op(node.op).attr(node, "epsilon")

    def run(*args):
        return _embed(eps, *padded_args(args, 9))

    return run


def _embed(eps, ids, segments, words, positions, segment_table, gamma, beta, mask, position_ids):
    """EmbedLayerNormalization's meaning: (output, mask_index, embedding_sum)."""
    seq = ids.shape[1]
    position_ids = np.arange(seq)[None, :] if position_ids is None else position_ids
    total = words[ids] + positions[position_ids]
    if segments is not None and segment_table is not None:
        total = total + segment_table[segments]
    y, _, _ = _layer_norm(total, eps, gamma, beta)
    mask_index = (mask.sum(axis=1) if mask is not None else np.zeros(ids.shape[0])).astype(np.int32)
    return y.astype(words.dtype), mask_index, total


def _embed_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    ids, words, dtype = shape_of(ins[0]), shape_of(ins[2]), dtype_of(ins[2])
    if dtype is None:
        return [None] * len(node.outputs)
    shape = None if ids is None or words is None else (*ids, words[-1])
    return [tensor(dtype, shape), tensor(DType.int32, None if ids is None else ids[:1]),
            tensor(dtype, shape)][:len(node.outputs)]


def _expand_embed(op, node, used):
    return embed_nodes(op, get_op(node.op).attr(node, "epsilon"), used, *padded_inputs(node, 9))[:len(node.outputs)]


def embed_nodes(op, eps, used, ids, segments, words, positions, segment_table, gamma, beta, mask, position_ids):
    """EmbedLayerNormalization's expansion (and QEmbedLayerNormalization's, over its tables
    dequantized): Gathers, their sum, LayerNormalization; the mask's row sums."""
    if position_ids is None:  # the first S rows of the position table
        seq = op.Shape(ids, start=1, end=2)
        position_rows = op.Slice(positions, op.constant(np.asarray([0], np.int64)), seq,
                                 op.constant(np.asarray([0], np.int64)))
    else:
        position_rows = op.Gather(positions, position_ids, axis=0)
    total = op.Add(op.Gather(words, ids, axis=0), position_rows)
    if segments is not None and segment_table is not None:
        total = op.Add(total, op.Gather(segment_table, segments, axis=0))
    y = op.LayerNormalization(total, gamma, beta, axis=-1, epsilon=eps)
    mask_index = None
    if len(used) > 1 and used[1]:
        if mask is not None:
            mask_index = op.Cast(op.ReduceSum(mask, op.constant(np.asarray([1], np.int64)), keepdims=0),
                                 to=int(DType.int32.onnx_code))
        else:
            mask_index = op.ConstantOfShape(op.Shape(ids, start=0, end=1), value=np.zeros(1, np.int32))
    return [y, mask_index, total]


define("EmbedLayerNormalization",
       params("input_ids", "segment_ids", "word_embedding", "position_embedding", "segment_embedding", "gamma",
              "beta", "mask", "position_ids", required=1),
       params("output", "mask_index", "embedding_sum"),
       _embed_reference, _embed_infer, _expand_embed,
       attrs={"epsilon": AttrSpec("epsilon", "float", 1e-12),
              "mask_index_type": AttrSpec("mask_index_type", "int", 1)},
       doc="s = word[ids] + position[position_ids or 0..S-1] + segment[segment_ids]; output = LayerNorm(s) * gamma "
           "+ beta; mask_index = number of ones in each mask row (int32)")


# -- QEmbedLayerNormalization: quantize_dynamic's EmbedLayerNormalization ------------------
# Every table (word, position, segment embeddings, gamma, beta) 8-bit with a scale and zero
# point of its own, dequantized as (q - zero) * scale in float32 (onnxruntime's kernel
# dequantizes each element so), then EmbedLayerNormalization (positions 0..S-1).
_QEMBED = ("input_ids", "segment_ids", "word_embedding_quant", "position_embedding_quant", "segment_embedding",
           "gamma_quant", "beta_quant", "mask", "word_embedding_scale", "position_embedding_scale",
           "segment_embedding_scale", "gamma_scale", "beta_scale", "word_embedding_zero_point",
           "position_embedding_zero_point", "segment_embedding_zero_point", "gamma_zero_point", "beta_zero_point")
_QEMBED_TABLES = (2, 3, 4, 5, 6)  # the quantized tables' positions; their scales 6 on, zero points 11 on


def _dequantized(q, scale, zero) -> np.ndarray:
    return (np.asarray(q).astype(np.float32) - np.asarray(zero).astype(np.float32)) * np.asarray(scale, np.float32)


def _qembed_reference(node: Node):
    eps = get_op(node.op).attr(node, "epsilon")

    def run(*args):
        a = padded_args(args, len(_QEMBED))
        tables = [None if a[t] is None else _dequantized(a[t], a[t + 6], a[t + 11]) for t in _QEMBED_TABLES]
        words, positions, segment_table, gamma, beta = tables
        return _embed(eps, a[0], a[1], words, positions, segment_table, gamma, beta, a[7], None)[:2]

    return run


def _qembed_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    ids, words = shape_of(ins[0]), shape_of(ins[2])
    shape = None if ids is None or words is None else (*ids, words[-1])
    return [tensor(DType.float32, shape), tensor(DType.int32, None if ids is None else ids[:1])][:len(node.outputs)]


def _expand_qembed(op, node, used):
    a = padded_inputs(node, len(_QEMBED))
    tables = [None if a[t] is None else op.DequantizeLinear(a[t], a[t + 6], a[t + 11]) for t in _QEMBED_TABLES]
    words, positions, segment_table, gamma, beta = tables
    out = embed_nodes(op, get_op(node.op).attr(node, "epsilon"), list(used) + [False], a[0], a[1], words, positions,
                      segment_table, gamma, beta, a[7], None)
    return out[:len(node.outputs)]


define("QEmbedLayerNormalization", tuple(ParamSpec(n, optional=n in ("segment_ids", "segment_embedding", "mask",
                                                                     "segment_embedding_scale",
                                                                     "segment_embedding_zero_point"))
                                         for n in _QEMBED),
       params("layernorm_out", "mask_index_out"), _qembed_reference, _qembed_infer, _expand_qembed,
       attrs={"epsilon": AttrSpec("epsilon", "float", 1e-12)},
       doc="EmbedLayerNormalization over 8-bit tables, each (q - zero) * scale")


# -- MatMulNBits: a MatMul by a block-quantized (4- or 8-bit) weight ----------------------
# Optimum's and onnxruntime's int4 exports: B [N, k_blocks, blob] packs each column of the
# [K, N] weight in blocks of `block_size` along K (4 bits: element j of a block in byte j / 2,
# the low nibble first); W[k, n] = (q - zero) * scale[n, block], the zero 2^(bits-1) where no
# zero points are given (uint8 ones packed like the weights, two blocks a byte at 4 bits; or
# floats). onnxruntime's CPU kernel computes in float32 at accuracy_level 0-3 (its level 4
# quantizes A to int8 first): the reference dequantizes and multiplies in float32.
def _nbits_attrs(node: Node):
    opdef = get_op(node.op)
    return tuple(int(opdef.attr(node, a)) for a in ("K", "N", "bits", "block_size"))


def _nbits_values(b, n: int, blocks: int, bits: int, block_size: int) -> np.ndarray:
    """B's quantized values [N, blocks, block_size] (uint8; 4 bits: two a byte, the low nibble first)."""
    raw = np.asarray(b, dtype=np.uint8).reshape(n, blocks, -1)
    if bits == 4:
        return np.stack([raw & 0x0F, raw >> 4], axis=-1).reshape(n, blocks, -1)[:, :, :block_size]
    return raw[:, :, :block_size]


def _nbits_zero_points(zero_points, n: int, blocks: int, bits: int) -> np.ndarray:
    """uint8 zero points [N, blocks] from their packed form (4 bits: two a byte, the low first)."""
    packed = np.asarray(zero_points).reshape(n, -1)
    return (np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1) if bits == 4 else packed)[:, :blocks]


def dequantize_nbits(b, scales, zero_points, k: int, n: int, bits: int, block_size: int) -> np.ndarray:
    """The float32 weight [K, N] of MatMulNBits' B, scales and zero points."""
    if bits not in (4, 8):
        raise NotImplementedError(f"MatMulNBits with {bits}-bit weights (ember reads 4 and 8)")
    blocks = -(-k // block_size)
    q = _nbits_values(b, n, blocks, bits, block_size)
    scales = np.asarray(scales, dtype=np.float32).reshape(n, blocks, 1)
    if zero_points is None:
        zero = np.float32(1 << (bits - 1))
    elif np.asarray(zero_points).dtype == np.uint8:
        zero = _nbits_zero_points(zero_points, n, blocks, bits).astype(np.float32).reshape(n, blocks, 1)
    else:
        zero = np.asarray(zero_points, dtype=np.float32).reshape(n, blocks, 1)
    w = (q.astype(np.float32) - zero) * scales
    return np.ascontiguousarray(w.reshape(n, -1)[:, :k].T)


def _nbits_reference(node: Node):
    k, n, bits, block_size = _nbits_attrs(node)

    def run(a, b, scales, zero_points=None, g_idx=None, bias=None):
        if g_idx is not None:
            raise NotImplementedError("MatMulNBits with g_idx (act-order blocks)")
        y = as_f32(a) @ dequantize_nbits(b, scales, zero_points, k, n, bits, block_size)
        if bias is not None:
            y = y + as_f32(bias)
        return (y.astype(a.dtype, copy=False),)

    return run


def _nbits_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    a, dtype = shape_of(ins[0]), dtype_of(ins[0])
    if dtype is None:
        return [None]
    return [tensor(dtype, None if a is None else (*a[:-1], _nbits_attrs(node)[1]))]


def nbits_blocks(b, scales, zero_points, k: int, n: int, bits: int, block_size: int):
    """MatMulNBits' weight as ember's blocks of 32 (ir/quant_formats.py): (format name,
    [N, row_bytes] uint8), the scales rounded to float16 — q4_0 for 4 bits without zero
    points (zero 8), q4_1 for 4 bits with uint8 ones (m = -zero * scale), q8_0 for 8 bits
    without them (q - 128). A block of 64, 128, ... is that many blocks of 32 with its scale
    and zero point each. None for block sizes that are not multiples of 32, a K not whole
    blocks of 32, float zero points, or 8 bits with zero points."""
    if block_size % 32 or k % 32 or (bits == 8 and zero_points is not None) or bits not in (4, 8):
        return None
    blocks, sub = k // 32, block_size // 32
    whole = -(-k // block_size)  # the node's blocks (the last may run past K)

    def per_32(values):  # [N, whole, ...] per node block -> [N, blocks, ...] per block of 32
        return np.repeat(values, sub, axis=1)[:, :blocks]

    q = _nbits_values(b, n, whole, bits, block_size).reshape(n, whole * sub, 32)[:, :blocks]
    scale = per_32(np.asarray(scales, dtype=np.float32).reshape(n, whole))
    d = scale.astype(np.float16).view(np.uint8).reshape(n, blocks, 2)
    if bits == 8:
        return "q8_0", np.concatenate([d, (q.astype(np.int16) - 128).astype(np.int8).view(np.uint8)], -1).reshape(n, -1)
    nibbles = (q[..., :16] | (q[..., 16:] << 4)).astype(np.uint8)  # (GGML's order: j and j + 16 share byte j)
    if zero_points is None:
        return "q4_0", np.concatenate([d, nibbles], -1).reshape(n, -1)
    if np.asarray(zero_points).dtype != np.uint8:
        return None  # (float zero points: onnxruntime computes in float32 at every level)
    zero = per_32(_nbits_zero_points(zero_points, n, whole, bits))
    m = (-zero.astype(np.float32) * scale).astype(np.float16).view(np.uint8).reshape(n, blocks, 2)
    return "q4_1", np.concatenate([d, m, nibbles], -1).reshape(n, -1)


def _expand_nbits(op, node, used):
    """At accuracy_level 4 (onnxruntime then quantizes A to int8 per block and multiplies
    integers), an ember.QuantizedLinear over the same weights in ember's blocks, on its
    quantized GEMM (A quantized to int8 per block of 32 the same way; the scales rounded to
    float16, 2^-11 of them, far below the activations' rounding), where the blocks hold
    them (`nbits_blocks`). Otherwise a MatMul by the dequantized weight (a float32
    constant of the activations' dtype), plus the bias: fuse_linear then makes it an
    ember.Linear on the float GEMMs (and `compile(quantization=...)` can requantize it)."""
    a, b, scales, zero_points, g_idx, bias = padded_inputs(node, 6)
    if g_idx is not None or any(v is not None and v.const is None for v in (b, scales, zero_points)):
        raise NotLowerable("a weight, scale or zero point fed at run time, or g_idx")
    k, n, bits, block_size = _nbits_attrs(node)
    if int(get_op(node.op).attr(node, "accuracy_level")) == 4 and type_dtype(a) == DType.float32:
        blocks = nbits_blocks(b.const, scales.const, None if zero_points is None else zero_points.const,
                              k, n, bits, block_size)
        if blocks is not None:
            fmt, w = blocks
            return [op("ember.QuantizedLinear", a, op.constant(w), bias, format=fmt, activation="")]
    try:
        w = dequantize_nbits(b.const, scales.const, None if zero_points is None else zero_points.const,
                             k, n, bits, block_size)
    except (NotImplementedError, ValueError) as e:
        raise NotLowerable(str(e)) from None
    dtype = type_dtype(a) or DType.float32
    y = op.MatMul(a, op.constant(w.astype(dtype.numpy)))
    return [op.Add(y, bias) if bias is not None else y]


define("MatMulNBits", params("A", "B", "scales", "zero_points", "g_idx", "bias", required=3), params("Y"),
       _nbits_reference, _nbits_infer, _expand_nbits,
       attrs={"K": AttrSpec("K", "int", required=True), "N": AttrSpec("N", "int", required=True),
              "bits": AttrSpec("bits", "int", 4), "block_size": AttrSpec("block_size", "int", required=True),
              "accuracy_level": AttrSpec("accuracy_level", "int", 0)},
       doc="Y = A @ W + bias, W [K, N] from B's 4- or 8-bit blocks along K: (q - zero) * scale per block")


# -- MatMulIntegerToFloat: onnxruntime's fusion of an integer MatMul and its rescale ---------
# Y = float32((A - a_zero) @ (B - b_zero)) * (a_scale * b_scale) + bias: the 8-bit product
# summed exactly in int32 (wrapping as int32 does), the scales multiplied in float32 (one
# value, or one per column of a 2-d B), the product rounded before the bias is added. What
# onnxruntime's optimizer (and ember's fuse_integer_matmul pass) writes for DynamicQuantizeLinear
# -> MatMulInteger -> Cast -> Mul -> Add; it lowers to ember's integer GEMM (ir/ops/quantize.py).
def integer_product(a, b, a_zero, b_zero) -> np.ndarray:
    """(A - a_zero) @ (B - b_zero) for 8-bit A and B, exact, wrapped to int32 (a zero point
    of B: one value, or one per column)."""
    a64 = np.asarray(a).astype(np.int64) - (0 if a_zero is None else np.asarray(a_zero).astype(np.int64).reshape(()))
    zb = 0 if b_zero is None else np.asarray(b_zero).astype(np.int64)
    b64 = np.asarray(b).astype(np.int64) - (zb.reshape(-1) if np.ndim(zb) and np.size(zb) > 1 else np.reshape(zb, ()))
    return np.matmul(a64, b64).astype(np.int32)


def integer_to_float(a, b, a_scale, b_scale, a_zero=None, b_zero=None, bias=None) -> np.ndarray:
    """MatMulIntegerToFloat's meaning (also QAttention's projection): the exact product
    rescaled by a_scale * b_scale (float32; B's one value or one per column), plus bias."""
    acc = integer_product(a, b, a_zero, b_zero)
    scale = np.asarray(a_scale, np.float32).reshape(()) * np.asarray(b_scale, np.float32).reshape(-1)
    y = acc.astype(np.float32) * (scale if scale.size > 1 else scale.reshape(()))
    if bias is not None:
        y = y + np.asarray(bias, np.float32)
    return y.astype(np.float32)


def _itf_reference(node: Node):
    def run(*args):
        return (integer_to_float(*args),)
    return run


def _itf_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    a, b = shape_of(ins[0]), shape_of(ins[1])
    if a is None or b is None or len(a) < 1 or len(b) < 2:
        return [tensor(DType.float32, None)]
    batch = broadcast(tuple(a[:-2]), tuple(b[:-2])) if len(a) > 1 else tuple(b[:-2])
    rows = (a[-2],) if len(a) > 1 else ()
    return [tensor(DType.float32, None if batch is None else (*batch, *rows, b[-1]))]


define("MatMulIntegerToFloat", params("A", "B", "a_scale", "b_scale", "a_zero_point", "b_zero_point", "bias",
                                      required=4), params("Y"),
       _itf_reference, _itf_infer, None,
       doc="Y = float((A - a_zero) @ (B - b_zero)) * (a_scale * b_scale) + bias, the 8-bit product exact in int32")


# -- DynamicQuantizeMatMul: A quantized to uint8 at run time, then MatMulIntegerToFloat ------
# onnxruntime's optimizer fuses DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul (-> Add)
# into it (what a session's optimized_model_filepath writes for a quantize_dynamic model).
# A's range, scale and zero point are DynamicQuantizeLinear's (its kernel computes them so).
def dynamic_quantize(x: np.ndarray) -> tuple[np.ndarray, np.float32, np.uint8]:
    """DynamicQuantizeLinear's arithmetic (onnx's reference): (y uint8, scale, zero point)."""
    x = np.asarray(x, np.float32)
    top = np.float32(max(0.0, float(x.max()))) if x.size else np.float32(0)
    bottom = np.float32(min(0.0, float(x.min()))) if x.size else np.float32(0)
    scale = np.float32(np.float32(1.0 if top == bottom else top - bottom) / np.float32(255))
    zero = np.rint(np.clip(np.float32(0) - bottom / scale, 0, 255))
    y = np.clip(np.rint(x / scale) + zero, 0, 255)
    return y.astype(np.uint8), scale, np.uint8(zero)


def _dqmm_reference(node: Node):
    itf = _itf_reference(node)

    def run(a, b, b_scale, b_zero=None, bias=None):
        aq, a_scale, a_zero = dynamic_quantize(a)
        return itf(aq, b, a_scale, b_scale, a_zero, b_zero, bias)

    return run


def _expand_dqmm(op, node, used):
    a, b, b_scale, b_zero, bias = padded_inputs(node, 5)
    if type_dtype(a) != DType.float32:
        raise NotLowerable("A not float32")
    aq, a_scale, a_zero = op.DynamicQuantizeLinear(a, _outputs=3)
    return [op(MS + "MatMulIntegerToFloat", aq, b, a_scale, b_scale, a_zero, b_zero, bias)]


define("DynamicQuantizeMatMul", params("A", "B", "b_scale", "b_zero_point", "bias", required=3), params("Y"),
       _dqmm_reference, _itf_infer, _expand_dqmm,
       doc="Y = MatMulIntegerToFloat(DynamicQuantizeLinear(A), B, b_scale, b_zero_point, bias): A quantized to "
           "uint8 over its whole range at run time")


# -- QGemm: quantize_static's Gemm in the QOperator format --------------------------------
# Y = alpha a_scale b_scale ((A - a_zero) @ (B - b_zero) + C), C int32 (quantized at scale
# alpha a_scale b_scale, zero point 0) added to the exact sums; with y_scale (and y_zero),
# Y quantized: rint(sum * (alpha a_scale b_scale / y_scale)) + y_zero, saturated. The factor
# in float32 in onnxruntime's order ((alpha a_scale) b_scale, then / y_scale).
def _qgemm_settings(node: Node):
    opdef = get_op(node.op)
    return float(opdef.attr(node, "alpha")), bool(opdef.attr(node, "transA")), bool(opdef.attr(node, "transB"))


def _qgemm_reference(node: Node):
    alpha, trans_a, trans_b = _qgemm_settings(node)

    def run(a, a_scale, a_zero, b, b_scale, b_zero=None, c=None, y_scale=None, y_zero=None):
        a, b = (a.T if trans_a else a), (b.T if trans_b else b)
        acc = integer_product(a, b, a_zero, b_zero)
        if c is not None:
            acc = (acc.astype(np.int64) + np.asarray(c, np.int64)).astype(np.int32)
        factor = np.float32(alpha) * np.asarray(a_scale, np.float32).reshape(()) * np.asarray(b_scale, np.float32)
        factor = factor.reshape(-1) if factor.size > 1 else factor.reshape(())
        if y_scale is not None:
            factor = factor / np.asarray(y_scale, np.float32).reshape(())
        y = acc.astype(np.float32) * factor
        if y_scale is None:
            return (y.astype(np.float32),)
        dtype = np.asarray(y_zero).dtype if y_zero is not None else np.dtype(np.uint8)
        info = np.iinfo(dtype)
        zero = 0 if y_zero is None else int(np.asarray(y_zero).reshape(()))
        return (np.clip(np.rint(y) + zero, info.min, info.max).astype(dtype),)

    return run


def _qgemm_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    _, trans_a, trans_b = _qgemm_settings(node)
    a, b = shape_of(ins[0]), shape_of(ins[3])
    quantized = len(ins) > 7 and ins[7] is not None
    dtype = (dtype_of(ins[8]) if len(ins) > 8 and ins[8] is not None else DType.uint8) if quantized else DType.float32
    if a is None or b is None or len(a) != 2 or len(b) != 2:
        return [tensor(dtype, None)]
    return [tensor(dtype, (a[1] if trans_a else a[0], b[0] if trans_b else b[1]))]


def _expand_qgemm(op, node, used):
    a, a_scale, a_zero, b, b_scale, b_zero, c, y_scale, y_zero = padded_inputs(node, 9)
    alpha, trans_a, trans_b = _qgemm_settings(node)
    if type_dtype(a) not in (DType.uint8, DType.int8) or type_dtype(b) not in (DType.uint8, DType.int8):
        raise NotLowerable("A or B not 8-bit")
    if trans_a:
        a = op.Transpose(a, perm=[1, 0])
    if trans_b:  # (a constant B transposed here: the integer GEMM packs constant B's only)
        b = op.constant(np.ascontiguousarray(b.const.T)) if b.const is not None else op.Transpose(b, perm=[1, 0])
    if c is None and y_scale is None and alpha == 1.0:  # the product and its rescale in one kernel
        return [op(MS + "MatMulIntegerToFloat", a, b, a_scale, b_scale, a_zero, b_zero, None)]
    acc = op.MatMulInteger(a, b, a_zero, b_zero)
    if c is not None:
        acc = op.Add(acc, c)
    factor = op.Mul(op.Mul(_scalar(op, alpha, DType.float32), a_scale), b_scale)
    if y_scale is not None:
        factor = op.Div(factor, y_scale)
    y = op.Mul(op.Cast(acc, to=int(DType.float32.onnx_code)), factor)
    if y_scale is None:
        return [y]
    dtype = type_dtype(y_zero) if y_zero is not None else DType.uint8
    info = np.iinfo(dtype.numpy)
    rounded = op.Round(y)
    if y_zero is not None:
        rounded = op.Add(rounded, op.Cast(y_zero, to=int(DType.float32.onnx_code)))
    clipped = op.Clip(rounded, _scalar(op, info.min, DType.float32), _scalar(op, info.max, DType.float32))
    return [op.Cast(clipped, to=int(dtype.onnx_code))]


define("QGemm", params("A", "a_scale", "a_zero_point", "B", "b_scale", "b_zero_point", "C", "y_scale",
                       "y_zero_point", required=5), params("Y"),
       _qgemm_reference, _qgemm_infer, _expand_qgemm,
       attrs={"alpha": AttrSpec("alpha", "float", 1.0), "transA": AttrSpec("transA", "int", 0),
              "transB": AttrSpec("transB", "int", 0)},
       doc="Y = alpha a_scale b_scale ((A - a_zero) @ (B - b_zero) + C), C int32; quantized to y_scale / y_zero "
           "where given (rint, saturated), else float32")
