"""Element types. One `DType` per ONNX tensor element type, with its numpy dtype
(`ml_dtypes` for bfloat16, the float8/float6/float4 kinds and the sub-byte integers), so
quantization and the GPU backend can name int4/int8/fp8 without a second table.

ml_dtypes is imported when one of its types is first asked for: loading it registers
casts between all its types and takes a second on some machines, which a process that
never sees a bfloat16 (`import ember`, loading and running a float32 artifact) should
not pay. Its types are named here by their ml_dtypes attribute."""

from __future__ import annotations

import enum

import numpy as np


class DType(enum.Enum):
    # value: (onnx TensorProto code, short name used by the printer, numpy dtype, bits)
    float32 = (1, "f32", np.dtype(np.float32), 32)
    uint8 = (2, "u8", np.dtype(np.uint8), 8)
    int8 = (3, "i8", np.dtype(np.int8), 8)
    uint16 = (4, "u16", np.dtype(np.uint16), 16)
    int16 = (5, "i16", np.dtype(np.int16), 16)
    int32 = (6, "i32", np.dtype(np.int32), 32)
    int64 = (7, "i64", np.dtype(np.int64), 64)
    string = (8, "str", np.dtype(object), 0)
    bool = (9, "bool", np.dtype(np.bool_), 8)
    float16 = (10, "f16", np.dtype(np.float16), 16)
    float64 = (11, "f64", np.dtype(np.float64), 64)
    uint32 = (12, "u32", np.dtype(np.uint32), 32)
    uint64 = (13, "u64", np.dtype(np.uint64), 64)
    complex64 = (14, "c64", np.dtype(np.complex64), 64)
    complex128 = (15, "c128", np.dtype(np.complex128), 128)
    bfloat16 = (16, "bf16", "bfloat16", 16)
    float8e4m3fn = (17, "f8e4m3fn", "float8_e4m3fn", 8)
    float8e4m3fnuz = (18, "f8e4m3fnuz", "float8_e4m3fnuz", 8)
    float8e5m2 = (19, "f8e5m2", "float8_e5m2", 8)
    float8e5m2fnuz = (20, "f8e5m2fnuz", "float8_e5m2fnuz", 8)
    uint4 = (21, "u4", "uint4", 4)
    int4 = (22, "i4", "int4", 4)
    float4e2m1 = (23, "f4e2m1", "float4_e2m1fn", 4)
    float8e8m0 = (24, "f8e8m0", "float8_e8m0fnu", 8)
    uint2 = (25, "u2", "uint2", 2)
    int2 = (26, "i2", "int2", 2)
    float6e2m3 = (27, "f6e2m3", "float6_e2m3fn", 6)
    float6e3m2 = (28, "f6e3m2", "float6_e3m2fn", 6)

    @property
    def onnx_code(self) -> int:
        return self.value[0]

    @property
    def short(self) -> str:
        return self.value[1]

    @property
    def numpy(self) -> np.dtype:
        dtype = self.value[2]
        return _ml_dtype(dtype) if isinstance(dtype, str) else dtype

    @property
    def bits(self) -> int:
        return self.value[3]

    @property
    def is_float(self) -> bool:
        return self.short.startswith(("f", "bf"))

    @property
    def is_integer(self) -> bool:
        return self.short.startswith(("i", "u"))

    def __repr__(self) -> str:
        return f"DType.{self.name}"

    def __str__(self) -> str:
        return self.short

    @classmethod
    def from_onnx(cls, code: int) -> DType:
        try:
            return _BY_CODE[code]
        except KeyError:
            raise ValueError(f"unknown ONNX element type {code}") from None

    @classmethod
    def from_numpy(cls, dtype) -> DType:
        dtype = np.dtype(dtype)
        if dtype.kind in "OSU":
            return cls.string
        found = _BY_NUMPY.get(dtype)
        if found is None and dtype.kind == "V":  # ml_dtypes' types are kind V
            _BY_NUMPY.update((d.numpy, d) for d in DType if isinstance(d.value[2], str))
            found = _BY_NUMPY.get(dtype)
        if found is None:
            raise ValueError(f"numpy dtype {dtype} has no ember DType")
        return found

    @classmethod
    def from_short(cls, short: str) -> DType:
        try:
            return _BY_SHORT[short]
        except KeyError:
            raise ValueError(f"unknown dtype name {short!r}") from None


_BY_CODE = {d.onnx_code: d for d in DType}
_BY_SHORT = {d.short: d for d in DType}
# ml_dtypes' types join on the first lookup of a kind-V dtype (they can only exist once
# ml_dtypes is imported)
_BY_NUMPY = {d.numpy: d for d in DType if d is not DType.string and not isinstance(d.value[2], str)}
_ML_DTYPES: dict[str, np.dtype] = {}


def _ml_dtype(name: str) -> np.dtype:
    dtype = _ML_DTYPES.get(name)
    if dtype is None:
        import ml_dtypes

        dtype = _ML_DTYPES[name] = np.dtype(getattr(ml_dtypes, name))
    return dtype
