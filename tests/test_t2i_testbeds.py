"""benchmarks/t2i_testbeds.py: the two testbeds' best rows side by side, read from the committed results."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "t2i_testbeds.py"


def test_side_by_side_table_holds_each_testbeds_best_rows(tmp_path):
    out = tmp_path / "testbeds.md"
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    table = out.read_text()
    for name, path in (("pixel", "results/t2i/results.json"), ("latent", "results/t2i-latent/results.json")):
        best = json.loads((ROOT / path).read_text())["best"]["conditional"]
        row = next(line for line in table.splitlines() if line.startswith(f"| conditional | {name} |"))
        assert f"{best['fd']:.1f}" in row and f"guard={best['value']:g}" in row, row


def test_missing_results_are_named_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--latent", str(tmp_path / "none.json"), "--out",
                           str(tmp_path / "t.md")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].endswith("run the two bench commands above first")
