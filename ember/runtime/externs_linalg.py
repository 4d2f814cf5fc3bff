"""Externs for linear algebra, recurrent, integer and 16-bit float ops: torch kernels
that reproduce the reference's arithmetic (its dtypes, its rounding, its order where
the order shows in the result)."""

from __future__ import annotations

import torch

from .externs import extern


def _sum_like_numpy(e: torch.Tensor, axis: int) -> torch.Tensor:
    """numpy's sum of a 16-bit float tensor along `axis` (keepdims): float16 along the
    innermost axis accumulates in float32 and rounds once; otherwise (and always for
    ml_dtypes' bfloat16) each partial sum rounds to the 16-bit type, in index order."""
    if e.dtype == torch.float16 and all(d == 1 for d in e.shape[axis + 1:]):
        return e.sum(axis, keepdim=True, dtype=torch.float32).to(e.dtype)
    acc = e.narrow(axis, 0, 1).clone()
    for i in range(1, e.shape[axis]):
        acc += e.narrow(axis, i, 1)
    return acc


@extern("softmax16")
def softmax16(params, x, y):
    """Softmax (or LogSoftmax) of a 16-bit float tensor as the reference computes it in
    that dtype: x - max, exp, the sum (see `_sum_like_numpy`), a division, each result
    rounded to the 16-bit type."""
    if x.numel() == 0:
        return
    axis = params["axis"]
    e = torch.exp(x - x.amax(axis, keepdim=True))
    result = e / _sum_like_numpy(e, axis)
    y.copy_(torch.log(result) if params["log"] else result)
