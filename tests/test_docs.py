"""The python examples in docs/*.md run, in order, as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = ["ir.md", "passes.md", "export.md", "artifacts.md", "onnxruntime.md", "embeddings.md",
         pytest.param("llm.md", marks=pytest.mark.slow),  # llm.md runs the built-in LLM
         pytest.param("distributed.md", marks=pytest.mark.slow)]  # over 2 processes


@pytest.mark.parametrize("page", PAGES)
def test_examples_run(page):
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / page).read_text(), flags=re.S)
    assert blocks, f"{page} has no python examples"
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page} example {i + 1}", "exec"), namespace)


ROOT = DOCS.parent


def _references(text: str) -> list[str]:
    """Markdown link targets and `backticked` paths to .md files, without anchors."""
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    quoted = re.findall(r"`([\w./-]+\.md)`", text)
    return [ref.split("#")[0] for ref in links + quoted if not re.match(r"[a-z]+:", ref) and ref.split("#")[0]]


@pytest.mark.parametrize("page", ["README.md", *sorted(p.name for p in DOCS.glob("*.md"))])
def test_links_resolve_inside_the_repository(page):
    """A fresh clone has every file the README and the docs point to (a link to
    ../shared/ARCHITECTURE.md, outside the repository, once broke this)."""
    path = ROOT / page if page == "README.md" else DOCS / page
    refs = _references(path.read_text())
    if page == "README.md":
        assert "docs/architecture.md" in refs
    for ref in refs:
        # backticked paths are written from the repository's root; links from the page
        candidates = [(path.parent / ref).resolve(), (ROOT / ref).resolve()]
        inside = [c for c in candidates if c.is_relative_to(ROOT) and c.exists()]
        assert inside, f"{page} points to {ref}, which a clone of the repository does not have"
