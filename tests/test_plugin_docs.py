"""docs/plugins.md cannot rot: the tutorial's code blocks are exactly the files of
examples/conductor-markov, the plugin CI installs and tests.

A block belongs to a file when its info string names it: ```` ```python title="tests/test_markov.py" ````
(paths relative to the example's folder). A file may be shown in several blocks, in order; its
pieces are joined by two blank lines (the separation between top-level Python definitions).
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "plugins.md"
EXAMPLE = ROOT / "examples" / "conductor-markov"
IGNORED = {"__pycache__", ".pytest_cache", ".hypothesis", "build"}
BLOCK = re.compile(r'^```\w*[ \t]+title="([^"]+)"[ \t]*\n(.*?)^```[ \t]*$', re.MULTILINE | re.DOTALL)


def tutorial_files() -> dict[str, str]:
    pieces: dict[str, list[str]] = {}
    for path, body in BLOCK.findall(DOC.read_text(encoding="utf-8")):
        pieces.setdefault(path, []).append(body.rstrip("\n"))
    return {path: "\n\n\n".join(parts) + "\n" for path, parts in pieces.items()}


def example_files() -> dict[str, str]:
    out = {}
    for path in sorted(EXAMPLE.rglob("*")):
        rel = path.relative_to(EXAMPLE)
        if path.is_dir() or any(part in IGNORED or part.endswith(".egg-info") for part in rel.parts):
            continue
        out[rel.as_posix()] = path.read_text(encoding="utf-8")
    return out


def test_the_tutorial_shows_every_file_of_the_example_and_nothing_else():
    assert sorted(tutorial_files()) == sorted(example_files())


def test_the_tutorial_code_is_the_example_code():
    example = example_files()
    for path, text in tutorial_files().items():
        assert text == example[path], f"docs/plugins.md differs from examples/conductor-markov/{path}"


def test_the_example_backend_is_at_most_60_lines_of_code():
    source = (EXAMPLE / "conductor_markov" / "__init__.py").read_text(encoding="utf-8")
    code = [line for line in source.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len(code) <= 60, len(code)


def test_the_example_is_installed_by_dev_py_and_collected_by_pytest():
    import tomllib

    assert 'EXAMPLES = ["conductor-markov"]' in (ROOT / "dev.py").read_text(encoding="utf-8")
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "examples" in config["tool"]["pytest"]["ini_options"]["testpaths"]


def test_every_hook_is_documented():
    from conductor_core import hookspecs

    doc = DOC.read_text(encoding="utf-8")
    hooks = [name for name, fn in vars(hookspecs).items() if hasattr(fn, "conductor_spec")]
    assert len(hooks) >= 7
    for name in hooks:
        assert f"`{name}" in doc, name
