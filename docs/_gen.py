"""Pages generated from the code at every docs build (``docs/conf.py`` calls :func:`write_all`).

* ``cli.md``: ``--help`` of every ``safe-denoiser`` command and sub-command, from the parsers that
  :func:`safedenoiser.cli.build_parser` builds (so new commands and flags appear without an edit);
* ``modes.md``: the registry's modes (``MODE_CLASSES``), its method catalogue (``CATALOGUE``: knob, window policy,
  needs, sweeps per benchmark) and every other ``Correction`` subclass, with each knob of ``KNOBS`` and its default
  read from the constructors;
* ``api.md``: one ``automodule`` per public module of the package (found by walking it).

Run it alone to see what it writes: ``python docs/_gen.py [OUT_FOLDER]``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import pkgutil
import re
import sys
from pathlib import Path

from sphinx.util.nodes import make_refnode

#: Modules left out of the API reference (besides private ones).
API_SKIP_SUFFIXES = ("__main__",)


def _write(path: Path, text: str) -> None:
    """Write only when the text changed, so that Sphinx does not re-read an unchanged page."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


# ----------------------------------------------------------------------------------------------------------- CLI
def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:  # argparse has no public walk of sub-commands
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            out += [(name, helps.get(name) or "", sub) for name, sub in action.choices.items()]
    return out


def cli_markdown() -> str:
    """The CLI reference: one section per command with its ``--help`` text."""
    from safedenoiser.cli import build_parser

    old = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "110"  # argparse wraps help at $COLUMNS: the same page on every machine
    try:
        root = build_parser()
        lines = ["# CLI reference", "",
                 "Generated at every docs build from the argparse parsers of `safedenoiser.cli` "
                 "(`docs/_gen.py`): each section is the command's `--help`.", ""]

        def visit(parser: argparse.ArgumentParser, depth: int, summary: str) -> None:
            lines.extend([f"{'#' * min(depth, 4)} `{parser.prog}`", ""])
            if summary:
                lines.extend([summary[0].upper() + summary[1:] + ".", ""])
            lines.extend(["```text", parser.format_help().rstrip(), "```", ""])
            for _, help_text, sub in _subcommands(parser):
                visit(sub, depth + 1, help_text)

        visit(root, 2, "")
    finally:
        if old is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = old
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------- modes / knobs
def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out += [sub, *_all_subclasses(sub)]
    return out


def _knob_default(cls: type, knob: str) -> str:
    """The default of ``knob`` (its repr) in the first constructor along the MRO that names it; None: required."""
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameter = inspect.signature(init).parameters.get(knob)
        if parameter is not None:
            return None if parameter.default is inspect.Parameter.empty else repr(parameter.default)
    return "?"


def _summary(obj: object) -> str:
    """The first sentence-paragraph of a docstring, on one line (for a table cell; roles left as code)."""
    doc = inspect.getdoc(obj) or ""
    text = " ".join(doc.split("\n\n")[0].split())
    text = re.sub(r":[\w:]+:`~?([^`]*)`", r"``\1``", text)  # reST roles as code (a Markdown table cell)
    return text.replace("|", "\\|")


