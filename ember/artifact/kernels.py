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
        triton = library is not None and library.endswith(".py")  # (a Triton module: its source is the library)
        entry = {"source": f"kernels/{index}.{'py' if triton else 'cpp'}", "binary": None}
        self.writer.add_bytes(entry["source"], source.encode())
        if not triton and library is not None and Path(library).is_file():
            entry["binary"] = f"kernels/{index}.so"
            self.writer.add_file(entry["binary"], library, compress=True)
        self.entries.append(entry)
        return index


def _manifest_key(name: str) -> tuple[str, str]:
    """A hand-written kernel's (kernel, dtype) in the manifest: paged attention is one
    kernel of three element types, the others float32."""
    kernel, _, dtype = name.partition("-")
    return kernel, dtype or "float32"


def add_kernel_libraries(writer: ArchiveWriter, program, target: str = "cpu") -> list[dict]:
    """Ship the hand-written kernel libraries `program` may call (codegen/handwritten.py:
    the tiled GEMM, the small convolution, the LSTM and DynamicQuantizeLSTM step loops, the
    paged-attention kernel of each element type it needs), source and, where it built
    here, binary: a load on this machine then builds nothing. Returns their manifest
    entries. A cuda program's (Triton modules, compiled by Triton where they run) are
    written again from ember's own source when it loads: none shipped."""
    from ..codegen import handwritten

    if target != "cpu":
        return []
    entries = []
    for name in handwritten.used(program):
        kernel, dtype = _manifest_key(name)
        entry = {"kernel": kernel, "dtype": dtype, "source": f"kernels/{name}.cpp", "binary": None}
        writer.add_bytes(entry["source"], handwritten.KERNELS[name].source().encode())
        built = program.libraries[name] if name in program.libraries else handwritten.build(name)
        if built is not None and Path(built).is_file():
            entry["binary"] = f"kernels/{name}.so"
            writer.add_file(entry["binary"], built, compress=True)
        entries.append(entry)
    return entries


def kernel_libraries(reader: ArchiveReader, entries: list, built_for: str | None, program,
                     target: str = "cpu") -> None:
    """Name in `program` (and its control-flow bodies) the libraries of the hand-written
    kernels it may call: the shipped ones where they were built for this machine from the
    very source this ember has (copied into the kernel cache like the program's own),
    otherwise each built from ember's own source (another ember's kernel may take other
    arguments; without a C++ compiler, none: the externs take their other paths)."""
    from ..codegen import handwritten

    renderer = "cpp" if target == "cpu" else "triton"
    known = {_manifest_key(name) for name in handwritten.KERNELS}
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and (e.get("kernel"), e.get("dtype")) in known
            and isinstance(e.get("source"), str) and (e.get("binary") is None or isinstance(e["binary"], str))
            for e in entries):
        raise ArtifactError(f"{reader.path}: the manifest's list of kernel libraries is malformed")
    shipped = {}
    if built_for == cpu._machine_key():
        for e in entries:
            name = e["kernel"] if e["kernel"] != "paged_attention" else f"paged_attention-{e['dtype']}"
            if e["binary"] and reader.read(e["source"]) == handwritten.KERNELS[name].source().encode():
                shipped[name] = str(_cached(reader, e["binary"]))
    libraries = {name: shipped[name] if name in shipped else handwritten.build(name)
                 for name in handwritten.used(program, renderer)}

    def name_in(p) -> None:
        p.libraries = {name: libraries[name] for name in handwritten.used(p, renderer)}
        for step in p.steps:
            if step.kind == "extern" and step.name == "control":
                for body in step.params.get("programs", ()):
                    name_in(body)

    name_in(program)


def resolve_libraries(reader: ArchiveReader, entries: list, built_for: str | None,
                      target: str = "cpu") -> list[tuple[str, str | None]] | None:
    """(source, path of a loadable library) for each shipped library; None when they
    are for another machine and this one has no C++ compiler to rebuild them. A cuda
    program's are Triton modules: written into the kernel cache from their source."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("source"), str)
                                                and (e.get("binary") is None or isinstance(e["binary"], str))
                                                for e in entries):
        raise ArtifactError(f"{reader.path}: the manifest's list of kernel libraries is malformed")
    sources = [reader.read(e["source"]).decode("utf-8", "strict") for e in entries]
    if not entries:
        return []
    if target != "cpu":
        from ..codegen import triton

        return [(source, str(triton.write(source))) for source in sources]
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
