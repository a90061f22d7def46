"""Assemble README.md from its parts (a development helper; edit the parts, then run it)."""
from pathlib import Path

root = Path(__file__).resolve().parents[1]


def demote(text: str) -> str:
    """One heading level down, leaving fenced code alone."""
    out, fenced = [], False
    for line in text.splitlines():
        fenced ^= line.startswith("```")
        out.append("#" + line if line.startswith("#") and not fenced else line)
    return "\n".join(out) + "\n"


parts = [
    (root / "notes/README_head.md").read_text(),
    (root / "notes/README_core.md").read_text(),
    (root / "notes/README_toy.md").read_text(),
    demote((root / "docs/images.md").read_text()),
    demote((root / "docs/text-to-image.md").read_text()),
    demote((root / "docs/scale.md").read_text()),
    (root / "notes/README_tail.md").read_text(),
]
(root / "README.md").write_text("\n".join(p.rstrip() + "\n" for p in parts))
