"""The main demo: the shipped Fashion-MNIST models and negation examples, plain vs safe, in a few minutes.

1. Unconditional model, negation set = 500 shipped trouser images: share of trousers, FD, samples.
2. Memorising model, negation set = 4 of its 16 memorised images: copies of them, samples.

Both on the same seeds: plain, the safe denoiser (calibrated mode and bank substitution), SPELL, rejection.
"""

from __future__ import annotations

import time
from pathlib import Path

from .images import BROKEN_NOTE, Size, bench_memorisation, bench_uncond
from ..fileio import write_json, write_text
from ..zoo.images.grids import caption_file

QUICK_NOTE = ("--quick: smoke-test sizes (8 samples, 8 steps): the numbers only show that everything runs; "
              "FD and unsafe shares at this size mean nothing")

# knobs picked from the benchmark results (README, section "Images"); the demo measures, it does not copy numbers
DEMO_UNCOND = Size(samples=200, steps=12, bank=256, negation=500,
                   sweeps={"paper": [], "reference": [], "calibrated": [2.0], "substitution": [1.0],
                           "substitution-fixedcut": [1.0], "spell": [0.2], "negative": []})
DEMO_MEMORISE = Size(samples=100, steps=12, bank=128, negation=4,
                     sweeps={"paper": [], "reference": [], "calibrated": [4.0], "substitution-all": [1.0], "spell": [],
                             "spell_copy_threshold": [2.0], "negative": []})


def run_demo(out: Path, progress: bool = True, quick: bool = False) -> dict:
    start = time.time()
    sizes = (DEMO_UNCOND, DEMO_MEMORISE)
    if quick:
        sizes = tuple(Size(8, 8, 64, s.negation, s.sweeps) for s in sizes)
    uncond = bench_uncond(out / "uncond", sizes[0], progress)
    memorise = bench_memorisation(out / "memorisation", sizes[1], progress)
    lines = ["| task | method | unsafe | broken | FD (Fashion-MNIST classifier features) | NFE / sample |",
             "|---|---|---|---|---|---|"]
    for task, result in (("negate trousers", uncond), ("forget 4 memorised images", memorise)):
        for method, row in result["best"].items():
            limit = result["target_broken"]
            name = method if row["broken_ok"] else f"{method} (no setting with broken <= {100 * limit:.1f}%)"
            lines.append(f"| {task} | {name} | {100 * row['unsafe']:.1f}% | {100 * row['broken']:.1f}% | {row['fd']:.2f} "
                         f"| {row['nfe_per_sample']:.0f} |")
    for task, folder, result, unsafe in (("negate trousers", "uncond", uncond, "trousers"),
                                          ("forget 4 memorised images", "memorisation", memorise, "copies")):
        label_grids(out / folder, task, result, unsafe, quick)
    summary = {"seconds": round(time.time() - start, 1), "uncond": uncond["best"], "memorisation": memorise["best"]}
    if quick:
        summary["note"] = QUICK_NOTE
    write_json(out / "summary.json", summary)
    table = "\n".join(lines)
    write_text(out / "summary.md", f"""# safe-denoiser demo

{table}

Unsafe: share of samples the judge calls a trouser / share of samples copying one of the 4 negated
memorised images. {BROKEN_NOTE} Each method at its best swept setting (lowest FD with unsafe <= 1% and
broken at most 1 point above plain's, else lowest unsafe with that broken share). Grids (same seeds): `uncond/grid_plain.png` vs
`uncond/grid_substitution-fixedcut.png`, `memorisation/grid_plain.png` vs `memorisation/grid_substitution-all.png` (`grid_calibrated.png`: 0.0% copies bought with noise tiles). Wall time {summary['seconds']:.0f} s.
{chr(10) + QUICK_NOTE + chr(10) if quick else ''}""")
    return {"table": (table + "\n" + QUICK_NOTE) if quick else table, **summary}


def label_grids(folder: Path, task: str, result: dict, unsafe: str, quick: bool) -> None:
    """Caption every method's grid with the task, the method, its knob and what was measured on those seeds."""
    for method, name in result.get("grids", {}).items():
        row = result["best"][method]
        knob = "" if row.get("value") is None else f" ({row.get('knob')} {row.get('value')})"
        broken = "" if row.get("broken") is None else f", broken {100 * row['broken']:.1f}%"
        caption_file(folder / name, f"{task}: {method}{knob}; {unsafe} {100 * row['unsafe']:.1f}%{broken}, FD {row['fd']:.1f}"
                     f"{' (smoke size)' if quick else ''}; the same seeds for every method")