def modes_markdown() -> str:
    """Modes and knobs: a table per registry mode and per other correction class, then each class's docstring."""
    import safedenoiser.methods as methods
    from safedenoiser.methods import registry
    from safedenoiser.methods.base import Correction

    for info in pkgutil.iter_modules(methods.__path__, methods.__name__ + "."):
        importlib.import_module(info.name)  # every Correction subclass of the package is defined
    modes = dict(registry.MODE_CLASSES)
    others = [c for c in _all_subclasses(Correction)
              if c not in modes.values() and c.__module__.startswith("safedenoiser.") and not c.__name__.startswith("_")]
    common = ", ".join(f"`{k}`" for k in inspect.signature(Correction.__init__).parameters if k not in ("self", "negation"))

    def ref(cls: type) -> str:
        return f"{{py:class}}`{cls.__name__} <{cls.__module__}.{cls.__name__}>`"

    def knobs(cls: type) -> str:
        cells = [f"`{k}` (required)" if (d := _knob_default(cls, k)) is None else f"`{k}={d}`" for k in cls.KNOBS]
        return ", ".join(cells) or "-"

    lines = ["# Modes and knobs", "",
             "Generated at every docs build from `safedenoiser.methods.registry.MODE_CLASSES` and the `KNOBS` of each "
             "`Correction` subclass, with the defaults of their constructors (`docs/_gen.py`), so this page "
             "follows the code. `make_correction(negation, mode, **knobs)` builds a mode by name; "
             "`correction.config` reads the knobs back. Every correction also takes " + common +
             " (a `Window` of noise levels, a diagnostics callback, the kernel's chunk size).", "",
             "## Modes (`make_correction(negation, mode, ...)`)", "",
             "| mode | class | knobs (default) | what it does |", "|---|---|---|---|"]
    lines += [f"| `{name}` | {ref(cls)} | {knobs(cls)} | {_summary(cls)} |" for name, cls in modes.items()]
    lines += ["", "## Method catalogue (`safedenoiser.methods.registry.CATALOGUE`)", "",
              "Every method the CLI, the web page and the benchmarks offer, baselines included; old names still "
              "accepted: " + ", ".join(f"`{old}` = `{new}`" for old, new in registry.ALIASES.items()) + ". "
              "Rows of benchmark results carry the *row* label (committed results keep `reference` for `authors`).", "",
              "| method | main knob | x0 correction | window | needs | row label | sweeps per benchmark | web page |",
              "|---|---|---|---|---|---|---|---|"]
    for entry in registry.CATALOGUE.values():
        sweeps = "; ".join(f"{bench}: " + ", ".join(f"{entry.sweep_key(s)} {list(s.values)}" for s in sw)
                           for bench, sw in entry.sweeps.items())
        web = ", ".join(f"{m.removeprefix('fashion-')} {v:g}" for m, v in entry.web.items()) or "-"
        cells = [f"`{entry.name}`", entry.knob or "-", ref(entry.cls) if entry.cls else ("yes" if entry.is_correction else "no"),
                 entry.window or "every step", ", ".join(sorted(entry.needs)) or "-", entry.row_name, sweeps or "-", web]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    if others:
        lines += ["", "## Other corrections (baselines, used as classes)", "",
                  "| class | knobs (default) | what it does |", "|---|---|---|"]
        lines += [f"| {ref(cls)} | {knobs(cls)} | {_summary(cls)} |" for cls in others]
    lines += ["", "## Each class", ""]
    for cls in [*modes.values(), *others]:
        name = next((n for n, c in modes.items() if c is cls), None)
        title = f"`{name}`: `{cls.__name__}`" if name else f"`{cls.__name__}`"
        lines += [f"### {title}", "", "```{eval-rst}", f".. autoclass:: {cls.__module__}.{cls.__name__}",
                  "   :no-index:", "   :no-members:", "```", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------ API
def public_modules() -> list[str]:
    """Every module of the package, namespace packages (a folder without ``__init__.py``) included; not private ones."""
    import safedenoiser

    root = Path(safedenoiser.__file__).resolve().parent
    names = set()
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names.update(".".join(parts[:k]) for k in range(1, len(parts)))  # namespace packages too
        if any(part.startswith("_") for part in parts) or parts[-1].endswith(API_SKIP_SUFFIXES):
            continue
        names.add(".".join(parts))
    return sorted(names)


def api_markdown() -> str:
    lines = ["# API reference", "",
             "One section per public module of the package (the list is generated at every docs build by walking "
             "`safedenoiser`; what the command modules add is in the [CLI reference](cli.md)). Objects re-exported by a "
             "package "
             "are documented where they are defined.", ""]
    import safedenoiser

    root = Path(safedenoiser.__file__).resolve().parent
    for name in public_modules():
        lines += [f"## `{name}`", ""]
        folder = root.parent.joinpath(*name.split("."))
        if folder.is_dir() and not (folder / "__init__.py").exists():  # a namespace package: nothing to import
            lines += ["```{eval-rst}", f".. py:module:: {name}", "```", "",
                      f"A namespace package (no `__init__.py`): its modules follow.", ""]
            continue
        lines += ["```{eval-rst}", f".. automodule:: {name}", "```", ""]
    return "\n".join(lines)


def write_all(out: Path) -> None:
    out = Path(out)
    _write(out / "cli.md", cli_markdown())
    _write(out / "modes.md", modes_markdown())
    _write(out / "api.md", api_markdown())


if __name__ == "__main__":
    write_all(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "reference")


# ------------------------------------------------------------------------------------------- docstrings (Sphinx hooks)
_LITERAL = re.compile(r"(``.*?``|:[\w:]+:`[^`]*`|`[^`]*`_?)")
_START = re.compile(r"(?:^|(?<=[\s(\[{<'\"/:=,-]))(\*\*|\*)(?=[^\s*])")


def _escape_markup(text: str) -> str:
    """Escape ``|`` (substitution references) and ``*`` / ``**`` start-strings that have no end-string, outside inline
    literals and roles: the docstrings write formulas in plain text (``|x - x_n|``, ``(N, *item_shape)``,
    ``**cond``), which reST would otherwise read as markup."""
    pieces = _LITERAL.split(text)
    for i in range(0, len(pieces), 2):  # even pieces are outside literals
        piece = pieces[i].replace("|", "\\|")
        out, pos = [], 0
        for match in _START.finditer(piece):
            marker = match.group(1)
            rest = piece[match.end():]
            closing = re.search(r"(?<=[^\s\\*])" + re.escape(marker) + r"(?![*\w])", rest)
            if closing is None:
                out += [piece[pos:match.start()], "\\" + "\\".join(marker)]
                pos = match.end()
        pieces[i] = "".join(out) + piece[pos:]
    return "".join(pieces)


def plain_text_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    """``autodoc-process-docstring``: escape plain-text formula markup paragraph by paragraph, leaving literal blocks
    (after ``::``) and doctest lines alone."""
    out: list[str] = []
    paragraph: list[int] = []
    in_literal, literal_indent = False, 0

    def flush() -> None:
        if paragraph:
            joined = "\n".join(lines[k] for k in paragraph)
            for k, line in zip(paragraph, _escape_markup(joined).split("\n")):
                out[k] = line
            paragraph.clear()

    for k, line in enumerate(lines):
        out.append(line)
        indent = len(line) - len(line.lstrip())
        if in_literal:
            if line.strip() and indent <= literal_indent:
                in_literal = False
            else:
                continue
        if not line.strip():
            flush()
            continue
        if line.lstrip().startswith(">>>"):
            continue
        paragraph.append(k)
        if line.rstrip().endswith("::"):
            flush()
            in_literal, literal_indent = True, indent
    flush()
    lines[:] = out


def _module_attribute(app, domain, node, target: str, contnode):
    """A constant without a docstring of its own (``MODE_CLASSES``, ``captions.CLASS_WORDS``): link to the one
    documented module that defines it."""
    *path, attr = target.split(".")
    found = []
    for modname, entry in domain.modules.items():
        name = ".".join([modname, *path]) if path and not ".".join(path).startswith("safedenoiser") else modname
        module = sys.modules.get(name)
        if module is None or name not in domain.modules or attr not in vars(module):
            continue
        try:
            source = inspect.getsource(module)
        except (OSError, TypeError):
            continue
        if not re.search(rf"^{re.escape(attr)}\s*(:[^=\n]*)?=", source, re.MULTILINE):
            continue  # imported there, not assigned
        found.append(domain.modules[name])
    here = [e for e in found if e.node_id == f"module-{node.get('py:module')}"]
    found = here or found  # defined in the referring module itself: that one
    if len({(e.docname, e.node_id) for e in found}) != 1:
        return None
    return make_refnode(app.builder, node["refdoc"], found[0].docname, found[0].node_id, contnode)


def resolve_short_reference(app, env, node, contnode):
    """``missing-reference``: resolve a short Python reference (``:class:`Calibration```, ``:meth:`NegationSet.open```)
    written in another module to the one documented object of the package whose full name ends with it; several
    candidates, or none, leave the reference unresolved (a warning under ``-n``)."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip("~.")
    domain = env.get_domain("py")
    candidates = [(name, entry) for name, entry in domain.objects.items()
                  if name.startswith("safedenoiser") and (name == target or name.endswith("." + target))
                  and not entry.aliased]
    if len({entry.docname + entry.node_id for _, entry in candidates}) != 1:
        parts = target.split(".")  # a re-exported path (safedenoiser.NegationSet): the object under that package
        for cut in range(len(parts) - 1, 0, -1):
            package, short = ".".join(parts[:cut]), ".".join(parts[cut:])
            candidates = [(name, entry) for name, entry in domain.objects.items()
                          if name.startswith(package + ".") and name.endswith("." + short) and not entry.aliased]
            if len({entry.docname + entry.node_id for _, entry in candidates}) == 1:
                break
        else:
            candidates = [(name, entry) for name, entry in domain.objects.items()  # re-exported from elsewhere
                          if name.startswith("safedenoiser.") and name.endswith("." + parts[-1]) and not entry.aliased]
            if len({entry.docname + entry.node_id for _, entry in candidates}) != 1:
                return _module_attribute(app, domain, node, target, contnode)
    _, entry = candidates[0]
    return make_refnode(app.builder, node["refdoc"], entry.docname, entry.node_id, contnode)
