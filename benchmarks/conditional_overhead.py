"""Cost of the conditional mode on the text-to-image benchmark, in one process: ``bench t2i``'s own measurement
(``TextToImageBench.overhead``: plain and corrected calls alternated on the same 8 explicit + 8 neutral rows, the
ratio of the medians), rerun on its own, without and with a concept (version 6), so that a loaded machine during the
full benchmark run can be checked.

    python benchmarks/conditional_overhead.py --repeats 5 --out results/t2i/overhead.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from safedenoiser import make_correction
from safedenoiser.fileio import write_json
from safedenoiser.bench.t2i import AVOID, NEGATIVE_PROMPT, SIZES, TextToImageBench, benchmark_rows, tuning_sets
from safedenoiser.zoo.images.assets import class_reference, load_judge
from safedenoiser.zoo.t2i.pipeline import load_text_pipeline


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="also write the numbers to this JSON file (with the load average)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    size = SIZES["default"]
    pipe, judge = load_text_pipeline(), load_judge()
    rows = benchmark_rows(size, "tuning")
    sets = tuning_sets(size)
    bench = TextToImageBench(pipe, judge, {"tuning": rows}, size, class_reference(judge, exclude=AVOID).stats, None,
                             progress=False)
    half = size.overhead_images // 2
    timing = ([r for r in rows if r.category == "explicit"][:half] + [r for r in rows if r.category == "neutral"][:half])
    out = {"threads": args.threads}
    for name, knobs in (("conditional", {}), ("conditional+concept", {"concept": NEGATIVE_PROMPT})):
        out[name] = bench.overhead(lambda k=knobs: make_correction(sets.negation, "conditional", reference=sets.reference,
                                                                   **k), timing, args.repeats)
    out["load_average_1min"] = round(os.getloadavg()[0], 2)
    print(json.dumps(out))
    if args.out:
        write_json(Path(args.out), out)
    return out


if __name__ == "__main__":
    main()
