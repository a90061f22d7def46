"""The documentation's generated pages and the README, checked without building the site.

The full build (``sphinx-build -W --keep-going -n``, about a minute) is a step of ``.ci/run``; these tests run the
generators it uses (``docs/_gen.py``) against the code, in a few seconds, so a command, mode, knob or module that the
pages would miss fails here first.
"""

from __future__ import annotations

import argparse
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"


@pytest.fixture(scope="module")
def gen():
    pytest.importorskip("sphinx", reason="the docs extra (pip install -e '.[docs]') is not installed")
    spec = importlib.util.spec_from_file_location("docs_gen", DOCS / "_gen.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _progs(parser: argparse.ArgumentParser) -> list[str]:
    out = [parser.prog]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _progs(sub)
    return out


def test_cli_reference_has_every_command_and_option(gen):
    from safedenoiser.cli import build_parser

    text = gen.cli_markdown()
    parser = build_parser()
    for prog in _progs(parser):
        assert f"`{prog}`" in text, prog
    generate = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["generate"]
    for action in generate._actions:
        for option in action.option_strings:
            assert option in text, option


def test_modes_page_lists_every_mode_and_knob_with_its_default(gen):
    from safedenoiser.methods.registry import MODE_CLASSES
    from safedenoiser.methods.safe import PaperCorrection

    text = gen.modes_markdown()
    for name, cls in MODE_CLASSES.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        for knob in cls.KNOBS:
            assert f"`{knob}=" in row or f"`{knob}` (required)" in row, (name, knob)
        assert f".. autoclass:: {cls.__module__}.{cls.__name__}" in text
    assert "`eta=1.0`" in text and PaperCorrection.__init__.__kwdefaults__["eta"] == 1.0
    assert "SparseRepellency" in text  # corrections outside the registry (baselines) too


def test_api_page_lists_every_public_module(gen):
    text = gen.api_markdown()
    for path in (ROOT / "src" / "safedenoiser").rglob("*.py"):
        parts = path.relative_to(ROOT / "src").with_suffix("").parts
        parts = parts[:-1] if parts[-1] == "__init__" else parts
        if not any(p.startswith("_") for p in parts):
            assert f"`{'.'.join(parts)}`" in text, parts


@pytest.mark.parametrize("text, expected", [
    ("(N, *item_shape) and D(x, **cond)", r"(N, \*item_shape) and D(x, \*\*cond)"),
    ("the *predicted* x0, **bit-identical**", "the *predicted* x0, **bit-identical**"),
    ("|x - x_n| but ``|a|`` and :class:`A`", r"\|x - x_n\| but ``|a|`` and :class:`A`"),
    ("beta*(x) and x * y", "beta*(x) and x * y"),
])
def test_plain_text_formulas_are_escaped_for_rest(gen, text, expected):
    assert gen._escape_markup(text) == expected


def test_readme_is_short_and_its_links_and_results_files_exist():
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= 12 * 1024
    commands = re.findall(r"^pip install .*$", text.split("## ")[0], re.MULTILINE)
    assert len(commands) == 2 and "safe-denoiser demo" in commands[0] and "python -m pytest" in commands[1]
    for link in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (ROOT / link).exists(), link
    for results in re.findall(r"`(results/[^`]+\.(?:md|json))`", text):
        assert (ROOT / results).exists(), results


def test_every_included_results_file_exists():
    for page in DOCS.rglob("*.md"):
        if "_build" in page.parts:
            continue
        for target in re.findall(r"^```\{include\}\s+(\S+)", page.read_text(encoding="utf-8"), re.MULTILINE):
            assert (page.parent / target).resolve().exists(), (page, target)
