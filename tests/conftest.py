import os
import pathlib

import pytest

# Without a GPU, every Triton kernel runs in Triton's interpreter, which must be chosen before
# triton is first imported: here, not in the modules that need it (a subset of the suite that
# collected tests/serve first imported triton before tests/codegen/test_cuda_target.py set it,
# and its kernels then refused to run). A test that needs it off says so (monkeypatch).
if not any(pathlib.Path("/dev").glob("nvidia[0-9]*")):
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The contention guard (ember/runtime/contention.py) makes runs serial while this process's
# threads wait for cores, as they do here whenever the suite's two workers run kernels at
# once: off for the suite, so that a test's timing does not depend on the other worker's.
# tests/runtime/test_contention.py drives guards of its own.
os.environ.setdefault("EMBER_CONTENTION_GUARD", "0")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (CI is set), a skipped test fails: a missing compiler, model package or test
    dependency there is a broken set-up, not a reason to pass. Expected failures stay
    what they are."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[-1] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped in CI, which must run every test: {reason}"


@pytest.fixture(scope="session")
def minilm_onnx() -> pathlib.Path:
    """all-MiniLM-L6-v2 exported to ONNX (dynamic batch/seq), cached under the ember cache."""
    from ember import _builtin

    return _builtin.export_minilm()


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory):
    """A random-init two-layer Llama (GQA, vocab of SmolLM2) saved with the built-in
    SmolLM2's tokenizer and chat template: a real tokenizer over a model that runs fast.
    (EMBER_TEST_TOKENIZER: a folder holding that tokenizer, saved, where the GGUF is not at
    hand: benchmarks/device_check.sh carries it to the GPU machine.)"""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from ember._builtin import default_llm
    from ember.frontends.hf import load_pretrained
    from tests.frontends.hf.paged import save_tiny

    folder = tmp_path_factory.mktemp("tiny_llm")
    saved = os.environ.get("EMBER_TEST_TOKENIZER")
    tokenizer = AutoTokenizer.from_pretrained(saved, local_files_only=True) if saved else \
        load_pretrained(default_llm(), progress=False).tokenizer()
    tokenizer.save_pretrained(folder)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id)
    save_tiny(LlamaForCausalLM, config, folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory):
    """A random-init 2-layer BERT with MiniLM's tokenizer, saved as a transformers folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ember._builtin import minilm_dir

    folder = tmp_path_factory.mktemp("tiny_bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=128)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_cross_encoder(tmp_path_factory):
    """A random-init 2-layer BERT cross-encoder (one label) with MiniLM's tokenizer, saved by
    sentence-transformers' CrossEncoder (sigmoid activation), its weights drawn wide enough
    that documents score apart: the folder, and the CrossEncoder read back from it."""
    import torch
    from sentence_transformers import CrossEncoder
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from ember._builtin import minilm_dir

    hf = tmp_path_factory.mktemp("tiny_cross_hf")
    torch.manual_seed(1)
    config = BertConfig(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                        num_attention_heads=4, max_position_embeddings=128, num_labels=1, initializer_range=0.3)
    BertForSequenceClassification(config).save_pretrained(hf)
    AutoTokenizer.from_pretrained(minilm_dir()).save_pretrained(hf)
    folder = tmp_path_factory.mktemp("tiny_cross")
    CrossEncoder(str(hf), device="cpu").save(str(folder))
    return folder, CrossEncoder(str(folder), device="cpu")
