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


def runs_the_shipped_kernel(compiled, feeds, kernel, name: str, tmp_path, monkeypatch) -> None:
    """Saved, `compiled` lists hand-written kernel `name` (its wrapper module `kernel`, in
    ember/runtime/native/, with a `run`) with its source and library; loaded with an empty
    kernel cache and building refused, the shipped library runs once (through `run`, or
    from an executor's chained run where the kernel has a step form: its `RUNS` counts
    both) and the outputs are the compiled model's."""
    import numpy as np

    import ember
    from ember.artifact import inspect
    from ember.runtime import native

    expected = compiled.run(feeds)
    path = compiled.save(tmp_path / "m.ember")
    assert [e for e in inspect(path)["kernel_libraries"] if e["kernel"] == name] == [
        {"kernel": name, "dtype": "float32", "source": f"kernels/{name}.cpp", "binary": f"kernels/{name}.so"}]
    before = native.installed(name)
    native.uninstall(name)
    refuse_building(monkeypatch, tmp_path)
    ran = []
    run = kernel.run
    monkeypatch.setattr(kernel, "run", lambda *a, **k: ran.append(run(*a, **k)))
    counter = getattr(kernel, "RUNS", None)
    try:
        loaded = ember.load(path)
        counted = counter[0] if counter is not None else 0  # (the shipped library's count, now installed)
        got = loaded.run(feeds)
        for output in expected:
            np.testing.assert_array_equal(np.asarray(got[output]), np.asarray(expected[output]), err_msg=output)
        runs = counter[0] - counted if counter is not None else len(ran)
        assert runs == 1 and "artifact-" in native.installed(name), (runs, native.installed(name))
    finally:  # the library the programs made before this test named, for the tests after it
        native.uninstall(name)
        if before is not None:
            native.install({name: before})
