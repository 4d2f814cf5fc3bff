"""An artifact's tensors: one safetensors file holding every weight of the graph and the
program once, each under the digest the printed IR names it by (`resource<digest>`).

safetensors has no bfloat16, float8, int4 or string element types in numpy: such a
tensor is stored as its raw bytes (uint8) and the metadata entry `ember.raw` names its
ember dtype and shape; a Fortran-order matrix (a weight codegen stores transposed) is
stored as its transpose and named in `ember.raw`'s `$transposed` list, so it loads in
the same layout.
Reading parses the header itself (strictly: known dtypes, offsets
in bounds and in order) and views each tensor in place in one writable buffer, so a
large model is read once and never copied.
"""

from __future__ import annotations

import json
import math
import struct

import numpy as np

from ..errors import ArtifactError
from ..ir.dtypes import DType
from ..ir.printer import digest

RAW = "ember.raw"
TRANSPOSED = "$transposed"  # in RAW's object (one metadata entry: safetensors writes several in any order)
MAX_HEADER = 100 << 20  # bytes of JSON header a safetensors reader accepts at most

# safetensors' element types numpy has
_SAFETENSORS = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "U64": np.uint64,
                "I32": np.int32, "U32": np.uint32, "I16": np.int16, "U16": np.uint16, "I8": np.int8,
                "U8": np.uint8, "BOOL": np.bool_, "C64": np.complex64}
_NATIVE = {np.dtype(t) for t in _SAFETENSORS.values()}


class TensorStore:
    """The tensors being saved, by digest (the same array, or equal ones, stored once)."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self._by_id: dict[int, tuple[str, np.ndarray]] = {}  # the array kept: its id stays unique

    def add(self, array: np.ndarray, key: str | None = None) -> str:
        """`array`'s key (its digest; `key` when the caller has computed it)."""
        known = self._by_id.get(id(array))
        if known is not None:
            return known[0]
        key = key or digest(array)
        self.arrays.setdefault(key, array)
        self._by_id[id(array)] = (key, array)
        return key

    def save(self, path) -> None:
        from safetensors.numpy import save_file

        plain, raw, transposed = {}, {}, []
        for key, array in self.arrays.items():
            if array.ndim == 2 and array.flags.f_contiguous and not array.flags.c_contiguous:
                array = array.T  # [N, K] in C order: read back as its transpose, a view
                transposed.append(key)
            array = np.ascontiguousarray(array)
            if array.dtype in _NATIVE:
                plain[key] = array
                continue
            dtype = DType.from_numpy(array.dtype)
            raw[key] = [dtype.name, list(array.shape)]
            if dtype is DType.string:
                items = [x.decode("utf-8", "surrogateescape") if isinstance(x, bytes) else str(x)
                         for x in array.reshape(-1).tolist()]
                plain[key] = np.frombuffer(json.dumps(items).encode(), np.uint8)
            else:
                plain[key] = array.reshape(-1).view(np.uint8)
        if transposed:
            raw[TRANSPOSED] = sorted(transposed)  # not a digest: no tensor has this name
        save_file(plain, str(path), metadata={RAW: json.dumps(raw, sort_keys=True)})


def read_tensors(data: np.ndarray, member: str) -> dict[str, np.ndarray]:
    """The tensors of the safetensors file in `data` (uint8), viewing `data` (no copy)."""
    def bad(why: str) -> ArtifactError:
        return ArtifactError(f"member {member!r} is not a valid safetensors file: {why}")

    if len(data) < 8:
        raise bad("shorter than its header")
    (n,) = struct.unpack("<Q", bytes(data[:8]))
    if n > min(MAX_HEADER, len(data) - 8):
        raise bad(f"a header of {n} bytes")
    try:
        header = json.loads(bytes(data[8:8 + n]))
    except (ValueError, UnicodeDecodeError) as e:
        raise bad(f"its header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    try:
        raw = json.loads(metadata.get(RAW, "{}"))
        _require(isinstance(raw, dict))
    except (ValueError, AttributeError):
        raise bad(f"metadata {RAW!r} is not a JSON object") from None
    transposed = raw.pop(TRANSPOSED, [])
    if not (isinstance(transposed, list) and all(isinstance(k, str) for k in transposed)):
        raise bad(f"metadata {RAW!r} has a {TRANSPOSED!r} entry that is not a list of names")
    transposed = set(transposed)
    if transposed - set(header):
        raise bad(f"metadata {RAW!r} lists {sorted(transposed - set(header))[0]!r} as transposed, not a tensor of it")
    body = memoryview(data)[8 + n:]
    spans = []
    tensors = {}
    for key, info in header.items():
        try:
            dtype = np.dtype(_SAFETENSORS[info["dtype"]])
            shape = tuple(info["shape"])
            start, end = info["data_offsets"]
            _require(all(type(d) is int and d >= 0 for d in (*shape, start, end)) and start <= end <= len(body))
            _require(end - start == math.prod(shape) * dtype.itemsize)
        except (KeyError, TypeError, ValueError):
            raise bad(f"tensor {key!r} has a bad entry {str(info)[:200]}") from None
        spans.append((start, end, key))
        array = np.frombuffer(body[start:end], dtype=dtype).reshape(shape)
        tensors[key] = _from_raw(array, raw[key], key, bad) if key in raw else array
        if key in transposed:
            if tensors[key].ndim != 2:
                raise bad(f"tensor {key!r} is marked transposed but is not a matrix")
            tensors[key] = tensors[key].T
    position = 0
    for start, end, key in sorted(spans):
        if start != position:
            raise bad(f"tensor {key!r} overlaps another or leaves a gap")
        position = end
    if position != len(body):
        raise bad("data past its last tensor")
    return tensors


def _from_raw(array: np.ndarray, entry, key: str, bad) -> np.ndarray:
    try:
        name, shape = entry
        dtype = DType[name]
        shape = tuple(shape)
        _require(all(type(d) is int and d >= 0 for d in shape) and array.dtype == np.uint8)
        if dtype is DType.string:
            items = json.loads(array.tobytes())
            _require(isinstance(items, list) and all(isinstance(x, str) for x in items))
            return np.array(items, dtype=object).reshape(shape)
        return array.view(dtype.numpy).reshape(shape)
    except (KeyError, TypeError, ValueError):
        raise bad(f"tensor {key!r} has a bad {RAW} entry {str(entry)[:200]}") from None


def _require(ok: bool) -> None:
    if not ok:
        raise ValueError
