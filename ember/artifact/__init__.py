"""Ahead-of-time artifacts: a compiled model in one file, run again without compiling.

    compiled = ember.compile("model.onnx")
    compiled.save("model.ember")
    model = ember.load("model.ember")      # no frontend, no passes, no C++ build

The file is a zip (archive.py) of:

    manifest.json          format and ember version, target, signature, options, machine key,
                           the program's summary, LLM facts, and every member's hash and size
    graph.ir               the optimized graph in ember's printed IR (large tensors by digest)
    program.json           the Program (codec.py): buffers, steps, size expressions as trees
    weights.safetensors    every tensor of both, once, by digest (tensors.py)
    kernels/<i>.cpp, .so   each program's C++ source and the library built from it (kernels.py)
    tokenizer/*            an LLM's tokenizer files, chat template included

Loading checks every member against the manifest before using it, parses JSON and the
printed IR (never pickle, never eval), and runs no code but ember's own: its ops'
reference implementations, its extern kernels, and the shipped kernel library, which
is loaded only on a machine with the key it was built for (else rebuilt from the shipped
source). A kernel library is native code: load artifacts from sources you trust, or pin
one with `ember.load(path, digest=...)` (the digest `ember inspect` shows).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import tempfile
import time
from pathlib import Path
from typing import Any

from ..errors import ArtifactError
from . import codec
from .archive import FORMAT_VERSION, ArchiveReader, ArchiveWriter
from .kernels import LibraryWriter, add_kernel_libraries, kernel_libraries, machine, resolve_libraries
from .tensors import TensorStore, read_tensors

__all__ = ["save", "load", "inspect", "is_artifact", "FORMAT_VERSION"]

GRAPH, PROGRAM, WEIGHTS = "graph.ir", "program.json", "weights.safetensors"
_TOKENIZER_FILE = re.compile(r"^tokenizer/[A-Za-z0-9_][A-Za-z0-9_.-]*\.(json|jinja|txt|model)$")


def is_artifact(path: str | os.PathLike) -> bool:
    """Whether `path` names an artifact file (by its `.ember` suffix or zip signature)."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix == ".ember":
        return True
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


# -- saving -------------------------------------------------------------------------------
def save(compiled, path: str | os.PathLike) -> Path:
    """Write `compiled` (a CompiledModel) to `path` as an artifact; returns the path."""
    from .. import __version__

    path = Path(path)
    if path.is_dir():
        raise ArtifactError(f"{path} is a folder: give the artifact's file name (model.ember)")
    writer = ArchiveWriter(path)
    try:
        store = TensorStore()
        libraries = LibraryWriter(writer)
        writer.add_bytes(GRAPH, codec.graph_text(compiled.graph, store.add).encode())
        program = compiled.program
        if program is not None:
            encoded = codec.encode_program(program, codec.Saving(store.add, libraries.add, compiled.graph))
            writer.add_bytes(PROGRAM, json.dumps(encoded, allow_nan=False, separators=(",", ":")).encode())
        with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
            store.save(Path(tmp) / WEIGHTS)
            writer.add_file(WEIGHTS, Path(tmp) / WEIGHTS, algorithm="blake3", aligned=True)
            if compiled.llm is not None:
                _save_tokenizer(writer, compiled.llm.tokenizer, Path(tmp) / "tokenizer")
        stats = compiled.stats
        manifest = {
            "ember_version": __version__,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "kind": "llm" if compiled.llm is not None else "model",
            "target": compiled.target,
            "signature": {"inputs": [_info(i) for i in compiled.inputs], "outputs": [_info(o) for o in compiled.outputs]},
            "options": _jsonable(compiled.options, "options"),
            "metadata": _jsonable(compiled.metadata, "metadata"),  # the ONNX model's (get_modelmeta)
            "machine": machine(),
            "software": _software(),
            "program": None if program is None else _program_summary(program),
            "libraries": libraries.entries,
            "kernel_libraries": [] if program is None else add_kernel_libraries(writer, program, compiled.target),
            "stats": {"num_nodes": stats.num_nodes, "op_histogram": stats.op_histogram,
                      "passes": [{"name": p.name, "seconds": p.seconds, "nodes_before": p.nodes_before,
                                  "nodes_after": p.nodes_after, "modified": p.modified} for p in stats.passes],
                      "compile_seconds": {k: v for k, v in stats.timings.items()}},
        }
        if compiled.llm is not None:
            info = compiled.llm
            manifest["llm"] = {"vocab_size": info.vocab_size, "eos_token_ids": list(info.eos_token_ids),
                               "max_model_len": info.max_model_len, "block_size": info.block_size,
                               "source": info.source}
        writer.close(manifest)
    except BaseException:
        writer.abort()
        raise
    return path


