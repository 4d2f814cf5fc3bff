"""Reading an artifact's members and writing them back, changed: the tests' forger."""

import hashlib
import json
import zipfile


def members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def rezip(path, contents: dict[str, bytes], fix_hashes: bool = False, manifest_edit=None):
    """Write `contents` as an artifact at `path`; `fix_hashes` rewrites the manifest's
    sha256 and size of every member (a forger's artifact, consistent with itself)."""
    manifest = json.loads(contents["manifest.json"])
    if fix_hashes:
        manifest["members"] = {name: {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
                               for name, data in contents.items() if name != "manifest.json"}
    if manifest_edit:
        manifest_edit(manifest)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in contents.items():
            if name != "manifest.json":
                z.writestr(zipfile.ZipInfo(name), data)
        z.writestr("manifest.json", json.dumps(manifest))
    return path


def refuse_building(monkeypatch, tmp_path) -> None:
    """From here on the kernel cache is empty and any C++ build fails the test: what
    loading an artifact whose libraries were built for this machine must not need."""
    from ember.codegen import cpu

    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path / "empty-cache"))

    def refuse(*args, **kwargs):
        raise AssertionError("loading an artifact compiled something")

    monkeypatch.setattr(cpu, "build", refuse)
    monkeypatch.setattr("subprocess.run", refuse)
