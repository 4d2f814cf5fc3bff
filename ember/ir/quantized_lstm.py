"""Facts of com.microsoft.DynamicQuantizeLSTM (ir/ops/contrib_rnn.py) that its extern
needs too, in a module of their own so that the runtime reads them without importing
every op family (and with them onnx and ml_dtypes)."""

from __future__ import annotations

from ..errors import ExecutionError


def check_shapes(where: str, direction: str, hidden: int, x, w, r, b, h0, c0, p, w_scale, w_zero, r_scale,
                 r_zero) -> None:
    """ExecutionError naming the input whose shape does not fit (numpy arrays or torch
    tensors): the kernel reads its arrays by these shapes. Without X (None), W's input
    size and the states' batch go unchecked."""
    dirs = 2 if direction == "bidirectional" else 1
    if x is not None and len(x.shape) != 3:
        raise ExecutionError(f"{where}: X must be [seq, batch, input_size], got shape {tuple(x.shape)}")
    _, batch, size = x.shape if x is not None else (None, None, w.shape[1] if len(w.shape) == 3 else None)
    expected = {"W": (w, (dirs, size, 4 * hidden)), "R": (r, (dirs, hidden, 4 * hidden)),
                "B": (b, (dirs, 8 * hidden)), "initial_h": (h0, (dirs, batch, hidden)),
                "initial_c": (c0, (dirs, batch, hidden)), "P": (p, (dirs, 3 * hidden))}
    for name, (value, shape) in expected.items():
        if value is not None and None not in shape and tuple(value.shape) != shape:
            raise ExecutionError(f"{where}: {name} must have shape {list(shape)} (hidden_size {hidden}, {dirs} "
                                 f"direction(s)), got {list(value.shape)}")
    for name, value in (("W_scale", w_scale), ("W_zero_point", w_zero), ("R_scale", r_scale), ("R_zero_point", r_zero)):
        if tuple(value.shape) not in ((dirs,), (dirs, 4 * hidden)):
            raise ExecutionError(f"{where}: {name} must have shape [{dirs}] (per direction) or [{dirs}, "
                                 f"{4 * hidden}] (per column), got {list(value.shape)}")


def rows_per_group(batch: int, hidden: int, threads: int) -> int:
    """How many of the batch's rows onnxruntime quantizes together for a step's h-GEMM: it
    splits the batch over its threads where the batch is large or the layer narrow."""
    if batch > 4 or (batch >= 2 and hidden <= 256):
        return -(-batch // max(threads, 1))
    return max(batch, 1)


def threads() -> int:
    """The thread count onnxruntime's grouping of rows assumes (rows_per_group): ember's own
    (torch's, which the executor sets to intra_op_threads, by default the cores it may use;
    onnxruntime's default is the physical cores, the same but where cores share SMT)."""
    import torch

    return torch.get_num_threads()
