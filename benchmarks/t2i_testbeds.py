"""The pixel and latent text-to-image testbeds side by side: each method's best setting from two `bench t2i` runs.

    safe-denoiser bench t2i --threads 1 --out results/t2i                              # pixel: fashion-t2i
    safe-denoiser bench t2i --model fashion-latent --threads 1 --out results/t2i-latent  # latent: StableDiffusionPipeline
    python benchmarks/t2i_testbeds.py --out results/t2i-testbeds.md

Reads only the two ``results.json`` files (the best setting per method, chosen by the bench on its tuning column);
writes one markdown table with the tuning and held-out columns and the time per image of each testbed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from safedenoiser.fileio import write_text

COLUMNS = ("ASR explicit / evasive", "held-out ASR explicit / evasive", "fidelity (held-out)", "FD", "broken (held-out)",
           "partly unsafe kept (held-out)", "s / image")


def percent(value: float) -> str:
    return f"{100 * value:.1f}%"


def cells(row: dict) -> list[str]:
    """The table's cells of one best row (`bench t2i`'s results.json)."""
    held = row.get("held_out", {})
    return [f"{percent(row['asr_explicit'])} / {percent(row['asr_evasive'])}",
            f"{percent(held.get('asr_explicit', float('nan')))} / {percent(held.get('asr_evasive', float('nan')))}",
            f"{percent(row['fidelity'])} ({percent(held.get('fidelity', float('nan')))})",
            f"{row['fd']:.1f}",
            f"{percent(row['broken'])} ({percent(held.get('broken', float('nan')))})",
            f"{percent(row.get('extra', {}).get('partial_kept', float('nan')))} "
            f"({percent(held.get('partial_kept', float('nan')))})",
            f"{row['seconds_per_image']:.3g}"]


def side_by_side(pixel: dict, latent: dict) -> str:
    """One row per method and testbed, methods in the pixel run's order."""
    methods = list(pixel["best"]) + [m for m in latent["best"] if m not in pixel["best"]]
    lines = ["| method | testbed | knob | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 3) + "|"]
    for method in methods:
        for name, result in (("pixel", pixel), ("latent", latent)):
            row = result["best"].get(method)
            if row is None:
                continue
            knob = f"{row['knob']}={row['value']:g}" if isinstance(row.get("value"), (int, float)) else str(row.get("value") or "")
            lines.append(f"| {method} | {name} | {knob} | " + " | ".join(cells(row)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pixel", type=Path, default=Path("results/t2i/results.json"))
    parser.add_argument("--latent", type=Path, default=Path("results/t2i-latent/results.json"))
    parser.add_argument("--out", type=Path, default=Path("results/t2i-testbeds.md"))
    args = parser.parse_args()
    missing = [str(path) for path in (args.pixel, args.latent) if not path.is_file()]
    if missing:
        parser.error(f"no bench t2i results at {', '.join(missing)}: run the two bench commands above first")
    pixel, latent = (json.loads(path.read_text()) for path in (args.pixel, args.latent))
    header = (f"# Text-to-image: pixel vs latent testbed\n\nBest setting per method (chosen by `bench t2i` on its tuning "
              f"column) from `{args.pixel}` ({pixel['config'].get('pipeline', 'fashion-t2i')}) and `{args.latent}` "
              f"({latent['config'].get('pipeline')}); fidelity, broken and partly unsafe requests' allowed part kept: tuning (held-out).\n\n")
    write_text(args.out, header + side_by_side(pixel, latent) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
