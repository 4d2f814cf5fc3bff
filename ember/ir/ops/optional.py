"""Optional values. At run time an optional is its element or `None` (onnx.reference
wraps present values in a one-element list, which a sequence element cannot be told
apart from; ember does not)."""

from __future__ import annotations

import numpy as np

from ...errors import ExecutionError
from ..graph import Node
from .onnx_standard import standard_op


def _optional(node: Node):
    return lambda x=None: (x,)


def _has_element(node: Node):
    return lambda x=None: (np.array(x is not None),)


def _get_element(node: Node):
    def run(x):
        if x is None:
            raise ExecutionError(f"{node.describe()}: the optional input is empty")
        return (x,)

    return run


standard_op("Optional", reference=_optional)
standard_op("OptionalHasElement", reference=_has_element)
standard_op("OptionalGetElement", reference=_get_element)
