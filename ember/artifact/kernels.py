"""The kernel libraries an artifact ships: each program's C++ source and the shared
library built from it, with the machine key (compiler, flags, CPU features) it was
built for.

On load, a library built for this machine key is copied into the kernel cache under
the sha256 of its own bytes (`<cache>/kernels/artifact-<sha256>.so`: a name only those
bytes can have, apart from the libraries ember builds from source, so an artifact never
stands in for one of those) and loaded from there. A library built for another machine
is rebuilt from the shipped source, once per load, with a warning that says so.
"""

from __future__ import annotations

import hashlib
import os
import platform
import tempfile
import warnings
from pathlib import Path

from ..codegen import cpu
from ..errors import ArtifactError, ExecutionError
from .archive import ArchiveReader, ArchiveWriter


def machine() -> dict:
    """What a built library depends on, as the manifest records it."""
    return {"key": cpu._machine_key(), "arch": platform.machine(), "system": platform.system(),
            "compiler": cpu.compiler(), "flags": list(cpu.FLAGS)}


class LibraryWriter:
    """Collects the (source, built library) of every program being saved."""

    def __init__(self, writer: ArchiveWriter):
        self.writer = writer
        self.entries: list[dict] = []

    def add(self, source: str, library: str | None) -> int:
        index = len(self.entries)
        entry = {"source": f"kernels/{index}.cpp", "binary": None}
        self.writer.add_bytes(entry["source"], source.encode())
        if library is not None and Path(library).is_file():
            entry["binary"] = f"kernels/{index}.so"
            self.writer.add_file(entry["binary"], library, compress=True)
        self.entries.append(entry)
        return index


def _handwritten() -> dict:
    """Manifest name -> module of each single-source hand-written kernel (codegen/
    handwritten.py: its `KERNEL` and `used_by`)."""
    from ..codegen import gemm, lstm, quantized_lstm, small_conv

    return {"quantized_lstm": quantized_lstm, "lstm": lstm, "small_conv": small_conv, "gemm": gemm}


def add_kernel_libraries(writer: ArchiveWriter, program) -> list[dict]:
    """Ship the hand-written kernel libraries `program` runs (the paged-attention kernel
    of each element type it needs, the LSTM and DynamicQuantizeLSTM step loops, the small
    convolution, the tiled GEMM), source and, where
    it built here, binary: a load on this machine then builds nothing. Returns their
    manifest entries."""
    from ..codegen import paged_attention

    kernels = [("paged_attention", dtype, f"paged_attention-{dtype}", lambda d=dtype: paged_attention.source(d),
                lambda d=dtype: paged_attention.library(d)) for dtype in paged_attention.dtypes_used(program)]
    for name, module in _handwritten().items():
        if module.used_by(program):
            kernels.append((name, "float32", name, module.KERNEL.source, module.KERNEL.library))
    entries = []
    for kernel, dtype, stem, source, library in kernels:
        entry = {"kernel": kernel, "dtype": dtype, "source": f"kernels/{stem}.cpp", "binary": None}
        writer.add_bytes(entry["source"], source().encode())
        try:
            built = library()
        except ExecutionError:  # it does not build here: the source alone (the run falls back)
            built = None
        if built is not None and built.is_file():
            entry["binary"] = f"kernels/{stem}.so"
            writer.add_file(entry["binary"], built, compress=True)
        entries.append(entry)
    return entries


def install_kernel_libraries(reader: ArchiveReader, entries: list, built_for: str | None) -> None:
    """Use the shipped hand-written kernel libraries where they were built for this
    machine from the very source this ember has (copied into the kernel cache like the
    program's own); otherwise each is built from ember's own source on first use, as
    without an artifact (another ember's kernel may take other arguments)."""
    from ..codegen import paged_attention

    handwritten = {name: module.KERNEL for name, module in _handwritten().items()}
    known = {("paged_attention", dtype) for dtype in paged_attention.DTYPES} | {
        (name, "float32") for name in handwritten}
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and (e.get("kernel"), e.get("dtype")) in known
            and isinstance(e.get("source"), str) and (e.get("binary") is None or isinstance(e["binary"], str))
            for e in entries):
        raise ArtifactError(f"{reader.path}: the manifest's list of kernel libraries is malformed")
    if built_for != cpu._machine_key():
        return
    for e in entries:
        if not e["binary"]:
            continue
        if e["kernel"] in handwritten:
            kernel = handwritten[e["kernel"]]
            if reader.read(e["source"]) == kernel.source().encode():
                kernel.install(str(_cached(reader, e["binary"])))
        elif reader.read(e["source"]) == paged_attention.source(e["dtype"]).encode():
            paged_attention.install(e["dtype"], str(_cached(reader, e["binary"])))


def resolve_libraries(reader: ArchiveReader, entries: list, built_for: str | None) -> list[tuple[str, str | None]] | None:
    """(source, path of a loadable library) for each shipped library; None when they
    are for another machine and this one has no C++ compiler to rebuild them."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("source"), str)
                                                and (e.get("binary") is None or isinstance(e["binary"], str))
                                                for e in entries):
        raise ArtifactError(f"{reader.path}: the manifest's list of kernel libraries is malformed")
    sources = [reader.read(e["source"]).decode("utf-8", "strict") for e in entries]
    if not entries:
        return []
    here = cpu._machine_key()
    if built_for == here and all(e["binary"] for e in entries):
        return [(source, str(_cached(reader, e["binary"]))) for source, e in zip(sources, entries)]
    if cpu.compiler() is None:
        warnings.warn(f"ember: {reader.path} was built for another machine and there is no C++ compiler here "
                      "to rebuild its kernels: every node runs its reference implementation", stacklevel=3)
        return None
    warnings.warn(f"ember: {reader.path} was built for another machine (other CPU features or compiler): "
                  f"rebuilding its {len(entries)} kernel librar{'y' if len(entries) == 1 else 'ies'} from the "
                  "shipped source", stacklevel=3)
    try:
        return [(source, str(cpu.build(source))) for source in sources]
    except ExecutionError as e:
        raise ArtifactError(f"{reader.path}: its kernels do not build here: {e}") from None


def _cached(reader: ArchiveReader, member: str) -> Path:
    data = reader.read(member)
    digest = hashlib.sha256(data).hexdigest()
    name = f"artifact-{digest[:32]}.so"
    target = cpu._cache_dir() / name
    try:
        if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == digest:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError:  # no kernel cache to write to (a read-only home): a folder of this process's own
        target = Path(tempfile.mkdtemp(prefix="ember-kernels-")) / name
    tmp = target.with_name(f"{name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, target)
    return target
