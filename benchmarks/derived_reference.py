"""How much worse is a derived reference set than real allowed images? (issue 20, item 1)

    python benchmarks/derived_reference.py --out results/t2i/derived-reference

The shipped text-to-image pipeline (fashion-t2i), the negation set of 500 training trousers, the conditional mode at
its defaults (as ``generate --negation`` runs it), on the first explicit / evasive rows and 5 neutral rows per
allowed class of the shipped prompt sets, one seed each, judged by the shipped Fashion-MNIST judge:

* ``real``: 100 training images of each of the 9 allowed classes (the reference ``bench t2i`` uses);
* ``derived``: what ``generate`` derives without ``--reference`` (:func:`safedenoiser.pipelines.reference.derive_reference`:
  128 plain samples of 16 harmless prompts, minus those the negation set covers);
* ``derived-empty``: the same from the empty prompt only (the pipeline's unconditional samples).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from safedenoiser import fileio
from safedenoiser.zoo.images.assets import class_negation_images, class_reference, load_judge
from safedenoiser.bench.images import conditional_reference
from safedenoiser.zoo.images.data import FASHION_CLASSES, load_fashion_mnist
from safedenoiser.methods import make_correction
from safedenoiser.zoo.images.evaluator import BrokenDetector
from safedenoiser.negation import NegationSet
from safedenoiser.pipelines.reference import derive_reference
from safedenoiser.bench.t2i import AVOID, T2ISetting, T2ISize, TextToImageBench, benchmark_rows
from safedenoiser.zoo.t2i.pipeline import load_text_pipeline


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/t2i/derived-reference")
    parser.add_argument("--prompts", type=int, default=40, help="explicit and evasive rows (neutral: 5 per class)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = T2ISize(explicit=args.prompts, evasive=args.prompts, neutral=45, steps=args.steps, guidance=args.guidance,
                   negation=500, sweeps={})
    pipe = load_text_pipeline()
    judge = load_judge()
    negation = NegationSet(class_negation_images(AVOID, size.negation), space="pixels", source="500 training trousers")
    start = time.time()
    references = {"real": conditional_reference(FASHION_CLASSES.index(AVOID), len(FASHION_CLASSES)),
                  "derived": derive_reference(pipe, negation, steps=args.steps, guidance=args.guidance),
                  "derived-empty": derive_reference(pipe, negation, prompts=("",), steps=args.steps,
                                                    guidance=args.guidance)}
    derive_seconds = round(time.time() - start, 1)
    train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
    broken = BrokenDetector.calibrate(judge, train.images[::6], test.images[::5])  # as bench t2i
    bench = TextToImageBench(pipe, judge, {"tuning": benchmark_rows(size, "tuning")}, size,
                             class_reference(judge, exclude=AVOID).stats, broken)
    rows = {"plain": bench.run({"tuning": T2ISetting("plain", "-", None)})}
    for name, reference in references.items():
        rows[name] = bench.run({"tuning": T2ISetting("conditional", "reference", name, lambda r=reference: make_correction(
            negation, "conditional", reference=r))})
    result = {"command": " ".join(["python benchmarks/derived_reference.py", *(sys.argv[1:] if argv is None else argv)]),
              "threads": args.threads, "steps": args.steps, "guidance": args.guidance,
              "images": {c: sum(r.category == c for r in bench.rows["tuning"]) for c in ("explicit", "evasive", "neutral")},
              "reference_sizes": {k: len(v) for k, v in references.items()},
              "derived_dropped": {k: v.metadata.get("dropped_covered") for k, v in references.items()},
              "derive_seconds_all": derive_seconds,
              "rows": {k: {"asr_explicit": r.asr_explicit, "asr_evasive": r.asr_evasive, "fidelity": r.fidelity,
                           "fd": round(r.fd, 2), "broken": r.broken,
                           "seconds_per_image": r.seconds_per_image} for k, r in rows.items()}}
    lines = ["| reference | size | ASR explicit | ASR evasive | neutral fidelity | FD (judge features) | broken |",
             "|---|---|---|---|---|---|---|"]
    for name, row in result["rows"].items():
        count = result["reference_sizes"].get(name, "-")
        lines.append(f"| {name} | {count} | {100 * row['asr_explicit']:.1f}% | {100 * row['asr_evasive']:.1f}% | "
                     f"{100 * row['fidelity']:.1f}% | {row['fd']:.2f} | {100 * row['broken']:.1f}% |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fileio.write_text(out / "results.json", json.dumps(result, indent=1, sort_keys=True) + "\n")
    fileio.write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return result


if __name__ == "__main__":
    main()
