"""Optimizer steps of ai.onnx.preview.training (Adagrad, Adam, Momentum) and the
ai.onnx.ml ops Binarizer, ArrayFeatureExtractor and TreeEnsemble. Schemas, type functions and
references are ONNX's. Each optimizer updates every tensor it is given elementwise,
with the learning rate R and step count T as scalars: pointwise kernels, one per
output, computing in float64 (the reference mixes float32 and float64) and rounding
once to the output's dtype."""

from __future__ import annotations

from ..dtypes import DType
from ._lowering import FLOATS, NotLowerable, V, attrs, out_type, register_lowering, wrapped_index
from .onnx_standard import standard_op

TRAINING = "ai.onnx.preview.training"
for _op in ("Adagrad", "Adam", "Momentum"):
    standard_op(_op, TRAINING)
for _op in ("Binarizer", "ArrayFeatureExtractor", "TreeEnsemble"):
    standard_op(_op, "ai.onnx.ml")

F64 = DType.float64


def _adagrad(a, r, t, x, g, h):
    rate = r / (1 + t * a["decay_factor"])
    grad = a["norm_coefficient"] * x + g
    h_new = h + grad * grad
    return [x - rate * grad / (h_new.sqrt() + a["epsilon"]), h_new]


def _adam(a, r, t, x, g, v, h):
    grad = a["norm_coefficient"] * x + g
    v_new = a["alpha"] * v + (1 - a["alpha"]) * grad
    h_new = a["beta"] * h + (1 - a["beta"]) * (grad * grad)
    # with bias correction of the momentums after the first step
    corrected = r * (1 - V(t.body, t.body.const(a["beta"], F64), F64).op("pow", t)).sqrt() / (
        1 - V(t.body, t.body.const(a["alpha"], F64), F64).op("pow", t))
    rate = (t > 0).where(corrected, r)
    x_new = x - rate * (v_new / (h_new.sqrt() + a["epsilon"]))
    return [(1 - a["norm_coefficient_post"]) * x_new, v_new, h_new]


def _momentum(a, r, t, x, g, v):
    grad = a["norm_coefficient"] * x + g
    v_new = a["alpha"] * v + (t > 0).where(V(t.body, t.body.const(a["beta"], F64), F64), 1.0) * grad
    step = grad + a["alpha"] * v_new if a["mode"] == "nesterov" else v_new
    return [x - r * step, v_new]


_OPTIMIZERS = {"Adagrad": (_adagrad, 3), "Adam": (_adam, 4), "Momentum": (_momentum, 3)}


def _lower_optimizer(ctx, node, ins):
    """Outputs are grouped by kind (every X_new, then every V_new, ...), inputs likewise
    after R and T; output k of kind j updates tensor k."""
    formula, per_tensor = _OPTIMIZERS[node.op.rsplit(".", 1)[1]]
    a = attrs(node)
    r, t, tensors = ins[0], ins[1], ins[2:]
    if any(x.dtype not in FLOATS for x in (r, *tensors)) or len(tensors) % per_tensor:
        raise NotLowerable("not float")
    n = len(tensors) // per_tensor
    outs = []
    for j in range(len(node.outputs) // n):
        for k in range(n):
            group = [tensors[k + i * n] for i in range(per_tensor)]
            dtype, shape = out_type(node, j * n + k)

            def compute(b, index, group=group, j=j, shape=shape, dtype=dtype):
                scalars = [V(b, s.load(b, ()), s.dtype).cast(F64) for s in (r, t)]
                values = [V(b, x.load(b, ctx.broadcast(x, index, shape)), x.dtype).cast(F64) for x in group]
                return formula(a, *scalars, *values)[j].cast(dtype).name
            outs.append(ctx.pointwise(shape, dtype, compute, cost=20))
    return outs


for _op in _OPTIMIZERS:
    register_lowering(f"{TRAINING}.{_op}")(_lower_optimizer)


@register_lowering("ai.onnx.ml.Binarizer")
def _lower_binarizer(ctx, node, ins):
    (x,) = ins
    dtype, shape = out_type(node)
    threshold = attrs(node)["threshold"]
    return [ctx.pointwise(shape, dtype, lambda b, i: (V(b, x.load(b, i), x.dtype) > threshold).cast(dtype).name)]


@register_lowering("ai.onnx.ml.ArrayFeatureExtractor")
def _lower_array_feature_extractor(ctx, node, ins):
    """out[..., j] = x[..., indices.flat[j]] (a 1-d x reads as one row)."""
    x, indices = ins
    dtype, shape = out_type(node)
    flat = ctx.alias(indices, (shape[-1],))

    def load(b, index):
        at = wrapped_index(b, flat, (index[-1],), x.shape[-1])
        return x.load(b, (*index[:-1], at) if len(x.shape) > 1 else (at,))

    return [ctx.pointwise(shape, dtype, load, cost=5)]


@register_lowering("ai.onnx.ml.TreeEnsemble")
def _lower_tree_ensemble(ctx, node, ins):
    """Every row walks every tree at once (a torch extern): the trees' arrays as params."""
    (x,) = ins
    a = attrs(node)
    if x.dtype not in FLOATS or len(x.shape) != 2 or a["post_transform"] != 0 or a["aggregate_function"] not in range(4):
        raise NotLowerable("not a float matrix, or a post transform (the reference applies none)")
    modes = [int(m) for m in a["nodes_modes"]]
    if a["membership_values"] is not None and any(v == 0 for v in a["membership_values"]):
        raise NotLowerable("a set member 0.0 (the reference ends a set there)")
    members, values = [], iter([float(v) for v in (a["membership_values"] if a["membership_values"] is not None
                                                   else [])])
    for mode in modes:  # each MEMBER node's set: the next run of membership values up to a NaN
        found = []
        while mode == 6 and (v := next(values, float("nan"))) == v:
            found.append(v)
        members.append(found)
    for root in a["tree_roots"]:
        if (a["nodes_trueleafs"][root] and a["nodes_falseleafs"][root]
                and a["nodes_truenodeids"][root] == a["nodes_falsenodeids"][root] != root):
            raise NotLowerable("a one-leaf tree whose leaf index is not its root's (the reference reads the root's)")
    count = len(modes)
    missing = a["nodes_missing_value_tracks_true"] or [0] * count
    return ctx.extern("tree_ensemble", [x], [out_type(node)], modes=modes, members=members,
                      splits=[float(v) for v in a["nodes_splits"]], features=list(a["nodes_featureids"]),
                      true_ids=list(a["nodes_truenodeids"]), false_ids=list(a["nodes_falsenodeids"]),
                      true_leafs=list(a["nodes_trueleafs"]), false_leafs=list(a["nodes_falseleafs"]),
                      missing=[int(m) for m in missing], roots=list(a["tree_roots"]),
                      leaf_weights=[float(w) for w in a["leaf_weights"]], leaf_targets=list(a["leaf_targetids"]),
                      aggregate=a["aggregate_function"], n_targets=a["n_targets"])
