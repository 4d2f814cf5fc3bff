"""canonicalize: remove no-ops and collapse chains, so later patterns see one form.

    Identity(x)                                  -> x
    Transpose(Transpose(x, p1), p2)              -> Transpose(x, p1[p2])
    Transpose(x, identity perm)                  -> x
    Reshape(Reshape(x, s1), s2), s2 without 0    -> Reshape(x, s2)
    Reshape(x, s) / Expand(x, s) to x's shape    -> x
    Cast(x, to=x's dtype)                        -> x
"""

from __future__ import annotations

from ..ir.shape_inference import is_unknown
from ..ir.types import TensorType
from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass


def _same_type(m: Match) -> str | None:
    old, new = m.root.inputs[0].type, m.root.outputs[0].type
    if not (isinstance(old, TensorType) and isinstance(new, TensorType)) or old.shape is None:
        return "types unknown"
    if any(is_unknown(d) for d in old.shape):
        return f"{old} has unknown dims, so equal-looking shapes prove nothing"
    if old != new:
        return f"changes the type: {old} -> {new}"
    return None


def _no_zero_in_second_shape(m: Match) -> str | None:
    shape = m.constant("s2")
    if shape is None:
        return "the outer shape is not a constant"
    if 0 in shape.tolist() and not m.root.attrs.get("allowzero", 0):
        return "the outer shape copies dims (0) from the inner reshape"
    return None


def _identity_perm(m: Match) -> str | None:
    perm = m["perm"]
    if perm is None or list(perm) != list(range(len(perm))):
        return f"perm {perm} moves axes"
    return None


REWRITES = [
    Rewrite("remove_identity", lambda op, x: op.Identity(x), lambda op, x: x),
    Rewrite("merge_transposes",
            lambda op, x, p1, p2: op.Transpose(op.Transpose(x, perm=p1), perm=p2),
            lambda op, x, p1, p2: op.Transpose(x, perm=[p1[i] for i in p2]),
            lambda m: None if m["p1"] is not None and m["p2"] is not None else "a perm is implicit"),
    Rewrite("remove_identity_transpose", lambda op, x, perm: op.Transpose(x, perm=perm),
            lambda op, x, perm: x, _identity_perm),
    Rewrite("merge_reshapes",
            lambda op, x, s1, s2: op.Reshape(op.Reshape(x, s1), s2),
            lambda op, x, s1, s2: op.Reshape(x, s2), _no_zero_in_second_shape),
    Rewrite("remove_noop_reshape", lambda op, x, s: op.Reshape(x, s), lambda op, x, s: x, _same_type),
    Rewrite("remove_noop_expand", lambda op, x, s: op.Expand(x, s), lambda op, x, s: x, _same_type),
    Rewrite("remove_noop_cast", lambda op, x, to: op.Cast(x, to=to), lambda op, x, to: x, _same_type),
]


@register_pass
class Canonicalize(RewritePass):
    name = "canonicalize"
    rewrites = REWRITES
