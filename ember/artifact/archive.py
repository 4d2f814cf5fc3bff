"""The `.ember` file: a zip whose `manifest.json` lists every other member with its
hash and size: its sha256, or for the weights its BLAKE3 (a cryptographic hash too, ~5x
sha256's speed here and multi-threaded: 90 MB of MiniLM hash in ~10 ms instead of 50). Writing goes to a temporary file renamed into place at the end, so a
failed save leaves nothing behind. Reading refuses, as an ArtifactError naming it: a
file that is not a zip or is cut short, a member name that is absolute, holds `..` or
would land outside a folder, a manifest that is not JSON or is from a newer format, a
member the manifest lists that is missing, one it does not list, and a member whose
size or sha256 differs. Members are read only when asked for, and checked as they are.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import mmap
import os
import re
import secrets
import struct
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from ..errors import ArtifactError

MANIFEST = "manifest.json"
FORMAT = "ember-artifact"
FORMAT_VERSION = 2  # 2: the weights' hash is BLAKE3; 1 (still read): sha256 per 16 MiB chunk
MAX_MANIFEST = 64 << 20
CHUNK = 16 << 20  # bytes per chunk of a member copied into the archive
HASHES = ("sha256", "blake3")  # a member's entry names exactly one
ALIGN = 64  # a stored member written `aligned` starts at a multiple of this in the file (its arrays map in place)
_ALIGNMENT_EXTRA = 0xD935  # the zip extra field that pads a local header (zipalign's)


def _blake3():
    try:
        import blake3
    except ImportError:  # a declared dependency; a broken install gets a clear word
        raise ArtifactError("artifacts need the blake3 package: pip install blake3") from None
    return blake3.blake3


def hash_of(algorithm: str, data) -> str:
    """The hex digest of `data` (bytes or a buffer) by `algorithm` (one of HASHES)."""
    if algorithm == "blake3":
        return _blake3()(memoryview(data), max_threads=-1).hexdigest()  # -1: blake3's AUTO, every core
    return hashlib.sha256(memoryview(data)).hexdigest()


def check_member_name(name: str) -> None:
    """Refuse a member name that could be written anywhere but under its folder."""
    posix = PurePosixPath(name)
    if (not name or "\\" in name or "\0" in name or posix.is_absolute() or re.match(r"^[A-Za-z]:", name)
            or any(part in ("", ".", "..") for part in name.split("/"))):
        raise ArtifactError(f"member {name!r} is refused: an absolute name, or one with '..', escapes its folder")
    root = os.path.realpath("/ember-artifact")
    if not os.path.realpath(os.path.join(root, *posix.parts)).startswith(root + os.sep):
        raise ArtifactError(f"member {name!r} is refused: it resolves outside its folder")


class ArchiveWriter:
    """Members added one by one; `close(manifest)` writes the manifest and moves the
    file into place."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.members: dict[str, dict[str, Any]] = {}
        self._tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        self._fp = open(self._tmp, "xb")  # mode 0666 less the umask, as any file the user writes
        self._zip = zipfile.ZipFile(self._fp, "w", allowZip64=True)

    def add_bytes(self, name: str, data: bytes, compress: bool = True) -> None:
        check_member_name(name)
        self.members[name] = {"sha256": hash_of("sha256", data), "size": len(data)}
        self._zip.writestr(_info(name, compress), data)

    def add_file(self, name: str, source: str | os.PathLike, compress: bool = False, algorithm: str = "sha256",
                 aligned: bool = False) -> None:
        """`algorithm` "blake3" for a large member a load must check fast (the weights);
        `aligned` (stored members): its data starts at a multiple of ALIGN in the file, a
        padding extra field in its local header making up the difference, so that a
        reader can map it and use its arrays in place."""
        check_member_name(name)
        digest = _blake3()(max_threads=-1) if algorithm == "blake3" else hashlib.sha256()
        size = 0
        info = _info(name, compress)
        if aligned and not compress:
            start = self._fp.tell()  # where zipfile writes the local header
            info.CRC = info.compress_size = info.file_size = 0  # as zipfile sets them before writing it
            header = len(info.FileHeader(True)) + 6  # zip64 (forced below), plus the padding field's own header
            pad = -(start + header) % ALIGN
            info.extra = struct.pack("<HHH", _ALIGNMENT_EXTRA, 2 + pad, ALIGN) + bytes(pad)
        with open(source, "rb") as src, self._zip.open(info, "w", force_zip64=True) as dst:
            while chunk := src.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
                dst.write(chunk)
        self.members[name] = {algorithm: digest.hexdigest(), "size": size}

    def close(self, manifest: dict[str, Any]) -> bytes:
        """Write `manifest` (with the members filled in) and move the file into place;
        returns the manifest's bytes."""
        manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest,
                    "members": dict(sorted(self.members.items()))}
        data = json.dumps(manifest, indent=1, allow_nan=False).encode()
        self._zip.writestr(_info(MANIFEST, True), data)
        self._zip.close()
        self._fp.close()
        os.replace(self._tmp, self.path)
        return data

    def abort(self) -> None:
        try:
            self._zip.close()
        finally:
            self._fp.close()
            self._tmp.unlink(missing_ok=True)


