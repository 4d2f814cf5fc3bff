"""Weights by name, read lazily from memory-mapped files.

`Weights` is what a graph builder takes tensors from: `take(name, shape)` returns the
tensor in the chosen dtype (a view of the mapped file when no conversion is needed), or
raises `ModelError` naming a tensor that is missing or has the wrong shape. A tqdm bar
counts the tensors taken.

safetensors files are read here directly (an 8-byte header length, a JSON header of
dtype, shape and byte range per tensor, then the data), so a tensor is a numpy view of
the mapped file: nothing is read before it is used, and nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path

import ml_dtypes
import numpy as np
from tqdm.auto import tqdm

from ...errors import ModelError

SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
DTYPES = {"float32": np.float32, "float16": np.float16, "bfloat16": ml_dtypes.bfloat16}


def numpy_dtype(dtype) -> np.dtype:
    """The numpy dtype of a `dtype` option: "float32", "float16", "bfloat16" (or such a dtype)."""
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ModelError(f"dtype {dtype!r} is not supported; choose one of {', '.join(DTYPES)}")
        return np.dtype(DTYPES[dtype])
    d = np.dtype(dtype)
    if d not in [np.dtype(t) for t in DTYPES.values()]:
        raise ModelError(f"dtype {d} is not supported; choose one of {', '.join(DTYPES)}")
    return d


class Weights:
    """Named tensors of one model; subclasses say where they come from."""

    def __init__(self, dtype="float32", progress: bool = True):
        self.dtype = numpy_dtype(dtype)
        self.progress = progress
        self._bar = None
        self.keep_quantized = False  # a source with quantized blocks hands them over (`quantized`)

    # -- what a source provides -------------------------------------------------------
    def names(self) -> list[str]:
        raise NotImplementedError

    def _raw(self, name: str) -> np.ndarray:
        """The stored tensor (any dtype), in the Hugging Face layout."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def _blocks(self, name: str):
        """(BlockFormat, its blocks [N, row_bytes] in the Hugging Face row order) where the
        source stores `name` in a block-quantized format ember keeps, else None."""
        return None

    # -- what a builder uses ----------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in set(self.names())

    def start(self, total: int) -> None:
        """Show a progress bar over the `total` tensors about to be taken."""
        if self.progress:
            self._bar = tqdm(total=total, desc=f"loading {self.describe()}", unit="tensor", leave=False)

    def finish(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def take(self, name: str, shape: Iterable[int] | None = None) -> np.ndarray:
        if name not in self:
            raise ModelError(f"{self.describe()}: tensor {name!r} is missing")
        array = self._raw(name)
        if shape is not None and tuple(array.shape) != tuple(shape):
            raise ModelError(f"{self.describe()}: tensor {name!r} has shape {list(array.shape)}, "
                             f"the config implies {list(shape)}")
        if array.dtype != self.dtype:
            array = array.astype(self.dtype)
        if self._bar is not None:
            self._bar.update(1)
        return array


    def quantized(self, name: str, shape: tuple[int, int], count: bool = True):
        """Where `keep_quantized` and the source stores the [N, K] weight `name` in a
        block-quantized format ember keeps (a GGUF file's Q4_1, Q8_0, ...): (its BlockFormat,
        its blocks [N, row_bytes], uint8, unconverted); else None (take it with `take`).
        `count`: on the progress bar (not a tied head's second use of the embedding)."""
        if not self.keep_quantized or self.dtype != np.float32 or name not in self:
            return None
        found = self._blocks(name)
        if found is None:
            return None
        fmt, blocks = found
        if blocks.shape != (shape[0], fmt.row_bytes(shape[1])):
            raise ModelError(f"{self.describe()}: tensor {name!r} holds {list(blocks.shape)} bytes of {fmt.name} "
                             f"blocks, the config implies a [{shape[0]}, {shape[1]}] weight")
        if count and self._bar is not None:
            self._bar.update(1)
        return fmt, blocks


class SafetensorsWeights(Weights):
    """A folder's model.safetensors, or the shards its model.safetensors.index.json names."""

    def __init__(self, folder: str | os.PathLike, dtype="float32", progress: bool = True):
        super().__init__(dtype, progress)
        self.folder = Path(folder)
        index = self.folder / "model.safetensors.index.json"
        single = self.folder / "model.safetensors"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise ModelError(f"{index}: not a safetensors index ({type(e).__name__}: {e})") from None
            files = sorted(set(weight_map.values()))
        elif single.is_file():
            weight_map, files = None, ["model.safetensors"]
        else:
            raise ModelError(f"{self.folder}: no model.safetensors or model.safetensors.index.json")
        self._files: dict[str, SafetensorsFile] = {}
        for file in files:
            path = (self.folder / file).resolve()
            if not path.is_relative_to(self.folder.resolve()):
                raise ModelError(f"{index}: shard {file!r} is outside the model's folder")
            if not path.is_file():
                names = [n for n, f in weight_map.items() if f == file]
                raise ModelError(f"{self.folder}: shard {file!r} is missing (it holds {len(names)} tensors, "
                                 f"e.g. {names[0]!r})")
            self._files[file] = SafetensorsFile(path)
        self._where = {}
        for file, st in self._files.items():
            for name in st.header:
                self._where[name] = file
        if weight_map is not None:
            for name, file in weight_map.items():
                if self._where.get(name) != file:
                    raise ModelError(f"{self.folder}: the index puts tensor {name!r} in {file!r}, "
                                     "which does not hold it")

    def names(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def _raw(self, name: str) -> np.ndarray:
        return self._files[self._where[name]].tensor(name)

    def describe(self) -> str:
        return str(self.folder)


class SafetensorsFile:
    def __init__(self, path: Path):
        self.path = path
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelError(f"{path}: not a safetensors file (too short)")
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, 100 << 20):
                raise ModelError(f"{path}: not a safetensors file (header of {length} bytes)")
            try:
                header = json.loads(f.read(length))
            except ValueError as e:
                raise ModelError(f"{path}: not a safetensors file (bad header: {e})") from None
        header.pop("__metadata__", None)
        self.data_start = 8 + length
        self.header = header
        end = max((info["data_offsets"][1] for info in header.values()), default=0)
        if self.data_start + end > size:
            raise ModelError(f"{path}: truncated: its header describes {self.data_start + end} bytes, "
                             f"the file has {size}")
        self._map = np.memmap(path, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)

    def tensor(self, name: str) -> np.ndarray:
        info = self.header[name]
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise ModelError(f"{self.path}: tensor {name!r} has dtype {info['dtype']}, which ember does not read")
        begin, end = info["data_offsets"]
        shape = tuple(info["shape"])
        raw = self._map[self.data_start + begin:self.data_start + end]
        if raw.size != np.dtype(dtype).itemsize * int(np.prod(shape)):
            raise ModelError(f"{self.path}: tensor {name!r}: {raw.size} bytes for shape {list(shape)} "
                             f"of {info['dtype']}")
        return raw.view(dtype).reshape(shape)
