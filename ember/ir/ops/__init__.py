"""Built-in op families. Importing this package registers every op: each family file
first registers what it defines itself, then the remaining standard ONNX ops get the
delegating defaults."""

from . import (  # noqa: F401
    contrib_microsoft,
    contrib_microsoft_attention,
    collectives,
    control_flow,
    data_dependent,
    elementwise,
    ember_nn,
    ember_quantized,  # after ember_nn, whose activations it shares
    image,
    indexing,
    linalg,
    nn,
    optional,
    paged_attention,
    quantize,
    reduce,
    rnn,
    contrib_rnn,  # after rnn, whose pieces it uses
    scans,
    scatter_gather,
    shape_ops,
    spatial,
    spectral,
    text,
    training,
)
from .onnx_standard import register_remaining

register_remaining()
