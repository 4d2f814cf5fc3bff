"""The python examples in docs/*.md run, in order, as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["ir.md", "passes.md", "export.md", "artifacts.md", "onnxruntime.md",
         pytest.param("llm.md", marks=pytest.mark.slow)]  # llm.md runs the built-in LLM


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    assert blocks, f"{page} has no python examples"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page} example {i + 1}", "exec"), namespace)
