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


def _block(heading, lang="bash"):
    """The first ```lang block after the README's `heading` line."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading):]
    return re.search(rf"```{lang}\n(.*?)```", section, flags=re.S).group(1)


def test_ci_runs_exactly_the_readme_commands():
    """.ci/run is the README's install block, then its test command, and nothing else."""
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    ci = [line for line in ci if not line.startswith(("set -", "cd "))]
    install = [line for line in _block("## Install").splitlines() if line.strip()]
    test_command = _block("## Tests").splitlines()[0].split("#")[0].rstrip()
    assert ci == install + [test_command]


def test_default_model_size_as_stated():
    from ti2v_jax import DEFAULT_MODEL

    size = sum(f.stat().st_size for f in Path(DEFAULT_MODEL).rglob("*") if f.is_file())
    stated = re.search(r"`--model default` \(([\d.]+) MB\)", (ROOT / "README.md").read_text())
    assert stated, "the README no longer states the default model's size"
    assert float(stated.group(1)) == round(size / 1e6, 1), size

