"""`ember compile -o`, `ember inspect`, `ember run`, `ember profile` and `ember bench` on
artifacts, in-process through main()."""

import json

import numpy as np
import onnx
import pytest

from ember.cli import main

from . import models


@pytest.fixture
def onnx_model(tmp_path):
    path = tmp_path / "mm.onnx"
    onnx.save(models.matmul_gelu(), path)
    np.save(tmp_path / "x.npy", np.arange(8, dtype=np.float32).reshape(2, 4))
    return path


def test_compile_o_inspect_run(onnx_model, tmp_path, capsys):
    out_file = tmp_path / "mm.ember"
    assert main(["compile", str(onnx_model), "-o", str(out_file), "--opt-level", "1"]) == 0
    out = capsys.readouterr().out
    assert "at O1" in out and f"saved       {out_file}" in out and out_file.is_file()

    assert main(["inspect", str(out_file)]) == 0
    out = capsys.readouterr().out
    for line in ("format version 2", "every member checked", "kind        model, target cpu", "(this machine)",
                 "opt_level 1", "  x: f32[n, 4]", "  y: f32[n, 3]", "externs matmul×1", "weights.safetensors",
                 "kernels/0.so"):
        assert line in out, line

    assert main(["inspect", str(out_file), "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["signature"]["inputs"] == [{"name": "x", "type": "f32[n, 4]"}]
    assert facts["verified"] and facts["host_matches"] and len(facts["digest"]) == 64

    results = {}
    for model in (onnx_model, out_file):
        outputs = tmp_path / f"out-{model.suffix[1:]}"
        assert main(["run", str(model), "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", str(outputs)]) == 0
        results[model.suffix] = np.load(outputs / "y.npy")
    assert "loading" in capsys.readouterr().err
    assert results[".ember"].tobytes() == results[".onnx"].tobytes()


def test_profile_and_bench_an_artifact(onnx_model, tmp_path, capsys):
    out_file = tmp_path / "mm.ember"
    assert main(["compile", str(onnx_model), "-o", str(out_file)]) == 0
    assert main(["profile", str(out_file), "--dim", "n=4", "--runs", "2"]) == 0
    assert "extern matmul" in capsys.readouterr().out
    assert main(["bench", str(out_file), "--dim", "n=4", "--runs", "5"]) == 0
    assert "ember       median" in capsys.readouterr().out


def test_compile_an_llm_to_an_artifact(tiny_llm_dir, tmp_path, capsys):
    out_file = tmp_path / "tiny.ember"
    assert main(["compile", str(tiny_llm_dir), "-o", str(out_file), "--block-size", "8", "--max-model-len", "256"]) == 0
    assert "saved" in capsys.readouterr().out
    assert main(["inspect", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "kind        llm" in out and "up to 256 tokens, KV blocks of 8" in out
    assert "tokenizer/tokenizer.json" in out and "paged_attention×2" in out
    assert main(["generate", "Hi", "--model", str(out_file), "--max-tokens", "3", "--raw"]) == 0
    half = tmp_path / "tiny16.ember"  # --dtype: the weights, activations and KV cache in float16
    assert main(["compile", str(tiny_llm_dir), "-o", str(half), "--dtype", "float16", "--max-model-len", "64"]) == 0
    assert main(["generate", "Hi", "--model", str(half), "--max-tokens", "3", "--raw", "--dtype", "float16"]) == 0
    capsys.readouterr()
    assert main(["generate", "Hi", "--model", str(half), "--max-tokens", "3", "--dtype", "bfloat16"]) == 2
    assert "compiled in float16, not bfloat16" in capsys.readouterr().err


def test_quantization_on_the_command_line(tiny_llm_dir, onnx_model, tmp_path, capsys):
    """--quantization: an LLM's weights in int8 blocks, kept through the artifact; an ONNX
    model's too; a bad scheme or an LLM-only one named."""
    out_file = tmp_path / "tiny8.ember"
    assert main(["compile", str(tiny_llm_dir), "-o", str(out_file), "--quantization", "int8",
                 "--max-model-len", "64"]) == 0
    assert main(["inspect", str(out_file)]) == 0
    assert "quantized_linear" in capsys.readouterr().out
    assert main(["generate", "Hi", "--model", str(out_file), "--max-tokens", "3", "--raw"]) == 0
    assert main(["compile", str(tiny_llm_dir), "-q", "int3"]) == 2
    assert "quantization 'int3' is not one ember knows" in capsys.readouterr().err
    assert main(["compile", str(onnx_model), "-q", "gguf"]) == 2
    assert "--quantization gguf is for LLMs" in capsys.readouterr().err
    assert main(["generate", "Hi", "--model", str(out_file), "-q", "int4", "--max-tokens", "2"]) == 2
    assert "is an artifact, compiled already" in capsys.readouterr().err


def test_compile_errors(onnx_model, tmp_path, capsys):
    assert main(["compile", str(onnx_model), "--block-size", "8"]) == 2
    assert "--block-size, --max-model-len, --dtype, --kv-cache-dtype and --tensor-parallel-size are for LLMs" in \
        capsys.readouterr().err
    assert main(["compile", str(onnx_model), "--dtype", "bfloat16"]) == 2
    assert "--tensor-parallel-size are for LLMs" in capsys.readouterr().err
    assert main(["compile", str(onnx_model), "-tp", "2"]) == 2
    assert "--tensor-parallel-size are for LLMs" in capsys.readouterr().err
    bad = tmp_path / "bad.ember"
    bad.write_bytes(b"PK\x03\x04 not really")
    assert main(["run", str(bad), "--input", f"x={tmp_path / 'x.npy'}"]) == 2
    assert "ember: error:" in capsys.readouterr().err
    assert main(["inspect", str(bad)]) == 2
    assert "not an ember artifact, or it is truncated" in capsys.readouterr().err


def test_compile_dumps_a_shards_ir(tiny_llm_dir, tmp_path, capsys):
    """`ember compile <LLM> --tensor-parallel-size 2 --dump-ir DIR`: rank 0's shard, its
    collectives in the IR after the sharding pass (and none before it)."""
    dump = tmp_path / "ir"
    assert main(["compile", str(tiny_llm_dir), "-tp", "2", "--dump-ir", str(dump)]) == 0
    assert "shard_tensor_parallel" in capsys.readouterr().out
    files = sorted(p.name for p in dump.iterdir())
    sharded = next(f for f in files if f.endswith("-shard_tensor_parallel.ir"))
    before = files[files.index(sharded) - 1]
    assert "ember.AllReduce" not in (dump / before).read_text()
    text = (dump / sharded).read_text()
    assert text.count("= ember.AllReduce(") == 5 and text.count("= ember.AllGather(") == 1  # lookup, 2 x 2 layers; head
    assert main(["compile", str(tiny_llm_dir), "-tp", "2", "-o", str(tmp_path / "x.ember")]) == 2
    assert "not saved sharded" in capsys.readouterr().err
