"""onnxruntime's contrib ops (domain com.microsoft) that optimized exports carry: what
`onnxruntime.transformers.optimizer` and Optimum write for BERT, GPT-2 and LLaMA-style
models. Semantics follow onnxruntime's ContribOperators.md and its CPU kernels (masks add
`mask_filter_value`, -10000, rather than -inf, as they do).

Each op is one definition here: schema, type function, numpy reference (its meaning),
and `expand`: the op rewritten into ember's fused ops and standard ones, which is how
it reaches kernels (the `expand_ops` pass applies it before the fusions; codegen applies
it to a node that reaches lowering). An expansion that does not cover a node's form
raises NotLowerable and the node runs on its reference.

    Attention(x, w, b?, mask_index?)            -> ember.Linear -> ember.Attention(qkv, mask bias)
    MultiHeadAttention(q, k, v, b?, mask?, ab?) -> ember.Attention(q + bq, k + bk, v + bv, mask bias)
    GroupQueryAttention(q, k, v, ...)           -> ember.Attention(causal, kv_num_heads) (no past)
    RotaryEmbedding(x, pos, cos, sin)           -> ember.RotaryEmbedding(x, cos[pos] ++ cos[pos], ...)
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
MASK_FILTER = -10000.0  # what onnxruntime adds to a masked score


# -- helpers ----------------------------------------------------------------------
def _ins(node: Node, count: int) -> list:
    """node's inputs padded with None to `count` (absent trailing inputs)."""
    return (list(node.inputs) + [None] * count)[:count]


def _args(values: tuple, count: int) -> list:
    return (list(values) + [None] * count)[:count]


def _type_shape(value) -> tuple | None:
    t = value.type if value is not None else None
    return tuple(t.shape) if isinstance(t, TensorType) and t.shape is not None else None


def _type_dtype(value) -> DType | None:
    t = value.type if value is not None else None
    return t.dtype if isinstance(t, TensorType) else None


def _same_dims(a, b) -> bool:
    return a is not None and b is not None and sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0


def _f32(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float32) if x.dtype.itemsize < 4 else x


def _layer_norm(h: np.ndarray, eps: float, gamma, beta=None, rms: bool = False):
    """(y, mean, inv_std_var) over the last axis, computed in float32 at least."""
    h = _f32(h)
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


def _define(name: str, inputs: tuple, outputs: tuple, reference, infer, expand, attrs=None, doc=""):
    register_op(OpDef(MS + name, inputs=inputs, outputs=outputs, attrs=attrs or {}, reference=reference,
                      infer=infer, expand=expand, doc=doc))


def _params(*names: str, required: int = 1) -> tuple[ParamSpec, ...]:
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
            return (np.asarray(fn(*[_f32(a) if a is not None else None for a in args], **attrs)).astype(x.dtype),)

        return run

    return prepare


def _with_bias(op, x, bias):
    return op.Add(x, bias) if bias is not None else x


_define("Gelu", _params("X"), _params("Y"),
        _elementwise_reference(lambda x: ACTIVATIONS["gelu"](x)), _same_type_infer,
        lambda op, node, used: [op.Gelu(node.inputs[0])],
        doc="Y = X * Phi(X) (erf form)")
_define("BiasGelu", _params("A", "B", required=2), _params("C"),
        _elementwise_reference(lambda a, b: ACTIVATIONS["gelu"](a + b)), _same_type_infer,
        lambda op, node, used: [op.Gelu(op.Add(node.inputs[0], node.inputs[1]))],
        doc="C = Gelu(A + B) (erf form); B: [hidden]")
_define("FastGelu", _params("X", "bias"), _params("Y"),
        _elementwise_reference(lambda x, bias=None: ACTIVATIONS["gelu_tanh"](x if bias is None else x + bias)),
        _same_type_infer,
        lambda op, node, used: [op.Gelu(_with_bias(op, *_ins(node, 2)), approximate="tanh")],
        doc="Y = Gelu_tanh(X + bias): 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))")


def _expand_quick_gelu(op, node, used):
    x = node.inputs[0]
    alpha = get_op(node.op).attr(node, "alpha")
    return [op.Mul(x, op.Sigmoid(op.Mul(x, _scalar(op, alpha, _type_dtype(x)))))]


_define("QuickGelu", _params("X"), _params("Y"),
        _elementwise_reference(lambda x, alpha: x / (1 + np.exp(-alpha * x))), _same_type_infer,
        _expand_quick_gelu, attrs={"alpha": AttrSpec("alpha", "float", 1.702)},
        doc="Y = X * sigmoid(alpha * X)")