def _info(name: str, compress: bool) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # the same bytes for the same model
    info.compress_type = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    info.external_attr = 0o644 << 16
    return info


class ArchiveReader:
    """An open artifact: its manifest read and checked, members read (and checked) on
    demand."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._pending: list = []  # members whose sha256 is being computed (read_buffer)
        self._map: mmap.mmap | None = None  # the whole file, copy-on-write, once a member is mapped
        try:
            self._file = open(self.path, "rb")
        except OSError as e:
            raise ArtifactError(f"{self.path}: cannot open it: {e.strerror or e}") from None
        try:
            self._zip = zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
            self._file.close()
            raise ArtifactError(f"{self.path} is not an ember artifact, or it is truncated: not a readable "
                                f"zip archive ({e})") from None
        try:
            self._check_names()
            self.manifest_bytes = self._read_manifest()
            self.manifest = _parse_manifest(self.manifest_bytes, self.path)
            self.members: dict[str, dict] = self.manifest["members"]
            self._check_members()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for _, _, hashes in self._pending:
            concurrent.futures.wait(hashes)
        self._zip.close()
        self._file.close()

    def __enter__(self) -> ArchiveReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def digest(self) -> str:
        """The artifact's identity: the manifest's sha256, which covers every member's."""
        return hashlib.sha256(self.manifest_bytes).hexdigest()

    def _check_names(self) -> None:
        seen = set()
        for info in self._zip.infolist():
            check_member_name(info.filename)
            if info.filename in seen:
                raise ArtifactError(f"{self.path}: member {info.filename!r} appears twice")
            seen.add(info.filename)

    def _read_manifest(self) -> bytes:
        try:
            info = self._zip.getinfo(MANIFEST)
        except KeyError:
            raise ArtifactError(f"{self.path} is not an ember artifact: it has no {MANIFEST}") from None
        if info.file_size > MAX_MANIFEST:
            raise ArtifactError(f"{self.path}: {MANIFEST} is {info.file_size} bytes, too large to be one")
        return self._read_zip_member(MANIFEST)

    def _check_members(self) -> None:
        listed = set(self.members) | {MANIFEST}
        for name, entry in self.members.items():
            check_member_name(name)
            if not (isinstance(entry, dict) and sum(isinstance(entry.get(h), str) for h in HASHES) == 1
                    and not any(h in entry and not isinstance(entry[h], str) for h in HASHES)
                    and type(entry.get("size")) is int and entry["size"] >= 0 and _chunks_ok(entry)):
                raise ArtifactError(f"{self.path}: the manifest's entry for member {name!r} is malformed")
        names = set(self._zip.namelist())
        missing = sorted(set(self.members) - names)
        if missing:
            raise ArtifactError(f"{self.path}: member {missing[0]!r} is missing (the manifest lists it)")
        unlisted = sorted(names - listed)
        if unlisted:
            raise ArtifactError(f"{self.path}: member {unlisted[0]!r} is not in the manifest (tampered with?)")

    def _read_zip_member(self, name: str) -> bytes:
        try:
            return self._zip.read(name)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
            raise ArtifactError(f"{self.path}: member {name!r} cannot be read, the file is corrupt or "
                                f"truncated ({e})") from None
        except Exception as e:  # zlib.error and friends from a damaged deflate stream
            raise ArtifactError(f"{self.path}: member {name!r} is corrupt ({type(e).__name__}: {e})") from None

    def has(self, name: str) -> bool:
        return name in self.members

    def read(self, name: str) -> bytes:
        """Member `name`, checked against the manifest's size and sha256."""
        entry = self._entry(name)
        if self._zip.getinfo(name).file_size != entry["size"]:
            raise ArtifactError(f"{self.path}: member {name!r} has the wrong size (tampered with or corrupt)")
        data = self._read_zip_member(name)
        self._verify(name, data)
        return data

    def read_buffer(self, name: str, *, check_later: bool = False, mapped: bool = False) -> np.ndarray:
        """Member `name` into a writable uint8 array, checked; a stored (uncompressed)
        member is read straight from the file into it. `check_later`: it is hashed on
        other threads (a BLAKE3 as it is read, a format-1 member's chunks' sha256 in
        parallel) while the caller goes on, and `check_pending()` (which the caller must
        call before using the contents) raises if a hash differs. `mapped`: a stored
        member whose data starts at a multiple of ALIGN is not read but mapped from the
        file, copy-on-write (its pages are the page cache's: nothing is copied or zeroed,
        and the hash reads them where they are); the file must then not be rewritten in
        place while its arrays are in use."""
        entry = self._entry(name)
        info = self._zip.getinfo(name)
        if info.file_size != entry["size"]:
            raise ArtifactError(f"{self.path}: member {name!r} has the wrong size (tampered with or corrupt)")
        if info.compress_type != zipfile.ZIP_STORED:
            data = np.frombuffer(bytearray(self._read_zip_member(name)), np.uint8)
        else:
            self._file.seek(info.header_offset)
            header = self._file.read(30)
            if len(header) != 30 or header[:4] != b"PK\x03\x04":
                raise ArtifactError(f"{self.path}: member {name!r} cannot be read, the file is corrupt or truncated")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            offset = info.header_offset + 30 + name_len + extra_len
            if mapped and offset % ALIGN == 0 and info.file_size:
                data = self._mapped(name, offset, info.file_size)
            else:
                data, hashed = self._read_stored(name, entry, offset, info.file_size, check_later)
                if hashed:  # hashed chunk by chunk as it was read: its hash is pending already
                    return data
        if check_later:  # the hashes let go of the GIL: parsing the rest overlaps hashing this
            view, algorithm = memoryview(data), _algorithm(entry)
            spans = _spans(entry, len(data))
            pool = concurrent.futures.ThreadPoolExecutor(min(len(spans), os.cpu_count() or 1) or 1)
            hashes = [pool.submit(lambda a, b: hash_of(algorithm, view[a:b]), a, b) for a, b in spans]
            pool.shutdown(wait=False)
            self._pending.append((name, data, hashes))
        else:
            self._verify(name, data)
        return data

    def _read_stored(self, name: str, entry: dict, offset: int, size: int,
                     check_later: bool) -> tuple[np.ndarray, bool]:
        """A stored member's bytes, read from `offset`, and whether they were hashed as they
        were read: a BLAKE3 member to be checked later is read CHUNK bytes at a time, each
        hashed on a thread while the next is read (MiniLM: ~22 ms for both, where reading
        then hashing took ~30), its hash put in `_pending`."""
        self._file.seek(offset)
        data = np.empty(size, np.uint8)  # not zeroed first: 90 MB of MiniLM, 40 ms less
        if not (check_later and "blake3" in entry):
            if self._file.readinto(memoryview(data)) != size:
                raise ArtifactError(f"{self.path}: member {name!r} is cut short: the file is truncated")
            return data, False
        hasher, view = _blake3()(), memoryview(data)
        pool = concurrent.futures.ThreadPoolExecutor(1)  # one worker: the updates stay in order
        for start in range(0, size, CHUNK):
            end = min(start + CHUNK, size)
            if self._file.readinto(view[start:end]) != end - start:
                pool.shutdown(wait=True)
                raise ArtifactError(f"{self.path}: member {name!r} is cut short: the file is truncated")
            pool.submit(hasher.update, view[start:end])
        self._pending.append((name, data, [pool.submit(hasher.hexdigest)]))
        pool.shutdown(wait=False)
        return data, True

    def _mapped(self, name: str, offset: int, size: int) -> np.ndarray:
        """A stored member's bytes as a copy-on-write mapping of the file (not yet checked)."""
        try:
            if self._map is None:
                self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_COPY)
            return np.frombuffer(self._map, np.uint8, count=size, offset=offset)
        except (ValueError, OSError):  # shorter than its directory says
            raise ArtifactError(f"{self.path}: member {name!r} is cut short: the file is truncated") from None

    def check_pending(self) -> None:
        """Wait for the hashes of every member read with `check_later`; raise if one differs."""
        while self._pending:
            name, data, hashes = self._pending.pop(0)
            self._check(name, data, [h.result() for h in hashes])

    def _entry(self, name: str) -> dict:
        entry = self.members.get(name)
        if entry is None:
            raise ArtifactError(f"{self.path}: member {name!r} is missing (the manifest does not list it)")
        return entry

    def _verify(self, name: str, data) -> None:
        entry, view = self.members[name], memoryview(data)
        self._check(name, data, [hash_of(_algorithm(entry), view[a:b]) for a, b in _spans(entry, len(data))])

    def _check(self, name: str, data, got: list[str]) -> None:
        """Raise unless `got`, the hashes of `data`'s spans (`_spans`), are the manifest's."""
        entry = self.members[name]
        expected = entry["chunks"]["sha256"] if "chunks" in entry else [entry[_algorithm(entry)]]
        if len(data) != entry["size"] or got != expected:
            raise ArtifactError(f"{self.path}: member {name!r} does not match its {_algorithm(entry)} in the "
                                "manifest (corrupt or tampered with)")


