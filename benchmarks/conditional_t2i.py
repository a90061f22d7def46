"""Development measurements of the conditional mode on the text-to-image benchmark's rows (docs/conditional.md,
version 5): one line per setting, the same metrics and columns as ``safe-denoiser bench t2i``.

    python benchmarks/conditional_t2i.py --out results/t2i-v5/dev plain guard:1 "guard:1,neg:1" "text:project,guard:0.5"
    python benchmarks/conditional_t2i.py --split held_out guard:1        # the held-out column (report only)
    python benchmarks/conditional_t2i.py --out /tmp/h --rows 0,1,40,41,68,80,81,107,114,115 guard:1   # image hash

A setting is ``plain``, ``empty`` (every row's prompt replaced by the empty one, same seeds) or comma-separated ``knob:value`` pairs: ``neg:1`` adds the benchmark's negative prompt
(CFG 3), ``concept:1`` gives the mode the benchmark's negative-prompt words as its ``concept``, every other pair is
a knob of the conditional mode (``guard``, ``steer``, ``text``, ...). The sets and prompt rows are
``bench t2i``'s (``tuning_sets`` / ``held_out_sets``, ``benchmark_rows``). Per setting the script writes the images
(``<out>/<split>_<setting>.pt``), a grid of the broken ones with their plain counterparts and a line of
``<out>/dev.jsonl`` (command, metrics, broken rows: prompt, seed, judge probability, distance to the nearest real image;
``reference_distance_median`` / ``_min``: pixel distance of the explicit and evasive images to the nearest reference
item, against ``real_reference_distance`` of 1,000 real allowed test images: copies of reference items sit near 0).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from safedenoiser.zoo.images.assets import class_reference, load_judge
from safedenoiser.zoo.images.grids import save_grid
from safedenoiser.zoo.images.data import FASHION_CLASSES, load_fashion_mnist
from safedenoiser.zoo.images.evaluator import BrokenDetector
from safedenoiser.kernels import nearest_distances
from safedenoiser.methods import make_correction
from safedenoiser.bench.t2i import (
    AVOID,
    NEGATIVE_PROMPT,
    SIZES,
    T2ISetting,
    TextToImageBench,
    benchmark_rows,
    held_out_sets,
    tuning_sets,
)
from safedenoiser.zoo.t2i.pipeline import load_text_pipeline


def parse(spec: str) -> tuple[bool, dict | None]:
    """``plain`` -> (False, None); ``guard:1,neg:1`` -> (True, {'guard': 1.0})."""
    if spec in ("plain", "empty"):
        return False, None
    pairs = dict(kv.split(":", 1) for kv in spec.split(","))
    negative = pairs.pop("neg", "0") == "1"
    knobs = {k: (v if re.fullmatch(r"[a-z_]+", v) else float(v)) for k, v in pairs.items()}
    if "concept" in knobs:  # concept:1 -> the benchmark's negative-prompt words as the mode's concept
        knobs["concept"] = NEGATIVE_PROMPT
    return negative, knobs


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--out", default="results/t2i-v5/dev")
    parser.add_argument("--split", choices=("tuning", "held_out"), default="tuning")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rows", default=None, help="comma-separated row indices of the column only (a quick check: "
                        "compare the printed sha256 of the images before and after a change)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = SIZES["default"]
    pipe, judge = load_text_pipeline(), load_judge()
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    broken = BrokenDetector.calibrate(judge, train.images[::6], test.images[::5])  # as bench t2i
    rows = benchmark_rows(size, args.split)
    if args.rows:
        rows = [rows[int(i)] for i in args.rows.split(",")]
    sets = tuning_sets(size) if args.split == "tuning" else held_out_sets(None, size)
    bench = TextToImageBench(pipe, judge, {args.split: rows}, size, class_reference(judge, exclude=AVOID).stats, broken,
                             progress=False)
    reference = sets.reference.flat.float()
    allowed = test.images[test.labels != FASHION_CLASSES.index(AVOID)][:1000]
    real = nearest_distances(allowed.reshape(len(allowed), -1).float(), reference).flatten()  # real images, for scale
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python benchmarks/conditional_t2i.py", *(sys.argv[1:] if argv is None else argv)])
    plain_path = out / f"{args.split}_plain.pt"
    results = []
    for spec in args.specs:
        negative, knobs = parse(spec)
        factory = None if knobs is None else (lambda kw=knobs: make_correction(sets.negation, "conditional",
                                                                                reference=sets.reference, **kw))
        start = time.time()
        asked = [replace(r, prompt="") for r in rows] if spec == "empty" else rows  # the unconditional model's samples
        images = bench.generate(T2ISetting(spec, "-", None, factory, negative=negative), asked)
        seconds = (time.time() - start) / len(rows)
        torch.save(images, out / f"{args.split}_{spec.replace(':', '=').replace(',', '_')}.pt")
        metrics = bench.measure(rows, images)
        asked_unsafe = [i for i, r in enumerate(rows) if r.category in ("explicit", "evasive")]
        if asked_unsafe:
            near = nearest_distances(images[asked_unsafe].reshape(len(asked_unsafe), -1).float(), reference).flatten()
            metrics["reference_distance_median"] = float(near.median())  # copies of reference items sit near 0
            metrics["reference_distance_min"] = float(near.min())
        bad = torch.nonzero(broken(images)).flatten().tolist()
        prob = judge.top_probability(images[bad]).tolist() if bad else []
        dist = nearest_distances(images[bad].reshape(len(bad), -1).float(), broken.bank).tolist() if bad else []
        record = {"command": command, "split": args.split, "setting": spec, "seconds_per_image": round(seconds, 3),
                  "sha256": hashlib.sha256(images.numpy().tobytes()).hexdigest(),
                  "threads": args.threads, "images": len(rows),
                  "metrics": {k: round(v, 4) for k, v in metrics.items()},
                  "broken_rows": [{"index": i, "prompt": rows[i].prompt, "seed": rows[i].seed,
                                   "category": rows[i].category, "probability": round(p, 4), "distance": round(d, 3)}
                                  for i, p, d in zip(bad, prob, dist)],
                  "thresholds": {"min_probability": round(broken.min_probability, 4),
                                 "max_distance": round(broken.max_distance, 3)},
                  "real_reference_distance": {"median": round(float(real.median()), 3), "min": round(float(real.min()), 3)}}
        if bad:
            tiles = [images[bad]]
            plain = torch.load(plain_path) if plain_path.exists() else None
            if plain is not None and len(plain) == len(rows):
                tiles.insert(0, plain[bad])
            save_grid(torch.cat(tiles), out / f"broken_{args.split}_{spec.replace(':', '=').replace(',', '_')}.png",
                      nrow=len(bad))
        results.append(record)
        with open(out / "dev.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        print(json.dumps({k: record[k] for k in ("setting", "split", "seconds_per_image", "sha256", "metrics")}), flush=True)
        for row in record["broken_rows"]:
            print("  broken:", json.dumps(row), flush=True)
    return results


if __name__ == "__main__":
    main()
