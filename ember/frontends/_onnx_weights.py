"""Reading an ONNX model without holding its weights twice.

Parsing a whole ModelProto keeps every weight inside protobuf's arena, and onnx's
version converter and shape inference each serialize and copy the proto again, weights
included: a model of N bytes of weights used to peak near 7 N. Instead the frontend
reads the file once, field by field (the protobuf wire format), and copies the raw data
of every large top-level initializer straight into a numpy buffer of its own; what is
left, the *light* model, keeps those initializers' names, types and dims but no data,
and goes through conversion and inference cheaply. The importer then takes each such
initializer's data from its buffer (`WeightData.array`, a view, no copy).

Only top-level initializers with `raw_data` of at least `MIN_BYTES` are taken out:
small tensors (shapes, axes, scalars) stay inline, where the version converter and
shape inference may read them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import onnx
from onnx import helper, numpy_helper

MIN_BYTES = 1024

# field numbers in onnx.proto
_MODEL_GRAPH = 7
_GRAPH_INITIALIZER = 5
_TENSOR_RAW_DATA = 9


class CorruptModel(ValueError):
    """The bytes are not a well-formed protobuf message (cut short, or not one at all)."""


@dataclass
class WeightData:
    """A tensor's little-endian raw bytes, read apart from its TensorProto."""

    buffer: np.ndarray  # uint8

    def array(self, tensor: onnx.TensorProto) -> np.ndarray:
        """The data of `tensor` (the light TensorProto: type and dims, no data), read-only."""
        dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
        dims = tuple(tensor.dims)
        if (sys.byteorder == "little" and not dtype.hasobject
                and dtype.itemsize * int(np.prod(dims)) == self.buffer.size):
            array = self.buffer.view(dtype).reshape(dims)
        else:  # packed (int4, float4, ...), strings or big-endian: as onnx reads them
            full = onnx.TensorProto()
            full.CopyFrom(tensor)
            full.raw_data = self.buffer.tobytes()
            array = numpy_helper.to_array(full)
        array.flags.writeable = False  # shared with the Program, like every constant
        return array


def split_weights(f: BinaryIO) -> tuple[bytes, list[tuple[int, WeightData]]]:
    """Read a serialized ModelProto from `f` into the light model's bytes and the taken
    out weights, as (index among the main graph's initializers, data)."""
    f.seek(0, 2)
    size = f.tell()
    f.seek(0)
    reader = _Reader(f)
    light = reader.message(size, "model")
    return light, reader.weights


class _Reader:
    def __init__(self, f: BinaryIO):
        self.f = f
        self.pos = 0
        self.num_initializers = 0
        self.weights: list[tuple[int, WeightData]] = []

    def message(self, length: int, kind: str) -> bytes:
        """The message's bytes, with large initializer data taken out (`kind` says which
        message this is: "model", "graph", "tensor" or anything else, copied as it is)."""
        end = self.pos + length
        out = bytearray()
        while self.pos < end:
            tag = self.varint()
            field, wire = tag >> 3, tag & 7
            if wire == 0:
                out += _varint(tag) + _varint(self.varint())
            elif wire in (1, 5):
                out += _varint(tag) + self.read(8 if wire == 1 else 4)
            elif wire == 2:
                n = self.varint()
                if self.pos + n > end:
                    raise CorruptModel("a field runs past the end of its message")
                if kind == "model" and field == _MODEL_GRAPH:
                    body = self.message(n, "graph")
                elif kind == "graph" and field == _GRAPH_INITIALIZER:
                    body = self.message(n, "tensor")
                    self.num_initializers += 1
                elif kind == "tensor" and field == _TENSOR_RAW_DATA and n >= MIN_BYTES:
                    self.weights.append((self.num_initializers, WeightData(self.read_array(n))))
                    continue
                else:
                    body = self.read(n)
                out += _varint(tag) + _varint(len(body)) + body
            else:
                raise CorruptModel(f"unexpected wire type {wire}")
        if self.pos != end:
            raise CorruptModel("a field runs past the end of its message")
        return bytes(out)

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise CorruptModel("the data ends early")
        self.pos += n
        return data

    def read_array(self, n: int) -> np.ndarray:
        buffer = np.empty(n, np.uint8)
        if self.f.readinto(memoryview(buffer)) != n:
            raise CorruptModel("the data ends early")
        self.pos += n
        return buffer

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.read(1)[0]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                return value
            shift += 7
            if shift > 63:
                raise CorruptModel("a varint is longer than 10 bytes")


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
