"""The README's Python snippets run as written, on the shipped default model.

Each ```python block is executed in a fresh namespace, in a scratch folder that holds
the repository's `examples/` (the snippets' start images), so what a newcomer copies works.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _snippets():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_python_snippets():
    assert len(_snippets()) >= 2


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(_snippets())))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    code = _snippets()[index]
    exec(compile(code, f"README.md python snippet {index + 1}", "exec"), {"__name__": "__readme__"})
