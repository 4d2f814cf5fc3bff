"""onnxruntime's float32 logistic and tanh on x86-64 with FMA3 (MLAS's
MlasComputeLogisticF32KernelFma3 / MlasComputeTanhF32KernelFma3, which its Sigmoid, Tanh
and recurrent ops call), bit for bit: a rational polynomial in x*x, its terms by fused
multiply-adds. A result that feeds a quantizer must agree to the last bit, or a value at
a rounding edge lands one step off (com.microsoft.DynamicQuantizeLSTM, contrib_rnn.py).

A float32 fused multiply-add is computed in float64 (the product is exact there) and
rounded once more to float32; the double rounding differs from a true FMA only where the
float64 sum falls exactly halfway between two float32 numbers (none in 5e5 samples
checked against onnxruntime).
"""

from __future__ import annotations

import numpy as np

# (clamp bound, numerator coefficients, denominator coefficients), highest power of x*x first
LOGISTIC = (18.0, (4.37031012579801e-11, 1.15627324459942e-07, 6.08574864600143e-05, 8.51377133304701e-03,
                   2.48287947061529e-01),
            (6.10247389755681e-13, 5.76102136993427e-09, 6.29106785017040e-06, 1.70198817374094e-03,
             1.16817656904453e-01, 9.93151921023180e-01))
TANH = (9.0, (-2.76076847742355e-16, 2.00018790482477e-13, -8.60467152213735e-11, 5.12229709037114e-08,
              1.48572235717979e-05, 6.37261928875436e-04, 4.89352455891786e-03),
        (1.19825839466702e-06, 1.18534705686654e-04, 2.26843463243900e-03, 4.89352518554385e-03))


def _horner(x2: np.ndarray, coefficients) -> np.ndarray:
    c = [np.float32(v) for v in coefficients]
    x2 = x2.astype(np.float64)
    p = (x2 * c[0] + c[1]).astype(np.float32)
    for v in c[2:]:
        p = (x2 * p + v).astype(np.float32)
    return p


def _rational(x: np.ndarray, kind) -> np.ndarray:
    bound, numerator, denominator = kind
    x = np.clip(np.asarray(x, np.float32), np.float32(-bound), np.float32(bound))
    x2 = x * x
    return (x * _horner(x2, numerator)) / _horner(x2, denominator)


def logistic(x: np.ndarray) -> np.ndarray:
    """MLAS's logistic: p/q + 1/2, floored at 0 (float32)."""
    return np.maximum(_rational(x, LOGISTIC) + np.float32(0.5), np.float32(0))


def tanh(x: np.ndarray) -> np.ndarray:
    """MLAS's tanh (float32)."""
    return _rational(x, TANH)
