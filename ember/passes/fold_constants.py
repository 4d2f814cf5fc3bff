"""fold_constants: evaluate nodes whose inputs are all constants with their reference
implementations, and replace their outputs by constants. Random ops, nodes with
subgraphs, and results over `max_elements` are left alone. Shape tensors whose contents
symbolic inference computed completely (`Shape(x)[1]` when that dim is static) become
constants too, which is how shape subgraphs fold once dims are known. An If whose
condition is a constant becomes the nodes of the branch it takes (ONNX function bodies
branch on their attributes this way)."""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Node, Value
from ..ir.registry import get_op
from ..ir.shape_inference import infer_types
from ..ir.types import TensorType
from .base import Pass, PassResult
from .registry import register_pass

DEFAULT_MAX_ELEMENTS = 1 << 23


@register_pass
class FoldConstants(Pass):
    name = "fold_constants"

    def __init__(self, max_elements: int = DEFAULT_MAX_ELEMENTS):
        self.max_elements = max_elements

    def run(self, graph: Graph) -> PassResult:
        """Fold until nothing more folds (a branch an If became may hold Constants and
        shape arithmetic of its own), at most `MAX_ROUNDS` times."""
        modified = False
        for _ in range(self.MAX_ROUNDS):
            if not self._round(graph):
                break
            modified = True
        return PassResult(graph, modified)

    MAX_ROUNDS = 4

    def _round(self, graph: Graph) -> bool:
        modified = self._fold_known_shapes(graph)
        modified |= _inline_constant_ifs(graph)
        folded: dict[tuple, list] = {}  # (op, attrs, input values) -> the constants it folded to
        outputs = {id(v) for v in graph.outputs}  # (keep their names: folded into named copies)
        for node in list(graph.nodes):
            opdef = get_op(node.op)
            if not opdef.deterministic or node.has_subgraphs:
                continue
            if not all(v is None or v.const is not None for v in node.inputs):
                continue
            aliased = any(id(v) in outputs for v in node.outputs)
            if node.op == "Identity" and len(node.outputs) == 1 and not aliased:
                # the same constant, not a copy: chython-rxnmap reads each shared layer's
                # weight through an Identity per layer, and 8 weights became 61 copies
                # (each packed for oneDNN apart, 16 of one 12 MB weight)
                graph.nodes.remove(node)
                graph.replace_all_uses(node.outputs[0], node.inputs[0])
                modified = True
                continue
            key = (node.op, repr(sorted(node.attrs.items())), tuple(id(v) for v in node.inputs)) \
                if node.inputs and not aliased else None
            if key in folded:  # the same op on the same constants: its constants again
                graph.nodes.remove(node)
                for old, value in zip(node.outputs, folded[key]):
                    graph.replace_all_uses(old, value)
                modified = True
                continue
            try:
                results = opdef.reference(node)(*[None if v is None else v.const for v in node.inputs])
            except Exception:  # noqa: BLE001 - a node that fails stays, for run time to report
                continue
            # a 0-d result may come back as a numpy scalar (Cast of a 0-d constant does)
            results = [np.asarray(r) if isinstance(r, np.generic) else r for r in results]
            if not all(isinstance(r, np.ndarray) and r.size <= self.max_elements for r in results):
                continue
            graph.nodes.remove(node)
            values = []
            for old, data in zip(node.outputs, results):
                values.append(graph.add_constant(old.name, data))
                graph.replace_all_uses(old, values[-1])
            if key is not None:
                folded[key] = values
            modified = True
        modified |= _inline_constant_ifs(graph)  # conditions this fold made constant
        return modified

    @staticmethod
    def _fold_known_shapes(graph: Graph) -> bool:
        known = infer_types(graph)
        modified = False
        for node in list(graph.nodes):
            if not get_op(node.op).deterministic or node.op == "Constant":
                continue
            replaced = 0
            for old in node.outputs:
                k = known.get(id(old))
                if k is None or k.value is None or not isinstance(old.type, TensorType):
                    continue
                items = k.value.reshape(-1).tolist()
                if not all(isinstance(x, (int, bool)) for x in items):
                    continue
                data = np.array(items, dtype=old.type.dtype.numpy).reshape(k.value.shape)
                name, old.name = old.name, f"{old.name}.folded"  # the constant takes its name
                graph.replace_all_uses(old, graph.add_constant(name, data))
                replaced += 1
                modified = True
            if replaced and replaced == len(node.outputs):  # nothing reads it now: not folded again
                graph.nodes.remove(node)
        return modified


def _inline_constant_ifs(graph: Graph) -> bool:
    """Replace each If whose condition is a constant by the nodes of the branch it takes."""
    modified = False
    while True:
        node = next((n for n in graph.nodes if n.op == "If" and n.inputs[0] is not None
                     and n.inputs[0].const is not None and n.inputs[0].const.size == 1), None)
        if node is None:
            return modified
        branch = node.attrs["then_branch" if bool(node.inputs[0].const.reshape(-1)[0]) else "else_branch"]
        if len(branch.outputs) != len(node.outputs):
            return modified  # malformed: left for the run to report
        position = graph.nodes.index(node)
        graph.nodes[position:position + 1] = branch.nodes
        graph.constants.extend(branch.constants)
        returned = {id(v) for v in graph.outputs}
        produced = {id(v) for n in branch.nodes for v in n.outputs}
        for i, (old, new) in enumerate(zip(node.outputs, branch.outputs)):
            if id(old) in returned:
                if id(new) not in produced:  # an outer value or a constant: a node keeps the returned name
                    copy = Node("Identity", [new], [Value(old.name, old.type)], name=f"{node.name}/out{i}")
                    graph.nodes.insert(position, copy)
                    new = copy.outputs[0]
                else:
                    new.name = old.name
                old.name = f"{old.name}.replaced"
            graph.replace_all_uses(old, new)
        modified = True