def _save_tokenizer(writer: ArchiveWriter, tokenizer, folder: Path) -> None:
    if tokenizer is None:
        raise ArtifactError("this LLM has no tokenizer to save")
    tokenizer.save_pretrained(folder)
    for file in sorted(folder.iterdir()):
        name = f"tokenizer/{file.name}"
        if not file.is_file() or not _TOKENIZER_FILE.match(name):
            raise ArtifactError(f"the tokenizer saved {file.name!r}, not a file an artifact may hold "
                                "(json, jinja, txt or a sentencepiece model)")
        writer.add_file(name, file, compress=True)


def _info(info) -> dict:
    return {"name": info.name, "type": str(info.type) if info.type is not None else None}


def _jsonable(value: Any, what: str) -> Any:
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise ArtifactError(f"{what} cannot be saved: {e}") from None


def _software() -> dict:
    import numpy
    import torch

    return {"python": platform.python_version(), "numpy": numpy.__version__, "torch": torch.__version__}


def _program_summary(program) -> dict:
    externs: dict[str, int] = {}
    for step in program.steps:
        if step.kind == "extern":
            externs[step.name] = externs.get(step.name, 0) + 1
    return {"num_kernels": program.num_kernels, "generated_kernels": sum(len(s.kernels) for s in program.steps),
            "segments": sum(1 for s in program.steps if s.kind == "segment"), "externs": dict(sorted(externs.items())),
            "fused_nodes": program.fused_nodes, "fallbacks": list(program.fallbacks),
            "buffers": len(program.buffers), "constants": len(program.constants)}


# -- loading ------------------------------------------------------------------------------
def load(path: str | os.PathLike, *, intra_op_threads: int | None = None, profile: bool = False,
         digest: str | None = None, mmap: bool = True):
    """Read the artifact at `path` back into a CompiledModel, with no frontend, pass or
    (on the machine it was built for) C++ compiler run.

    intra_op_threads, profile: as for `ember.compile`.
    digest: the artifact's expected digest (`ember inspect` shows it); another is refused.
    mmap: map the weights from the file (copy-on-write: the page cache's pages, nothing
        copied; checked by their hash all the same) rather than read them into memory of
        the process's own. Replace a loaded artifact by writing a new file and renaming
        it over the old (as `save` does), never by rewriting it in place.

    Raises ArtifactError, naming what is wrong, for a file that is not an artifact or is
    truncated, corrupt, tampered with or from a newer ember."""
    from ..api import TARGETS, CompiledModel, LLMInfo, check_target
    from ..passes import PassStats

    start = time.perf_counter()
    with ArchiveReader(path) as reader:
        if digest is not None and reader.digest != digest:
            raise ArtifactError(f"{reader.path} has digest {reader.digest}, not the {digest} asked for")
        m = _checked_manifest(reader)
        target = m["target"]
        if target not in TARGETS:
            raise ArtifactError(f"{reader.path} was compiled for target {target!r}, which this ember cannot run "
                                f"(it runs {', '.join(TARGETS)})")
        check_target(target)  # (a cuda artifact where there is no GPU: UnsupportedError, as for a compile)
        try:  # the weights are hashed meanwhile (nothing below reads them) and checked before any use
            tensors = read_tensors(reader.read_buffer(WEIGHTS, check_later=True, mapped=mmap), WEIGHTS)
            graph_text = _text(reader, GRAPH)
            signature, where = reader.manifest.get("signature"), reader.path

            def parse_graph():
                graph = codec.parse_graph_checked(graph_text, tensors, GRAPH, check_ops=False)
                _check_signature(signature, where, graph)
                return graph

            program = graph = None
            if reader.has(PROGRAM):
                libraries = resolve_libraries(reader, m["libraries"], m["machine"].get("key"), target)
                if libraries is not None:
                    raw = reader.read(PROGRAM)
                    try:
                        encoded = json.loads(raw)
                    except ValueError as e:
                        raise ArtifactError(f"{reader.path}: {PROGRAM} is not JSON ({e})") from None
                    if b'"$node"' in raw or b'"$value"' in raw:  # steps that point into the graph
                        graph = parse_graph()
                    program = codec.decode_program(encoded, codec.Loading(tensors, libraries, graph))
                    kernel_libraries(reader, m["kernel_libraries"], m["machine"].get("key"), program, target)
            if program is None:  # the reference interpreter runs every node (else: codec.check_ops_known)
                graph = parse_graph()
                codec.check_ops_known(graph.walk(), GRAPH)
            elif graph is None:
                graph = DeferredGraph.of(program, signature, m["stats"], parse_graph) or parse_graph()
            llm = _llm_info(reader, m, LLMInfo) if m["kind"] == "llm" else None
            passes = _passes(m, PassStats)
        except ArtifactError:
            reader.check_pending()  # damaged weights explain the error better
            raise
        reader.check_pending()
    timings = {"load": time.perf_counter() - start}
    compiled = CompiledModel(graph, target, timings, passes, codegen=False, intra_op_threads=intra_op_threads,
                             profile=profile, program=program, options=m["options"], metadata=m["metadata"])
    compiled.llm = llm
    compiled.artifact = {"path": str(reader.path), "digest": reader.digest, "format_version": m["format_version"],
                         "ember_version": m.get("ember_version")}
    return compiled


