"""onnxruntime's attention contrib ops (domain com.microsoft): Attention,
MultiHeadAttention, GroupQueryAttention and the RotaryEmbedding they use. Semantics
follow onnxruntime's ContribOperators.md and CPU kernels: masks add `mask_filter_value`
(-10000) to a masked score rather than -inf. As in contrib_microsoft.py, each op's
expansion rewrites it into ember's fused ops:

    Attention(x, w, b?, mask_index?)            -> ember.Linear -> ember.Attention(qkv, mask bias)
    MultiHeadAttention(q, k, v, b?, mask?, ab?) -> ember.Attention(q + bq, k + bk, v + bv, mask bias)
    GroupQueryAttention(q, k, v, ...)           -> ember.Attention(causal, kv_num_heads) (first prompt)
    RotaryEmbedding(x, pos, cos, sin)           -> ember.RotaryEmbedding(x, cos[pos] ++ cos[pos], ...)
"""

from __future__ import annotations

import numpy as np
import sympy

from ...errors import UnsupportedError
from ..dtypes import DType
from ..graph import Node
from ..registry import AttrSpec, Known, get_op
from ._lowering import NotLowerable
from ._symbolic import dtype_of, shape_of, tensor
from .contrib_microsoft import as_f32, define, padded_inputs, params, same_dims, type_dtype, type_shape

MASK_FILTER = -10000.0  # what onnxruntime adds to a masked score


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
        cos, sin = as_f32(cos_cache)[pos], as_f32(sin_cache)[pos]  # [B, S, half]
        if x.ndim == 4:  # [B, N, S, H]
            return (_rotate(as_f32(x), cos[:, None], sin[:, None], interleaved).astype(x.dtype),)
        head = x.shape[-1] // heads if heads else 2 * cos.shape[-1]
        x4 = as_f32(x).reshape(*x.shape[:2], -1, head)
        return (_rotate(x4, cos[:, :, None], sin[:, :, None], interleaved).reshape(x.shape).astype(x.dtype),)

    return run


