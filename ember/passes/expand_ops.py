"""expand_ops: a node whose op is defined as a rewrite into other ops (`OpDef.expand`;
onnxruntime's com.microsoft contrib ops) becomes that rewrite.

    com.microsoft.Attention(x, w, b, mask)  -> ember.Linear -> ember.Attention(qkv, mask bias)
    com.microsoft.BiasGelu(x, b)            -> Gelu(Add(x, b))    (fuse_linear, fuse_bias_activation
                                                                   then make MatMul -> it one ember.Linear)

It runs first, so the fusions after it see ember's ops and standard ones. One rewrite
per (op, number of inputs, number of outputs) found in the graph matches such a node
whatever its inputs; the op's `expand` builds the replacement (and is told which
outputs are read, so an unread statistics output costs nothing)."""

from __future__ import annotations

from ..ir.graph import Graph
from ..ir.registry import get_op
from .base import PassResult
from .registry import register_pass
from .rewriter import Rewrite, RewritePass

MAX_INPUTS = 16


def _rewrite(op_name: str, num_inputs: int, num_outputs: int, used: set[int]) -> Rewrite:
    def pattern(op, i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11, i12, i13, i14, i15):
        inputs = [i0, i1, i2, i3, i4, i5, i6, i7, i8, i9, i10, i11, i12, i13, i14, i15][:num_inputs]
        return op(op_name, *inputs, _outputs=num_outputs, _as="first_output")

    def replacement(op, first_output):
        node = first_output.producer
        outs = get_op(op_name).expand(op, node, [id(v) in used for v in node.outputs])
        return list(outs) if num_outputs > 1 else outs[0]

    return Rewrite(f"expand_{op_name}_{num_inputs}_{num_outputs}", pattern, replacement)


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