# the manifest's fields that loading reads: (type, default when absent)
_FIELDS = {"target": (str, None), "kind": (str, "model"), "options": (dict, {}), "signature": (dict, {}),
           "machine": (dict, {}), "libraries": (list, []), "kernel_libraries": (list, []), "stats": (dict, {}),
           "llm": (dict, None), "metadata": (dict, {})}


def _checked_manifest(reader: ArchiveReader) -> dict:
    m = dict(reader.manifest)
    for name, (kind, default) in _FIELDS.items():
        value = m.setdefault(name, default)
        if value is not None and not isinstance(value, kind) or value is None and name == "target":
            raise ArtifactError(f"{reader.path}: the manifest's {name!r} is malformed")
    if m["kind"] not in ("model", "llm") or (m["kind"] == "llm") != (m["llm"] is not None):
        raise ArtifactError(f"{reader.path}: the manifest's kind {m['kind']!r} is not one ember writes")
    return m


def _text(reader: ArchiveReader, name: str) -> str:
    try:
        return reader.read(name).decode("utf-8")
    except UnicodeDecodeError:
        raise ArtifactError(f"{reader.path}: member {name!r} is not UTF-8 text") from None


def _signature_names(signature: Any, key: str) -> list | None:
    """The names the manifest's signature lists under `key` ("inputs" or "outputs"), None
    in place of an entry that is not an object; None where there is no such list."""
    entries = (signature or {}).get(key)
    return [i.get("name") if isinstance(i, dict) else None for i in entries] if isinstance(entries, list) else None


def _check_signature(signature: Any, where: Path, graph) -> None:
    for key, values in (("inputs", graph.inputs), ("outputs", graph.outputs)):
        listed = _signature_names(signature, key)
        if listed != [v.name for v in values]:
            raise ArtifactError(f"{where}: the manifest's {key} {listed} are not the graph's "
                                f"{[v.name for v in values]}")