def rotary_nodes(op, x, position_ids, cos_cache, sin_cache, *, num_heads: int, interleaved: bool):
    """x ([B, S, N*H] or [B, N, S, H]) with rotary embedding, built on ember.RotaryEmbedding
    (non-interleaved halves of the whole head; y = x * cos + rotate_half(x) * sin with the
    half-size caches gathered at the positions and repeated twice)."""
    shape, cache = type_shape(x), type_shape(cos_cache)
    if interleaved:
        raise NotLowerable("interleaved rotary")
    if shape is None or cache is None or len(cache) != 2 or not isinstance(shape[-1], int):
        raise NotLowerable("rotary of unknown sizes, or 3-D caches")
    half = cache[1]
    head = shape[-1] if len(shape) == 4 else (shape[-1] // num_heads if num_heads else 2 * half)
    if not isinstance(half, int) or head != 2 * half:
        raise NotLowerable("partial rotary (rotary_embedding_dim < head size)")
    if position_ids is None or len(type_shape(position_ids) or ()) != 2:
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


define("RotaryEmbedding", params("input", "position_ids", "cos_cache", "sin_cache", required=4), params("output"),
       _rotary_reference, lambda node, ins: [None if dtype_of(ins[0]) is None else tensor(dtype_of(ins[0]),
                                                                                           shape_of(ins[0]))],
       _expand_rotary,
       attrs={"interleaved": AttrSpec("interleaved", "int", 0),
              "is_packed_batching": AttrSpec("is_packed_batching", "int", 0),
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
    q, k, v = as_f32(q), as_f32(k), as_f32(v)
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
    """(num_heads, scale, unidirectional, mask_filter_value): Attention's and MultiHeadAttention's."""
    opdef = get_op(node.op)
    return (opdef.attr(node, "num_heads"), float(opdef.attr(node, "scale")), bool(opdef.attr(node, "unidirectional")),
            float(opdef.attr(node, "mask_filter_value")))


def _attention_reference(node: Node):
    heads, scale, causal, filter_value = _attention_settings(node)
    opdef = get_op(node.op)
    sizes = list(opdef.attr(node, "qkv_hidden_sizes") or [])
    if opdef.attr(node, "do_rotary"):
        raise UnsupportedError(f"{node.describe()}: Attention with do_rotary=1 has no reference in ember")

    def run(x, w, bias=None, mask=None, past=None, attention_bias=None, past_sequence_length=None):
        qkv = np.matmul(as_f32(x), as_f32(w)) + (0 if bias is None else as_f32(bias))
        return attention_of_qkv(qkv, sizes or [w.shape[1] // 3] * 3, mask, past, attention_bias, heads, scale, causal,
                                filter_value, x.dtype)

    return run


def attention_of_qkv(qkv, sizes, mask, past, attention_bias, heads: int, scale: float, causal: bool,
                     filter_value: float, dtype):
    """Attention's (and QAttention's) meaning after the input projection: (output,
    present) of the packed [B, S, Dq + Dk + Dv] projections `qkv`, in `dtype`."""
    q, k, v = np.split(qkv, [sizes[0], sizes[0] + sizes[1]], axis=-1)
    q, k, v = _heads(q, heads), _heads(k, heads), _heads(v, heads)
    past_len = 0
    if past is not None:
        past_len = past.shape[3]
        k, v = np.concatenate([as_f32(past[0]), k], axis=2), np.concatenate([as_f32(past[1]), v], axis=2)
    batch, seq = qkv.shape[:2]
    extra = _mask_bias(mask, batch, seq, past_len + seq, past_len, filter_value, causal)
    if attention_bias is not None:
        extra = as_f32(attention_bias) if extra is None else extra + as_f32(attention_bias)
    y = _merge_heads(_scaled_attention(q, k, v, extra, scale))
    present = np.stack([k, v]).astype(dtype) if k.shape == v.shape else None  # none for unequal sizes
    return y.astype(dtype), present


def _attention_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    dtype = dtype_of(ins[0])
    if dtype is None:
        return [None] * len(node.outputs)
    return _projected_attention_types(node, ins, dtype, 4, list(get_op(node.op).attr(node, "qkv_hidden_sizes") or []))


def _projected_attention_types(node: Node, ins: list[Known | None], dtype, past_input: int, sizes: list):
    """Attention's (and QAttention's) output and present of `dtype`: input [B, S, In] (ins[0])
    projected by a weight [In, Dq + Dk + Dv] (ins[1]; `sizes` the three, or three equal
    thirds), a past [2, B, N, P, H] at ins[past_input] where given."""
    heads = get_op(node.op).attr(node, "num_heads")
    x, w = shape_of(ins[0]), shape_of(ins[1])
    if x is None or w is None:
        return [tensor(dtype, None)] * len(node.outputs)
    v_hidden = sizes[2] if sizes else sympy.sympify(w[-1]) / 3
    given = len(ins) > past_input and ins[past_input] is not None
    past = shape_of(ins[past_input]) if given else None
    total = x[1] if not given else (None if past is None else sympy.sympify(past[3]) + x[1])
    head = (sizes[0] if sizes else sympy.sympify(w[-1]) / 3) / heads
    present = None if total is None else (2, x[0], heads, total, head)
    return [tensor(dtype, (x[0], x[1], v_hidden)), tensor(dtype, present)][:len(node.outputs)]


def _scalar_of(op, value: int | float, dtype):
    return op.constant(np.asarray(value, dtype))


def mask_bias_nodes(op, mask, reference, filter_value: float, keys=None):
    """onnxruntime's additive key mask as a [B, 1, 1 or S, T] float32 value built in
    standard ops (see _mask_bias); `reference` is a typed [B, T, ...] value (a node
    input), `keys` a (value, axis) whose dim `axis` is the number of keys T (default:
    the reference's dim 1). None when there is no mask."""
    if mask is None:
        return None
    shape, ref_shape = type_shape(mask), type_shape(reference)
    zero, filler = _scalar_of(op, 0.0, np.float32), _scalar_of(op, filter_value, np.float32)
    if shape is None or ref_shape is None:
        raise NotLowerable("mask of unknown rank")
    if len(shape) in (2, 3):
        keep = op.Greater(mask, _scalar_of(op, 0, type_dtype(mask).numpy))
        axes = [1, 2] if len(shape) == 2 else [1]
        return op.Unsqueeze(op.Where(keep, zero, filler), op.constant(np.asarray(axes, np.int64)))
    if len(shape) != 1:
        raise NotLowerable(f"a {len(shape)}-D mask")
    if same_dims(shape[0], ref_shape[0]):
        two = False
    elif same_dims(shape[0], 2 * sympy.sympify(ref_shape[0])):
        two = True
    else:
        raise NotLowerable("mask_index is neither [B] nor [2B] as far as shapes tell")
    index = op.Cast(mask, to=int(DType.int64.onnx_code))
    keys = keys or (reference, 1)
    if not two:
        return end_mask_nodes(op, index, None, keys, filter_value)
    halves = op.Reshape(index, op.constant(np.asarray([2, -1], np.int64)))
    ends = op.Gather(halves, _scalar_of(op, 0, np.int64), axis=0)
    starts = op.Gather(halves, _scalar_of(op, 1, np.int64), axis=0)
    return end_mask_nodes(op, ends, starts, keys, filter_value)


def end_mask_nodes(op, ends, starts, keys, filter_value: float):
    """[B, 1, 1, T] float32: 0 for keys in [starts[b], ends[b]) (int64 [B] values; no
    starts: from 0), filter_value elsewhere; keys: (value, axis) whose dim axis is T."""
    value, axis = keys
    count = op.Squeeze(op.Shape(value, start=axis, end=axis + 1), op.constant(np.asarray([0], np.int64)))
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
    x, w, bias, mask, past, attention_bias, past_len = padded_inputs(node, 7)
    heads, scale, causal, filter_value = _attention_settings(node)
    opdef = get_op(node.op)
    if past_len is not None or opdef.attr(node, "do_rotary") or opdef.attr(node, "past_present_share_buffer"):
        raise NotLowerable("a shared past/present buffer, or rotary")
    w_shape = type_shape(w)
    if type_dtype(x) != DType.float32 or w_shape is None or len(w_shape) != 2 or not isinstance(w_shape[1], int):
        raise NotLowerable("not float32 with a matrix weight of known width")
    sizes = list(opdef.attr(node, "qkv_hidden_sizes") or []) or [w_shape[1] // 3] * 3
    if (past is not None or (len(used) > 1 and used[1])) and not sizes[0] == sizes[1] == sizes[2]:
        raise NotLowerable("past/present with unequal q, k, v sizes")
    qkv = op("ember.Linear", x, w, *([bias] if bias is not None else []))
    return attention_nodes(op, node, used, x, qkv, sizes, mask, past, attention_bias)


def attention_nodes(op, node, used, x, qkv, sizes, mask, past, attention_bias):
    """Attention's (and QAttention's) expansion after the input projection: ember.Attention
    over the packed projections `qkv` of `x` (the input, for the mask's shape)."""
    heads, scale, causal, filter_value = _attention_settings(node)
    wants_present = len(used) > 1 and used[1]
    settings = dict(num_heads=heads, scale=scale, causal=int(causal))
    if past is None and not wants_present:
        extra = _plus(op, mask_bias_nodes(op, mask, x, filter_value), attention_bias)
        tail = [extra] if extra is not None else []
        if sizes[0] == sizes[1] == sizes[2]:  # packed q, k, v: the layout ember.Attention reads as is
            return [op("ember.Attention", qkv, *([None, None] + tail if tail else []), **settings)]
        q, k, v = op.Split(qkv, op.constant(np.asarray(sizes, np.int64)), axis=-1, _outputs=3)
        return [op("ember.Attention", q, k, v, *tail, **settings)]
    # with a past: attention over [B, N, T, H] keys and values, T = P + S (causal aligned to the end)
    q, k, v = (_to_heads(op, t, heads) for t in op.Split(qkv, op.constant(np.asarray(sizes, np.int64)), axis=-1,
                                                            _outputs=3))
    if past is not None:
        k, v = (op.Concat(op.Gather(past, _scalar_of(op, i, np.int64), axis=0), t, axis=2) for i, t in ((0, k), (1, v)))
    extra = _plus(op, mask_bias_nodes(op, mask, x, filter_value, keys=(k, 2)), attention_bias)
    y = op("ember.Attention", q, k, v, *([extra] if extra is not None else []), **settings)
    first = op.constant(np.asarray([0], np.int64))
    present = op.Concat(op.Unsqueeze(k, first), op.Unsqueeze(v, first), axis=0) if wants_present else None
    return [_from_heads(op, y), present][:len(node.outputs)]


def _from_heads(op, y):
    """[B, N, S, H] -> [B, S, N*H]."""
    return op.Reshape(op.Transpose(y, perm=[0, 2, 1, 3]), op.constant(np.asarray([0, 0, -1], np.int64)))


define("Attention", params("input", "weights", "bias", "mask_index", "past", "attention_bias",
                           "past_sequence_length", required=2),
       params("output", "present"), _attention_reference, _attention_infer, _expand_attention,
       attrs={"num_heads": AttrSpec("num_heads", "int", required=True),
              "unidirectional": AttrSpec("unidirectional", "int", 0),
              "qkv_hidden_sizes": AttrSpec("qkv_hidden_sizes", "ints", []),
              "mask_filter_value": AttrSpec("mask_filter_value", "float", MASK_FILTER),
              "scale": AttrSpec("scale", "float", 0.0), "do_rotary": AttrSpec("do_rotary", "int", 0),
              "rotary_embedding_dim": AttrSpec("rotary_embedding_dim", "int", 0),
              "past_present_share_buffer": AttrSpec("past_present_share_buffer", "int", 0)},
       doc="multi-head self-attention of input [B, S, In] with packed weights [In, Dq + Dk + Dv] and bias; "
           "mask_index [B], [2B], [B, T] or [B, S, T]; past/present [2, B, N, T, H]")


# -- QAttention: Attention whose input projection is an 8-bit integer product --------------
# What onnxruntime's quantize_dynamic writes for a com.microsoft.Attention (a BERT optimized by
# onnxruntime.transformers.optimizer): input already uint8 (a DynamicQuantizeLinear before
# it), weight int8 or uint8, QKV = float((input - input_zero) @ (weight - weight_zero)) *
# (input_scale * weight_scale) + bias — MatMulIntegerToFloat, on ember's integer GEMM —
# then Attention's softmax attention in float32.
def _qattention_reference(node: Node):
    from .contrib_microsoft import integer_to_float

    heads, scale, causal, filter_value = _attention_settings(node)
    if get_op(node.op).attr(node, "do_rotary"):
        raise UnsupportedError(f"{node.describe()}: QAttention with do_rotary=1 has no reference in ember")

    def run(x, w, bias, x_scale, w_scale, mask=None, x_zero=None, w_zero=None, past=None):
        qkv = integer_to_float(x, w, x_scale, w_scale, x_zero, w_zero, bias)
        return attention_of_qkv(qkv, [w.shape[1] // 3] * 3, mask, past, None, heads, scale, causal, filter_value,
                                np.float32)

    return run


def _qattention_infer(node: Node, ins: list[Known | None]) -> list[Known | None]:
    return _projected_attention_types(node, ins, DType.float32, 8, [])


def _expand_qattention(op, node, used):
    x, w, bias, x_scale, w_scale, mask, x_zero, w_zero, past = padded_inputs(node, 9)
    opdef = get_op(node.op)
    if opdef.attr(node, "do_rotary") or opdef.attr(node, "past_present_share_buffer"):
        raise NotLowerable("a shared past/present buffer, or rotary")
    w_shape = type_shape(w)
    if w_shape is None or len(w_shape) != 2 or not isinstance(w_shape[1], int) or w_shape[1] % 3:
        raise NotLowerable("a weight of unknown width")
    qkv = op("com.microsoft.MatMulIntegerToFloat", x, w, x_scale, w_scale, x_zero, w_zero, bias)
    return attention_nodes(op, node, used, x, qkv, [w_shape[1] // 3] * 3, mask, past, None)


define("QAttention", params("input", "weight", "bias", "input_scale", "weight_scale", "mask_index",
                            "input_zero_point", "weight_zero_point", "past", required=5),
       params("output", "present"), _qattention_reference, _qattention_infer, _expand_qattention,
       attrs={"num_heads": AttrSpec("num_heads", "int", required=True),
              "unidirectional": AttrSpec("unidirectional", "int", 0),
              "mask_filter_value": AttrSpec("mask_filter_value", "float", MASK_FILTER),
              "scale": AttrSpec("scale", "float", 0.0), "do_rotary": AttrSpec("do_rotary", "int", 0),
              "past_present_share_buffer": AttrSpec("past_present_share_buffer", "int", 0)},
       doc="Attention of an 8-bit input [B, S, In] (and its scale, zero point) with an 8-bit packed weight "
           "[In, 3 D] (per tensor or per column): the projection exact in int32, rescaled, plus bias, in float32")


# -- MultiHeadAttention -------------------------------------------------------------
def _mha_reference(node: Node):
    heads, scale, causal, filter_value = _attention_settings(node)

    def run(query, key=None, value=None, bias=None, key_padding_mask=None, attention_bias=None, past_key=None,
            past_value=None, past_sequence_length=None, cache_indirection=None):
        if key is None:  # packed [B, S, N, 3, H]
            q, k, v = (as_f32(query[:, :, :, i]).transpose(0, 2, 1, 3) for i in range(3))
        else:
            d = query.shape[-1]
            q = _heads(as_f32(query) + (0 if bias is None else as_f32(bias[:d])), heads)
            if key.ndim == 5:  # packed [B, L, N, 2, H]
                k, v = (as_f32(key[:, :, :, i]).transpose(0, 2, 1, 3) for i in range(2))
            elif key.ndim == 4:  # [B, N, L, H], used as is
                k, v = as_f32(key), as_f32(value)
            else:
                dk = key.shape[-1]
                k = _heads(as_f32(key) + (0 if bias is None else as_f32(bias[d:d + dk])), heads)
                v = _heads(as_f32(value) + (0 if bias is None else as_f32(bias[d + dk:])), heads)
        past = 0
        if past_key is not None:
            past = past_key.shape[2]
            k, v = np.concatenate([as_f32(past_key), k], axis=2), np.concatenate([as_f32(past_value), v], axis=2)
        batch, seq = query.shape[:2]
        extra = _mask_bias(key_padding_mask, batch, seq, k.shape[2], past, filter_value, causal)
        if attention_bias is not None:
            extra = as_f32(attention_bias) if extra is None else extra + as_f32(attention_bias)
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
    query, key, value, bias, mask, attention_bias, past_key, past_value, past_len, cache = padded_inputs(node, 10)
    heads, scale, causal, filter_value = _attention_settings(node)
    shapes = [type_shape(v) for v in (query, key, value)]
    if any(s is None or len(s) != 3 for s in shapes) or past_len is not None or cache is not None:
        raise NotLowerable("not 3-D query, key and value, or a shared past/present buffer")
    if (past_key is None) != (past_value is None):
        raise NotLowerable("only one of past_key and past_value")
    if type_dtype(query) != DType.float32 or (len(used) > 3 and used[3]):
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
    used = list(used) + [False] * 3
    settings = dict(num_heads=heads, scale=scale, causal=int(causal))
    if past_key is None:
        extra = _plus(op, mask_bias_nodes(op, mask, node.inputs[1], filter_value), attention_bias)
        y = op("ember.Attention", query, key, value, *([extra] if extra is not None else []), **settings)
        present = [_to_heads(op, x, heads) if used[i] else None for i, x in ((1, key), (2, value))]
        return [y, *present, None][:len(node.outputs)]
    # with a past: attention over [B, N, P + L, H] keys and values (causal aligned to the end)
    key = op.Concat(past_key, _to_heads(op, key, heads), axis=2)
    value = op.Concat(past_value, _to_heads(op, value, heads), axis=2)
    extra = _plus(op, mask_bias_nodes(op, mask, node.inputs[0], filter_value, keys=(key, 2)), attention_bias)
    y = op("ember.Attention", _to_heads(op, query, heads), key, value, *([extra] if extra is not None else []),
           **settings)
    return [_from_heads(op, y), key if used[1] else None, value if used[2] else None, None][:len(node.outputs)]


def _to_heads(op, x, heads: int):
    """[B, S, N*H] -> [B, N, S, H], the layout of a present key or value."""
    return op.Transpose(op.Reshape(x, op.constant(np.asarray([0, 0, heads, -1], np.int64))), perm=[0, 2, 1, 3])


define("MultiHeadAttention", params("query", "key", "value", "bias", "key_padding_mask", "attention_bias",
                                    "past_key", "past_value", "past_sequence_length", "cache_indirection"),
       params("output", "present_key", "present_value", "qk"), _mha_reference, _mha_infer, _expand_mha,
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
        q, k, v = _heads(as_f32(query), heads), _heads(as_f32(key), kv_heads), _heads(as_f32(value), kv_heads)
        totals = seqlens_k.astype(np.int64).reshape(-1) + 1
        # the first prompt (S tokens of total_sequence_length S) has no past, padded or not
        first_prompt = (total_sequence_length is not None
                        and int(np.asarray(total_sequence_length).reshape(-1)[0]) == seq)
        pasts = np.zeros_like(totals) if first_prompt else totals - seq
        if s["do_rotary"]:
            pos = position_ids if position_ids is not None else pasts[:, None] + np.arange(seq)[None, :]
            pos = np.clip(pos, 0, cos_cache.shape[0] - 1)
            cos, sin = as_f32(cos_cache)[pos][:, None], as_f32(sin_cache)[pos][:, None]
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
            bias = bias + as_f32(attention_bias)[..., :capacity]
        y = _scaled_attention(q, present_k, present_v, bias, s["scale"], softcap=s["softcap"],
                              sink=None if head_sink is None else as_f32(head_sink))
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
        head_sink = padded_inputs(node, 12)
    s = _gqa_settings(node)
    if past_key is not None or key is None or position_ids is not None or head_sink is not None:
        raise NotLowerable("past state, packed qkv, position_ids or head_sink")
    if s["softcap"] or s["smooth_softmax"] or s["local_window_size"] >= 0 or attention_bias is not None:
        raise NotLowerable("softcap, smooth softmax, local window or attention_bias")
    if (len(used) > 3 and used[3]) or type_dtype(query) != DType.float32:
        raise NotLowerable("reads output_qk, or not float32")
    if s["do_rotary"]:
        rotate = dict(num_heads=0, interleaved=bool(s["rotary_interleaved"]))
        q_head = type_shape(query)[-1] // s["num_heads"] if type_shape(query) else None
        if q_head is None or not isinstance(q_head, int):
            raise NotLowerable("head size unknown")
        rotate["num_heads"] = s["num_heads"]
        query = rotary_nodes(op, query, None, cos_cache, sin_cache, **rotate)
        key = rotary_nodes(op, key, None, cos_cache, sin_cache, **{**rotate, "num_heads": s["kv_num_heads"]})
    # the first prompt: sequence b's keys are its first seqlens_k[b] + 1 (right padding)
    ends = op.Add(op.Cast(seqlens_k, to=int(DType.int64.onnx_code)), _scalar_of(op, 1, np.int64))
    extra = end_mask_nodes(op, ends, None, (node.inputs[1], 1), MASK_FILTER)
    y = op("ember.Attention", query, key, value, extra, num_heads=s["num_heads"], kv_num_heads=s["kv_num_heads"],
           scale=float(s["scale"]), causal=1)
    used = list(used) + [False] * 3
    present = [_to_heads(op, x, s["kv_num_heads"]) if used[i] else None for i, x in ((1, key), (2, value))]
    return [y, *present, None][:len(node.outputs)]


define("GroupQueryAttention",
       params("query", "key", "value", "past_key", "past_value", "seqlens_k", "total_sequence_length", "cos_cache",
              "sin_cache", "position_ids", "attention_bias", "head_sink"),
       params("output", "present_key", "present_value", "output_qk"), _gqa_reference, _gqa_infer, _expand_gqa,
       attrs={"num_heads": AttrSpec("num_heads", "int", required=True),
              "kv_num_heads": AttrSpec("kv_num_heads", "int", required=True),
              "scale": AttrSpec("scale", "float", 0.0), "softcap": AttrSpec("softcap", "float", 0.0),
              "do_rotary": AttrSpec("do_rotary", "int", 0),
              "rotary_interleaved": AttrSpec("rotary_interleaved", "int", 0),
              "local_window_size": AttrSpec("local_window_size", "int", -1),
              "smooth_softmax": AttrSpec("smooth_softmax", "int", 0), "qk_output": AttrSpec("qk_output", "int", 0)},
       doc="causal grouped-query attention over a [B, Nkv, T, H] KV cache; seqlens_k [B] = tokens in all - 1")