def _algorithm(entry: dict) -> str:
    return "blake3" if "blake3" in entry else "sha256"


def _spans(entry: dict, size: int) -> list[tuple[int, int]]:
    """The byte ranges of a member that are hashed apart: a format-1 entry's chunks, else
    the whole member."""
    chunks = entry.get("chunks")
    if chunks is None:
        return [(0, size)]
    return [(start, min(start + chunks["size"], size)) for start in range(0, size, chunks["size"])]


def _chunks_ok(entry: dict) -> bool:
    """A format-1 entry's sha256 of every chunk of the member (its weights')."""
    chunks = entry.get("chunks")
    if chunks is None:
        return True
    if "sha256" not in entry:
        return False
    size = chunks.get("size") if isinstance(chunks, dict) else None
    hashes = chunks.get("sha256") if isinstance(chunks, dict) else None
    return (type(size) is int and size >= 1 << 20 and isinstance(hashes, list)
            and all(isinstance(h, str) for h in hashes) and len(hashes) == -(-entry["size"] // size))


def _parse_manifest(data: bytes, path: Path) -> dict:
    try:
        manifest = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{path}: {MANIFEST} is not JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: {MANIFEST} is not an ember artifact's manifest")
    version = manifest.get("format_version")
    if type(version) is not int or version < 1:
        raise ArtifactError(f"{path}: {MANIFEST} has no valid format_version ({version!r})")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path} was written by a newer ember (artifact format version {version}, from "
                            f"ember {manifest.get('ember_version', '?')}); this ember reads format version "
                            f"{FORMAT_VERSION} at most: upgrade ember")
    if not isinstance(manifest.get("members"), dict):
        raise ArtifactError(f"{path}: {MANIFEST} lists no members")
    return manifest