_define("BiasAdd", _params("X", "bias", "skip", required=3), _params("Y"),
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
    ranks = _type_shape(a), _type_shape(b)
    if None in ranks:
        raise NotLowerable("operands of unknown rank")
    pa, pb = _matmul_perm(len(ranks[0]), ta, tba), _matmul_perm(len(ranks[1]), tb, tbb)
    y = op.MatMul(op.Transpose(a, perm=pa) if pa else a, op.Transpose(b, perm=pb) if pb else b)
    return [op.Mul(y, _scalar(op, alpha, _type_dtype(a))) if alpha != 1 else y]


_define("FusedMatMul", _params("A", "B", required=2), _params("Y"),
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
                (x, skip, gamma, bias), beta = _args(args, 4), None
            else:
                x, skip, gamma, beta, bias = _args(args, 5)
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
    inv = op.Reciprocal(op.Sqrt(op.Add(variance, _scalar(op, eps, _type_dtype(total)))))
    return mean, inv


def _expand_skip_layernorm(op, node, used):
    x, skip, gamma, beta, bias = _ins(node, 5)
    eps = get_op(node.op).attr(node, "epsilon")
    if _type_dtype(x) not in (DType.float32, DType.float64):
        raise NotLowerable("not float32 or float64 (the statistics outputs are float32)")
    biased = _with_bias(op, x, bias)
    used = list(used) + [False] * (4 - len(used))
    if _type_shape(x) == _type_shape(skip) and _type_shape(x) is not None and not (used[1] or used[2]):
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


_define("SkipLayerNormalization", _params("input", "skip", "gamma", "beta", "bias", required=3),
        _params("output", "mean", "inv_std_var", "input_skip_bias_sum"),
        _skip_norm_reference(rms=False), _norm_outputs_infer, _expand_skip_layernorm,
        attrs={"epsilon": AttrSpec("epsilon", "float", 1e-12)},
        doc="s = input + skip + bias; output = LayerNorm(s) * gamma + beta over the last axis; "
            "also mean and inv_std_var of s, and s")


def _expand_skip_simplified(op, node, used):
    x, skip, gamma, bias = _ins(node, 4)
    eps = get_op(node.op).attr(node, "epsilon")
    if _type_dtype(x) not in (DType.float32, DType.float64):
        raise NotLowerable("not float32 or float64 (the statistics outputs are float32)")
    used = list(used) + [False] * (4 - len(used))
    if used[1]:
        raise NotLowerable("reads the mean output, which onnxruntime does not define for an RMS norm")
    total = op.Add(_with_bias(op, x, bias), skip)
    y = op.RMSNormalization(total, gamma, axis=-1, epsilon=eps)
    inv = _skip_statistics(op, total, eps, rms=True)[1] if used[2] else None
    return [y, None, inv, total][:len(node.outputs)]


_define("SkipSimplifiedLayerNormalization", _params("input", "skip", "gamma", "bias", required=3),
        _params("output", "mean", "inv_std_var", "input_skip_bias_sum"),
        _skip_norm_reference(rms=True), _norm_outputs_infer, _expand_skip_simplified,
        attrs={"epsilon": AttrSpec("epsilon", "float", 1e-12)},
        doc="s = input + skip + bias; output = s / sqrt(mean(s^2) + eps) * gamma over the last axis; "
            "also inv_std_var and s")


def _simplified_reference(node: Node):
    opdef = get_op(node.op)
    eps, axis = opdef.attr(node, "epsilon"), opdef.attr(node, "axis")

    def run(x, scale):
        axes = tuple(range(axis % x.ndim, x.ndim))
        h = _f32(x)
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
_define("SimplifiedLayerNormalization", _params("X", "scale", required=2), _params("Y", "inv_std_var"),
        _simplified_reference, _simplified_infer, _expand_simplified,
        attrs={"axis": AttrSpec("axis", "int", -1), "epsilon": AttrSpec("epsilon", "float", 1e-5),
               "stash_type": AttrSpec("stash_type", "int", 1)},
        doc="Y = X / sqrt(mean(X^2 over axis..) + epsilon) * scale (RMSNorm)")


# -- EmbedLayerNormalization ----------------------------------------------------------
def _embed_reference(node: Node):
    eps = get_op(node.op).attr(node, "epsilon")

    def run(*args):
        ids, segments, words, positions, segment_table, gamma, beta, mask, position_ids = _args(args, 9)
        seq = ids.shape[1]
        position_ids = np.arange(seq)[None, :] if position_ids is None else position_ids
        total = words[ids] + positions[position_ids]
        if segments is not None and segment_table is not None:
            total = total + segment_table[segments]
        y, _, _ = _layer_norm(total, eps, gamma, beta)
        mask_index = (mask.sum(axis=1) if mask is not None else np.zeros(ids.shape[0])).astype(np.int32)
        return y.astype(words.dtype), mask_index, total

    return run


def _embed_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    ids, words, dtype = shape_of(ins[0]), shape_of(ins[2]), dtype_of(ins[2])
    if dtype is None:
        return [None] * len(node.outputs)
    shape = None if ids is None or words is None else (*ids, words[-1])
    return [tensor(dtype, shape), tensor(DType.int32, None if ids is None else ids[:1]),
            tensor(dtype, shape)][:len(node.outputs)]


def _expand_embed(op, node, used):
    ids, segments, words, positions, segment_table, gamma, beta, mask, position_ids = _ins(node, 9)
    eps = get_op(node.op).attr(node, "epsilon")
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
    return [y, mask_index, total][:len(node.outputs)]


_define("EmbedLayerNormalization",
        _params("input_ids", "segment_ids", "word_embedding", "position_embedding", "segment_embedding", "gamma",
                "beta", "mask", "position_ids", required=1),
        _params("output", "mask_index", "embedding_sum"),
        _embed_reference, _embed_infer, _expand_embed,
        attrs={"epsilon": AttrSpec("epsilon", "float", 1e-12), "mask_index_type": AttrSpec("mask_index_type", "int", 1)},
        doc="s = word[ids] + position[position_ids or 0..S-1] + segment[segment_ids]; output = LayerNorm(s) * gamma "
            "+ beta; mask_index = number of ones in each mask row (int32)")


# -- rotary ---------------------------------------------------------------------------
def _rotate(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, interleaved: bool) -> np.ndarray:
    """Rotary embedding of x's last axis (its first 2 * cos.shape[-1] entries; the rest
    pass through); cos and sin broadcast against x's leading axes."""
    half = cos.shape[-1]
    rot, rest = x[..., :2 * half], x[..., 2 * half:]
    if interleaved:
        x1, x2 = rot[..., 0::2], rot[..., 1::2]
        out = np.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).reshape(rot.shape)
    else:
        x1, x2 = rot[..., :half], rot[..., half:]
        out = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return np.concatenate([out, rest], axis=-1)


def _positions(position_ids: np.ndarray | None, seq: int) -> np.ndarray:
    """[B or 1, S] positions: position_ids itself, or a [1] offset counted up from."""
    if position_ids is None:
        return np.arange(seq)[None, :]
    if position_ids.ndim == 2:
        return position_ids
    return position_ids.reshape(-1)[:1, None] + np.arange(seq)[None, :]


def _rotary_reference(node: Node):
    opdef = get_op(node.op)
    interleaved, heads = bool(opdef.attr(node, "interleaved")), opdef.attr(node, "num_heads")

    def run(x, position_ids, cos_cache, sin_cache):
        pos = _positions(position_ids, x.shape[-2] if x.ndim == 4 else x.shape[1])
        cos, sin = _f32(cos_cache)[pos], _f32(sin_cache)[pos]  # [B, S, half]
        if x.ndim == 4:  # [B, N, S, H]
            return (_rotate(_f32(x), cos[:, None], sin[:, None], interleaved).astype(x.dtype),)
        head = x.shape[-1] // heads if heads else 2 * cos.shape[-1]
        x4 = _f32(x).reshape(*x.shape[:2], -1, head)
        return (_rotate(x4, cos[:, :, None], sin[:, :, None], interleaved).reshape(x.shape).astype(x.dtype),)

    return run


def rotary_nodes(op, x, position_ids, cos_cache, sin_cache, *, num_heads: int, interleaved: bool):
    """x ([B, S, N*H] or [B, N, S, H]) with rotary embedding, built on ember.RotaryEmbedding
    (non-interleaved halves of the whole head; y = x * cos + rotate_half(x) * sin with the
    half-size caches gathered at the positions and repeated twice)."""
    shape, cache = _type_shape(x), _type_shape(cos_cache)
    if interleaved:
        raise NotLowerable("interleaved rotary")
    if shape is None or cache is None or len(cache) != 2 or not isinstance(shape[-1], int):
        raise NotLowerable("rotary of unknown sizes, or 3-D caches")
    half = cache[1]
    head = shape[-1] if len(shape) == 4 else (shape[-1] // num_heads if num_heads else 2 * half)
    if not isinstance(half, int) or head != 2 * half:
        raise NotLowerable("partial rotary (rotary_embedding_dim < head size)")
    if position_ids is None or len(_type_shape(position_ids) or ()) != 2:
        seq = op.Shape(x, start=-2 if len(shape) == 4 else 1, end=-1 if len(shape) == 4 else 2)
        count = op.Range(op.constant(np.asarray(0, np.int64)), op.Squeeze(seq, op.constant(np.asarray([0], np.int64))),
                         op.constant(np.asarray(1, np.int64)))
        if position_ids is not None:  # a [1] offset
            count = op.Add(count, op.Cast(position_ids, to=int(DType.int64.onnx_code)))
        position_ids = op.Unsqueeze(count, op.constant(np.asarray([0], np.int64)))
    cos, sin = (op.Concat(g, g, axis=-1) for g in (op.Gather(c, position_ids, axis=0) for c in (cos_cache, sin_cache)))
    if len(shape) == 4:  # [B, N, S, H]: the caches broadcast over heads
        axis = op.constant(np.asarray([1], np.int64))
        return op("ember.RotaryEmbedding", x, op.Unsqueeze(cos, axis), op.Unsqueeze(sin, axis))
    split = op.Reshape(x, op.constant(np.asarray([0, 0, -1, head], np.int64)))
    axis = op.constant(np.asarray([2], np.int64))
    y = op("ember.RotaryEmbedding", split, op.Unsqueeze(cos, axis), op.Unsqueeze(sin, axis))
    return op.Reshape(y, op.constant(np.asarray([0, 0, -1], np.int64)))


def _expand_rotary(op, node, used):
    opdef = get_op(node.op)
    x, position_ids, cos_cache, sin_cache = node.inputs[:4]
    if opdef.attr(node, "is_packed_batching"):
        raise NotLowerable("packed batching")
    return [rotary_nodes(op, x, position_ids, cos_cache, sin_cache, num_heads=opdef.attr(node, "num_heads"),
                         interleaved=bool(opdef.attr(node, "interleaved")))]


_define("RotaryEmbedding", _params("input", "position_ids", "cos_cache", "sin_cache", required=4), _params("output"),
        _rotary_reference, lambda node, ins: [None if dtype_of(ins[0]) is None else tensor(dtype_of(ins[0]),
                                                                                            shape_of(ins[0]))],
        _expand_rotary,
        attrs={"interleaved": AttrSpec("interleaved", "int", 0), "is_packed_batching": AttrSpec("is_packed_batching", "int", 0),
               "num_heads": AttrSpec("num_heads", "int", 0),
               "rotary_embedding_dim": AttrSpec("rotary_embedding_dim", "int", 0),
               "scale": AttrSpec("scale", "float", 1.0)},
        doc="rotary position embedding of input [B, S, N*H] or [B, N, S, H] at position_ids ([B, S], or a [1] "
            "offset); cos_cache, sin_cache: [max_position, rotary_dim / 2]")


# -- attention --------------------------------------------------------------------------
def _mask_bias(mask, batch: int, seq: int, total: int, past: int, filter_value: float, causal: bool):
    """onnxruntime's additive attention mask, [B, 1, S, T] float32 (or None): from
    mask_index [B] (keys from the end position on are masked), [2B] (also those before
    the start position), [B, T] or [B, S, T] (0 masks a key); `causal` also adds
    filter_value for keys after the query (at past + its index)."""
    bias = None
    if mask is not None:
        positions = np.arange(total)
        if mask.ndim == 1:
            if mask.shape[0] not in (batch, 2 * batch):
                raise ValueError(f"mask_index of shape {mask.shape} for batch {batch}: expected [B] or [2B]")
            keep = positions[None, :] < mask[:batch, None]
            if mask.shape[0] == 2 * batch:
                keep &= positions[None, :] >= mask[batch:, None]
            keep = keep[:, None, :]
        elif mask.ndim in (2, 3):
            keep = mask[:, None, :] > 0 if mask.ndim == 2 else mask > 0
        else:
            raise ValueError(f"a {mask.ndim}-D mask is not supported (onnxruntime's CPU kernel has none either)")
        bias = np.where(keep, np.float32(0), np.float32(filter_value)) + np.zeros((batch, seq, total), np.float32)
    if causal:
        future = np.arange(total)[None, :] > np.arange(seq)[:, None] + past
        causal_bias = np.where(future, np.float32(filter_value), np.float32(0))
        bias = causal_bias[None] if bias is None else (
            np.where(future[None], np.float32(filter_value), bias) if mask is not None and mask.ndim == 3
            else bias + causal_bias)
    return None if bias is None else bias[:, None]


def _heads(x: np.ndarray, num_heads: int) -> np.ndarray:
    """[B, S, N*H] -> [B, N, S, H]."""
    return x.reshape(x.shape[0], x.shape[1], num_heads, -1).transpose(0, 2, 1, 3)


def _merge_heads(y: np.ndarray) -> np.ndarray:
    return y.transpose(0, 2, 1, 3).reshape(y.shape[0], y.shape[2], -1)


def _scaled_attention(q, k, v, bias, scale: float, softcap: float = 0.0, sink=None):
    """softmax(q k^T * scale (softcapped) + bias) v over heads, [B, N, S, H] layout, with
    kv heads shared in groups; `sink` adds one logit per head to each softmax's denominator."""
    q, k, v = _f32(q), _f32(k), _f32(v)
    if k.shape[1] != q.shape[1]:
        k, v = (np.repeat(t, q.shape[1] // t.shape[1], axis=1) for t in (k, v))
    scores = np.matmul(q, k.swapaxes(-1, -2)) * np.float32(scale or 1 / np.sqrt(q.shape[-1]))
    if softcap:
        scores = softcap * np.tanh(scores / softcap)
    if bias is not None:
        scores = scores + bias
    top = scores.max(axis=-1, keepdims=True)
    if sink is not None:
        top = np.maximum(top, sink[None, :, None, None])
    e = np.exp(scores - top)
    total = e.sum(axis=-1, keepdims=True)
    if sink is not None:
        total = total + np.exp(sink[None, :, None, None] - top)
    return np.matmul(e / total, v)


def _attention_settings(node: Node):
    opdef = get_op(node.op)
    return (opdef.attr(node, "num_heads"), float(opdef.attr(node, "scale")), bool(opdef.attr(node, "unidirectional")),
            float(opdef.attr(node, "mask_filter_value")))


def _attention_reference(node: Node):
    heads, scale, causal, filter_value = _attention_settings(node)
    opdef = get_op(node.op)
    sizes = list(opdef.attr(node, "qkv_hidden_sizes") or [])
    if opdef.attr(node, "do_rotary"):
        raise NotImplementedError("Attention with do_rotary=1 has no reference in ember")

    def run(x, w, bias=None, mask=None, past=None, attention_bias=None, past_sequence_length=None):
        qkv = np.matmul(_f32(x), _f32(w)) + (0 if bias is None else _f32(bias))
        cuts = sizes or [w.shape[1] // 3] * 3
        q, k, v = np.split(qkv, [cuts[0], cuts[0] + cuts[1]], axis=-1)
        q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
        past_len = 0
        if past is not None:
            past_len = past.shape[3]
            k, v = np.concatenate([_f32(past[0]), k], axis=2), np.concatenate([_f32(past[1]), v], axis=2)
        batch, seq = x.shape[:2]
        extra = _mask_bias(mask, batch, seq, past_len + seq, past_len, filter_value, causal)
        if attention_bias is not None:
            extra = _f32(attention_bias) if extra is None else extra + _f32(attention_bias)
        y = _merge_heads(_scaled_attention(q, k, v, extra, scale))
        present = np.stack([k, v]).astype(x.dtype) if k.shape == v.shape else None  # none for unequal sizes
        return y.astype(x.dtype), present

    return run


def _attention_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    heads = get_op(node.op).attr(node, "num_heads")
    sizes = list(get_op(node.op).attr(node, "qkv_hidden_sizes") or [])
    x, w, dtype = shape_of(ins[0]), shape_of(ins[1]), dtype_of(ins[0])
    if dtype is None:
        return [None] * len(node.outputs)
    if x is None or w is None:
        return [tensor(dtype, None)] * len(node.outputs)
    v_hidden = sizes[2] if sizes else sympy.sympify(w[-1]) / 3
    past = shape_of(ins[4]) if len(ins) > 4 and ins[4] is not None else None
    total = x[1] if len(ins) <= 4 or ins[4] is None else (None if past is None else sympy.sympify(past[3]) + x[1])
    head = (sizes[0] if sizes else sympy.sympify(w[-1]) / 3) / heads
    present = None if total is None else (2, x[0], heads, total, head)
    return [tensor(dtype, (x[0], x[1], v_hidden)), tensor(dtype, present)][:len(node.outputs)]


def _scalar_of(op, value: int | float, dtype):
    return op.constant(np.asarray(value, dtype))


def mask_bias_nodes(op, mask, reference, filter_value: float):
    """onnxruntime's additive key mask as a [B, 1, 1 or S, T] float32 value built in
    standard ops (see _mask_bias); `reference` is a [B, T, ...] value whose dim 1 is the
    number of keys. None when there is no mask."""
    if mask is None:
        return None
    shape, ref_shape = _type_shape(mask), _type_shape(reference)
    zero, filler = _scalar_of(op, 0.0, np.float32), _scalar_of(op, filter_value, np.float32)
    if shape is None or ref_shape is None:
        raise NotLowerable("mask of unknown rank")
    if len(shape) in (2, 3):
        keep = op.Greater(mask, _scalar_of(op, 0, _type_dtype(mask).numpy))
        axes = [1, 2] if len(shape) == 2 else [1]
        return op.Unsqueeze(op.Where(keep, zero, filler), op.constant(np.asarray(axes, np.int64)))
    if len(shape) != 1:
        raise NotLowerable(f"a {len(shape)}-D mask")
    if _same_dims(shape[0], ref_shape[0]):
        two = False
    elif _same_dims(shape[0], 2 * sympy.sympify(ref_shape[0])):
        two = True
    else:
        raise NotLowerable("mask_index is neither [B] nor [2B] as far as shapes tell")
    index = op.Cast(mask, to=int(DType.int64.onnx_code))
    if not two:
        return end_mask_nodes(op, index, None, reference, filter_value)
    halves = op.Reshape(index, op.constant(np.asarray([2, -1], np.int64)))
    ends = op.Gather(halves, _scalar_of(op, 0, np.int64), axis=0)
    starts = op.Gather(halves, _scalar_of(op, 1, np.int64), axis=0)
    return end_mask_nodes(op, ends, starts, reference, filter_value)


def end_mask_nodes(op, ends, starts, reference, filter_value: float):
    """[B, 1, 1, T] float32: 0 for keys in [starts[b], ends[b]) (int64 [B] values; no
    starts: from 0), filter_value elsewhere; T is dim 1 of `reference`."""
    count = op.Squeeze(op.Shape(reference, start=1, end=2), op.constant(np.asarray([0], np.int64)))
    positions = op.Range(_scalar_of(op, 0, np.int64), count, _scalar_of(op, 1, np.int64))
    column = op.constant(np.asarray([1], np.int64))
    keep = op.Less(positions, op.Unsqueeze(ends, column))
    if starts is not None:
        keep = op.And(keep, op.GreaterOrEqual(positions, op.Unsqueeze(starts, column)))
    zero, filler = _scalar_of(op, 0.0, np.float32), _scalar_of(op, filter_value, np.float32)
    return op.Unsqueeze(op.Where(keep, zero, filler), op.constant(np.asarray([1, 2], np.int64)))


def _plus(op, a, b):
    return b if a is None else a if b is None else op.Add(a, b)


def _expand_attention(op, node, used):
    x, w, bias, mask, past, attention_bias, past_len = _ins(node, 7)
    heads, scale, causal, filter_value = _attention_settings(node)
    opdef = get_op(node.op)
    if past is not None or past_len is not None or opdef.attr(node, "do_rotary"):
        raise NotLowerable("past state or rotary")
    if len(used) > 1 and used[1]:
        raise NotLowerable("reads present")
    if _type_dtype(x) != DType.float32 or len(_type_shape(w) or ()) != 2:
        raise NotLowerable("not float32 with a matrix weight")
    sizes = list(opdef.attr(node, "qkv_hidden_sizes") or [])
    qkv = op("ember.Linear", x, w, *([bias] if bias is not None else []))
    extra = _plus(op, mask_bias_nodes(op, mask, x, filter_value), attention_bias)
    tail = [extra] if extra is not None else []
    settings = dict(num_heads=heads, scale=scale, causal=int(causal))
    if not sizes or sizes[0] == sizes[1] == sizes[2]:
        return [op("ember.Attention", qkv, *([None, None] + tail if tail else []), **settings)]
    q, k, v = op.Split(qkv, op.constant(np.asarray(sizes, np.int64)), axis=-1, _outputs=3)
    return [op("ember.Attention", q, k, v, *tail, **settings)]


_define("Attention", _params("input", "weights", "bias", "mask_index", "past", "attention_bias",
                             "past_sequence_length", required=2),
        _params("output", "present"), _attention_reference, _attention_infer, _expand_attention,
        attrs={"num_heads": AttrSpec("num_heads", "int", required=True),
               "unidirectional": AttrSpec("unidirectional", "int", 0),
               "qkv_hidden_sizes": AttrSpec("qkv_hidden_sizes", "ints", []),
               "mask_filter_value": AttrSpec("mask_filter_value", "float", MASK_FILTER),
               "scale": AttrSpec("scale", "float", 0.0), "do_rotary": AttrSpec("do_rotary", "int", 0),
               "rotary_embedding_dim": AttrSpec("rotary_embedding_dim", "int", 0),
               "past_present_share_buffer": AttrSpec("past_present_share_buffer", "int", 0)},
        doc="multi-head self-attention of input [B, S, In] with packed weights [In, Dq + Dk + Dv] and bias; "
            "mask_index [B], [2B], [B, T] or [B, S, T]; past/present [2, B, N, T, H]")


# -- MultiHeadAttention -------------------------------------------------------------
def _mha_settings(node: Node):
    opdef = get_op(node.op)
    return (opdef.attr(node, "num_heads"), float(opdef.attr(node, "scale")), bool(opdef.attr(node, "unidirectional")),
            float(opdef.attr(node, "mask_filter_value")))


def _mha_reference(node: Node):
    heads, scale, causal, filter_value = _mha_settings(node)

    def run(query, key=None, value=None, bias=None, key_padding_mask=None, attention_bias=None, past_key=None,
            past_value=None, past_sequence_length=None, cache_indirection=None):
        if key is None:  # packed [B, S, N, 3, H]
            q, k, v = (_f32(query[:, :, :, i]).transpose(0, 2, 1, 3) for i in range(3))
        else:
            d = query.shape[-1]
            q = _heads(_f32(query) + (0 if bias is None else _f32(bias[:d])), heads)
            if key.ndim == 5:  # packed [B, L, N, 2, H]
                k, v = (_f32(key[:, :, :, i]).transpose(0, 2, 1, 3) for i in range(2))
            elif key.ndim == 4:  # [B, N, L, H], used as is
                k, v = _f32(key), _f32(value)
            else:
                dk = key.shape[-1]
                k = _heads(_f32(key) + (0 if bias is None else _f32(bias[d:d + dk])), heads)
                v = _heads(_f32(value) + (0 if bias is None else _f32(bias[d + dk:])), heads)
        past = 0
        if past_key is not None:
            past = past_key.shape[2]
            k, v = np.concatenate([_f32(past_key), k], axis=2), np.concatenate([_f32(past_value), v], axis=2)
        batch, seq = query.shape[:2]
        extra = _mask_bias(key_padding_mask, batch, seq, k.shape[2], past, filter_value, causal)
        if attention_bias is not None:
            extra = _f32(attention_bias) if extra is None else extra + _f32(attention_bias)
        y = _merge_heads(_scaled_attention(q, k, v, extra, scale))
        return y.astype(query.dtype), k.astype(query.dtype), v.astype(query.dtype), None

    return run


def _mha_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    heads = get_op(node.op).attr(node, "num_heads")
    q, dtype = shape_of(ins[0]), dtype_of(ins[0])
    v = shape_of(ins[2]) if len(ins) > 2 else None
    if dtype is None:
        return [None] * len(node.outputs)
    if q is None or len(q) != 3 or v is None or len(v) != 3:
        return [tensor(dtype, None)] * len(node.outputs)
    k = shape_of(ins[1])
    present = lambda s: (s[0], heads, s[1], sympy.sympify(s[2]) / heads)  # noqa: E731
    past = shape_of(ins[6]) if len(ins) > 6 and ins[6] is not None else None
    if len(ins) > 6 and ins[6] is not None:
        pk = pv = None if past is None else (past[0], heads, sympy.sympify(past[2]) + k[1], past[3])
        pv = None if past is None else (past[0], heads, sympy.sympify(past[2]) + v[1], sympy.sympify(v[2]) / heads)
    else:
        pk, pv = present(k), present(v)
    return [tensor(dtype, (q[0], q[1], v[2])), tensor(dtype, pk), tensor(dtype, pv),
            tensor(DType.float32, None)][:len(node.outputs)]


def _expand_mha(op, node, used):
    query, key, value, bias, mask, attention_bias, past_key, past_value, past_len, cache = _ins(node, 10)
    heads, scale, causal, filter_value = _mha_settings(node)
    shapes = [_type_shape(v) for v in (query, key, value)]
    if any(s is None or len(s) != 3 for s in shapes) or past_key is not None or cache is not None:
        raise NotLowerable("not 3-D query, key and value without past state")
    if _type_dtype(query) != DType.float32 or (len(used) > 3 and used[3]):
        raise NotLowerable("not float32, or reads qk")
    dq, dk, dv = (s[-1] for s in shapes)
    if bias is not None:
        if not all(isinstance(d, int) for d in (dq, dk, dv)):
            raise NotLowerable("bias over hidden sizes not known")
        cuts = np.cumsum([0, dq, dk, dv])

        def part(x, i):
            piece = op.Slice(bias, op.constant(np.asarray([cuts[i]], np.int64)),
                             op.constant(np.asarray([cuts[i + 1]], np.int64)), op.constant(np.asarray([0], np.int64)))
            return op.Add(x, piece)

        query, key, value = part(query, 0), part(key, 1), part(value, 2)
    extra = _plus(op, mask_bias_nodes(op, mask, node.inputs[1], filter_value), attention_bias)
    y = op("ember.Attention", query, key, value, *([extra] if extra is not None else []),
           num_heads=heads, scale=scale, causal=int(causal))
    used = list(used) + [False] * 3
    present = [_to_heads(op, x, heads) if used[i] else None for i, x in ((1, key), (2, value))]
    return [y, *present, None][:len(node.outputs)]


def _to_heads(op, x, heads: int):
    """[B, S, N*H] -> [B, N, S, H], the layout of a present key or value."""
    return op.Transpose(op.Reshape(x, op.constant(np.asarray([0, 0, heads, -1], np.int64))), perm=[0, 2, 1, 3])


_define("MultiHeadAttention", _params("query", "key", "value", "bias", "key_padding_mask", "attention_bias",
                                      "past_key", "past_value", "past_sequence_length", "cache_indirection"),
        _params("output", "present_key", "present_value", "qk"), _mha_reference, _mha_infer, _expand_mha,
        attrs={"num_heads": AttrSpec("num_heads", "int", required=True),
               "unidirectional": AttrSpec("unidirectional", "int", 0),
               "mask_filter_value": AttrSpec("mask_filter_value", "float", MASK_FILTER),
               "scale": AttrSpec("scale", "float", 0.0)},
        doc="multi-head attention of query [B, S, D] over key [B, L, D] / value [B, L, Dv] (or packed, or [B, N, L, H] "
            "key and value), bias [D + D + Dv] added to each; key_padding_mask [B] or [B, T] or [B, S, T]")


# -- GroupQueryAttention ------------------------------------------------------------------
# Causal attention with kv heads shared in groups, over a KV cache in [B, Nkv, P, H]:
# sequence b holds seqlens_k[b] + 1 tokens in all, its last S new (right padding), so
# its past is the first seqlens_k[b] + 1 - S rows of past_key; in the first prompt
# (S == total_sequence_length) there is no past and seqlens_k marks the padding. present keeps those,
# then the new keys (rows past the sequence's end are zero here; onnxruntime leaves
# them unspecified). Query i of sequence b sees keys j <= past_b + i and j < total_b
# (and j > past_b + i - local_window_size when that is set).
def _gqa_settings(node: Node):
    opdef = get_op(node.op)
    return {name: opdef.attr(node, name) for name in opdef.attrs}


def _gqa_reference(node: Node):
    s = _gqa_settings(node)
    heads, kv_heads = s["num_heads"], s["kv_num_heads"]

    def run(query, key=None, value=None, past_key=None, past_value=None, seqlens_k=None, total_sequence_length=None,
            cos_cache=None, sin_cache=None, position_ids=None, attention_bias=None, head_sink=None):
        if s["smooth_softmax"] and head_sink is None:
            head_sink = np.zeros(heads, np.float32)
        batch, seq = query.shape[:2]
        if key is None:  # packed [B, S, (N + 2 Nkv) * H]
            head = query.shape[-1] // (heads + 2 * kv_heads)
            query, key, value = np.split(query, [heads * head, (heads + kv_heads) * head], axis=-1)
        q, k, v = _heads(_f32(query), heads), _heads(_f32(key), kv_heads), _heads(_f32(value), kv_heads)
        totals = seqlens_k.astype(np.int64).reshape(-1) + 1
        # the first prompt (S tokens of total_sequence_length S) has no past, padded or not
        first_prompt = total_sequence_length is not None and int(np.asarray(total_sequence_length).reshape(-1)[0]) == seq
        pasts = np.zeros_like(totals) if first_prompt else totals - seq
        if s["do_rotary"]:
            pos = position_ids if position_ids is not None else pasts[:, None] + np.arange(seq)[None, :]
            pos = np.clip(pos, 0, cos_cache.shape[0] - 1)
            cos, sin = _f32(cos_cache)[pos][:, None], _f32(sin_cache)[pos][:, None]
            q = _rotate(q, cos, sin, bool(s["rotary_interleaved"]))
            k = _rotate(k, cos, sin, bool(s["rotary_interleaved"]))
        capacity = max(past_key.shape[2] if past_key is not None else 0, int(totals.max()), int(pasts.max()) + seq)
        present_k = np.zeros((batch, kv_heads, capacity, k.shape[-1]), np.float32)
        present_v = np.zeros((batch, kv_heads, capacity, v.shape[-1]), np.float32)
        bias = np.full((batch, 1, seq, capacity), -np.inf, np.float32)
        for b in range(batch):
            p = int(pasts[b])
            if p > 0:
                present_k[b, :, :p], present_v[b, :, :p] = past_key[b, :, :p], past_value[b, :, :p]
            present_k[b, :, p:p + seq], present_v[b, :, p:p + seq] = k[b], v[b]
            for i in range(seq):
                lo = 0 if s["local_window_size"] < 0 else max(0, p + i - s["local_window_size"] + 1)
                bias[b, 0, i, lo:min(p + i + 1, int(totals[b]))] = 0
        if attention_bias is not None:
            bias = bias + _f32(attention_bias)[..., :capacity]
        y = _scaled_attention(q, present_k, present_v, bias, s["scale"], softcap=s["softcap"],
                              sink=None if head_sink is None else _f32(head_sink))
        dtype = query.dtype
        return _merge_heads(y).astype(dtype), present_k.astype(dtype), present_v.astype(dtype)

    return run


def _gqa_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    s = _gqa_settings(node)
    q, dtype = shape_of(ins[0]), dtype_of(ins[0])
    if dtype is None:
        return [None] * len(node.outputs)
    if q is None or len(q) != 3:
        return [tensor(dtype, None)] * len(node.outputs)
    heads, kv_heads = s["num_heads"], s["kv_num_heads"]
    packed = len(ins) < 2 or ins[1] is None
    head = sympy.sympify(q[2]) / (heads + 2 * kv_heads if packed else heads)
    return [tensor(dtype, (q[0], q[1], head * heads))] + [tensor(dtype, None)] * (len(node.outputs) - 1)


def _expand_gqa(op, node, used):
    query, key, value, past_key, past_value, seqlens_k, total, cos_cache, sin_cache, position_ids, attention_bias, \
        head_sink = _ins(node, 12)
    s = _gqa_settings(node)
    if past_key is not None or key is None or position_ids is not None or head_sink is not None:
        raise NotLowerable("past state, packed qkv, position_ids or head_sink")
    if s["softcap"] or s["smooth_softmax"] or s["local_window_size"] >= 0 or attention_bias is not None:
        raise NotLowerable("softcap, smooth softmax, local window or attention_bias")
    if (len(used) > 3 and used[3]) or _type_dtype(query) != DType.float32:
        raise NotLowerable("reads output_qk, or not float32")
    if s["do_rotary"]:
        rotate = dict(num_heads=0, interleaved=bool(s["rotary_interleaved"]))
        q_head = _type_shape(query)[-1] // s["num_heads"] if _type_shape(query) else None
        if q_head is None or not isinstance(q_head, int):
            raise NotLowerable("head size unknown")
        rotate["num_heads"] = s["num_heads"]
        query = rotary_nodes(op, query, None, cos_cache, sin_cache, **rotate)
        key = rotary_nodes(op, key, None, cos_cache, sin_cache, **{**rotate, "num_heads": s["kv_num_heads"]})
    # the first prompt: sequence b's keys are its first seqlens_k[b] + 1 (right padding)
    ends = op.Add(op.Cast(seqlens_k, to=int(DType.int64.onnx_code)), _scalar_of(op, 1, np.int64))
    extra = end_mask_nodes(op, ends, None, node.inputs[1], MASK_FILTER)
    y = op("ember.Attention", query, key, value, extra, num_heads=s["num_heads"], kv_num_heads=s["kv_num_heads"],
           scale=float(s["scale"]), causal=1)
    used = list(used) + [False] * 3
    present = [_to_heads(op, x, s["kv_num_heads"]) if used[i] else None for i, x in ((1, key), (2, value))]
    return [y, *present, None][:len(node.outputs)]


_define("GroupQueryAttention",
        _params("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "cos_cache",
                "sin_cache", "position_ids", "attention_bias", "head_sink"),
        _params("output", "present_key", "present_value", "output_qk"), _gqa_reference, _gqa_infer, _expand_gqa,
        attrs={"num_heads": AttrSpec("num_heads", "int", required=True),
               "kv_num_heads": AttrSpec("kv_num_heads", "int", required=True),
               "scale": AttrSpec("scale", "float", 0.0), "softcap": AttrSpec("softcap", "float", 0.0),
               "do_rotary": AttrSpec("do_rotary", "int", 0), "rotary_interleaved": AttrSpec("rotary_interleaved", "int", 0),
               "local_window_size": AttrSpec("local_window_size", "int", -1),
               "smooth_softmax": AttrSpec("smooth_softmax", "int", 0), "qk_output": AttrSpec("qk_output", "int", 0)},
        doc="causal grouped-query attention over a [B, Nkv, T, H] KV cache; seqlens_k [B] = tokens in all - 1")
