"""expand_ops: a node whose op is defined as a rewrite into other ops (`OpDef.expand`;
onnxruntime's com.microsoft contrib ops) becomes that rewrite.

    com.microsoft.Attention(x, w, b, mask)  -> ember.Linear -> ember.Attention(qkv, mask bias)
    com.microsoft.BiasGelu(x, b)            -> Gelu(Add(x, b))    (fuse_linear, fuse_bias_activation
                                                                   then make MatMul -> it one ember.Linear)

It runs first, so the fusions after it see ember's ops and standard ones. One rewrite
per (op, number of inputs, number of outputs) found in the graph matches such a node
whatever its inputs; the op's `expand` builds the replacement (and is told which
outputs are read, so an unread statistics output costs nothing). A node whose form its
expansion does not cover (it raises NotLowerable) is left as it is, with the reason in
the pass's report; it runs on its reference."""

from __future__ import annotations

from ..ir.graph import Graph, Value
from ..ir.ops._lowering import NotLowerable
from ..ir.registry import get_op
from .base import PassResult
from .registry import register_pass
from .rewriter import Match, Rewrite, RewritePass

MAX_INPUTS = 20  # (QEmbedLayerNormalization has 18)


class _DryRun:
    """A builder that builds nothing: running an expansion on it tells whether the
    expansion covers a node (it raises NotLowerable, with the reason, when not)."""

    def __call__(self, op: str, *inputs, _outputs: int = 1, **attrs):
        outputs = [Value(f"dry_{op}_{i}") for i in range(_outputs)]
        return outputs[0] if _outputs == 1 else outputs

    def __getattr__(self, op: str):
        if op.startswith("_"):
            raise AttributeError(op)
        return lambda *inputs, **attrs: self(op, *inputs, **attrs)

    def constant(self, data) -> Value:
        return Value("dry_constant")


def _rewrite(op_name: str, num_inputs: int, num_outputs: int, used: set[int]) -> Rewrite:
    expand = get_op(op_name).expand

    def pattern(op, i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11, i12, i13, i14, i15, i16, i17, i18, i19):
        inputs = [i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11, i12, i13, i14, i15, i16, i17, i18, i19][:num_inputs]
        return op(op_name, *inputs, _outputs=num_outputs, _as="first_output")

    def check(m: Match) -> str | None:
        try:
            expand(_DryRun(), m.root, [id(v) in used for v in m.root.outputs])
        except NotLowerable as e:
            return str(e)
        return None

    def replacement(op, first_output):
        node = first_output.producer
        outs = expand(op, node, [id(v) in used for v in node.outputs])
        return list(outs) if num_outputs > 1 else outs[0]

    return Rewrite(f"expand_{op_name}_{num_inputs}_{num_outputs}", pattern, replacement, check)


@register_pass
class ExpandOps(RewritePass):
    name = "expand_ops"

    def run(self, graph: Graph) -> PassResult:
        used = graph.used_values()
        shapes = set()
        for node in graph.nodes:
            if get_op(node.op).expand is None:
                continue
            inputs = list(node.inputs)
            while inputs and inputs[-1] is None:
                inputs.pop()
            if len(inputs) <= MAX_INPUTS:
                shapes.add((node.op, len(inputs), len(node.outputs)))
        self.rewrites = [_rewrite(op, n_in, n_out, used) for op, n_in, n_out in sorted(shapes)]
        return super().run(graph)
