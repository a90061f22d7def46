"""The reliability table: the reliability tests record every case (entry point, input, outcome) here; with
``SAFEDENOISER_RELIABILITY_TABLE=path`` set they append it to ``path`` (JSON lines), and

    python tests/reliability_table.py path README.md

renders it as markdown between the ``<!-- reliability-table -->`` markers of the document. The input surfaces'
tests (tests/test_reliability_inputs*.py, group ``inputs``) render the same way into docs/reliability-inputs.md.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

ENV = "SAFEDENOISER_RELIABILITY_TABLE"
BEGIN, END = "<!-- reliability-table:begin -->", "<!-- reliability-table:end -->"
ROWS: list[dict] = []


def record(group: str, entry: str, case: str, outcome: str, **extra) -> None:
    """One row: ``group`` (fuzz, cli, kill, concurrency, security, inputs ...), the ``entry`` point, the ``case`` tried
    and the ``outcome`` (the one-line error, or what held)."""
    ROWS.append({"group": group, "entry": entry, "case": case, "outcome": _portable(" ".join(str(outcome).split())), **extra})


def _portable(text: str) -> str:
    """Test folders and this checkout's path replaced by placeholders, so the table does not depend on the machine."""
    text = re.sub(r"/tmp/pytest-of-[^/]+/pytest-\d+/[^/\s']+", "<tmp>", text)
    text = re.sub(r"/tmp/safedenoiser-unreadable-[^/\s']+", "<tmp>", text)
    return text.replace(str(Path(__file__).resolve().parents[1]) + "/", "")


def flush() -> None:
    """Append the recorded rows to the file named by the environment variable (if set), then forget them."""
    path = os.environ.get(ENV)
    if path and ROWS:
        with open(path, "a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(row, sort_keys=True) + "\n" for row in ROWS)
    ROWS.clear()


def _cell(text: str, limit: int = 160) -> str:
    text = text.replace("|", "\\|")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def render(rows: list[dict]) -> str:
    """Markdown: a summary of the kill / concurrency runs, then one table per group of cases."""
    out = []
    # one row per (entry, case): the last recorded (forked kill-test children may flush rows they inherited)
    kills = list({(r["entry"], r["case"]): r for r in rows if r["group"] in ("kill", "concurrency")}.values())
    if kills:
        out += ["| run | entry point | kills survived | items | lost | duplicated | half-written | identical to an uninterrupted run |",
                "|---|---|---|---|---|---|---|---|"]
        for r in kills:
            out.append(f"| {r['case']} | `{r['entry']}` | {r.get('kills', 0)} | {r.get('items', '')} | {r.get('lost', '')} | "
                       f"{r.get('duplicated', '')} | {r.get('half_written', '')} | {r.get('identical', '')} |")
        out.append("")
    for group in sorted({r["group"] for r in rows} - {"kill", "concurrency"}):
        out += [f"**{group}**", "", "| entry point | case | outcome |", "|---|---|---|"]
        seen = set()
        for r in rows:
            key = (r["entry"], r["case"])
            if r["group"] == group and key not in seen:
                seen.add(key)
                out.append(f"| `{_cell(r['entry'], 60)}` | {_cell(r['case'], 80)} | {_cell(r['outcome'])} |")
        out.append("")
    return "\n".join(out)


def write_markdown(table: str | Path, document: str | Path) -> None:
    """Replace the block between the markers of ``document`` by the table rendered from the JSON lines ``table``."""
    rows = [json.loads(line) for line in Path(table).read_text(encoding="utf-8").splitlines() if line.strip()]
    doc = Path(document)
    text = doc.read_text(encoding="utf-8") if doc.exists() else f"{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text += f"\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{BEGIN}\n{render(rows)}\n{END}{tail}", encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/reliability_table.py TABLE.jsonl README.md")
    write_markdown(sys.argv[1], sys.argv[2])
