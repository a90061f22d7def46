"""The package's shape: no import circles among its modules (imports inside functions included), leaves stay leaves."""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "import_graph.py"


def load_tool():
    spec = importlib.util.spec_from_file_location("import_graph", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_no_import_circles():
    tool = load_tool()
    edges = tool.graph()
    assert "safedenoiser.kernels" in edges and len(edges) > 40
    assert tool.cycles(edges) == []


def test_the_tool_sees_imports_inside_functions(tmp_path):
    tool = load_tool()
    root = tmp_path / "safedenoiser"
    (root / "sub").mkdir(parents=True)
    (root / "__init__.py").write_text("")
    (root / "a.py").write_text("from . import b\n")
    (root / "b.py").write_text("def f():\n    from .sub.c import g\n")
    (root / "sub" / "__init__.py").write_text("")
    (root / "sub" / "c.py").write_text("def g():\n    from ..a import x\n")
    edges = tool.graph(root)
    assert edges["safedenoiser.b"] == {"safedenoiser.sub.c"}
    assert tool.cycles(edges) == [["safedenoiser.a", "safedenoiser.b", "safedenoiser.sub.c"]]


def test_compiled_kernel_and_file_format_do_not_import_their_users():
    edges = load_tool().graph()
    assert not {m for m in edges["safedenoiser.cpu_kernel"] if m.startswith("safedenoiser")}
    assert "safedenoiser.negation" not in edges["safedenoiser.negation_file"]


# -- the command line ----------------------------------------------------------------------------------------------
def _run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_help_and_version_import_no_torch():
    done = _run_python("import sys\nfrom safedenoiser.cli import main\n"
                       "for argv in (['--help'], ['--version'], ['generate', '--help'], ['train', '--help']):\n"
                       "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
                       "print('TORCH', 'torch' in sys.modules)")
    assert done.returncode == 0, done.stderr
    assert "safe-denoiser 0.1.0" in done.stdout and "{toy,bench," in done.stdout
    assert done.stdout.strip().endswith("TORCH False")


def test_lazy_parser_registers_the_command_it_runs():
    from safedenoiser.cli import build_parser

    full = build_parser()
    subparsers = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))
    for name in subparsers.choices:
        lazy = build_parser(["--debug", name])
        chosen = next(a for a in lazy._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        assert chosen.format_help() == subparsers.choices[name].format_help(), name
    assert build_parser(["bench", "kernel"]).parse_args(["bench", "kernel", "--quick"]).run is not None


def test_defaults_shown_in_subcommand_help():
    helps = {argv[0]: _help(argv) for argv in (["train"], ["demo"], ["generate"])}
    assert "default: 3000" in helps["train"] and "default: 0" in helps["train"]  # --steps, --seed (0 is shown)
    assert "default: runs/demo" in helps["demo"]
    assert "default: 50" in helps["generate"] and "default with --negation: conditional" in helps["generate"]


def _help(argv: list[str]) -> str:
    from safedenoiser.cli import build_parser

    parser = build_parser(argv)
    for word in argv:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[word]
    return parser.format_help()


def test_main_records_the_argv_it_was_given(monkeypatch):
    from safedenoiser.cli import main
    from safedenoiser.zoo.images import commands

    seen = {}
    monkeypatch.setattr(commands, "run_train", lambda args: seen.setdefault("command", commands.command_line(args)) and 0)
    assert main(["--debug", "train", "--out", "some folder", "--steps", "5"]) == 0
    assert seen["command"] == "safe-denoiser --debug train --out 'some folder' --steps 5"


# -- layers: the house the README describes, no arrow runs back up --------------------------------------------------
#: bottom to top; a module may import its own layer and the ones below. Command-line modules (``cli``, ``*.commands``,
#: ``*_command``) sit in the top layer with the web page, whatever package they live in.
LAYERS = [
    {"kernels", "cpu_kernel", "negation_file", "negation", "coverage", "fileio", "textio", "argtypes", "metrics",
     "imageio", "results"},
    {"models", "sampling", "methods", "scale", ""},  # "": the package's front door re-exports the core API
    {"zoo"},
    {"pipelines"},
    {"bench"},
    {"web", "cli"},
]


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "safedenoiser":
        return None
    if parts[-1] == "commands" or parts[-1].endswith("_command"):
        return len(LAYERS) - 1
    top = parts[1] if len(parts) > 1 else ""
    return next((i for i, layer in enumerate(LAYERS) if top in layer), None)


def test_every_package_has_a_layer():
    edges = load_tool().graph()
    assert all(layer_of(m) is not None for m in edges), sorted(m for m in edges if layer_of(m) is None)


def test_no_import_runs_up_the_layers():
    edges = load_tool().graph()
    upward = sorted(f"{a} -> {b}" for a, targets in edges.items() for b in targets
                    if layer_of(b) is not None and layer_of(b) > layer_of(a))
    assert upward == []