class DeferredGraph:
    """A loaded model's graph until someone asks for the graph itself (`CompiledModel.graph`
    parses it then): what loading and running need of it without parsing the printed IR,
    whose dims are sympy (importing it was ~0.4 s of the ~0.85 s that loading MiniLM and
    running it once took from process start). Its inputs and outputs are named by the
    manifest's signature and typed by the program's boundary buffers, whose dims are
    `ember.ir.sizes.Size`s; the op histogram is the manifest's."""

    @classmethod
    def of(cls, program, signature: Any, stats: dict, parse) -> DeferredGraph | None:
        """None where the program's boundary buffers cannot type the signature (the graph
        is parsed then)."""
        boundary = [program.buffers[b] for b in (*program.inputs, *program.outputs)]
        if not all(b.dtype is not None and b.kind in ("input", "output") for b in boundary):
            return None
        return cls(program, signature, stats, parse)

    def __init__(self, program, signature: Any, stats: dict, parse):
        from ..ir.graph import Value
        from ..ir.types import TensorType

        self.parse = parse
        values = {}
        for key, buffers in (("inputs", program.inputs), ("outputs", program.outputs)):
            listed = _signature_names(signature, key) or []
            if len(listed) != len(buffers) or not all(isinstance(n, str) for n in listed):
                raise ArtifactError(f"the manifest's {key} {str(listed)[:200]} do not match the program's "
                                    f"{len(buffers)} {key}")
            values[key] = [Value(n, TensorType(program.buffers[b].dtype, program.buffers[b].shape))
                           for n, b in zip(listed, buffers)]
        self.inputs, self.outputs = values["inputs"], values["outputs"]
        histogram = stats.get("op_histogram")
        if not isinstance(histogram, dict) or not all(isinstance(k, str) and type(v) is int for k, v in histogram.items()):
            raise ArtifactError("the manifest's op histogram is malformed")
        self._histogram = histogram

    def op_histogram(self) -> dict[str, int]:
        return dict(self._histogram)


def _passes(manifest: dict, PassStats) -> list:
    try:
        return [PassStats(str(p["name"]), float(p["seconds"]), int(p["nodes_before"]), int(p["nodes_after"]),
                          bool(p["modified"])) for p in manifest["stats"].get("passes") or []]
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ArtifactError("the manifest's pass statistics are malformed") from None


def _llm_info(reader: ArchiveReader, manifest: dict, LLMInfo):
    info = manifest.get("llm")
    try:
        facts = {"vocab_size": int(info["vocab_size"]), "eos_token_ids": [int(t) for t in info["eos_token_ids"]],
                 "max_model_len": int(info["max_model_len"]), "block_size": int(info["block_size"]),
                 "source": str(info.get("source", ""))}
    except (KeyError, TypeError, ValueError):
        raise ArtifactError(f"{reader.path}: the manifest's LLM facts are malformed") from None
    files = {}
    for name in reader.members:
        if name.startswith("tokenizer/"):
            if not _TOKENIZER_FILE.match(name):
                raise ArtifactError(f"{reader.path}: member {name!r} is not a tokenizer file an artifact may hold")
            files[name.removeprefix("tokenizer/")] = reader.read(name)
    if not files:
        raise ArtifactError(f"{reader.path}: an LLM artifact without its tokenizer")
    return LLMInfo(**facts, _tokenizer_files=files)


def tokenizer_from_files(files: dict[str, bytes]):
    """transformers' tokenizer from the files an artifact holds (local files only, no
    remote code)."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="ember-tokenizer-") as tmp:
        for name, data in files.items():
            (Path(tmp) / name).write_bytes(data)
        try:
            return AutoTokenizer.from_pretrained(tmp, local_files_only=True, trust_remote_code=False)
        except (OSError, ValueError, KeyError) as e:
            raise ArtifactError(f"the artifact's tokenizer cannot be loaded: {e}") from None


# -- inspecting ---------------------------------------------------------------------------
def inspect(path: str | os.PathLike, *, verify: bool = True) -> dict:
    """The manifest of the artifact at `path`, with its digest, file size, each member's
    stored size, and (`verify`) every member checked against its hash."""
    with ArchiveReader(path) as reader:
        facts = dict(reader.manifest)
        facts["path"] = str(reader.path)
        facts["digest"] = reader.digest
        facts["file_size"] = reader.path.stat().st_size
        facts["host_matches"] = (facts.get("machine") or {}).get("key") == machine()["key"]
        for name, entry in facts["members"].items():
            entry["stored_size"] = reader._zip.getinfo(name).compress_size
            if verify:
                reader.read_buffer(name) if name == WEIGHTS else reader.read(name)
        facts["verified"] = verify
    return facts
