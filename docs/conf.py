"""Sphinx configuration of the safe-denoiser documentation (MyST Markdown, furo theme).

Build: ``sphinx-build -W --keep-going -n -b html docs docs/_build/html`` (``tools/docs.sh`` does it and opens the
result; ``.ci/run`` runs it). With ``-W -n`` the build fails on: a Markdown link to a missing page or heading anchor,
a missing ``{include}`` or image, a page in no toctree, a docstring of a public module that is not valid reST, and a
cross-reference (``:class:``, ``:func:`` ...) that resolves to no documented object of this package. Links to other
projects and external URLs are not checked (no network: no intersphinx, no linkcheck).

Three pages are generated from the code at every build, into ``docs/reference/`` (git-ignored), so they cannot
drift: the CLI reference (the argparse parsers of :mod:`safedenoiser.cli`), the modes and knobs (the registry's
``MODE_CLASSES`` and every ``Correction``'s ``KNOBS``) and the API module list (every public module).
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS))  # for _gen.py

import _gen  # noqa: E402

project = "safe-denoiser"
author = "the safe-denoiser authors"
copyright = "2026, the safe-denoiser authors"  # noqa: A001
try:
    from safedenoiser import __version__ as release
except ImportError:  # the package must be installed (pip install -e ".[docs]")
    release = "unknown"
version = release

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "README.md"]
root_doc = "index"

# MyST: `[text](#a-heading)` and `[text](page.md#a-heading)` links are checked against the generated heading anchors
myst_heading_anchors = 4
myst_enable_extensions = ["colon_fence", "dollarmath", "deflist"]

# Every cross-reference must resolve (with -n): the project's own objects, pages and anchors. Objects of other
# projects (torch, numpy, the standard library ...) are not linked (no intersphinx: the build runs offline), so
# references to them are not errors.
nitpicky = True
nitpick_ignore_regex = [(r"py:.*", r"(torch|numpy|np|numba|PIL|diffusers|transformers|gradio|faiss|matplotlib|"
                                  r"accelerate|safetensors|argparse|pathlib|os|collections|typing|dataclasses|"
                                  r"concurrent|contextlib|io|enum|abc|types|json|re|typing_extensions)(\..*)?"),
                        (r"py:.*", r"(Tensor|Path|PathLike|Any|Callable|Iterable|Iterator|Sequence|Mapping|"
                                  r"NoReturn|Literal|Optional|Union|NamedTuple|Generator|ndarray|dtype|device|"
                                  r"Module|Namespace|ArgumentParser|Action|Generator|T|TextIO|BinaryIO|"
                                  r"DiffusionPipeline|SchedulerMixin|PreTrainedModel|Figure|Axes|Image)"),
                        (r"py:.*", r"(int|float|str|bool|bytes|dict|list|tuple|set|None|object|type|"
                                  r"Exception|ValueError|OSError|RuntimeError|TypeError|KeyError|slice|callable)"),
                        (r"py:class", r"'.*|.*'|[A-Z]|.*\.[A-Z]|(dict|list|tuple|set|type)\[.*|string")]  # pieces of quoted annotations; TypeVars

autodoc_default_options = {"members": True, "undoc-members": True, "show-inheritance": True,
                           "ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
napoleon_google_docstring = False
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = f"safe-denoiser {release}"
html_static_path: list[str] = []


def setup(app):
    app.connect("builder-inited", lambda app: _gen.write_all(DOCS / "reference"))
    app.connect("autodoc-process-docstring", _gen.plain_text_docstring)
    app.connect("missing-reference", _gen.resolve_short_reference)
    return {"parallel_read_safe": True}
